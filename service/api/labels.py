"""Labeling endpoints: ``POST /v1/labels`` and the Cortex-compatible ``POST /upload``."""

from __future__ import annotations

from litestar import Response, post
from litestar.di import Provide
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.api.deps import ResourcesDep, provide_ready_resources
from service.api.schemas import LabelRequest, UploadRequest
from service.auth import requires
from service.domain.records import Record
from service.errors import BadRequest

DEPENDENCIES = {"resources": Provide(provide_ready_resources, sync_to_thread=False)}
GUARDS = [requires("label", unless_open=True)]


@post(
    "/v1/labels",
    dependencies=DEPENDENCIES,
    guards=GUARDS,
    status_code=HTTP_201_CREATED,
    summary="Label an image by URL, or fetch the record of one already labeled",
    description=(
        "201 with a Location header when a new record was made; 200 when the same bytes (from"
        " any URL) or the given id were already labeled."
    ),
    tags=["labels"],
)
async def create_label(data: JSONBody[LabelRequest], resources: ResourcesDep) -> Response[Record]:
    if (data.url is None) == (data.id is None):
        raise BadRequest('give exactly one of "url" and "id"')
    pipeline = resources.pipeline
    if data.id is not None:
        return Response(await pipeline.get(data.id), status_code=HTTP_200_OK)
    assert data.url is not None
    outcome = await pipeline.label_url(data.url)
    if not outcome.created:
        return Response(outcome.record, status_code=HTTP_200_OK)
    return Response(
        outcome.record,
        status_code=HTTP_201_CREATED,
        headers={"Location": f"/v1/records/{outcome.record.id}"},
    )


@post(
    "/upload",
    dependencies=DEPENDENCIES,
    guards=GUARDS,
    status_code=HTTP_200_OK,
    summary="Cortex-compatible labeling: url_or_id in, the record out",
    tags=["compatibility"],
)
async def upload(data: JSONBody[UploadRequest], resources: ResourcesDep) -> Record:
    return (await resources.pipeline.label(data.url_or_id)).record
