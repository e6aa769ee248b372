"""The interactive API docs (``/docs/swagger``), served whole by the service itself.

Swagger UI's script and style come from the ``swagger-ui-py`` package, not a CDN: the page
works where the service has no internet (a private network, an air-gapped GPU host), and a
browser with a key in it runs no script from a third party. Each asset's URL holds the
package's version (for the service's own two files, a digest of their bytes), so browsers may
keep it for good and an upgrade gets new URLs. The page itself holds no script and no style:
Swagger UI is started by a script of the service's own, and the page's one rule is a file too,
so the page's content-security policy allows both from this origin only, none inline.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

from litestar import Request, get
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
# The service's own files, beside this module.
OWN_ASSETS = {"swagger-init.js": "text/javascript", "docs.css": "text/css"}
OWN_DIRECTORY = Path(__file__).parent / "static"
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


@cache
def own_release(name: str) -> str:
    """The release of one of the service's own files: the start of its SHA-256."""
    return hashlib.sha256((OWN_DIRECTORY / name).read_bytes()).hexdigest()[:16]


def asset_release(name: str) -> str:
    return own_release(name) if name in OWN_ASSETS else assets_release()


def asset_url(name: str) -> str:
    return f"{DOCS_PATH}{ASSETS_PATH}/{asset_release(name)}/{name}"


class SwaggerPage(SwaggerRenderPlugin):
    """Litestar's Swagger UI page, with the script that starts the UI and the page's style in
    files of their own (``OWN_ASSETS``): the document is fetched from the service, not written
    into the page."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(str(openapi_schema["info"]["title"]))
        spec = html.escape(self.get_openapi_json_route(request))
        return f"""<!DOCTYPE html>
<html>
  <head>
    <title>{title}</title>
    {self.favicon}
    <meta charset="utf-8"/>
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <link href="{self.css_url}" rel="stylesheet">
    <link href="{asset_url("docs.css")}" rel="stylesheet">
  </head>
  <body>
    <div id="swagger-container"></div>
    <script src="{self.js_url}"></script>
    <script src="{self.standalone_preset_js_url}"></script>
    <script src="{asset_url("swagger-init.js")}" data-spec="{spec}"></script>
  </body>
</html>
""".encode()


def swagger_plugin() -> SwaggerRenderPlugin:
    return SwaggerPage(
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
    """One of the docs page's files, of this release only."""
    own = name in OWN_ASSETS
    media_type = OWN_ASSETS.get(name) or ASSETS.get(name)
    if media_type is None or release != asset_release(name):
        raise NotFound(f"no docs asset {release}/{name}")
    return File(
        (OWN_DIRECTORY if own else assets_directory()) / name,
        media_type=media_type,
        content_disposition_type="inline",
        filename=name,
    )
