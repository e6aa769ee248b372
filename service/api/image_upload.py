"""``POST /v1/labels/upload``: label an image sent as the request body itself."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from litestar import Request, Response, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from service.api.deps import ResourcesDep
from service.api.labels import (
    DEPENDENCIES,
    LOCATION,
    SECURITY,
    identity_coding,
    in_client_slot,
    labeled,
    labeled_responses,
    media_type_of,
    shown_to,
)
from service.api.problems import problem_responses
from service.auth import requires
from service.domain.records import Record, StoredDocument
from service.errors import UnsupportedBody
from service.fetch.body import Content
from service.fetch.upload import check_upload_length, receive_upload, upload_deadline


async def image_body(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Only an image's bytes as ``image/*`` or ``application/octet-stream``: neither is a
    type a cross-site page can send without a CORS preflight (see
    ``service.api.labels.json_body``)."""
    identity_coding(connection)
    media_type = media_type_of(connection)
    if not media_type.startswith("image/") and media_type != "application/octet-stream":
        raise UnsupportedBody(
            "send the image's bytes as image/* (image/jpeg, image/png, ...) or"
            f" application/octet-stream, not {media_type or 'without a Content-Type'}",
            extra={"reason": "content_type"},
        )


@dataclasses.dataclass
class _ImageBodyOperation(Operation):
    """The operation of ``POST /v1/labels/upload``: its body is read by the handler as it
    streams in, so the framework, which documents only the bodies it parses, is told of it
    here."""

    def __post_init__(self) -> None:
        binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        self.request_body = RequestBody(
            required=True,
            description=(
                "The image's bytes (JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF; the format is read"
                " from the bytes), at most LABELSVC_MAX_IMAGE_BYTES"
            ),
            content={
                media_type: OpenAPIMediaType(schema=binary)
                for media_type in ("image/*", "application/octet-stream")
            },
        )


Relabel = Annotated[
    Literal["stale"] | None,
    QueryParameter(
        description=(
            "stale: when these bytes were labeled before by other models or settings than the"
            " service uses now, label them again in place (same id) and answer with the new"
            " labels. The service keeps no image bytes, so this is how a record made from an"
            " upload gets up to date after a model change."
        )
    ),
]


@post(
    "/v1/labels/upload",
    dependencies=DEPENDENCIES,
    guards=[image_body, requires("label", unless_open=True)],
    status_code=HTTP_201_CREATED,
    operation_class=_ImageBodyOperation,
    summary="Label an image sent as the request body",
    description=(
        "For images no URL reaches. The answers are those of POST /v1/labels: 201 with a"
        " Location header for a new record, 200 when the same bytes were labeled before. A"
        " record first made from an upload has url null and urls empty until the same bytes"
        " are labeled from a URL. A caller without a key with the read scope who sends bytes"
        " labeled before gets their record without its URLs. With relabel=stale, bytes labeled"
        " before by other models or settings are labeled again in place (200), or 409 when the"
        " stored record is too large to take the new labels (an import near 16 MiB)."
    ),
    tags=["labels"],
    security=SECURITY,
    responses=labeled_responses(
        "The bytes were labeled before",
        problem_responses(400, 401, 403, 408, 409, 413, 415, 422, 429, 503),
    ),
    response_headers=LOCATION,
)
async def upload_label(
    resources: ResourcesDep, request: Request[Any, Any, Any], relabel: Relabel = None
) -> Response[Record | StoredDocument]:
    settings = resources.settings
    max_bytes, timeout = settings.max_image_bytes, settings.fetch_total_timeout
    check_upload_length(request.headers.get("content-length"), max_bytes)

    async def receive() -> Content:
        async with upload_deadline(timeout):
            return await receive_upload(request.receive, max_bytes)

    pipeline = resources.pipeline
    outcome = await in_client_slot(
        request,
        resources,
        lambda: pipeline.label_upload(receive, relabel_stale=relabel == "stale"),
    )
    return labeled(outcome, shown_to(request, outcome, None))
