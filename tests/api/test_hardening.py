"""Security headers on every response, and API keys never written to the logs."""

from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import API_KEY, CAT_PHOTO, AppClient
from tests.support.image_server import ImageServer


async def test_security_headers_on_api_and_error_responses(client: AppClient) -> None:
    for response in (
        await client.get("/healthz"),
        await client.get("/v1/records"),  # 401 problem
        await client.post("/v1/labels", json={}),  # 400 problem
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert response.headers["cache-control"] == "no-store"
    docs = await client.get("/docs/swagger")
    assert docs.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in docs.headers  # the docs page loads its scripts


async def test_api_keys_never_reach_the_logs(
    client: AppClient, image_server: ImageServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "lsk_this-is-a-wrong-key-that-must-not-be-logged"
    with caplog.at_level(logging.DEBUG):
        await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
        for key in (API_KEY, wrong):
            for header in ("X-API-Key", "X-RapidAPI-Key"):
                await client.get("/v1/records", headers={header: key})
                await client.get(
                    "/v1/records", params={"q": json.dumps({"$where": "1"})}, headers={header: key}
                )
        bodies = [(await client.get("/v1/records", headers={"X-API-Key": wrong})).text]
    assert caplog.records, "nothing was logged: the check would be empty"
    logged = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    for secret in (API_KEY, wrong):
        assert secret not in logged
        assert all(secret not in body for body in bodies)
