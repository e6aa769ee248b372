"""Compressed bodies are decoded member by member, within the caller's cap, in any chunking."""

from __future__ import annotations

import gzip
import zlib

import pytest

from service.errors import UpstreamError
from service.fetch.coding import MAX_MEMBERS, BodyDecoder

PLAIN = bytes(range(256)) * 40


def decoder(coding: str) -> BodyDecoder:
    made = BodyDecoder.for_coding(coding, "img.example")
    assert made is not None
    return made


def decode_in_chunks(coding: str, body: bytes, size: int) -> tuple[bytes, bool]:
    """Everything ``body`` decodes to, fed ``size`` bytes at a time; and whether it ended."""
    body_decoder = decoder(coding)
    out = b"".join(
        body_decoder.decode(body[i : i + size], 10 * len(PLAIN)) for i in range(0, len(body), size)
    )
    return out, body_decoder.complete


@pytest.mark.parametrize("size", [1, 2, 3, 7, 4096, 1 << 20])
def test_gzip_members_are_decoded_in_turn_however_the_body_is_cut(size: int) -> None:
    body = gzip.compress(PLAIN[:1000]) + gzip.compress(b"") + gzip.compress(PLAIN[1000:])
    assert decode_in_chunks("gzip", body, size) == (PLAIN, True)


@pytest.mark.parametrize("size", [1, 5, 1 << 20])
@pytest.mark.parametrize(
    ("coding", "compressed"), [("gzip", gzip.compress(PLAIN)), ("deflate", zlib.compress(PLAIN))]
)
def test_bytes_after_the_end_are_dropped(coding: str, compressed: bytes, size: int) -> None:
    # Not another member: dropped (a lone 0x1f might have started one, and is dropped too).
    for padding in (b"\0\0\r\n", b"junk" * 100, b"\x1f"):
        assert decode_in_chunks(coding, compressed + padding, size) == (PLAIN, True)


def test_deflate_has_no_members_so_a_second_stream_is_dropped() -> None:
    body = zlib.compress(PLAIN) + zlib.compress(b"more")
    assert decode_in_chunks("deflate", body, 1 << 20) == (PLAIN, True)


def test_a_body_cut_inside_a_member_is_not_complete() -> None:
    body = gzip.compress(PLAIN) + gzip.compress(PLAIN)
    out, complete = decode_in_chunks("gzip", body[:-5], 1 << 20)
    assert not complete
    assert out.startswith(PLAIN)


def test_no_more_than_the_limit_is_decoded_across_members() -> None:
    body_decoder = decoder("gzip")
    body = gzip.compress(PLAIN[:100]) + gzip.compress(PLAIN[100:])
    # Exactly the limit when more was due: the caller refuses the body there.
    assert body_decoder.decode(body, 150) == PLAIN[:150]


def test_a_second_member_that_is_not_gzip_is_refused() -> None:
    body_decoder = decoder("gzip")
    with pytest.raises(UpstreamError) as info:
        body_decoder.decode(gzip.compress(PLAIN) + b"\x1f\x8bnot gzip", len(PLAIN) + 1)
    assert info.value.extra == {"reason": "content_encoding"}


def test_identity_needs_no_decoder_and_unknown_codings_are_refused() -> None:
    assert BodyDecoder.for_coding(None, "img.example") is None
    assert BodyDecoder.for_coding(" Identity ", "img.example") is None
    with pytest.raises(UpstreamError, match="Content-Encoding 'br'") as info:
        BodyDecoder.for_coding("br", "img.example")
    assert info.value.extra == {"reason": "content_encoding"}


def test_a_body_of_many_members_is_decoded_whole() -> None:
    parts = [bytes([i % 256]) * 2000 for i in range(500)]
    body = b"".join(gzip.compress(part) for part in parts)
    body_decoder = decoder("gzip")
    assert body_decoder.decode(body, 1 << 20) == b"".join(parts)
    assert body_decoder.complete


def test_a_body_of_too_many_members_is_refused() -> None:
    """Empty members cost a decompressor each and decode to nothing: a body of a million
    of them fits the byte cap, so their number is bounded."""
    empty = gzip.compress(b"")
    body_decoder = decoder("gzip")
    assert body_decoder.decode(empty * MAX_MEMBERS, 1 << 20) == b""
    with pytest.raises(UpstreamError, match=f"more than {MAX_MEMBERS} members") as info:
        body_decoder.decode(empty, 1 << 20)
    assert info.value.extra == {"reason": "content_encoding"}
