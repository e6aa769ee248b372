"""Per-API-key limits: a request rate (token bucket) and a daily quota.

Both are kept in the service process, so they cost no database round trip per request:

* The rate is enforced by each process on its own: with N processes a key may reach N
  times its rate. A bucket holds one second's worth of requests (at least one), so short
  bursts pass and a steady excess gets 429 with ``Retry-After``.
* Daily usage (UTC days) is summed in the database: each process counts locally and adds
  its count with one ``$inc`` per key about once a second (and at shutdown), learning the
  total of all processes in the same reply. A key can therefore overshoot its quota by what
  the other processes admitted within the last second; a single process enforces it exactly.
  Refused requests do not count.

Limits per client address are in ``service.address_limits``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from service.errors import RateLimited, ServiceError

log = logging.getLogger(__name__)
FLUSH_SECONDS = 1.0
_UNITS = {
    **dict.fromkeys(("s", "sec", "second"), 1),
    **dict.fromkeys(("m", "min", "minute"), 60),
    **dict.fromkeys(("h", "hour"), 3600),
    **dict.fromkeys(("d", "day"), 86400),
}
MAX_REQUESTS = 10**12  # stored as a 64-bit integer, with room to add a day's usage
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    requests: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"20/s"``, ``"600/min"``, ``"100000/day"``: a positive count per unit of time."""
        match = _RATE.match(text.lower())
        unit = _UNITS.get(match[2]) if match else None
        if not match or not unit or not 1 <= int(match[1]) <= MAX_REQUESTS:
            raise ValueError(
                f"{text!r} is not a rate like 20/s, 600/min or 100000/day"
                f" (at most {MAX_REQUESTS:,} requests)"
            )
        return cls(int(match[1]), unit)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "hour", 86400: "day"}.get(self.seconds)
        return f"{self.requests}/{unit}" if unit else f"{self.requests}/{self.seconds}s"


@dataclass(frozen=True, slots=True)
class Standing:
    """Where one limit stands after a request, for the ``RateLimit-Policy`` and ``RateLimit``
    response fields (IETF draft-ietf-httpapi-ratelimit-headers): ``quota`` requests a
    ``window`` of seconds; ``remaining`` of them now, all again in ``reset`` seconds."""

    name: str
    quota: int
    window: int
    remaining: int
    reset: int


