"""Compressed image bodies (Content-Encoding gzip or deflate), decoded within a byte cap."""

from __future__ import annotations

import zlib

from service.errors import UpstreamError

# zlib window bits for the codings a server may send despite Accept-Encoding: identity (a
# static gzip file, say): gzip with its header and trailer, deflate as zlib data.
CONTENT_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 15}
GZIP_MAGIC = b"\x1f\x8b"
# An empty gzip member is 20 bytes: without a bound, a body within the byte cap could hold a
# million of them, each a new decompressor on the event loop (seconds of CPU for 0 bytes).
# Blocked gzip (64 KiB members) fills 64 MiB with this many.
MAX_MEMBERS = 1024


class BodyDecoder:
    """Decodes a body chunk by chunk, never producing more than the caller asks for.

    A gzip body may be several members one after the other (RFC 1952), decoded in turn. Bytes
    after the end that do not start another member are dropped, as browsers drop them (hosts
    pad bodies): never handed to zlib, which would keep them all. The caller counts them
    against its cap on received bytes.
    """

    def __init__(self, wbits: int, host: str) -> None:
        self._wbits = wbits
        self._host = host
        self._decoder = zlib.decompressobj(wbits)
        self._after_end = b""  # the start of what follows a member, too short to tell yet
        self._dropping = False
        self._members = 1

    @classmethod
    def for_coding(cls, coding: str | None, host: str) -> BodyDecoder | None:
        """The decoder for this Content-Encoding; None for none (or identity)."""
        name = (coding or "identity").strip().lower()
        if name == "identity":
            return None
        if name not in CONTENT_CODINGS:
            raise UpstreamError(
                f"{host} sent the image with Content-Encoding {name[:40]!r}, which cannot"
                f" be read; supported: {', '.join(CONTENT_CODINGS)}",
                extra={"reason": "content_encoding"},
            )
        return cls(CONTENT_CODINGS[name], host)

    @property
    def complete(self) -> bool:
        """Whether what was decoded so far ends where a member (or the stream) ends."""
        return self._decoder.eof

    def decode(self, raw: bytes, limit: int) -> bytes:
        """The bytes ``raw`` decodes to, at most ``limit`` (> 0) of them: exactly ``limit``
        when more were due, which the caller, passing its remaining room plus one, refuses."""
        decoded: list[bytes] = []  # joined once: a body may hold many members
        size = 0
        data = raw
        while data and not self._dropping and size < limit:
            if self._decoder.eof:
                data = self._after_end + data
                self._after_end = b""
                if not self._starts_a_member(data):
                    self._dropping = True
                    break
                if len(data) < len(GZIP_MAGIC):
                    self._after_end = data
                    break
                self._members += 1
                if self._members > MAX_MEMBERS:
                    raise UpstreamError(
                        f"{self._host} sent a gzip body of more than {MAX_MEMBERS} members",
                        extra={"reason": "content_encoding"},
                    )
                self._decoder = zlib.decompressobj(self._wbits)
            try:
                decoded.append(self._decoder.decompress(data, limit - size))
            except zlib.error:
                raise UpstreamError(
                    f"{self._host} sent a body that does not match its Content-Encoding",
                    extra={"reason": "content_encoding"},
                ) from None
            size += len(decoded[-1])
            if self._decoder.unconsumed_tail:  # ``limit`` reached with input left
                break
            data = self._decoder.unused_data
        return b"".join(decoded)

    def _starts_a_member(self, data: bytes) -> bool:
        """Whether ``data`` (after a member's end) is, or may yet be, another gzip member."""
        gzip = self._wbits > zlib.MAX_WBITS
        return gzip and data[: len(GZIP_MAGIC)] == GZIP_MAGIC[: len(data)]
