"""Labeling endpoints: ``POST /v1/labels``, its batch form ``POST /v1/labels/batch``, and the
Cortex-compatible ``POST /upload`` (images sent as the body: ``service.api.image_upload``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post
from litestar.connection import ASGIConnection
from litestar.datastructures import ResponseHeader
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import SecurityRequirement
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.api.deps import ResourcesDep, provide_ready_resources
from service.api.problems import (
    NO_BODY,
    TYPE_BASE,
    item_problem,
    problem_responses,
)
from service.api.schemas import (
    RECORD_AS_SERVED,
    BatchLabelRequest,
    BatchLabelResponse,
    LabelRequest,
    UploadRequest,
)
from service.auth import KEY_HEADERS, client_address, meter_again, principal_of, requires
from service.domain.records import Record, StoredDocument
from service.errors import (
    BadRequest,
    ClientClosedRequest,
    Forbidden,
    RateLimited,
    Unauthorized,
    UnsupportedBody,
)
from service.lifespan import Resources
from service.pipeline import LabelOutcome, names_record

log = logging.getLogger(__name__)

T = TypeVar("T")
# 16 URLs of the longest length allowed, with room for JSON escapes.
BATCH_MAX_BODY_BYTES = 256 * 1024
DEPENDENCIES = {"resources": Provide(provide_ready_resources, sync_to_thread=False)}


def identity_coding(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    coding = connection.headers.get("content-encoding", "identity").strip().lower()
    if coding != "identity":
        raise UnsupportedBody(
            f"send the body without a content coding, not in {coding}",
            extra={"reason": "content_encoding"},
        )


def media_type_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_body(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Only JSON bodies: a cross-site page can make a browser send a text/plain or form body
    without asking (no CORS preflight), never a JSON one, so an open service on an internal
    network cannot be driven from a visitor's browser."""
    if connection.headers.get("content-length") == "0":
        raise BadRequest(NO_BODY)
    identity_coding(connection)
    media_type = media_type_of(connection)
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedBody(
            f"send the body as application/json, not {media_type or 'without a Content-Type'}",
            extra={"reason": "content_type"},
        )


GUARDS = [json_body, requires("label", unless_open=True)]
# A key is optional unless LABELSVC_LABELING_REQUIRES_KEY is set; one that is sent is checked.
SECURITY: list[SecurityRequirement] = [{}, {"ApiKey": []}]
PROBLEMS = problem_responses(400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504)
LOCATION = [
    ResponseHeader(
        name="Location", description="The new record (201 only)", documentation_only=True
    )
]


def labeled_responses(
    labeled_before: str, problems: dict[int, ResponseSpec]
) -> dict[int, ResponseSpec]:
    """A labeling route's answers besides its 201: the 200 of bytes ``labeled_before``, and
    its ``problems``."""
    return {
        HTTP_200_OK: ResponseSpec(
            data_container=RECORD_AS_SERVED, description=labeled_before, generate_examples=False
        ),
        **problems,
    }


@post(
    "/v1/labels",
    dependencies=DEPENDENCIES,
    guards=GUARDS,
    status_code=HTTP_201_CREATED,
    summary="Label an image by URL, or fetch the record of one already labeled",
    description=(
        "201 with a Location header when a new record was made; 200 when the same bytes (from"
        " any URL) or the given id were already labeled. Looking a record up by id needs a key"
        " with the read scope. A caller without one who sends bytes labeled before sees only"
        " its own URL in url and urls."
    ),
    tags=["labels"],
    security=SECURITY,
    responses=labeled_responses("The bytes or the id were labeled before", PROBLEMS),
    response_headers=LOCATION,
)
async def create_label(
    data: JSONBody[LabelRequest], resources: ResourcesDep, request: Request[Any, Any, Any]
) -> Response[Record | StoredDocument]:
    outcome, record = await label_request(data, request, resources)
    return labeled(outcome, record)


