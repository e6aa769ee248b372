"""Fuzz every operation of the committed OpenAPI document against the running service.

No response may be a server error other than the deliberate 502/503/504, and every error is
problem+json. The service may only fetch from 127.0.0.1, so generated URLs never leave the
machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.dbserver import LocalDatabaseServer
from tests.conftest import API_KEY, ROOT
from tests.support.images import encode
from tests.support.process import live_service

DELIBERATE = {502, 503, 504}
CONTRACT = [status_code_conformance, content_type_conformance, response_schema_conformance]
HTTP_PARSER_REFUSAL = "Invalid HTTP request received."
seen: dict[str, int] = {"cases": 0, "server_errors": 0}


@pytest.fixture(scope="module")
def live_base(db_server: LocalDatabaseServer) -> Iterator[str]:
    with live_service(
        mongodb_uri=db_server.uri,
        mongodb_db="fuzz",
        allow_private_urls="1",
        fetch_allowed_hosts="127.0.0.1",
        fetch_total_timeout="3",
        bootstrap_api_key=API_KEY,
        log_level="warning",
    ) as (base, _):
        yield base
    print(f"\nschemathesis: {seen['cases']} cases, {seen['server_errors']} server errors")


def _tiny(fmt: str) -> bytes:
    return encode(Image.new("RGB", (48, 32), (200, 120, 40)), fmt)


# Uploads: small images of each kind the service reads, the same cut short, and any bytes.
_IMAGES = [_tiny(fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP")]
schemathesis.openapi.media_type(
    "image/*",
    st.one_of(
        st.sampled_from(_IMAGES),
        st.sampled_from(_IMAGES).map(lambda data: data[: len(data) // 2]),
        st.binary(max_size=512),
    ),
    aliases=["application/octet-stream"],
)
schema = schemathesis.openapi.from_path(ROOT / "openapi" / "openapi.json")


@schema.parametrize()
@settings(max_examples=40)  # and the "reproducible" profile (tests/conftest.py)
def test_no_undeliberate_server_errors(case: schemathesis.Case, live_base: str) -> None:
    response = case.call(base_url=live_base, headers={"X-API-Key": API_KEY}, timeout=30)
    seen["cases"] += 1
    if response.status_code >= 500 and response.status_code not in DELIBERATE:
        seen["server_errors"] += 1
    assert response.status_code < 500 or response.status_code in DELIBERATE, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
    if response.status_code == 400 and response.text == HTTP_PARSER_REFUSAL:
        return  # malformed HTTP, refused by the server's parser before the app saw it
    if response.status_code >= 400:
        headers = {k.lower(): v for k, v in response.headers.items()}
        assert headers["content-type"][0].startswith("application/problem+json"), headers
    # The committed document is the contract: each status is documented for its operation,
    # with its media type, and the body matches the documented schema.
    case.validate_response(response, checks=CONTRACT)