def rate_limit_fields(standings: Sequence[Standing]) -> dict[str, str]:
    """The two response fields for these limits (none when there are none)."""
    if not standings:
        return {}
    return {
        "RateLimit-Policy": ", ".join(f'"{s.name}";q={s.quota};w={s.window}' for s in standings),
        "RateLimit": ", ".join(f'"{s.name}";r={s.remaining};t={s.reset}' for s in standings),
    }


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens a second
    capacity: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: Rate, now: float, *, burst: float | None = None) -> TokenBucket:
        """A full bucket holding ``burst`` tokens (default: one second's worth, at least 1)."""
        capacity = burst if burst is not None else max(1.0, rate.per_second)
        return cls(rate.per_second, capacity, capacity, now)

    def wait(self, now: float) -> float:
        """Refill; 0.0 when a token is there, else the seconds until there is one."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        wait = self.wait(now)
        if not wait:
            self.tokens -= 1.0
        return wait

    def standing(self, name: str, now: float) -> Standing:
        """A full bucket is the quota; it refills from empty in the window. (Clock arithmetic
        leaves 16.999... tokens where 17 are due: counted to a billionth of one.)"""
        self.wait(now)
        missing = max(0.0, self.capacity - self.tokens - 1e-9)
        return Standing(
            name,
            quota=math.floor(self.capacity),
            window=math.ceil(self.capacity / self.rate),
            remaining=math.floor(self.tokens + 1e-9),
            reset=math.ceil(missing / self.rate),
        )


class UsageStore(Protocol):
    async def usage(self, name: str, day: str) -> int: ...

    async def add_usage(self, name: str, day: str, count: int) -> int: ...


@dataclass(slots=True)
class _Day:
    day: str
    known: int = 0  # the database's total at the last read or flush
    pending: int = 0  # admitted here since then
    sending: int = 0  # admitted here, in the $inc now in flight
    flushed_at: float = 0.0
    loaded: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    rate: Rate | None = None
    daily_quota: int | None = None


@dataclass(slots=True)
class Limiter:
    """Admits or refuses requests of named keys against their ``Limits``."""

    usage: UsageStore
    clock: Callable[[], float] = time.monotonic
    today: Callable[[], datetime] = lambda: datetime.now(UTC)
    _buckets: dict[str, tuple[Rate, TokenBucket]] = field(default_factory=dict)
    _days: dict[str, _Day] = field(default_factory=dict)
    # Earlier days' counts not yet recorded (their flush at midnight failed).
    _earlier: list[tuple[str, _Day]] = field(default_factory=list)

    async def admit(self, name: str, limits: Limits) -> None:
        """Count one request of key ``name``, or raise ``RateLimited`` (429)."""
        if limits.rate is not None:
            self._take_token(name, limits.rate)
        if limits.daily_quota is not None:
            await self._count(name, limits.daily_quota)

    def standing(self, name: str, limits: Limits) -> list[Standing]:
        """Where key ``name`` stands against its limits now. The day's usage is known once a
        request of this UTC day has been counted (one refused by the rate is not)."""
        standings = []
        held = self._buckets.get(name)
        if limits.rate is not None and held is not None and held[0] == limits.rate:
            standings.append(held[1].standing("rate", self.clock()))
        state = self._days.get(name)
        now = self.today()
        if (
            limits.daily_quota is not None
            and state is not None
            and state.loaded
            and state.day == now.date().isoformat()
        ):
            quota, used = limits.daily_quota, state.known + state.sending + state.pending
            standings.append(
                Standing(
                    "daily",
                    quota=quota,
                    window=86400,
                    remaining=max(0, quota - used),
                    reset=_seconds_to_midnight(now),
                )
            )
        return standings

    def _take_token(self, name: str, rate: Rate) -> None:
        now = self.clock()
        held = self._buckets.get(name)
        if held is None or held[0] != rate:  # new key, or its rate was changed
            held = (rate, TokenBucket.full(rate, now))
            self._buckets[name] = held
        wait = held[1].take(now)
        if wait > 0:
            raise RateLimited(
                f"this API key is limited to {rate} requests; retry after the delay given",
                retry_after=max(1, math.ceil(wait)),
                extra={"reason": "rate_limit", "limit": str(rate)},
            )

    async def _count(self, name: str, quota: int) -> None:
        now = self.today()
        day = now.date().isoformat()
        state = self._days.get(name)
        if state is None or state.day != day:
            # The new day first: requests arriving during yesterday's flush count on it.
            yesterday, state = state, _Day(day)
            self._days[name] = state
            if yesterday is not None and yesterday.pending:
                self._earlier.append((name, yesterday))
                await self._flush(name, yesterday)
        if not state.loaded:
            state.known = max(state.known, await self.usage.usage(name, day))
            state.loaded = True
        if state.known + state.sending + state.pending >= quota:
            raise RateLimited(
                f"this API key has used its daily quota of {quota} requests (UTC days)",
                retry_after=_seconds_to_midnight(now),
                extra={"reason": "quota", "limit": f"{quota}/day"},
            )
        state.pending += 1
        if not state.sending and self.clock() - state.flushed_at >= FLUSH_SECONDS:
            await self._flush(name, state)

    async def flush(self) -> None:
        """Record every key's pending usage: run about once a second, and at shutdown, so that
        a burst's last requests count for the other processes and survive a restart."""
        for name, state in [*self._earlier, *self._days.items()]:
            if state.pending and not state.sending:
                await self._flush(name, state)
        self._earlier = [(name, day) for name, day in self._earlier if day.pending or day.sending]

    async def _flush(self, name: str, state: _Day) -> None:
        count, state.pending, state.sending = state.pending, 0, state.pending
        try:
            total = await self.usage.add_usage(name, state.day, count)
        except BaseException as exc:
            # Not recorded, as far as is known: the count waits for the next flush (counted
            # twice if the database applied it after all). The request stays admitted.
            state.pending += count
            if isinstance(exc, ServiceError):
                log.warning("recording API key usage failed (%s)", exc.type)
            elif isinstance(exc, Exception):
                log.exception("recording API key usage failed")
            else:  # cancelled (at shutdown): the final flush records it
                raise
        else:
            # The total includes this count; requests admitted meanwhile are still pending.
            state.known = max(state.known, total)
        finally:
            state.sending = 0
            state.flushed_at = self.clock()


def _seconds_to_midnight(now: datetime) -> int:
    """Whole seconds (at least 1) until the next UTC day, when daily quotas start again."""
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, math.ceil((midnight - now).total_seconds()))
