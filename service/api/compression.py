"""gzip for large answers, to the clients that accept it (RFC 9110 section 8.4).

A page of 100 records is about 450 KB of JSON, and about 90 KB gzipped: a bulk client on
another network gets its pages several times faster. An answer under ``MIN_BYTES`` fits in
TCP's initial window (10 segments, about 14 KB), so it arrives in one round trip whatever
its size, and goes as it is: a labeling answer, one record, an error. zlib at level 1 (as
nginx does by default) compresses a page in about 2 ms; level 6, zlib's default, sends a
quarter fewer bytes for more than twice the CPU, taken from the models.

A gzipped answer is another representation, so its strong ``ETag`` gets the suffix ``-gzip``
(RFC 9110 section 8.8.3); conditional requests compare tags without it
(``service.api.conditional``), so either form validates the other.
"""

from __future__ import annotations

import zlib

from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from service.api.headers import field_value

MIN_BYTES = 14_000
LEVEL = 1
GZIP_SUFFIX = "-gzip"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header (mtime 0: the same bytes every time)


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip: named (or ``x-gzip``, or ``*``)
    with a quality above 0."""
    qualities: dict[str, float] = {}
    for item in header.split(","):
        coding, _, parameters = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        quality = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities[coding] = quality
    for coding in ("gzip", "x-gzip", "*"):
        if coding in qualities:
            return qualities[coding] > 0
    return False


def compressible(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media.startswith("text/") or media.endswith(("json", "javascript"))


def with_gzip_suffix(tag: str) -> str:
    """The tag of the gzipped form of the representation tagged ``tag`` (weak ones too)."""
    return tag[:-1] + GZIP_SUFFIX + '"' if tag.endswith('"') else tag


def without_coding(opaque: str) -> str:
    """An entity tag's opaque part as the identity representation's."""
    return opaque.removesuffix(GZIP_SUFFIX)


def compress_responses(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request = Headers.from_scope(scope)
        if not accepts_gzip(field_value(request, "accept-encoding")):
            await app(scope, receive, _varying(send))
            return
        await app(scope, receive, _Gzipping(send, request).send)

    return wrapped


def _varying(send: Send) -> Send:
    """Answers that would be gzipped for other clients say so (``Vary``), for caches."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            _vary(message)
        await send(message)

    return sending


def _vary(start: HTTPResponseStartEvent) -> bool:
    """Add ``Vary: Accept-Encoding`` where the answer could be gzipped; whether it could."""
    headers = MutableScopeHeaders.from_message(start)
    could = start["status"] == 304 or compressible(headers.get("content-type", ""))
    if could and "accept-encoding" not in headers.get("vary", "").lower():
        headers.extend_header_value("vary", "Accept-Encoding")
    return could and "content-encoding" not in headers


class _Gzipping:
    """The send of one request whose client accepts gzip. The start of a compressible answer
    is held until its first body message tells how large it is."""

    def __init__(self, send: Send, request: Headers) -> None:
        self._send = send
        self._request = request
        self._held: HTTPResponseStartEvent | None = None
        self._compressor: zlib._Compress | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if _vary(message) and message["status"] != 304:
                self._held = message
                return
            if message["status"] == 304:
                self._tag_held_form(message)
            await self._send(message)
            return
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        if self._held is not None:
            await self._start(message)
        elif self._compressor is not None:
            await self._send_compressed(message)
        else:
            await self._send(message)

    async def _start(self, first: HTTPResponseBodyEvent) -> None:
        start, self._held = self._held, None
        assert start is not None
        headers = MutableScopeHeaders.from_message(start)
        body = first.get("body", b"")
        more = first.get("more_body", False)
        declared = headers.get("content-length")
        size = int(declared) if declared and declared.isdigit() else None
        if (not more and len(body) < MIN_BYTES) or (more and size is not None and size < MIN_BYTES):
            await self._send(start)
            await self._send(first)
            return
        self._compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        headers["content-encoding"] = "gzip"
        if "etag" in headers:
            headers["etag"] = with_gzip_suffix(headers["etag"])
        if more:
            del headers["content-length"]  # the length is known at the end: chunked
            await self._send(start)
            await self._send_compressed(first)
            return
        compressed = self._compressor.compress(body) + self._compressor.flush()
        headers["content-length"] = str(len(compressed))
        await self._send(start)
        await self._send({"type": "http.response.body", "body": compressed, "more_body": False})

    async def _send_compressed(self, message: HTTPResponseBodyEvent) -> None:
        assert self._compressor is not None
        more = message.get("more_body", False)
        data = self._compressor.compress(message.get("body", b""))
        if not more:
            data += self._compressor.flush()
        if data or not more:
            await self._send({"type": "http.response.body", "body": data, "more_body": more})

    def _tag_held_form(self, start: HTTPResponseStartEvent) -> None:
        """A 304 carries the tag of the copy the client holds: the gzipped form's when that
        is the one it sent."""
        headers = MutableScopeHeaders.from_message(start)
        tag = headers.get("etag")
        if tag is None:
            return
        gzipped = with_gzip_suffix(tag)
        if gzipped in field_value(self._request, "if-none-match"):
            headers["etag"] = gzipped
