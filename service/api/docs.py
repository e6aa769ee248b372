"""The interactive API docs (``/docs/swagger``), served whole by the service itself.

Swagger UI's script and style come from the ``swagger-ui-py`` package, not a CDN: the page
works where the service has no internet (a private network, an air-gapped GPU host), and a
browser with a key in it runs no script from a third party. Each asset's URL holds the
package's version, so browsers may keep it for good and an upgrade gets new URLs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from functools import cache
from pathlib import Path

from litestar import get
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import FromPath
from litestar.response import File

from service.errors import NotFound

DOCS_PATH = "/docs"
ASSETS_PATH = "/assets"
SWAGGER_PACKAGE = "swagger-ui-py"
# The files the page loads, by the media type each is served as.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
IMMUTABLE = CacheControlHeader(public=True, max_age=365 * 24 * 3600, immutable=True)


@cache
def assets_directory() -> Path:
    """Where the installed package keeps Swagger UI's files (found without importing it: the
    package's own code, for other frameworks, is not used)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {SWAGGER_PACKAGE} package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@cache
def assets_release() -> str:
    return importlib.metadata.version(SWAGGER_PACKAGE)


def asset_url(name: str) -> str:
    return f"{DOCS_PATH}{ASSETS_PATH}/{assets_release()}/{name}"


def swagger_plugin() -> SwaggerRenderPlugin:
    return SwaggerRenderPlugin(
        js_url=asset_url("swagger-ui-bundle.js"),
        css_url=asset_url("swagger-ui.css"),
        standalone_preset_js_url=asset_url("swagger-ui-standalone-preset.js"),
        favicon=f"<link rel='icon' type='image/png' href='{asset_url('favicon-32x32.png')}'>",
    )


@get(
    f"{ASSETS_PATH}/{{release:str}}/{{name:str}}",
    include_in_schema=False,
    cache_control=IMMUTABLE,
    sync_to_thread=False,
)
def docs_asset(release: FromPath[str], name: FromPath[str]) -> File:
    """One of Swagger UI's files, of this release only."""
    media_type = ASSETS.get(name)
    if release != assets_release() or media_type is None:
        raise NotFound(f"no docs asset {release}/{name}")
    return File(
        assets_directory() / name,
        media_type=media_type,
        content_disposition_type="inline",
        filename=name,
    )
