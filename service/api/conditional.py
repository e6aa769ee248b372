"""Conditional requests (RFC 9110 section 13.1) on the routes that serve stored records.

Each such answer carries an ``ETag``: a digest of its body, so two answers have the same tag
only when they are the same bytes. A client that sends the tag of the copy it holds back in
``If-None-Match`` gets ``304 Not Modified`` and no body while the answer is unchanged: a
dashboard polling a query, or a client re-reading a record after a relabel may have changed
it, pays for the bytes only when they changed. The query still runs, and is metered as any.

The answers are ``Cache-Control: private, no-cache``: a client's own cache may keep them, but
must ask again (with the tag) before each use, so a deleted record or a revoked key is never
served from it; shared caches keep nothing.

The same tag in ``If-Match`` makes a ``DELETE`` conditional: the record goes only while it is
still the version the client read, so a client never deletes labels it has not seen.

Both fields are read on both methods, in the order of RFC 9110 section 13.2.2: an ``If-Match``
that names none of the tags gives 412; then an ``If-None-Match`` that names the tag (or is
``*``) gives 304 to a GET or HEAD, 412 to a DELETE, which is not performed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

from litestar import Request
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Parameter,
    Reference,
    Schema,
)
from litestar.routes import BaseRoute, HTTPRoute
from litestar.serialization import encode_json
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

from service.api.compression import without_coding
from service.api.headers import field_value
from service.api.problems import EXCEPTION_HANDLERS, PROBLEM_JSON
from service.errors import BadRequest, PreconditionFailed, ServiceError

# A route handler's ``opt`` that turns conditional GET on for it.
_OPT = "conditional_get"
CONDITIONAL = {_OPT: True}
CACHE_CONTROL = "private, no-cache"
# An entity tag, weak or strong; its opaque part may hold anything but a double quote.
_ENTITY_TAG = re.compile(r'(?:W/)?"([^"]*)"')
# Not sent with a 304, which has no content (RFC 9110 section 15.4.5).
_CONTENT_HEADERS = ("content-length", "content-type", "content-encoding")

ETAG_TEXT = (
    "Names these exact bytes: send it back in If-None-Match to get 304 while they are unchanged"
)
IF_MATCH_TEXT = (
    "The ETag of the record as the client read it (GET /v1/records/{id}), or *: deleted only"
    " while it is still that version, else 412"
)
IF_NONE_MATCH_TEXT = (
    "ETags of copies the client holds (or *): when one is this answer's, 304 Not Modified"
    " and no body"
)
IF_MATCH_GET_TEXT = "ETags (or *): answered only when one is this answer's, else 412"
IF_NONE_MATCH_DELETE_TEXT = (
    "ETags (or *): deleted only while the record is none of those versions, else 412"
)
GET_PRECONDITION_FAILED = (
    "If-Match names none of this answer's ETags: it changed since the client read it"
)


def entity_tag(body: bytes) -> str:
    """A strong entity tag for ``body``: 128 bits of its SHA-256, quoted."""
    digest = hashlib.sha256(body).digest()[:16]
    return '"' + base64.urlsafe_b64encode(digest).rstrip(b"=").decode() + '"'


def none_match(header: str, tag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``tag`` (or is ``*``), compared weakly, as
    RFC 9110 asks for GET and HEAD, in either coding (``service.api.compression``). A value
    that holds no entity tag names none."""
    if header.strip() == "*":
        return True
    opaque = tag.removeprefix("W/")
    return any(f'"{without_coding(held)}"' == opaque for held in _ENTITY_TAG.findall(header))


def if_match_tags(header: str) -> list[str] | Literal["*"]:
    """The strong entity tags an ``If-Match`` value names, or ``*``, as the identity
    coding's tags (``service.api.compression``). Weak tags are left out: If-Match compares
    strongly (RFC 9110 section 13.1.1). A value that is neither ``*`` nor a list of entity
    tags is refused."""
    if header.strip() == "*":
        return "*"
    if not _ENTITY_TAG.search(header) or _ENTITY_TAG.sub("", header).strip(", \t"):
        raise BadRequest(
            "If-Match must be * or a list of quoted entity tags, such as the ETag header of"
            " GET /v1/records/{id}"
        )
    return [
        f'"{without_coding(m.group(1))}"'
        for m in _ENTITY_TAG.finditer(header)
        if not m.group(0).startswith("W/")
    ]


def write_precondition(
    if_match: str | None, if_none_match: str | None, serializer: Callable[[Any], Any]
) -> Callable[[Any], bool] | None:
    """The test of the stored value a state-changing request would act on, from its
    ``If-Match`` and ``If-None-Match`` fields (None: absent), with the value tagged as the
    GET routes answer it (JSON by ``serializer``, the route's): None without either field.

    False when If-Match names none of the value's tags; ``PreconditionFailed`` when
    If-None-Match names it, since such a request must not be performed even though nothing
    changed (RFC 9110 section 13.1.2). ``BadRequest`` at once for a malformed If-Match."""
    if if_match is None and if_none_match is None:
        return None
    tags = "*" if if_match is None else if_match_tags(if_match)

    def holds(value: Any) -> bool:
        tag = entity_tag(encode_json(value, serializer))
        if not _names(tags, tag):
            return False
        if if_none_match is not None and none_match(if_none_match, tag):
            raise PreconditionFailed(
                "If-None-Match names the record's current ETag (or is *): not performed"
            )
        return True

    return holds


