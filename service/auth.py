"""API-key authentication, scopes and per-key limits.

Keys arrive in ``X-API-Key`` (or ``X-RapidAPI-Key``, for existing clients). Secrets are
compared by digest, never logged and never echoed in errors; metrics and logs name a key
by its name only. Lookups are cached for ``KEY_CACHE_SECONDS``, so a key revoked from the
command line stops working within that time.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.address_limits import FailedKeyLimiter
from service.errors import Forbidden, RateLimited, Unauthorized
from service.ratelimit import Limiter, Limits
from service.store.keys import BOOTSTRAP_NAME, SCOPES, ApiKeyStore, hash_key, limits_of

KEY_HEADERS = ("x-api-key", "x-rapidapi-key")
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_SIZE = 10_000
ADMIN_HOLDS = frozenset({"read", "label"})
UNLIMITED = Limits()


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]
    limits: Limits = UNLIMITED

    def holds(self, scope: str) -> bool:
        """``admin`` holds ``read`` and ``label``; ``delete``, which destroys data, is held
        only where granted by name (admin keys made before it existed do not gain it)."""
        return scope in self.scopes or ("admin" in self.scopes and scope in ADMIN_HOLDS)


class Authenticator:
    def __init__(
        self,
        keys: ApiKeyStore,
        bootstrap_key: str | None,
        *,
        limiter: Limiter | None = None,
        failures: FailedKeyLimiter | None = None,
    ) -> None:
        self._keys = keys
        self._bootstrap_hash = hash_key(bootstrap_key) if bootstrap_key else None
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._pending: dict[str, tuple[float, asyncio.Task[Principal | None]]] = {}
        # Digests whose last lookup found a key, least recently found first: looking one up
        # again is no guess, so it is not charged to the address (which others behind the
        # same NAT or proxy may have used up).
        self._found: dict[str, None] = {}
        self.limiter = limiter or Limiter(keys)
        self._failures = failures

    async def authenticate(self, secret: str | None, *, client: str) -> Principal:
        """The key's principal. A lookup that finds no key is charged to ``client`` (the
        caller's address), which gets 429 instead of a lookup once it has run out. A key
        whose last lookup found it is looked up again when its cache entry lapses (so a
        revocation applies), uncharged."""
        if not secret:
            raise Unauthorized(
                f"send an API key in the {KEY_HEADERS[0]} header", extra={"reason": "missing_key"}
            )
        digest = hash_key(secret)
        if self._bootstrap_hash and hmac.compare_digest(digest, self._bootstrap_hash):
            return Principal(name=BOOTSTRAP_NAME, scopes=frozenset(SCOPES))
        entry = self._cache.get(digest)
        if entry is not None and entry[0] > time.monotonic():
            principal = entry[1]  # known either way: no lookup, nothing to charge
        else:
            principal = await self._lookup_once(digest, secret, client)
        if principal is None:
            raise Unauthorized("the API key is unknown or revoked", extra={"reason": "unknown_key"})
        return principal

    async def _lookup_once(self, digest: str, secret: str, client: str) -> Principal | None:
        """One lookup per key at a time: concurrent requests with a key that is not cached
        share a lookup sent within the last ``KEY_CACHE_SECONDS``, and its charge. Its answer
        is dated from when it was sent, so a revoked key stops working within that time
        however slowly the database answers."""
        now = time.monotonic()
        pending = self._pending.get(digest)
        if pending is None or pending[0] + KEY_CACHE_SECONDS <= now:
            charged = None
            if self._failures is not None and digest not in self._found:
                self._failures.reserve(client)
                charged = client
            task = asyncio.create_task(self._charged_lookup(digest, secret, charged, sent=now))
            pending = self._pending[digest] = (now, task)
            task.add_done_callback(lambda done: self._settled(digest, done))
        return await asyncio.shield(pending[1])

    def _settled(self, digest: str, task: asyncio.Task[Principal | None]) -> None:
        if (pending := self._pending.get(digest)) is not None and pending[1] is task:
            del self._pending[digest]  # unless a newer lookup of the key took its place
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone (cancelled requests)

    async def _charged_lookup(
        self, digest: str, secret: str, charged: str | None, *, sent: float
    ) -> Principal | None:
        """``_lookup``, charged to the address ``charged`` (its token taken by the caller; None:
        uncharged) unless it finds a key or fails (a database error is no guess)."""
        unknown = False
        try:
            principal = await self._lookup(digest, secret, sent=sent)
            unknown = principal is None
        finally:
            if not unknown and charged is not None and self._failures is not None:
                self._failures.refund(charged)
        return principal

    async def _lookup(self, digest: str, secret: str, *, sent: float) -> Principal | None:
        """The key's principal from the database (None: unknown or revoked), cached until
        ``KEY_CACHE_SECONDS`` after ``sent``."""
        document = await self._keys.find(secret)
        principal = (
            None
            if document is None
            else Principal(
                name=document["name"],
                scopes=frozenset(document["scopes"]),
                limits=limits_of(document),
            )
        )
        if len(self._cache) >= KEY_CACHE_SIZE:
            self._cache.clear()  # bounds memory against floods of made-up keys
        self._cache[digest] = (sent + KEY_CACHE_SECONDS, principal)
        self._found.pop(digest, None)
        if principal is not None:
            if len(self._found) >= KEY_CACHE_SIZE:
                del self._found[next(iter(self._found))]
            self._found[digest] = None
        return principal

    def forget(self) -> None:
        """Drop cached lookups, so that key changes apply at once."""
        self._cache.clear()


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    for header in KEY_HEADERS:
        if value := connection.headers.get(header):
            return value
    return None


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    """The key a guard authenticated for this request; None for a caller without one."""
    principal: Principal | None = connection.scope["state"].get("principal")
    return principal


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The client's address, as uvicorn gives it (a configured proxy's X-Forwarded-For)."""
    return connection.client.host if connection.client else "unknown"


