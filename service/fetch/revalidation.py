"""What the service knows of URLs it fetched: each one's strong entity tag, and the SHA-256 of
the bytes that came with it, so that a request for a URL labeled before can ask its host
whether those bytes changed (``If-None-Match``) instead of downloading them again.

Kept in memory, per process, for the most recently used URLs, up to ``KEPT_CHARACTERS`` of
URLs and tags together (URLs may be 8 KB long): an entry saves a download, and losing one
(a restart, another process) costs one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# About 40,000 URLs of 100 characters: a few MB, however long the URLs are.
KEPT_CHARACTERS = 4_000_000


@dataclass(frozen=True, slots=True)
class Tagged:
    etag: str
    sha256: str


def _size(url: str, tagged: Tagged) -> int:
    return len(url) + len(tagged.etag) + len(tagged.sha256)


class EntityTags:
    def __init__(self, max_characters: int = KEPT_CHARACTERS) -> None:
        self._max = max_characters
        self._size = 0
        self._known: OrderedDict[str, Tagged] = OrderedDict()

    def get(self, url: str) -> Tagged | None:
        known = self._known.get(url)
        if known is not None:
            self._known.move_to_end(url)
        return known

    def remember(self, url: str, etag: str | None, sha256: str) -> None:
        """What a fetch of ``url`` gave; a fetch without a strong tag unlearns the URL."""
        self.forget(url)
        if etag is None:
            return
        tagged = self._known[url] = Tagged(etag, sha256)
        self._size += _size(url, tagged)
        while self._size > self._max:
            oldest, dropped = self._known.popitem(last=False)
            self._size -= _size(oldest, dropped)

    def forget(self, url: str) -> None:
        dropped = self._known.pop(url, None)
        if dropped is not None:
            self._size -= _size(url, dropped)

    def __len__(self) -> int:
        return len(self._known)
