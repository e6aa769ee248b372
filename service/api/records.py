"""Query endpoints for API-key holders: ``GET /v1/records`` and ``GET /get-labeled-data``."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.di import Provide
from litestar.params import FromPath, QueryParameter

from service.api.deps import ResourcesDep, provide_resources
from service.api.schemas import RecordPage
from service.auth import requires
from service.domain.records import Record, record_from_document
from service.query.filters import add_index_hints, parse_filter

DEPENDENCIES = {"resources": Provide(provide_resources, sync_to_thread=False)}
MAX_PER_PAGE = 100

Query = Annotated[
    str | None,
    QueryParameter(
        description='A MongoDB filter as JSON, e.g. {"classes": "cat", "width": {"$gt": 100}}',
        max_length=8_192,
    ),
]
Page = Annotated[int, QueryParameter(ge=1, le=1_000_000, description="1-based page number")]
PerPage = Annotated[int, QueryParameter(ge=1, le=MAX_PER_PAGE, description="records per page")]


async def find_records(
    resources: ResourcesDep, q: str | None, page: int, per_page: int
) -> RecordPage:
    filt = add_index_hints(parse_filter(q))
    store = resources.records
    documents = await store.find_page(filt, skip=(page - 1) * per_page, limit=per_page)
    length = await store.count(filt)
    return RecordPage(
        output=[record_from_document(d) for d in documents],
        length=length,
        page=page,
        per_page=per_page,
    )


@get(
    "/v1/records",
    dependencies=DEPENDENCIES,
    guards=[requires("read")],
    summary="Query stored records with a MongoDB filter, 25 a page",
    tags=["records"],
    security=[{"ApiKey": []}],
)
async def list_records(
    resources: ResourcesDep, q: Query = None, page: Page = 1, per_page: PerPage = 25
) -> RecordPage:
    return await find_records(resources, q, page, per_page)


@get(
    "/get-labeled-data",
    dependencies=DEPENDENCIES,
    guards=[requires("read")],
    summary="Cortex-compatible query: the same as GET /v1/records",
    tags=["compatibility"],
    security=[{"ApiKey": []}],
)
async def get_labeled_data(
    resources: ResourcesDep, q: Query = None, page: Page = 1, per_page: PerPage = 25
) -> RecordPage:
    return await find_records(resources, q, page, per_page)


@get(
    "/v1/records/{record_id:str}",
    dependencies=DEPENDENCIES,
    guards=[requires("read")],
    summary="One stored record by id",
    tags=["records"],
    security=[{"ApiKey": []}],
)
async def get_record(resources: ResourcesDep, record_id: FromPath[str]) -> Record:
    return await resources.pipeline.get(record_id)
