"""API-key authentication and scopes.

Keys arrive in ``X-API-Key`` (or ``X-RapidAPI-Key``, for existing clients). Secrets are
compared by digest, never logged and never echoed in errors.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.errors import Forbidden, Unauthorized
from service.store.keys import SCOPES, ApiKeyStore, hash_key

KEY_HEADERS = ("x-api-key", "x-rapidapi-key")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]


class Authenticator:
    def __init__(self, keys: ApiKeyStore, bootstrap_key: str | None) -> None:
        self._keys = keys
        self._bootstrap_hash = hash_key(bootstrap_key) if bootstrap_key else None

    async def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            raise Unauthorized(f"send an API key in the {KEY_HEADERS[0]} header")
        if self._bootstrap_hash and hmac.compare_digest(hash_key(secret), self._bootstrap_hash):
            return Principal(name="bootstrap", scopes=frozenset(SCOPES))
        document = await self._keys.find(secret)
        if document is None:
            raise Unauthorized("the API key is unknown or revoked")
        return Principal(name=document["name"], scopes=frozenset(document["scopes"]))


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    for header in KEY_HEADERS:
        if value := connection.headers.get(header):
            return value
    return None


Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def requires(scope: str, *, unless_open: bool = False) -> Guard:
    """A Litestar guard admitting keys that hold ``scope`` (or admin).

    With ``unless_open`` the check applies only when the settings say labeling needs a key.
    """

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        resources = connection.app.state.resources
        if unless_open and not resources.settings.labeling_requires_key:
            return
        authenticator: Authenticator = resources.authenticator
        principal = await authenticator.authenticate(presented_key(connection))
        if scope not in principal.scopes and "admin" not in principal.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope")
        connection.scope["state"]["principal"] = principal

    return guard
