"""Revalidating a URL fetched before: its strong entity tag, sent back in If-None-Match."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

from service.fetch.download import MAX_ETAG_LENGTH, ImageFetcher, strong_etag
from service.fetch.revalidation import EntityTags, Tagged

from .conftest import JPEG, Server
from .test_download import LOCAL


@pytest.fixture
async def fetcher(server: Server) -> AsyncIterator[ImageFetcher]:
    """Closed before ``server`` stops, which waits for the connections kept open to end."""
    fetcher = ImageFetcher(LOCAL)
    yield fetcher
    await fetcher.aclose()


def tagged(server: Server, etag: str) -> str:
    return server.url(f"/tagged.jpg?etag={quote(etag)}")


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ('"v1"', '"v1"'),
        (' "d41d8cd98f00b204e9800998ecf8427e" ', '"d41d8cd98f00b204e9800998ecf8427e"'),
        ('""', '""'),
        ('W/"v1"', None),  # weak: other bytes may carry it
        ("v1", None),  # not quoted
        ('"v1", "v2"', None),  # a list
        ('"a"b"', None),
        ('"caf\xe9"', None),  # obs-text: not sent back
        ('"a\r\nX-Injected: 1"', None),
        ('"' + "x" * MAX_ETAG_LENGTH + '"', None),
        (None, None),
    ],
)
def test_only_one_strong_entity_tag_is_kept(header: str | None, kept: str | None) -> None:
    assert strong_etag(header) == kept


async def test_a_fetch_gives_the_strong_tag_of_the_url_itself(
    fetcher: ImageFetcher, server: Server
) -> None:
    assert (await fetcher.fetch(tagged(server, '"v1"'))).etag == '"v1"'
    assert (await fetcher.fetch(tagged(server, 'W/"v1"'))).etag is None
    assert (await fetcher.fetch(server.url("/ok.jpg"))).etag is None
    # After a redirect the tag is another URL's: nothing to revalidate the first one with.
    via = server.url("/redirect-to?location=" + quote('/tagged.jpg?etag="v1"'))
    assert (await fetcher.fetch(via)).etag is None


async def test_an_unchanged_url_answers_not_modified_without_its_body(
    fetcher: ImageFetcher, server: Server
) -> None:
    url = tagged(server, '"v1"')
    first = await fetcher.fetch(url)
    assert await fetcher.revalidate(url, '"v1"') is None
    assert await fetcher.revalidate(url, '"v1"') is None  # the kept connection is still good
    assert [seen.headers.get("If-None-Match") for seen in server.seen] == [None, '"v1"', '"v1"']
    assert server.connections == 1
    assert first.data == JPEG


async def test_a_changed_url_sends_its_bytes_and_new_tag(
    fetcher: ImageFetcher, server: Server
) -> None:
    fetched = await fetcher.revalidate(tagged(server, '"v2"'), '"v1"')
    assert fetched is not None and fetched.data == JPEG and fetched.etag == '"v2"'


async def test_the_tag_is_not_sent_past_a_redirect(fetcher: ImageFetcher, server: Server) -> None:
    """The tag belongs to the URL asked for: the next hop gets a plain GET, and its answer,
    even one that would match, is the image."""
    via = server.url("/redirect-to?location=" + quote('/tagged.jpg?etag="v1"'))
    fetched = await fetcher.revalidate(via, '"v1"')
    assert fetched is not None and fetched.data == JPEG
    assert [seen.headers.get("If-None-Match") for seen in server.seen] == ['"v1"', None]


def test_entity_tags_keep_the_most_recently_used_urls_within_their_size() -> None:
    entry = len("http://a/1") + len('"1"') + len("h1")  # 15 characters
    tags = EntityTags(max_characters=2 * entry)
    tags.remember("http://a/1", '"1"', "h1")
    tags.remember("http://a/2", '"2"', "h2")
    assert tags.get("http://a/1") == Tagged('"1"', "h1")  # now the most recently used
    tags.remember("http://a/3", '"3"', "h3")
    assert (tags.get("http://a/2"), len(tags)) == (None, 2)
    tags.remember("http://a/1", None, "h1b")  # fetched again without a strong tag
    assert tags.get("http://a/1") is None
    tags.remember("http://a/" + "x" * 3 * entry, '"4"', "h4")  # longer than all of them
    assert len(tags) == 0
    tags.remember("http://a/5", '"5"', "h5")
    tags.remember("http://a/5", '"6"', "h6")  # replaced, not counted twice
    tags.remember("http://a/7", '"7"', "h7")
    assert (tags.get("http://a/5"), len(tags)) == (Tagged('"6"', "h6"), 2)