def labeled(outcome: LabelOutcome, record: Record | StoredDocument) -> Response[Any]:
    """201 with the new record's Location, or 200 with the one stored before."""
    if not outcome.created:
        return Response(record, status_code=HTTP_200_OK)
    return Response(
        record,
        status_code=HTTP_201_CREATED,
        headers={"Location": f"/v1/records/{outcome.record_id}"},
    )


@post(
    "/v1/labels/batch",
    dependencies=DEPENDENCIES,
    guards=GUARDS,
    status_code=HTTP_200_OK,
    request_max_body_size=BATCH_MAX_BODY_BYTES,
    summary="Label up to 16 images in one request",
    description=(
        "Each item is what the body of POST /v1/labels would be, and its result is what that"
        " request would have answered: status 201 or 200 with the record, or an error status"
        " with its problem (a 429 or 503 one says in retry_after when to send that item"
        " again). The items run concurrently and their results come back in their order."
        " Every item counts against the key's (or the client's) rate and daily quota."
    ),
    tags=["labels"],
    security=SECURITY,
    responses={
        HTTP_200_OK: ResponseSpec(
            data_container=BatchLabelResponse,
            description="Each item's outcome, in order",
            generate_examples=False,
        ),
        **problem_responses(400, 401, 403, 413, 415, 429, 503),
    },
)
async def label_batch(
    data: JSONBody[BatchLabelRequest], resources: ResourcesDep, request: Request[Any, Any, Any]
) -> dict[str, list[dict[str, Any]]]:
    # The guard admitted the request as its first item; the others are metered here, before
    # any runs, so that a client learns at once which of them its limits refused.
    refused: list[RateLimited | None] = [None]
    for _ in data.items[1:]:
        try:
            await meter_again(request)
        except RateLimited as exc:
            refused.append(exc)
        else:
            refused.append(None)
    downloads = sum(
        1
        for item, refusal in zip(data.items, refused, strict=True)
        if item.url is not None and item.id is None and refusal is None
    )
    with _client_share(request, resources, downloads) as share:
        slots = contextlib.nullcontext() if share is None else asyncio.Semaphore(share)

        async def result(item: LabelRequest, refusal: RateLimited | None) -> dict[str, Any]:
            if refusal is not None:
                return {"status": refusal.status, "problem": item_problem(refusal, request)}
            async with slots:
                try:
                    outcome, record = await label_request(
                        item, request, resources, slot_held=share is not None
                    )
                except Exception as exc:  # each item answers for itself, as alone it would
                    problem = item_problem(exc, request)
                    return {"status": problem["status"], "problem": problem}
            status = HTTP_201_CREATED if outcome.created else HTTP_200_OK
            return {"status": status, "record": record}

        results = await _unless_client_leaves(
            request, asyncio.gather(*map(result, data.items, refused))
        )
    for one in results:
        status = str(one["status"])
        resources.metrics.batch_items.labels(status).inc()
        if "problem" in one:
            type_ = one["problem"]["type"].removeprefix(TYPE_BASE)
            resources.metrics.problems.labels(status, type_).inc()
    return {"results": results}


@contextlib.contextmanager
def _client_share(
    request: Request[Any, Any, Any], resources: Resources, downloads: int
) -> Iterator[int | None]:
    """For a caller without a key, up to ``downloads`` of its client's free labeling slots,
    held until the request answers (a batch's items take turns in them); 429 when none is
    free. None for a caller whose key meters it, or with nothing to fetch."""
    limiter = resources.client_limiter
    if limiter is None or principal_of(request) is not None or not downloads:
        yield None
        return
    with contextlib.ExitStack() as held:
        try:
            taken = held.enter_context(limiter.sharing(client_address(request), downloads))
        except RateLimited as exc:
            resources.metrics.rejected.labels(exc.extra["reason"]).inc()
            raise
        yield taken


