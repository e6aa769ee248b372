"""Headers on every HTTP response of a route: security headers, and the rate-limit fields.

API responses are data, never documents: no sniffing, no framing, no referrer, nothing
cached by shared caches. The interactive docs page is a document: it may run its own scripts
and styles (from this origin only, none inline) and call this origin ("Try it out"), and
nothing else.

A request metered against limits (a key's rate and daily quota, or the per-client rate of
open labeling) is told where it stands in ``RateLimit-Policy`` and ``RateLimit``, its 429 too,
so that clients can pace themselves instead of running into refusals.
"""

from __future__ import annotations

from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
)
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service import request_ids
from service.auth import RATE_LIMITS
from service.ratelimit import rate_limit_fields

COMMON = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
API_ONLY = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}
DOCS_ONLY = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}
DOCS_PREFIX = "/docs"


def field_value(headers: Headers, name: str) -> str:
    """A request header field's value, its lines (if several) joined into one list as
    RFC 9110 section 5.3 reads them; "" when it is absent."""
    return ", ".join(headers.getall(name, []))


def security_headers(path: str) -> dict[str, str]:
    """The headers for a response to ``path``."""
    return COMMON | (DOCS_ONLY if path.startswith(DOCS_PREFIX) else API_ONLY)


def response_headers_middleware(app: ASGIApp) -> ASGIApp:
    """Adds the security headers, and the rate-limit fields of a metered request, to every
    response of a route. The router answers unknown paths (404) and methods (405) before any
    route runs, so error responses carry the security headers too (``problem``)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        security = security_headers(scope["path"])

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                standing = scope["state"].get(RATE_LIMITS)
                limits = rate_limit_fields(standing()) if standing is not None else {}
                for name, value in (security | limits).items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await app(scope, receive, with_headers)

    return wrapped


# Headers of error answers, by status: when to retry, and how to authenticate.
PROBLEM_HEADERS = {
    429: "Retry-After",
    503: "Retry-After",
    401: "WWW-Authenticate",
}
PROBLEM_HEADER_TEXT = {
    "Retry-After": "Seconds to wait before sending the request again",
    "WWW-Authenticate": 'The scheme the API takes: `ApiKey header="X-API-Key"`',
}
REQUEST_ID_TEXT = (
    "The request's id, also at the end of every log line about it: the request's own"
    f" {request_ids.HEADER} when that is 1 to {request_ids.MAX_LENGTH} of"
    f" {request_ids.ALLOWED}, else a new UUID"
)
RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": "The limits this request was metered against: a quoted name (rate,"
    " daily, client_rate) with q, the requests allowed, and w, their window in seconds, e.g."
    ' `"rate";q=20;w=1, "daily";q=100000;w=86400`',
    "RateLimit": "Where each stands: r requests left, all back in t seconds,"
    ' e.g. `"rate";r=19;t=1`',
}


def document_response_headers(schema: OpenAPI) -> None:
    """Document the headers answers carry, each by reference to its one description: the
    request id on every answer, the rate-limit fields on every answer of an operation
    metered against limits (the ones an API key can be sent to), ``Retry-After`` on its 429s
    and 503s, ``WWW-Authenticate`` on its 401s."""
    components = schema.components if isinstance(schema.components, Components) else None
    if components is None:
        return
    components.headers = {
        **(components.headers or {}),
        **{
            name: OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description=text)
            for name, text in (
                RATE_LIMIT_HEADERS | PROBLEM_HEADER_TEXT | {request_ids.HEADER: REQUEST_ID_TEXT}
            ).items()
        },
    }

    def refs(*names: str) -> dict[str, OpenAPIHeader | Reference]:
        return {name: Reference(ref=f"#/components/headers/{name}") for name in names}

    for path in (schema.paths or {}).values():
        for operation in (path.get, path.post, path.put, path.patch, path.delete):
            if operation is None:
                continue
            metered = any("ApiKey" in s for s in operation.security or [])
            for status, response in (operation.responses or {}).items():
                if not isinstance(response, OpenAPIResponse):
                    continue
                extra = refs(request_ids.HEADER)
                if metered:
                    extra |= refs(*RATE_LIMIT_HEADERS)
                if int(status) in PROBLEM_HEADERS:
                    extra |= refs(PROBLEM_HEADERS[int(status)])
                response.headers = {**(response.headers or {}), **extra}
