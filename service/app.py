"""The composition root: ``create_app(settings)`` wires every part; nothing happens at import."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, cast

from bson import DBRef, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp, json_util
from litestar import Litestar, Response, Router
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, OpenAPI, Schema, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.types import (
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Receive,
    Scope,
    Send,
)

from service import __version__
from service.api import health, image_upload, labels, records, search
from service.api.compression import compress_responses
from service.api.conditional import (
    conditional_get,
    conditional_paths,
    document_conditional_get,
)
from service.api.docs import DOCS_PATH, docs_asset, swagger_plugin
from service.api.head import head_as_get
from service.api.headers import document_response_headers, response_headers_middleware
from service.api.problems import EXCEPTION_HANDLERS, log_unwritten
from service.api.shutdown import unavailable_when_cancelled
from service.infer.models import Models
from service.lifespan import lifespan
from service.observability import Metrics, timed_requests
from service.repeated_logs import RepeatedLines
from service.request_ids import request_ids
from service.settings import Settings

MAX_REQUEST_BODY_BYTES = 64 * 1024
ROUTES = [
    labels.create_label,
    labels.label_batch,
    image_upload.upload_label,
    labels.upload,
    records.list_records,
    records.get_labeled_data,
    records.get_record,
    records.delete_record,
    records.similar_records,
    search.search,
    health.healthz,
    health.readyz,
    health.metrics,
]


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="labelsvc",
        version=__version__,
        description=(
            "Image labeling: POST an image URL, get detections, structural attributes and a"
            " label-quality estimate, stored for querying with MongoDB filters."
        ),
        openapi_router=Router(
            path=DOCS_PATH,
            route_handlers=[docs_asset],
            after_request=_docs_not_found,
            include_in_schema=False,
        ),
        render_plugins=[swagger_plugin()],
        components=Components(
            security_schemes={
                "ApiKey": SecurityScheme(
                    type="apiKey", name="X-API-Key", security_scheme_in="header"
                ),
                RAPIDAPI_SCHEME: SecurityScheme(
                    type="apiKey",
                    name="X-RapidAPI-Key",
                    security_scheme_in="header",
                    description="The same keys, in the header RapidAPI clients send",
                ),
            }
        ),
    )


def _docs_not_found(response: Response[Any]) -> Response[Any]:
    """Unknown paths under /docs as problems like any other 404: the framework answers them
    with an HTML page of its own."""
    if response.status_code == 404:
        raise NotFoundException()
    return response


# Imported records may hold BSON types JSON lacks. An ObjectId is shown as its hex digits, the
# form the record paths accept as an id; the others in MongoDB's Extended JSON. (Binary and
# Code values are bytes and str to the encoder, which writes them as base64 and as text.)
BSON_ENCODERS: dict[Any, Callable[[Any], Any]] = {
    ObjectId: str,
    **{kind: json_util.default for kind in (Decimal128, Regex, Timestamp, MinKey, MaxKey, DBRef)},
}


RAPIDAPI_SCHEME = "RapidApiKey"


def document_key_alternative(schema: OpenAPI) -> None:
    """Wherever a key goes in ``X-API-Key``, it may go in ``X-RapidAPI-Key`` instead."""
    for path in (schema.paths or {}).values():
        for operation in (path.get, path.post, path.put, path.patch, path.delete):
            if operation is not None and {"ApiKey": []} in (operation.security or []):
                operation.security = [*(operation.security or []), {RAPIDAPI_SCHEME: []}]


def unions_as_any_of(node: object) -> None:
    """Describe every union with ``anyOf`` rather than the framework's ``oneOf``.

    A Python union means "any of". JSON Schema's ``oneOf`` demands that exactly one branch
    match, which real responses break: an integer parameter matches both ``number`` and
    ``integer``, and a page of full records also matches the page of projected ones.
    """
    if isinstance(node, Schema) and node.one_of:
        if len(node.one_of) == 1 and isinstance(node.one_of[0], Schema):
            # What is left of a union with msgspec's UNSET (an optional member): the type.
            (only,) = node.one_of
            node.one_of = None
            for f in dataclasses.fields(only):
                if getattr(node, f.name) is None:
                    setattr(node, f.name, getattr(only, f.name))
        else:
            node.any_of, node.one_of = node.one_of, None
    if dataclasses.is_dataclass(node):
        children: Iterable[object] = (getattr(node, f.name) for f in dataclasses.fields(node))
    elif isinstance(node, dict):
        children = node.values()
    elif isinstance(node, list | tuple):
        children = node
    else:
        return
    for child in children:
        unions_as_any_of(child)


class LabelingApp(Litestar):
    """The application as served. Route middleware runs only once a route matched, so these
    concerns wrap the router instead: every HTTP request gets an id (unknown paths and
    methods too) and is timed in the metrics, requests cancelled at shutdown get 503, and
    HEAD is answered as GET."""

    def __init__(self, metrics: Metrics, **config: Any) -> None:
        super().__init__(**config)
        methods = {r.path_format: r.methods for r in self.routes if isinstance(r, HTTPRoute)}
        self._http = request_ids(
            timed_requests(
                metrics,
                unavailable_when_cancelled(
                    metrics, self.state.repeated_lines, head_as_get(super().__call__, methods)
                ),
            )
        )

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope["type"] == ScopeType.HTTP:
            await self._http(cast(Scope, scope), cast(Receive, receive), cast(Send, send))
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings, models: Models | None = None) -> LabelingApp:
    """``models``: loaded beforehand (see ``open_resources``), else at startup."""
    metrics = Metrics()
    repeated_lines = RepeatedLines(log_unwritten)
    hook: Any = lifespan(settings, metrics, models)
    app = LabelingApp(
        metrics,
        route_handlers=ROUTES,
        lifespan=[hook],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            response_headers_middleware,
            *([compress_responses] if settings.gzip else []),
            conditional_get,
        ],
        openapi_config=openapi_config(),
        # Problems are counted, and their warnings written, where they are made.
        state=State({"metrics": metrics, "repeated_lines": repeated_lines}),
        # Runs after the lifespan's own shutdown, whose drain may still answer with errors.
        on_shutdown=[repeated_lines.flush],
        request_max_body_size=MAX_REQUEST_BODY_BYTES,
        type_encoders=BSON_ENCODERS,
        logging_config=None,  # configured once, by the launcher
    )
    # The document is built once, here, before it is first served.
    unions_as_any_of(app.openapi_schema)
    document_conditional_get(app.openapi_schema, conditional_paths(app.routes))
    document_response_headers(app.openapi_schema)
    document_key_alternative(app.openapi_schema)
    return app
