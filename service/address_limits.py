"""Limits per client address (an IPv6 client by its /64), per process: the rate of open
(keyless) labeling and the requests one client has in progress (``ClientLimiter``), and its
failed key attempts (``FailedKeyLimiter``).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.errors import RateLimited
from service.ratelimit import Rate, Standing, TokenBucket

# Every client whose address does not parse is metered as this one: a name a client could
# choose (through a proxy trusted with "*" that appends to X-Forwarded-For, say) would be a
# fresh bucket per request, and a string of any length kept in the table.
UNPARSED_ADDRESS = "(not an address)"


def client_bucket(address: str) -> str:
    """What a client address is metered as: an IPv6 client by its /64, since one host is
    routinely given a whole /64 (2^64 addresses, each a fresh bucket otherwise)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # not an address (a test client, a unix socket, a forged header)
        return UNPARSED_ADDRESS
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AddressBuckets:
    """Token buckets by client address (an IPv6 client by its /64), for one ``Rate``.

    The table holds at most ``max_clients`` addresses, so a flood of distinct addresses
    cannot grow memory without bound; the fullest buckets are dropped first, so other
    addresses' traffic does not reset a client that has used up its tokens. Per process.
    """

    def __init__(
        self,
        rate: Rate,
        *,
        burst: float | None = None,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self._burst = burst
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, client: str) -> float:
        """Take a token from the client's bucket: 0.0 when there was one, else the seconds
        until there is."""
        now = self._clock()
        client = client_bucket(client)
        bucket = self._buckets.pop(client, None) or TokenBucket.full(
            self.rate, now, burst=self._burst
        )
        self._buckets[client] = bucket
        wait = bucket.take(now)
        if len(self._buckets) > self._max_clients:
            self._make_room(now)
        return wait

    def standing(self, name: str, client: str) -> Standing:
        """Where the client stands (a client without a bucket has a full one)."""
        now = self._clock()
        bucket = self._buckets.get(client_bucket(client))
        if bucket is None:
            bucket = TokenBucket.full(self.rate, now, burst=self._burst)
        return bucket.standing(name, now)

    def give_back(self, client: str) -> None:
        """Return a token taken by ``take``; a bucket full again is forgotten."""
        client = client_bucket(client)
        bucket = self._buckets.get(client)
        if bucket is not None:
            bucket.tokens = min(bucket.capacity, bucket.tokens + 1.0)
            if bucket.tokens >= bucket.capacity:
                del self._buckets[client]

    def _make_room(self, now: float) -> None:
        """Down to 90% of the bound (so this runs once per tenth of the table coming in, not on
        every request), dropping the buckets that hold the most tokens first: a full one holds
        nothing a fresh one would not, and a drained one is a client being limited. Among
        equals, the least recently seen goes first (the sort is stable)."""
        for bucket in self._buckets.values():
            bucket.wait(now)
        keep = self._max_clients * 9 // 10
        fullest = sorted(self._buckets, key=lambda name: -self._buckets[name].tokens)
        for name in fullest[: len(self._buckets) - keep]:
            del self._buckets[name]


class ClientLimiter:
    """Per-client-address limits for open (keyless) labeling: a token bucket for the rate,
    and a cap on the requests one client has in progress. Limits are per process.
    """

    def __init__(
        self,
        rate: Rate,
        *,
        max_inflight: int = 8,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.max_inflight = max_inflight
        self._buckets = AddressBuckets(rate, max_clients=max_clients, clock=clock)
        self._inflight: Counter[str] = Counter()

    @contextmanager
    def sharing(self, client: str, wanted: int) -> Iterator[int]:
        """Up to ``wanted`` of the client's free slots (one per request in progress; a batch
        takes several), held together: how many were taken. ``RateLimited`` when none is
        free. Without this cap, a client within its rate could hold every labeling slot with
        image hosts that never answer: eviction of slow downloads frees slots more slowly
        than such a client can take them."""
        client = client_bucket(client)
        taken = min(wanted, self.max_inflight - self._inflight[client])
        if taken < 1:
            raise RateLimited(
                f"at most {self.max_inflight} labeling requests without an API key may be in"
                " progress per client; retry when one has finished, or use an API key",
                retry_after=1,
                extra={"reason": "client_inflight", "limit": str(self.max_inflight)},
            )
        self._inflight[client] += taken
        try:
            yield taken
        finally:
            self._inflight[client] -= taken
            if not self._inflight[client]:
                del self._inflight[client]

    def standing(self, client: str) -> Standing:
        return self._buckets.standing("client_rate", client)

    def admit(self, client: str) -> None:
        wait = self._buckets.take(client)
        if wait > 0:
            raise RateLimited(
                f"labeling without an API key is limited to {self.rate} per client; "
                "retry after the delay given, or use an API key",
                retry_after=max(1, math.ceil(wait)),
                extra={"reason": "client_rate_limit", "limit": str(self.rate)},
            )


class FailedKeyLimiter:
    """Key lookups that find no key, per client address: ``rate.requests`` of them at once,
    then as the rate refills. A lookup takes a token before it is sent and gives it back when
    it finds a key, so concurrent guesses cannot run ahead of the count; an address with none
    left gets 429 ``auth_failures`` instead of a lookup. A key already known to be unknown
    (cached) costs no lookup and no token: a client retrying a revoked key wears nothing down;
    nor does the look-up again of a key in use (``Authenticator``).
    """

    def __init__(
        self,
        rate: Rate,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self._buckets = AddressBuckets(
            rate, burst=float(rate.requests), max_clients=max_clients, clock=clock
        )

    def reserve(self, client: str) -> None:
        """Take a token for one lookup, or raise ``RateLimited`` when the client has none."""
        wait = self._buckets.take(client)
        if wait > 0:
            raise RateLimited(
                f"too many requests from this address with an unknown API key (at most"
                f" {self.rate}); retry after the delay given",
                retry_after=max(1, math.ceil(wait)),
                extra={"reason": "auth_failures", "limit": str(self.rate)},
            )

    def refund(self, client: str) -> None:
        """The lookup found a key (or failed for another reason): its token comes back."""
        self._buckets.give_back(client)
