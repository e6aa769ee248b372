"""Endpoints for API-key holders: ``GET /v1/records``, ``GET /get-labeled-data``,
``GET /v1/records/{id}``, ``GET /v1/records/{id}/similar`` and ``DELETE /v1/records/{id}``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, delete, get
from litestar.di import Provide
from litestar.params import FromPath, HeaderParameter, QueryParameter

from service import deletion
from service.api.conditional import (
    CONDITIONAL,
    IF_MATCH_TEXT,
    IF_NONE_MATCH_DELETE_TEXT,
    header_of,
    write_precondition,
)
from service.api.deps import ResourcesDep, provide_resources
from service.api.problems import problem_responses
from service.api.schemas import (
    ProjectedRecordPage,
    RecordPage,
    SimilarPage,
    SimilarRecord,
    StoredSimilarPage,
)
from service.auth import principal_of, requires
from service.domain.records import Record, StoredDocument, as_records
from service.lifespan import Resources
from service.query.filters import parse_filter
from service.query.hints import add_index_hints
from service.query.pages import Budget, Page, PageRequest, record_page, similar_page
from service.query.paging import MAX_CURSOR_LENGTH, SORTABLE, SortOrder, parse_fields, parse_sort
from service.query.similar import DEFAULT_DISTANCE, MAX_DISTANCE
from service.store.ids import with_id_aliases

DEPENDENCIES = {"resources": Provide(provide_resources, sync_to_thread=False)}
QUERY_PROBLEMS = problem_responses(400, 401, 403, 429, 503)
MAX_PER_PAGE = 100

Query = Annotated[
    str | None,
    QueryParameter(
        description='A MongoDB filter as JSON, e.g. {"classes": "cat", "width": {"$gt": 100}}',
        max_length=8_192,
    ),
]
PageNumber = Annotated[
    int, QueryParameter(ge=1, le=1_000_000, description="1-based page number (offset paging)")
]
PerPage = Annotated[
    int | None, QueryParameter(ge=1, le=MAX_PER_PAGE, description="records per page (25)")
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        description="next_cursor of the previous page: keyset paging for walks and exports",
        max_length=MAX_CURSOR_LENGTH,
    ),
]
Sort = Annotated[
    str | None,
    QueryParameter(
        description=f"one of {', '.join(SORTABLE)}; a leading '-' sorts descending. Ties"
        " are broken by _id in the same direction (default: _id ascending)",
        max_length=64,
    ),
]
Fields = Annotated[
    str | None,
    QueryParameter(
        description="comma-separated fields to return (dotted paths allowed); _id always",
        max_length=2_000,
    ),
]
Cutoff = Annotated[
    int, QueryParameter(ge=0, le=MAX_DISTANCE, description="largest pHash distance, in bits")
]


def budget(resources: Resources) -> Budget:
    settings = resources.settings
    return Budget(
        query_ms=settings.query_max_time_ms,
        count_ms=min(settings.count_max_time_ms, settings.query_max_time_ms),
    )


def page_request(
    resources: Resources,
    q: str | None,
    page: int,
    per_page: int | None,
    cursor: str | None,
    fields: str | None,
    order: SortOrder,
) -> PageRequest:
    return PageRequest(
        filter=add_index_hints(with_id_aliases(parse_filter(q))),
        order=order,
        per_page=per_page or resources.settings.page_size,
        page=page,
        cursor=cursor,
        projection=parse_fields(fields),
    )


def wire_page(result: Page, request: PageRequest) -> RecordPage | ProjectedRecordPage:
    info: dict[str, Any] = {
        "length": result.length,
        "length_is_estimate": result.length_is_estimate,
        "page": result.page,
        "per_page": request.per_page,
        "next_cursor": result.next_cursor,
    }
    records = None if request.projection is not None else as_records(result.documents, Record)
    if records is None:  # projected, or holding a record stored in an older shape
        return ProjectedRecordPage(output=result.documents, **info)
    return RecordPage(output=records, **info)


async def find_records(
    resources: Resources,
    q: str | None,
    page: int,
    per_page: int | None,
    cursor: str | None,
    sort: str | None,
    fields: str | None,
) -> RecordPage | ProjectedRecordPage:
    request = page_request(resources, q, page, per_page, cursor, fields, parse_sort(sort))
    return wire_page(await record_page(resources.records, request, budget(resources)), request)


@get(
    "/v1/records",
    dependencies=DEPENDENCIES,
    guards=[requires("read")],
    opt=CONDITIONAL,
    summary="Query stored records with a MongoDB filter, by page or by cursor",
    description=(
        "Offset paging with page/per_page, or keyset paging: pass each response's"
        " next_cursor as cursor until it is null; a cursor walk returns every record that"
        " existed when it started (and was not deleted meanwhile) exactly once, whatever is"
        " inserted meanwhile."
    ),
    tags=["records"],
    security=[{"ApiKey": []}],
    responses=QUERY_PROBLEMS,
)
async def list_records(
    resources: ResourcesDep,
    q: Query = None,
    page: PageNumber = 1,
    per_page: PerPage = None,
    cursor: Cursor = None,
    sort: Sort = None,
    fields: Fields = None,
) -> RecordPage | ProjectedRecordPage:
    return await find_records(resources, q, page, per_page, cursor, sort, fields)


@get(
    "/get-labeled-data",
    dependencies=DEPENDENCIES,
    guards=[requires("read")],
    opt=CONDITIONAL,
    summary="Cortex-compatible query: the same as GET /v1/records",
    tags=["compatibility"],
    security=[{"ApiKey": []}],
    responses=QUERY_PROBLEMS,
)
async def get_labeled_data(
    resources: ResourcesDep,
    q: Query = None,
    page: PageNumber = 1,
    per_page: PerPage = None,
    cursor: Cursor = None,
    sort: Sort = None,
    fields: Fields = None,
) -> RecordPage | ProjectedRecordPage:
    return await find_records(resources, q, page, per_page, cursor, sort, fields)


@get(
    "/v1/records/{record_id:str}",
    dependencies=DEPENDENCIES,
    guards=[requires("read")],
    opt=CONDITIONAL,
    summary="One stored record by id",
    tags=["records"],
    security=[{"ApiKey": []}],
    responses=problem_responses(400, 401, 403, 404, 429, 503),
)
async def get_record(resources: ResourcesDep, record_id: FromPath[str]) -> Record | StoredDocument:
    return await resources.pipeline.get(record_id)


@delete(
    "/v1/records/{record_id:str}",
    dependencies=DEPENDENCIES,
    guards=[requires("delete")],
    summary="Delete a stored record",
    description=(
        "Removes the record for good (journaled before the answer). The same bytes, POSTed"
        " again, are labeled afresh under a new id. Needs a key with the delete scope. With"
        " If-Match, only while the record is still the version with that ETag: 412 when it"
        " was relabeled or given another URL since. With If-None-Match, only while it is none"
        " of the versions named (* names any): 412 otherwise."
    ),
    tags=["records"],
    security=[{"ApiKey": []}],
    responses=problem_responses(400, 401, 403, 404, 412, 429, 503),
)
async def delete_record(
    request: Request[Any, Any, Any],
    resources: ResourcesDep,
    record_id: FromPath[str],
    if_match: Annotated[
        str | None, HeaderParameter(name="If-Match", description=IF_MATCH_TEXT)
    ] = None,
    if_none_match: Annotated[
        str | None, HeaderParameter(name="If-None-Match", description=IF_NONE_MATCH_DELETE_TEXT)
    ] = None,
) -> None:
    principal = principal_of(request)
    assert principal is not None  # the guard admitted a key with the delete scope
    # The fields as sent, on one line or several (the parameters document them).
    precondition = write_precondition(
        header_of(request.headers, "if-match"),
        header_of(request.headers, "if-none-match"),
        request.route_handler.default_serializer,
    )
    await deletion.delete_record(
        resources.records,
        resources.metrics,
        record_id,
        key=principal.name,
        precondition=precondition,
    )


@get(
    "/v1/records/{record_id:str}/similar",
    dependencies=DEPENDENCIES,
    guards=[requires("read")],
    opt=CONDITIONAL,
    summary="Near-duplicates of a record by perceptual hash, nearest first",
    description=(
        "Records whose image_properties.phash is within max_distance bits of this record's"
        " (every one of them: the band index is probed to that distance). 409 when the"
        " record has no pHash."
    ),
    tags=["records"],
    security=[{"ApiKey": []}],
    responses=problem_responses(400, 401, 403, 404, 409, 429, 503),
)
async def similar_records(
    resources: ResourcesDep,
    record_id: FromPath[str],
    max_distance: Cutoff = DEFAULT_DISTANCE,
    page: PageNumber = 1,
    per_page: PerPage = None,
) -> SimilarPage | StoredSimilarPage:
    size = per_page or resources.settings.page_size
    result = await similar_page(
        resources.records, record_id, max_distance, page, size, budget(resources)
    )
    documents = [{**d, "distance": distance} for d, distance in result.matches]
    info: dict[str, Any] = {
        "length": result.length,
        "page": page,
        "per_page": size,
        "max_distance": max_distance,
    }
    records = as_records(documents, SimilarRecord)
    if records is None:  # one is stored in an older shape
        return StoredSimilarPage(output=documents, **info)
    return SimilarPage(output=records, **info)