async def _unless_client_leaves(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """``work``'s result; cancelled (and 499) when the client disconnects first, so that a
    batch starts nothing more for nobody. Analyses already running are stored all the same.
    Cancelled with the request too (at the end of a graceful shutdown, say)."""
    running = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait([running, gone], return_when=asyncio.FIRST_COMPLETED)
        left = not running.done()
    finally:
        gone.cancel()
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running  # its items give their slots back before the batch does
    if left:
        log.info("%s: the client left; items not yet started are dropped", request.url.path)
        raise ClientClosedRequest("the client disconnected before the batch was answered")
    return running.result()


async def _disconnect(request: Request[Any, Any, Any]) -> None:
    """Returns when the client has gone: with the body read, that is all ``receive`` brings."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def label_request(
    item: LabelRequest,
    request: Request[Any, Any, Any],
    resources: Resources,
    *,
    slot_held: bool = False,
) -> tuple[LabelOutcome, Record | StoredDocument]:
    """Label one ``POST /v1/labels`` body: the outcome, and the record as this caller may
    see it. With ``slot_held``, the caller already holds a client slot for it."""
    if (item.url is None) == (item.id is None):
        raise BadRequest('give exactly one of "url" and "id"')
    pipeline = resources.pipeline
    if item.id is not None:
        require_reader(request, resources)
        outcome = await pipeline.label_id(item.id)
        return outcome, outcome.record
    url = item.url
    assert url is not None
    if slot_held:
        outcome = await pipeline.label_url(url)
    else:
        outcome = await in_client_slot(request, resources, lambda: pipeline.label_url(url))
    return outcome, shown_to(request, outcome, url)


@post(
    "/upload",
    dependencies=DEPENDENCIES,
    guards=GUARDS,
    status_code=HTTP_200_OK,
    summary="Cortex-compatible labeling: url_or_id in, the record out",
    description=(
        "An id needs a key with the read scope. A caller without one who sends bytes labeled"
        " before sees only its own URL in url and urls."
    ),
    tags=["compatibility"],
    security=SECURITY,
    responses=PROBLEMS,
)
async def upload(
    data: JSONBody[UploadRequest], resources: ResourcesDep, request: Request[Any, Any, Any]
) -> Record | StoredDocument:
    if names_record(data.url_or_id):
        require_reader(request, resources)
    url_or_id = data.url_or_id
    outcome = await in_client_slot(request, resources, lambda: resources.pipeline.label(url_or_id))
    return shown_to(request, outcome, url_or_id.strip())


async def in_client_slot(
    request: Request[Any, Any, Any],
    resources: Resources,
    labeling: Callable[[], Awaitable[LabelOutcome]],
) -> LabelOutcome:
    """Run ``labeling``; a caller without a key holds one of its client's slots meanwhile."""
    with _client_share(request, resources, 1):
        return await labeling()


def _may_read(request: Request[Any, Any, Any]) -> bool:
    principal = principal_of(request)
    return principal is not None and principal.holds("read")


def require_reader(request: Request[Any, Any, Any], resources: Resources) -> None:
    """Looking a record up by id reads stored data, which on an open service is no less
    private than through ``GET /v1/records/{id}``: the same key is needed. Refusals are
    counted as the guards count theirs: guessed record ids must show on the dashboards."""
    if _may_read(request):
        return
    metrics = resources.metrics
    principal = principal_of(request)
    if principal is None:
        metrics.auth_failures.labels("missing_key").inc()
        raise Unauthorized(
            f"looking a record up by id needs an API key with the 'read' scope, in the"
            f" {KEY_HEADERS[0]} header",
            extra={"reason": "missing_key"},
        )
    metrics.api_key_requests.labels(principal.name, "forbidden").inc()
    raise Forbidden("this API key lacks the 'read' scope, which looking a record up by id needs")


def shown_to(
    request: Request[Any, Any, Any], outcome: LabelOutcome, url: str | None
) -> Record | StoredDocument:
    """The record as this caller may see it: bytes labeled before from other URLs come back
    with only the caller's own URL (none for an upload) unless it may read records, as other
    clients' URLs can carry their access tokens or private paths."""
    record = outcome.record
    if outcome.created or _may_read(request):
        return record
    urls = [] if url is None else [url]
    if isinstance(record, Record):
        return msgspec.structs.replace(record, url=url, urls=urls)
    return {**record, "url": url, "urls": urls}
