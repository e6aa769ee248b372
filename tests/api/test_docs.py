"""The interactive API docs: served whole by the service, and working in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Request, Route, sync_playwright

from service.api.compression import MIN_BYTES
from service.api.docs import (
    ASSETS,
    OWN_ASSETS,
    OWN_DIRECTORY,
    asset_url,
    assets_directory,
    assets_release,
    own_release,
)
from service.dbserver import LocalDatabaseServer
from tests.api.test_errors import assert_problem
from tests.conftest import API_KEY, ROOT, AppClient
from tests.support.process import live_service

ALL_ASSETS = ASSETS | OWN_ASSETS


async def test_the_docs_page_loads_nothing_from_elsewhere(client: AppClient) -> None:
    page = await client.get("/docs/swagger")
    assert page.status_code == 200
    loaded = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert sorted(loaded) == sorted(asset_url(name) for name in ALL_ASSETS)
    # No script or style written into the page: its policy allows none (test_hardening).
    assert "<style" not in page.text and "style=" not in page.text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page.text, flags=re.DOTALL)
    assert len(scripts) == 3
    assert all("src=" in attributes and not body.strip() for attributes, body in scripts)
    assert 'data-spec="/docs/openapi.json"' in page.text


async def test_the_page_starts_on_the_document_it_names(client: AppClient) -> None:
    """The starting script loads the document from the URL the page gives it."""
    page = await client.get("/docs/swagger")
    spec = re.search(r'data-spec="([^"]+)"', page.text)
    assert spec is not None
    document = await client.get(spec.group(1))
    assert document.status_code == 200
    assert document.json()["paths"].keys() == committed_document()["paths"].keys()


@pytest.mark.parametrize("name", sorted(ALL_ASSETS))
async def test_each_asset_is_served_for_good(client: AppClient, name: str) -> None:
    response = await client.get(asset_url(name))
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == ALL_ASSETS[name]
    directory = OWN_DIRECTORY if name in OWN_ASSETS else assets_directory()
    assert response.content == (directory / name).read_bytes()
    # The URL names the release, so browsers keep it until an upgrade brings new URLs.
    cache = {part.strip() for part in response.headers["cache-control"].split(",")}
    assert {"public", "immutable", "max-age=31536000"} == cache
    assert response.headers["x-content-type-options"] == "nosniff"
    if name.endswith((".js", ".css")) and len(response.content) >= MIN_BYTES:
        # Streamed from the file, gzipped on the way.
        assert response.headers["content-encoding"] == "gzip"


@pytest.mark.parametrize(
    "path",
    [
        f"/docs/assets/0.0.1/{next(iter(ASSETS))}",  # another release
        f"/docs/assets/{assets_release()}/swagger-editor-bundle.js",  # in the package, not used
        f"/docs/assets/{assets_release()}/LICENSE",
        f"/docs/assets/{assets_release()}/..%2F__init__.py",
        f"/docs/assets/{assets_release()}/swagger-init.js",  # the service's own, other release
        f"/docs/assets/{own_release('swagger-init.js')}/swagger-ui-bundle.js",
    ],
)
async def test_other_files_are_not_served(client: AppClient, path: str) -> None:
    assert_problem(await client.get(path), 404)


def chromium() -> str:
    """The browser: ``CHROMIUM_BIN``, else the distribution's (``make test`` installs it)."""
    path = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium")
    assert path, "no Chromium: set CHROMIUM_BIN, or install the distribution's chromium"
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # The sandbox needs user namespaces, which containers and root often lack.
        launched = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield launched
        launched.close()


def committed_document() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(Path(ROOT, "openapi", "openapi.json").read_text()))


def operations_documented() -> int:
    return sum(len(operations) for operations in committed_document()["paths"].values())


def test_the_docs_work_in_a_browser_without_the_internet(
    browser: Browser, db_server: LocalDatabaseServer
) -> None:
    """Every operation is listed, and "Try it out" calls the service, with no request to any
    other origin (each is refused, as on a host without internet) and nothing refused by
    the page's content-security policy or failing in its scripts."""
    settings = {"bootstrap_api_key": API_KEY, "log_level": "warning"}
    with live_service(mongodb_uri=db_server.uri, mongodb_db="docs", **settings) as (base, _):
        elsewhere: list[str] = []
        problems: list[str] = []

        def only_the_service(route: Route, request: Request) -> None:
            if request.url.startswith(base + "/"):
                route.continue_()
            else:
                elsewhere.append(request.url)
                route.abort()

        def console(message: ConsoleMessage) -> None:
            if message.type in ("error", "warning"):
                problems.append(message.text)

        context = browser.new_context()
        page = context.new_page()
        page.route("**/*", only_the_service)
        page.on("console", console)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(base + "/docs/swagger")
        page.wait_for_selector(".opblock")
        assert page.locator(".opblock").count() == operations_documented()

        healthz = page.locator(".opblock-get", has=page.locator('[data-path="/healthz"]'))
        healthz.locator(".opblock-summary").click()
        healthz.locator(".try-out__btn").click()
        healthz.locator(".execute").click()
        status = healthz.locator(".live-responses-table tr.response .response-col_status")
        status.wait_for()
        assert status.inner_text().strip() == "200"
        assert '"ok"' in healthz.locator(".live-responses-table .microlight").first.inner_text()
        context.close()

    assert elsewhere == []
    assert problems == []
