"""Driver failures as the service's errors, and the deadline on request-path operations.

A database that is down or stops answering becomes ``DatabaseUnavailable`` (503), a read
past its time limit ``QueryTimedOut`` (503), and a query the server refuses as malformed
``InvalidQuery`` (400).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pymongo.errors import ConnectionFailure, ExecutionTimeout, OperationFailure, PyMongoError

from service.errors import DatabaseUnavailable, InvalidQuery, ServiceUnavailable

# Server errors that mean the query itself is wrong (400): BadValue, FailedToParse,
# TypeMismatch, and a regular expression the server's PCRE cannot compile.
BAD_VALUE = 2
QUERY_ERRORS = frozenset({BAD_VALUE, 9, 14, 51091})
# A result document past 16 MiB (BSONObjectTooLarge).
BSON_OBJECT_TOO_LARGE = 10334
# An update that would take a stored document past 16 MiB: MongoDB answers 17419; some
# servers answer BSONObjectTooLarge.
DOCUMENT_TOO_LARGE = frozenset({BSON_OBJECT_TOO_LARGE, 17419})


class ResultTooLarge(Exception):
    """An aggregation's result document would pass MongoDB's 16 MiB limit (a ``$facet`` of
    large records); the caller reads the same in smaller pieces."""


class QueryTimedOut(ServiceUnavailable):
    """A read ran past its time limit (503 with Retry-After)."""


def query_timeout() -> QueryTimedOut:
    return QueryTimedOut(
        "the query took longer than the server-side time limit; narrow the filter",
        retry_after=1,
        extra={"reason": "query_timeout"},
    )


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Translate driver failures into the service's errors."""
    try:
        yield
    except ExecutionTimeout:
        raise query_timeout() from None
    except ConnectionFailure:
        raise DatabaseUnavailable(
            "the database is not reachable", retry_after=2, extra={"reason": "database"}
        ) from None
    except OperationFailure as exc:
        if exc.code in QUERY_ERRORS:
            # The server's message only: its full reply holds cluster-time signatures.
            message = (exc.details or {}).get("errmsg") or "no reason given"
            raise InvalidQuery(f"the database refused the query: {message}") from None
        if exc.timeout:
            raise unresponsive() from None
        raise
    except PyMongoError as exc:
        if exc.timeout:  # the client's operation deadline (timeoutMS) passed
            raise unresponsive() from None
        raise


def unresponsive() -> DatabaseUnavailable:
    return DatabaseUnavailable(
        "the database did not answer in time", retry_after=2, extra={"reason": "database"}
    )


@asynccontextmanager
async def within(seconds: float | None) -> AsyncIterator[None]:
    """An operation on a request's path: a server that stops answering it (a held lock, a
    write concern never met) must not hold the request, and its slot, forever. The driver
    drops a connection whose call is cancelled. ``None``: no limit."""
    try:
        async with asyncio.timeout(seconds), database_errors():
            yield
    except TimeoutError:
        raise unresponsive() from None
