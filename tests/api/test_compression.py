"""gzip for large answers to clients that accept it, and its entity tags."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable

import httpx
import pytest

from service.api.compression import MIN_BYTES, accepts_gzip, compressible
from service.api.conditional import if_match_tags, none_match
from service.settings import Settings
from tests.api.test_records import fake_record
from tests.conftest import AppClient, running

GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}
PAGE = {"q": '{"width": 321}', "per_page": "100"}


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("GZIP; q=0.5", True),
        ("br, gzip, deflate", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),  # named and refused: the wildcard does not bring it back
        ("*;q=0", False),
        ("br;q=1, gzip;q=nonsense", False),
        ("identity", False),
        ("deflate", False),
        ("", False),
    ],
)
def test_accept_encoding_is_read_with_its_qualities(header: str, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("application/problem+json", True),
        ("application/vnd.oai.openapi+json", True),
        ("text/html; charset=utf-8", True),
        ("text/javascript", True),
        ("image/png", False),
        ("application/octet-stream", False),
        ("", False),
    ],
)
def test_what_is_compressed(content_type: str, expected: bool) -> None:
    assert compressible(content_type) is expected


def test_conditions_name_either_form_of_a_tag() -> None:
    assert none_match('"abc-gzip"', '"abc"') and none_match('"abc"', '"abc"')
    assert none_match('W/"abc-gzip"', '"abc"')
    assert not none_match('"abd-gzip"', '"abc"')
    assert if_match_tags('"abc-gzip", "x"') == ['"abc"', '"x"']


async def seed_page(client: AppClient) -> None:
    """Records enough for a page of /v1/records over ``MIN_BYTES``."""
    for i in range(80):
        await client.resources.records.insert(fake_record(i, ["zebra"], 321))


async def raw_get(
    client: AppClient,
    path: str,
    headers: dict[str, str] | list[tuple[str, str]],
    params: dict[str, str] | None = None,
) -> tuple[httpx.Response, bytes]:
    """The answer and its bytes as sent, not decoded."""
    async with client.stream("GET", path, params=params, headers=headers) as response:
        return response, b"".join([chunk async for chunk in response.aiter_raw()])


async def test_a_large_page_is_gzipped_for_clients_that_accept_it(
    client: AppClient, auth: dict[str, str]
) -> None:
    await seed_page(client)
    plain, plain_bytes = await raw_get(client, "/v1/records", auth | IDENTITY, PAGE)
    assert len(plain_bytes) >= MIN_BYTES and "content-encoding" not in plain.headers
    assert "Accept-Encoding" in plain.headers["vary"]

    zipped, zipped_bytes = await raw_get(client, "/v1/records", auth | GZIP, PAGE)
    assert zipped.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["vary"]
    assert int(zipped.headers["content-length"]) == len(zipped_bytes) < len(plain_bytes) / 4
    assert gzip.decompress(zipped_bytes) == plain_bytes
    assert zipped.headers["etag"] == plain.headers["etag"][:-1] + '-gzip"'
    # The same bytes each time (no timestamp in the gzip header), so the same tag.
    again, again_bytes = await raw_get(client, "/v1/records", auth | GZIP, PAGE)
    assert again_bytes == zipped_bytes and again.headers["etag"] == zipped.headers["etag"]


async def test_accept_encoding_on_several_lines_is_one_list(
    client: AppClient, auth: dict[str, str]
) -> None:
    await seed_page(client)
    lines = [*auth.items(), ("Accept-Encoding", "br"), ("Accept-Encoding", "gzip")]
    zipped, _ = await raw_get(client, "/v1/records", lines, PAGE)
    assert zipped.headers["content-encoding"] == "gzip"
    # Refused on one line, it stays refused whatever a wildcard on another says.
    lines = [*auth.items(), ("Accept-Encoding", "gzip;q=0"), ("Accept-Encoding", "*")]
    plain, _ = await raw_get(client, "/v1/records", lines, PAGE)
    assert "content-encoding" not in plain.headers

    head = await client.head("/v1/records", params=PAGE, headers=auth | GZIP)
    assert head.headers["content-encoding"] == "gzip"
    assert head.headers["content-length"] == zipped.headers["content-length"]
    assert head.content == b""


async def test_either_tag_revalidates_either_form(client: AppClient, auth: dict[str, str]) -> None:
    await seed_page(client)
    plain_tag = (await raw_get(client, "/v1/records", auth | IDENTITY, PAGE))[0].headers["etag"]
    gzip_tag = (await raw_get(client, "/v1/records", auth | GZIP, PAGE))[0].headers["etag"]
    cases: list[tuple[dict[str, str], str, str]] = [
        (GZIP, gzip_tag, gzip_tag),  # a 304 names the copy the client holds
        (GZIP, plain_tag, plain_tag),
        (IDENTITY, gzip_tag, plain_tag),
        (IDENTITY, plain_tag, plain_tag),
    ]
    for coding, held, answered in cases:
        response = await client.get(
            "/v1/records", params=PAGE, headers=auth | coding | {"If-None-Match": held}
        )
        assert response.status_code == 304, (coding, held)
        assert response.headers["etag"] == answered
        assert "Accept-Encoding" in response.headers["vary"]


async def test_small_answers_go_as_they_are(client: AppClient, auth: dict[str, str]) -> None:
    record = fake_record(1, ["cat"], 300)
    await client.resources.records.insert(record)
    response, body = await raw_get(client, f"/v1/records/{record['_id']}", auth | GZIP)
    assert response.status_code == 200 and len(body) < MIN_BYTES
    assert "content-encoding" not in response.headers
    assert "Accept-Encoding" in response.headers["vary"]
    assert not response.headers["etag"].endswith('-gzip"')


async def test_a_problem_is_not_gzipped_when_small(client: AppClient) -> None:
    response, body = await raw_get(client, "/v1/records", GZIP)
    assert response.status_code == 401 and "content-encoding" not in response.headers
    assert json.loads(body)["status"] == 401


async def test_gzip_can_be_turned_off(
    make_settings: Callable[..., Settings], auth: dict[str, str]
) -> None:
    """Behind a reverse proxy that compresses, or where page sizes must tell nothing."""
    async with running(make_settings(gzip=False)) as client:
        await seed_page(client)
        response, body = await raw_get(client, "/v1/records", auth | GZIP, PAGE)
        assert response.status_code == 200 and len(body) >= MIN_BYTES
        assert "content-encoding" not in response.headers
        assert not response.headers["etag"].endswith('-gzip"')
