"""Dependency providers shared by the controllers."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency

from service.errors import DatabaseUnavailable, ServiceUnavailable, Starting
from service.lifespan import Resources
from service.store.records import ping, unreached

ResourcesDep = NamedDependency[Resources]


def provide_resources(state: State) -> Resources:
    resources: Resources = state.resources
    return resources


def provide_ready_resources(state: State) -> Resources:
    """Resources for endpoints that write: refused until the database indexes exist."""
    resources = provide_resources(state)
    require_indexes(resources)
    return resources


def require_indexes(resources: Resources) -> None:
    """Nothing once the indexes exist; until then, why not, as the last attempt to make them
    found: they could not be made (until someone acts: duplicate hashes in imported records),
    the database did not answer (or the driver reaches no server: a first attempt may still
    be waiting for one), or they are being made (every start). Only the second is the
    database's to blame."""
    if resources.indexes_ready.is_set():
        return
    if resources.index_error is not None:
        raise ServiceUnavailable(
            f"creating the database indexes failed: {resources.index_error}",
            retry_after=2,
            extra={"database": "indexes"},
        )
    if resources.database_unanswered or unreached(resources.database):
        raise _not_answering()
    raise Starting(
        "the database indexes are being created", retry_after=1, extra={"database": "indexes"}
    )


async def require_answering(resources: Resources) -> None:
    """Refused unless the database answers a ping now."""
    if not await ping(resources.database):
        raise _not_answering()


def _not_answering() -> DatabaseUnavailable:
    return DatabaseUnavailable(
        "the database is not answering", retry_after=2, extra={"database": "unavailable"}
    )