def header_of(headers: Headers, name: str) -> str | None:
    """A request header field's value, its lines joined (``field_value``); None when absent."""
    return field_value(headers, name) if name in headers else None


def conditional_get(app: ASGIApp) -> ASGIApp:
    """Tags the 200 answers of GET routes marked ``CONDITIONAL``, answers 412 in place of
    those whose tag the request's ``If-Match`` does not name, and turns those whose tag its
    ``If-None-Match`` names into 304s.

    The answer's start is held until its body: a handler's answer comes in one piece. One
    that streams is passed on untagged."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        if (
            scope["type"] != ScopeType.HTTP
            or scope["method"] not in ("GET", "HEAD")
            or handler is None
            or not handler.opt.get(_OPT)
        ):
            await app(scope, receive, send)
            return
        request_headers = Headers.from_scope(scope)
        if_match = header_of(request_headers, "if-match")
        condition = field_value(request_headers, "if-none-match") or None
        held: list[HTTPResponseStartEvent] = []

        async def tagging(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                held.append(message)
                return
            if not held or message["type"] != "http.response.body":
                await send(message)
                return
            start = held.pop()
            if message.get("more_body", False):
                await send(start)
                await send(message)
                return
            tag = entity_tag(message.get("body", b""))
            if if_match is not None and (refusal := _if_match_refusal(if_match, tag)):
                await refuse(refusal)
                return
            headers = MutableScopeHeaders.from_message(start)
            headers["etag"] = tag
            headers["cache-control"] = CACHE_CONTROL
            if condition is not None and none_match(condition, tag):
                for name in _CONTENT_HEADERS:
                    del headers[name]
                start["status"] = 304
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(start)
            await send(message)

        async def refuse(exc: ServiceError) -> None:
            """The problem answer to ``exc``, in place of the handler's."""
            request: Request[Any, Any, Any] = Request(scope, receive)
            response = EXCEPTION_HANDLERS[ServiceError](request, exc)
            await response.to_asgi_response(None, request)(scope, receive, send)

        await app(scope, receive, tagging)

    return wrapped


def _if_match_refusal(header: str, tag: str) -> ServiceError | None:
    """Why an answer tagged ``tag`` is refused to a request with this ``If-Match``, if it is."""
    try:
        tags = if_match_tags(header)
    except BadRequest as exc:
        return exc
    return None if _names(tags, tag) else PreconditionFailed(GET_PRECONDITION_FAILED)


def _names(tags: list[str] | Literal["*"], tag: str) -> bool:
    """Whether an ``If-Match`` of these tags (``if_match_tags``) names ``tag``."""
    return tags == "*" or tag in tags


def conditional_paths(routes: Iterable[BaseRoute]) -> list[str]:
    """The paths whose GET answers conditional requests."""
    return [
        route.path_format
        for route in routes
        if isinstance(route, HTTPRoute)
        and any(h.opt.get(_OPT) for h in route.route_handlers if "GET" in h.http_methods)
    ]


def document_conditional_get(schema: OpenAPI, paths: Iterable[str]) -> None:
    """Document, on the GET operation of each of ``paths``, the ``If-Match`` and
    ``If-None-Match`` parameters, the ``ETag`` of its 200, its 304 and its 412."""
    components = schema.components
    assert isinstance(components, Components)
    components.headers = {
        **(components.headers or {}),
        "ETag": OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description=ETAG_TEXT),
    }
    etag: dict[str, OpenAPIHeader | Reference] = {
        "ETag": Reference(ref="#/components/headers/ETag")
    }
    for path in paths:
        operation = (schema.paths or {})[path].get
        assert operation is not None, f"{path} has no GET to document"
        operation.parameters = [
            *(operation.parameters or []),
            *(
                Parameter(
                    name=name,
                    param_in="header",
                    required=False,
                    schema=Schema(type=OpenAPIType.STRING),
                    description=text,
                )
                for name, text in (
                    ("If-Match", IF_MATCH_GET_TEXT),
                    ("If-None-Match", IF_NONE_MATCH_TEXT),
                )
            ),
        ]
        responses = operation.responses or {}
        ok = responses["200"]
        assert isinstance(ok, OpenAPIResponse)
        ok.headers = {**(ok.headers or {}), **etag}
        responses["304"] = OpenAPIResponse(
            description="Not Modified: the answer is still the one whose ETag was sent",
            headers=dict(etag),
        )
        responses["412"] = OpenAPIResponse(
            description=GET_PRECONDITION_FAILED,
            content={
                PROBLEM_JSON: OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))
            },
        )
        operation.responses = responses
