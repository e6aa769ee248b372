"""Tests for service.fetch.body and service.fetch.upload: capped, hashed bodies."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from typing import Any

import pytest

from service.errors import BadRequest, ClientClosedRequest, PayloadTooLarge, RequestTimeout
from service.fetch.body import MANY_PIECES, CappedBody, declared_length, fragmented
from service.fetch.upload import check_upload_length, receive_upload, upload_deadline


def channel(messages: Iterable[dict[str, Any]]) -> Any:
    pending = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(pending)

    return receive


def chunks(*bodies: bytes) -> list[dict[str, Any]]:
    last = len(bodies) - 1
    return [
        {"type": "http.request", "body": body, "more_body": i < last}
        for i, body in enumerate(bodies)
    ]


def test_a_capped_body_joins_and_hashes_its_pieces() -> None:
    body = CappedBody(10, lambda: PayloadTooLarge("too big"))
    for piece in (b"abc", b"", b"defghij"):
        body.add(piece)
    content = body.content()
    assert content.data == b"abcdefghij"
    assert content.sha256 == hashlib.sha256(b"abcdefghij").hexdigest()
    with pytest.raises(PayloadTooLarge):
        body.add(b"k")


def test_a_declared_length_over_the_cap_is_refused_before_any_byte() -> None:
    body = CappedBody(10, lambda: PayloadTooLarge("too big"))
    body.check_declared(None)
    body.check_declared(10)
    with pytest.raises(PayloadTooLarge):
        body.check_declared(11)


@pytest.mark.parametrize(
    ("header", "length"), [(None, None), ("", None), ("12", 12), ("x", None), ("1.5", None)]
)
def test_declared_length(header: str | None, length: int | None) -> None:
    assert declared_length(header) == length


def test_many_small_pieces_are_fragmented_and_many_large_ones_are_not() -> None:
    assert not fragmented(MANY_PIECES, 0)
    assert fragmented(MANY_PIECES + 1, 1000)
    assert not fragmented(MANY_PIECES + 1, 256 * (MANY_PIECES + 1))


async def test_an_upload_arrives_in_pieces() -> None:
    content = await receive_upload(channel(chunks(b"\xff\xd8", b"", b"rest")), 100)
    assert content.data == b"\xff\xd8rest"
    assert content.sha256 == hashlib.sha256(b"\xff\xd8rest").hexdigest()


async def test_an_upload_over_the_cap_is_cut_off() -> None:
    with pytest.raises(PayloadTooLarge) as raised:
        await receive_upload(channel(chunks(b"12345", b"6789", b"never read")), 8)
    assert raised.value.extra == {"reason": "too_large", "max_bytes": 8}


async def test_an_empty_upload_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="empty"):
        await receive_upload(channel(chunks(b"")), 8)


async def test_a_client_that_leaves_mid_upload() -> None:
    messages = [*chunks(b"abc", b"def")[:1], {"type": "http.disconnect"}]
    with pytest.raises(ClientClosedRequest):
        await receive_upload(channel(messages), 100)


async def test_an_upload_in_tiny_pieces_is_refused() -> None:
    messages = chunks(*([b"x"] * (MANY_PIECES + 2)))
    with pytest.raises(BadRequest) as raised:
        await receive_upload(channel(messages), 10**6)
    assert raised.value.extra == {"reason": "fragmented"}


async def test_an_upload_that_never_ends_times_out() -> None:
    async def dripping() -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x" * 300, "more_body": True}

    with pytest.raises(RequestTimeout) as raised:
        async with upload_deadline(0.2):
            await receive_upload(dripping, 10**6)
    assert raised.value.extra == {"reason": "timeout"}


@pytest.mark.parametrize(
    ("header", "error"),
    [("0", BadRequest), ("9", PayloadTooLarge), ("8", None), (None, None), ("junk", None)],
)
def test_the_declared_length_is_checked_first(
    header: str | None, error: type[Exception] | None
) -> None:
    if error is None:
        check_upload_length(header, 8)
    else:
        with pytest.raises(error):
            check_upload_length(header, 8)
