"""``GET /v1/search``: keyword search over class names, tags and captions."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.params import QueryParameter

from service.api.conditional import CONDITIONAL
from service.api.deps import ResourcesDep
from service.api.records import (
    DEPENDENCIES,
    QUERY_PROBLEMS,
    Cursor,
    Fields,
    PageNumber,
    PerPage,
    Query,
    budget,
    page_request,
    wire_page,
)
from service.api.schemas import ProjectedRecordPage, RecordPage
from service.auth import requires
from service.query.pages import search_page
from service.query.paging import BY_SCORE

Text = Annotated[
    str,
    QueryParameter(
        description="words to find, e.g. 'dogs on a sofa' (case, plurals and stop words ignored)",
        min_length=1,
        max_length=500,
    ),
]


@get(
    "/v1/search",
    dependencies=DEPENDENCIES,
    guards=[requires("read")],
    opt=CONDITIONAL,
    summary="Search records by words in their class names, tags and captions",
    description=(
        "Records holding any of the words, those holding the most first (then newest first);"
        " combine with a MongoDB filter in q. Paged like GET /v1/records: page/per_page or"
        " cursor/next_cursor."
    ),
    tags=["records"],
    security=[{"ApiKey": []}],
    responses=QUERY_PROBLEMS,
)
async def search(
    resources: ResourcesDep,
    text: Text,
    q: Query = None,
    page: PageNumber = 1,
    per_page: PerPage = None,
    cursor: Cursor = None,
    fields: Fields = None,
) -> RecordPage | ProjectedRecordPage:
    request = page_request(resources, q, page, per_page, cursor, fields, BY_SCORE)
    result = await search_page(resources.records, text, request, budget(resources))
    return wire_page(result, request)
