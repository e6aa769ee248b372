"""Receive an image sent as the body of the request itself: capped, hashed while it streams
in, refused as soon as it declares or passes the cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar.types import Receive

from service.errors import BadRequest, ClientClosedRequest, RequestTimeout
from service.fetch.body import (
    MANY_PIECES,
    MIN_MEAN_PIECE_BYTES,
    Content,
    declared_length,
    fragmented,
    image_cap,
)

NO_IMAGE = "the request body is empty: send the image's bytes"


def check_upload_length(content_length: str | None, max_bytes: int) -> None:
    """Refuse at once an upload that declares no bytes, or more than the cap."""
    declared = declared_length(content_length)
    if declared == 0:
        raise BadRequest(NO_IMAGE)
    image_cap(max_bytes).check_declared(declared)


@asynccontextmanager
async def upload_deadline(seconds: float) -> AsyncIterator[None]:
    """At most ``seconds`` (``LABELSVC_FETCH_TOTAL_TIMEOUT``, as for a download) to receive
    an upload: 408 past them."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise RequestTimeout(
            f"the image took longer than {seconds:g} s to arrive", extra={"reason": "timeout"}
        ) from None


async def receive_upload(receive: Receive, max_bytes: int) -> Content:
    """The request body, read from the ASGI ``receive`` channel."""
    body = image_cap(max_bytes)
    pieces = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientClosedRequest("the client disconnected while sending the image")
        chunk = message.get("body", b"")
        if chunk:
            pieces += 1
            body.add(chunk)
            if fragmented(pieces, body.size):
                raise BadRequest(
                    f"the image came in over {MANY_PIECES} pieces of under"
                    f" {MIN_MEAN_PIECE_BYTES} bytes on average",
                    extra={"reason": "fragmented"},
                )
        if not message.get("more_body", False):
            break
    if not body.size:
        raise BadRequest(NO_IMAGE)
    return body.content()
