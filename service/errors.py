"""The service's exception tree.

Every failure a client can cause or observe is one of these. Each class carries the HTTP
status, a stable problem ``type`` slug and a short public ``title``; the instance carries a
public ``detail`` sentence and optional extension members. ``service.api.problems`` maps
them (and only them) to RFC 9457 ``application/problem+json`` responses, so internal detail
never leaks: anything that is not a ``ServiceError`` becomes a generic 500 and is logged.

    ServiceError
    ├── BadRequest                 400
    │   ├── InvalidQuery           400  the client's filter, sort, page or cursor
    │   └── UrlRejected            400  scheme, host, address or shape refused by the URL policy
    ├── Unauthorized               401  missing or unknown API key
    ├── Forbidden                  403  key lacks the scope
    ├── NotFound                   404
    │   └── RecordNotFound         404  unknown record id
    ├── RequestTimeout             408  an uploaded image's bytes came too slowly
    ├── RecordTooLarge             409  the stored record cannot take new labels (16 MiB)
    ├── PreconditionFailed         412  If-Match names no current version, If-None-Match one
    ├── PayloadTooLarge            413  image over the byte cap (download or upload) or pixel cap
    ├── UnsupportedMediaType       415  the bytes are not an image format we decode
    ├── UnsupportedBody            415  a request body of a media type or coding not taken there
    ├── UnprocessableImage         422  an image format we know, but broken (truncated, corrupt)
    ├── RateLimited                429  per-key or per-client limits (Retry-After)
    ├── ClientClosedRequest        499  the client left first (for the metrics: nobody reads it)
    ├── UpstreamError              502  the image host failed: connect error, bad status, loops
    ├── ServiceUnavailable         503  overloaded, not ready, database down (Retry-After)
    │   ├── Overloaded             503
    │   ├── DatabaseUnavailable    503
    │   └── Starting               503  /readyz while a start is still under way
    └── UpstreamTimeout            504  the image host was too slow
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of every error the API reports to clients."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"
    # A 5xx that is part of normal running (a start under way): logged at INFO, not WARNING.
    routine: ClassVar[bool] = False

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.extra: dict[str, Any] = dict(extra or {})


class BadRequest(ServiceError):
    status = 400
    type = "bad-request"
    title = "Bad request"


class InvalidQuery(BadRequest):
    type = "invalid-query"
    title = "Invalid query"


class UrlRejected(BadRequest):
    type = "url-rejected"
    title = "URL not allowed"


class Unauthorized(ServiceError):
    status = 401
    type = "unauthorized"
    title = "Missing or invalid API key"


class Forbidden(ServiceError):
    status = 403
    type = "forbidden"
    title = "API key lacks the required scope"


class NotFound(ServiceError):
    status = 404
    type = "not-found"
    title = "Not found"


class RecordNotFound(NotFound):
    type = "record-not-found"
    title = "No record with this id"


class RequestTimeout(ServiceError):
    status = 408
    type = "request-timeout"
    title = "The upload took too long"


class RecordTooLarge(ServiceError):
    status = 409
    type = "record-too-large"
    title = "The stored record cannot hold the new labels"


class PreconditionFailed(ServiceError):
    status = 412
    type = "precondition-failed"
    title = "The record is not the version the client holds"


class PayloadTooLarge(ServiceError):
    status = 413
    type = "too-large"
    title = "Image too large"


class UnsupportedMediaType(ServiceError):
    status = 415
    type = "not-an-image"
    title = "Not an image"


class UnsupportedBody(ServiceError):
    status = 415
    type = "unsupported-body"
    title = "Request body of a media type or coding this route does not take"


class UnprocessableImage(ServiceError):
    status = 422
    type = "broken-image"
    title = "Image could not be decoded"


class RateLimited(ServiceError):
    status = 429
    type = "rate-limited"
    title = "Too many requests"


class ClientClosedRequest(ServiceError):
    """Not an answer anyone reads: what a request whose client disconnected is recorded as
    (nginx's 499) in the HTTP metrics, so that the work given up on shows there."""

    status = 499
    type = "client-closed-request"
    title = "Client closed request"


class UpstreamError(ServiceError):
    status = 502
    type = "upstream-error"
    title = "Fetching the image failed"


class ServiceUnavailable(ServiceError):
    status = 503
    type = "unavailable"
    title = "Service unavailable"


class Overloaded(ServiceUnavailable):
    type = "overloaded"
    title = "Service overloaded, retry later"


class Starting(ServiceUnavailable):
    """Not ready because the start is still under way: what readiness probes are for, so the
    answer is logged at INFO, not as a server error. Same problem type as its parent."""

    routine = True


class DatabaseUnavailable(ServiceUnavailable):
    type = "database-unavailable"
    title = "Database unavailable"


class UpstreamTimeout(ServiceError):
    status = 504
    type = "upstream-timeout"
    title = "Fetching the image timed out"