# Where the metering leaves how to read its limits' standing, for the response's RateLimit
# fields: read when the response starts, not when the request was metered.
RATE_LIMITS = "rate_limits"
Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def requires(scope: str, *, unless_open: bool = False) -> Guard:
    """A Litestar guard admitting keys that hold ``scope``, within their limits.

    With ``unless_open``, when the settings say labeling needs no key, a request without one
    is metered per client address, and one with a key is authenticated and metered by its key
    whatever its scopes.
    """

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        resources = connection.app.state.resources
        secret = presented_key(connection)
        is_open = unless_open and not resources.settings.labeling_requires_key
        if is_open and secret is None:
            meter_client(connection)
            return
        # On an open route a key is optional, but one that is sent must be valid: it replaces
        # the per-client limit with its own limits, so an unchecked key would lift every limit.
        authenticator: Authenticator = resources.authenticator
        try:
            principal = await authenticator.authenticate(secret, client=client_address(connection))
        except Unauthorized as exc:  # a client without a key, or guessing one
            resources.metrics.auth_failures.labels(exc.extra["reason"]).inc()
            raise
        except RateLimited as exc:  # one that guessed too often
            resources.metrics.rejected.labels(exc.extra["reason"]).inc()
            raise
        if not is_open and not principal.holds(scope):
            resources.metrics.api_key_requests.labels(principal.name, "forbidden").inc()
            raise Forbidden(f"this API key lacks the {scope!r} scope")
        await meter_key(connection, principal)
        connection.scope["state"]["principal"] = principal

    return guard


async def meter_again(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Count one more unit of work against the limits the guard admitted this request under
    (its key's, or its client address's): each item of a batch after the first."""
    principal = principal_of(connection)
    if principal is None:
        meter_client(connection)
    else:
        await meter_key(connection, principal)


def meter_client(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Keyless labeling, against the per-client-address rate; ``RateLimited`` past it."""
    resources = connection.app.state.resources
    limiter = resources.client_limiter
    if limiter is None:
        return
    client = client_address(connection)
    try:
        limiter.admit(client)
    except RateLimited as exc:
        resources.metrics.rejected.labels(exc.extra["reason"]).inc()
        raise
    finally:
        connection.scope["state"][RATE_LIMITS] = lambda: [limiter.standing(client)]


async def meter_key(connection: ASGIConnection[Any, Any, Any, Any], principal: Principal) -> None:
    """A request of an authenticated key, against its rate and daily quota."""
    resources = connection.app.state.resources
    counter = resources.metrics.api_key_requests
    limiter = resources.authenticator.limiter
    try:
        await limiter.admit(principal.name, principal.limits)
    except RateLimited as exc:
        counter.labels(principal.name, exc.extra["reason"]).inc()
        raise
    finally:
        standing = partial(limiter.standing, principal.name, principal.limits)
        connection.scope["state"][RATE_LIMITS] = standing
    counter.labels(principal.name, "admitted").inc()
