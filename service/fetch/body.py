"""An image's bytes as they arrive in pieces, downloaded or uploaded: capped, hashed on the
way in, and joined once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import PayloadTooLarge, ServiceError

# A body in pieces (HTTP chunks, reads) this small on average, past this many of them, is
# refused: each piece costs the event loop a few microseconds, so a peer sending 1-byte
# chunks (or chunk extensions) would otherwise hold it busy until the total deadline.
MANY_PIECES = 4096
MIN_MEAN_PIECE_BYTES = 256


def fragmented(pieces: int, received: int) -> bool:
    """Whether ``pieces`` holding ``received`` bytes in all are too many and too small."""
    return pieces > MANY_PIECES and received < pieces * MIN_MEAN_PIECE_BYTES


def declared_length(header: str | None) -> int | None:
    """A ``Content-Length`` value, or None when there is none or it is not a number."""
    try:
        return int(header or "")
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Content:
    """An image's bytes, and their SHA-256 (hex)."""

    data: bytes
    sha256: str


class CappedBody:
    """Collects a body of at most ``max_bytes``; ``too_large`` makes the error raised past
    that. A body that runs over the cap never holds more than the cap, and an accepted one
    is copied once (no growing buffer)."""

    def __init__(self, max_bytes: int, too_large: Callable[[], ServiceError]) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.too_large = too_large
        self._chunks: list[bytes] = []
        self._digest = hashlib.sha256()

    def check_declared(self, declared: int | None) -> None:
        """Refuse at once a body whose declared length is over the cap."""
        if declared is not None and declared > self.max_bytes:
            raise self.too_large()

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise self.too_large()
        self._chunks.append(chunk)
        self._digest.update(chunk)

    def content(self) -> Content:
        return Content(b"".join(self._chunks), self._digest.hexdigest())


def image_cap(max_bytes: int) -> CappedBody:
    """An empty body for an image of at most ``max_bytes`` (``LABELSVC_MAX_IMAGE_BYTES``),
    downloaded or uploaded: 413 ``too_large`` past it."""
    return CappedBody(
        max_bytes,
        lambda: PayloadTooLarge(
            f"the image is larger than {max_bytes} bytes",
            extra={"reason": "too_large", "max_bytes": max_bytes},
        ),
    )
