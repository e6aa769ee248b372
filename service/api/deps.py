"""Dependency providers shared by the controllers."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency

from service.errors import DatabaseUnavailable
from service.lifespan import Resources

ResourcesDep = NamedDependency[Resources]


def provide_resources(state: State) -> Resources:
    resources: Resources = state.resources
    return resources


def provide_ready_resources(state: State) -> Resources:
    """Resources for endpoints that write: refused until the database indexes exist."""
    resources = provide_resources(state)
    if not resources.indexes_ready.is_set():
        raise DatabaseUnavailable(
            "the database is not ready yet", retry_after=2, extra={"reason": "database"}
        )
    return resources
