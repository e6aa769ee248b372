"""The one place where errors become RFC 9457 ``application/problem+json`` responses."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from http import HTTPStatus
from typing import Annotated, Any, cast
from urllib.parse import quote

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    InternalServerException,
    NotAuthorizedException,
    ValidationException,
)
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap
from msgspec import UNSET, UnsetType

from service.api.headers import security_headers
from service.errors import BadRequest, ClientClosedRequest, NotFound, ServiceError
from service.observability import Metrics
from service.repeated_logs import RepeatedLines

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://labelsvc.dev/problems/"
log = logging.getLogger(__name__)
# RFC 9110 asks a 401 to name the scheme; API keys have no registered one.
AUTHENTICATE = 'ApiKey header="X-API-Key"'
# Errors the framework raises, as (type, title): one title per type, and the service's own
# where it has the same type.
FRAMEWORK_PROBLEMS = {
    400: (BadRequest.type, BadRequest.title),
    404: (NotFound.type, NotFound.title),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("body-too-large", "Request body too large"),
}


def problem_document(
    status: int,
    type_: str,
    title: str,
    detail: str,
    instance: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The RFC 9457 body every error response of the service carries."""
    return {
        "type": TYPE_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        **(extra or {}),
    }


def problem(
    status: int,
    type_: str,
    title: str,
    detail: str,
    request: Request[Any, Any, Any],
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    body = problem_document(status, type_, title, detail, instance_of(request), extra)
    metrics: Metrics | None = request.app.state.get("metrics")
    if metrics is not None:
        metrics.problems.labels(str(status), type_).inc()
    headers = security_headers(request.url.path) | (headers or {})
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def instance_of(request: Request[Any, Any, Any]) -> str:
    """The path as the client sent it, percent-encoded: a URI reference, as RFC 9457 wants
    ``instance`` (decoded, ``/v1/records/a%3Fb`` would read as a path with a query)."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if raw else quote(request.url.path)


def item_problem(exc: Exception, request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The problem of one item of a batch, as its own request would have had it; the
    Retry-After header such a request would carry becomes the member ``retry_after``."""
    instance = instance_of(request)
    if not isinstance(exc, ServiceError):
        log.error("unhandled error on an item of %s", instance, exc_info=exc)
        return problem_document(500, "internal", "Internal error", "internal error", instance)
    if exc.status >= 500:
        _server_error(request, exc, "an item of %s", instance)
    extra = dict(exc.extra or {})
    if exc.retry_after is not None:
        extra["retry_after"] = exc.retry_after
    return problem_document(exc.status, exc.type, exc.title, exc.detail, instance, extra)


def _service_error(request: Request[Any, Any, Any], exc: ServiceError) -> Response[Any]:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = AUTHENTICATE
    if exc.status >= 500:
        _server_error(request, exc, "%s %s", request.method, request.url.path)
    return problem(
        exc.status, exc.type, exc.title, exc.detail, request, headers=headers, extra=exc.extra
    )


NO_BODY = 'the request needs a JSON body, e.g. {"url": "https://..."}'
VALIDATION_FAILED = "Validation failed for"
# How the framework reports a body it expected and did not get.
MISSING_BODY = {"message": "'data'", "key": "data", "source": "body"}
# How the framework reports a client that left while its body was being read: the client's
# doing, not an internal error.
CLIENT_LEFT = "client disconnected prematurely"


def _server_error(
    request: Request[Any, Any, Any], exc: ServiceError, where: str, *args: object
) -> None:
    """A warning for a 5xx the service answered (an info line for a routine one, such as a
    start under way), at most once a window of its kind: status, type, and whether it is
    routine (service.repeated_logs). They come in bursts."""
    write_server_error(request.app.state.repeated_lines, exc, where % args)


def write_server_error(repeats: RepeatedLines, exc: ServiceError, line: str) -> None:
    """``_server_error`` where no request is at hand: ``line`` says where it was answered."""
    if repeats.admit((exc.status, exc.type, exc.routine), line):
        log.log(_level(exc.routine), "%s -> %d %s", line, exc.status, exc.type)


def _level(routine: bool) -> int:
    return logging.INFO if routine else logging.WARNING


def log_unwritten(kind: Hashable, unwritten: int, last: str, seconds: float) -> None:
    """The line closing a window of 5xx answers of one ``kind`` (status, type, routine) not
    logged."""
    status, type_, routine = cast(tuple[int, str, bool], kind)
    log.log(
        _level(routine),
        "%d more answers %d %s in the last %g s, not logged one by one (the last: %s)",
        unwritten,
        status,
        type_,
        seconds,
        last,
    )


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Framework errors (validation, routing, body size) in the same problem shape."""
    status = exc.status_code
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra == [MISSING_BODY]:
        # A body sent chunked and empty (one with Content-Length: 0 never gets this far).
        return _service_error(request, BadRequest(NO_BODY))
    if isinstance(exc, InternalServerException) and exc.detail == CLIENT_LEFT:
        return _service_error(
            request, ClientClosedRequest("the client disconnected while sending the body")
        )
    if status >= 500:
        log.error("framework error on %s %s", request.method, request.url.path, exc_info=exc)
    if isinstance(exc, ValidationException) and exc.extra:
        extra["errors"] = exc.extra
    headers = dict(exc.headers or {})
    if isinstance(exc, NotAuthorizedException):
        status = 401
        headers["WWW-Authenticate"] = AUTHENTICATE
    detail = exc.detail if status < 500 else "internal error"
    if detail.startswith(VALIDATION_FAILED):
        # The framework's text quotes the whole request target, query and all (up to the
        # longest URL allowed): the path is enough, the errors say the rest.
        detail = f"{VALIDATION_FAILED} {request.method} {instance_of(request)}"
    type_, title = FRAMEWORK_PROBLEMS.get(status, (f"http-{status}", _title(status)))
    return problem(status, type_, title, detail, request, headers=headers, extra=extra)


def _too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    """msgspec gives up on deeply nested JSON bodies with RecursionError (at 1,000 levels on
    Python 3.11, deeper on 3.12); the request is at fault, not the service."""
    return _service_error(request, BadRequest("the JSON body is nested too deeply"))


def _not_utf8(request: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[Any]:
    """JSON is UTF-8 (RFC 8259): a body in another encoding is the client's error."""
    return _service_error(request, BadRequest(f"the JSON body is not UTF-8: {exc.reason}"))


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal", "Internal error", "internal error", request)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _member(description: str) -> Any:
    return msgspec.Meta(description=description)


class Problem(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details, with the members some problems add. A problem about a limit
    also names the limit passed: max_bytes, max_pixels, max_side, max_redirects, max_scans or
    max_url_length."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    reason: Annotated[str | UnsetType, _member("Why a fetch, an admission or a request failed")] = (
        UNSET
    )
    errors: Annotated[
        list[dict[str, Any]] | UnsetType, _member("Which parts of the request were invalid")
    ] = UNSET
    limit: Annotated[str | UnsetType, _member("The limit reached, e.g. `20/s`, `1000/day`")] = UNSET
    upstream_status: Annotated[int | UnsetType, _member("The image host's HTTP status")] = UNSET
    database: Annotated[
        str | UnsetType, _member("On `/readyz`: what of the database is not ready")
    ] = UNSET
    retry_after: Annotated[
        int | UnsetType, _member("A batch item's: the Retry-After its own request would get")
    ] = UNSET


_WHEN = {
    400: "The request is malformed or names an invalid query, sort, cursor or field",
    401: "No API key, or one that is unknown or revoked",
    403: "The API key lacks the scope this route needs",
    404: "No record has this id",
    408: "The uploaded image took too long to arrive (see Retry-After when the slot was needed)",
    409: "The record's state does not allow it: no perceptual hash to compare (similar"
    " records), or too large to take new labels (relabel=stale)",
    412: "If-Match does not name the current ETag (it changed since the client read it), or"
    " If-None-Match names it",
    413: "The request body, or the image, is larger than allowed",
    415: "The request body is not of a media type this route takes, or the bytes are not an"
    " image in a supported format",
    422: "The image is corrupt or truncated",
    429: "A rate limit or daily quota is used up (see Retry-After)",
    502: "The image host failed, refused or answered badly",
    503: "Overloaded, starting, or the database is unavailable or busy (see Retry-After;"
    " `reason`, or on /readyz `database`, says which)",
    504: "The image host did not answer in time",
}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI documentation of the problems a route may answer with."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_WHEN[status],
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in statuses
    }


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ServiceError: _service_error,
    HTTPException: _http_exception,
    RecursionError: _too_deep,
    UnicodeDecodeError: _not_utf8,
    Exception: _unexpected,
}
