"""Token-bucket rate limits for the XRPC layer.

A :class:`RateLimit` names a budget (``points`` per ``window`` seconds) and
what it is counted per (``"ip"`` or ``"account"``). A :class:`RateLimiter`
holds one bucket per (limit name, key): a bucket starts full, refills
continuously at ``points / window`` per second and a request takes ``cost``
points from it. Limits sharing a name share buckets, so several methods can
draw on one budget (repo writes per account, for instance).

Statuses give the headers of ``spec/xrpc.md`` section 4::

    RateLimit-Limit: 3000
    RateLimit-Remaining: 2999
    RateLimit-Reset: 1732000300        (unix seconds when the bucket is full again)
    RateLimit-Policy: 3000;w=300
    Retry-After: 12                    (only when refused; seconds, rounded up)

Memory is bounded: buckets live in least-recently-used order; every few
hundred calls the oldest buckets that have refilled completely (idle: a new
bucket would be identical) are dropped, and past ``max_buckets`` the least
recently used one is dropped whatever its state. The clock is injected
(``clock() -> unix seconds``) so tests can drive time.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "RateLimit",
    "RateLimitStatus",
    "RateLimiter",
    "tightest",
]

Clock = Callable[[], float]

#: Calls between two sweeps of idle buckets.
_SWEEP_EVERY: Final = 256
#: Most idle buckets dropped per sweep (from the least recently used end):
#: more than can be created between two sweeps, so idle ones never pile up.
_SWEEP_BATCH: Final = 2 * _SWEEP_EVERY


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``points`` per ``window`` seconds, counted per client IP or per account.

    ``per="account"`` counts per authenticated DID and falls back to the
    client IP for anonymous requests.
    """

    name: str
    points: int
    window: float
    per: Literal["ip", "account"] = "ip"
    rate: float = field(init=False, repr=False, compare=False)
    policy: str = field(init=False, repr=False, compare=False)
    _limit_header: bytes = field(init=False, repr=False, compare=False)
    _policy_header: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("rate limit name must be a non-empty string")
        if isinstance(self.points, bool) or not isinstance(self.points, int) or self.points <= 0:
            raise ValueError("rate limit points must be a positive int")
        if (
            isinstance(self.window, bool)
            or not isinstance(self.window, (int, float))
            or not self.window > 0
        ):
            raise ValueError("rate limit window must be positive seconds")
        if self.per not in ("ip", "account"):
            raise ValueError('rate limit per must be "ip" or "account"')
        window = int(self.window) if float(self.window).is_integer() else self.window
        policy = f"{self.points};w={window}"
        # ``rate``: points regained per second; ``policy``: the RateLimit-Policy value.
        object.__setattr__(self, "rate", self.points / self.window)
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "_limit_header", str(self.points).encode("ascii"))
        object.__setattr__(self, "_policy_header", policy.encode("ascii"))


@dataclass(frozen=True, slots=True)
class RateLimitStatus:
    """The outcome of one charge against one bucket."""

    limit: RateLimit
    allowed: bool
    remaining: int
    reset: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` headers (and ``Retry-After`` when refused)."""
        out = {
            "RateLimit-Limit": str(self.limit.points),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": self.limit.policy,
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """:meth:`headers` as ASGI header pairs (lower-case names, bytes)."""
        out = [
            (b"ratelimit-limit", self.limit._limit_header),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset),
            (b"ratelimit-policy", self.limit._policy_header),
        ]
        if not self.allowed:
            out.append((b"retry-after", b"%d" % self.retry_after))
        return out


def tightest(statuses: Sequence[RateLimitStatus]) -> RateLimitStatus | None:
    """The status to report: the first refusal, else the one with fewest points left."""
    if not statuses:
        return None
    for status in statuses:
        if not status.allowed:
            return status
    return min(statuses, key=lambda s: (s.remaining, -s.reset))


class RateLimiter:
    """Token buckets keyed by (limit name, key), bounded in number."""

    def __init__(self, *, clock: Clock = time.time, max_buckets: int = 100_000) -> None:
        if max_buckets <= 0:
            raise ValueError("max_buckets must be positive")
        self.clock = clock
        self.max_buckets = max_buckets
        # (name, key) -> [tokens, updated_at, points, rate]
        self._buckets: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._calls = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def consume(self, limit: RateLimit, key: str, cost: int = 1) -> RateLimitStatus:
        """Take ``cost`` points from ``limit``'s bucket for ``key`` if it has them."""
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
            raise ValueError("cost must be a non-negative int")
        now = self.clock()
        bucket = self._refill(limit, key, now)
        status = self._status(limit, bucket, cost, bucket[0] >= cost, now)
        self._tick(now)
        return status

    def consume_many(
        self, charges: Sequence[tuple[RateLimit, str]], cost: int = 1
    ) -> list[RateLimitStatus]:
        """Charge ``cost`` to every (limit, key) bucket, all or nothing.

        If any bucket lacks the points, none is charged and that bucket's
        status says ``allowed=False`` (the others report ``allowed=True``,
        uncharged); statuses come back in the order given.
        """
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
            raise ValueError("cost must be a non-negative int")
        now = self.clock()
        buckets = []
        ok = True
        for limit, key in charges:
            bucket = self._refill(limit, key, now)
            buckets.append(bucket)
            if bucket[0] < cost:
                ok = False
        statuses = [
            self._status(limit, bucket, cost, ok, now)
            for (limit, _), bucket in zip(charges, buckets)
        ]
        self._tick(now)
        return statuses

    @staticmethod
    def _status(
        limit: RateLimit, bucket: list[float], cost: int, charge: bool, now: float
    ) -> RateLimitStatus:
        """Charge ``bucket`` if ``charge``; describe it either way."""
        tokens = bucket[0]
        if charge:
            tokens -= cost
            bucket[0] = tokens
            allowed, retry_after = True, 0
        else:
            allowed = tokens >= cost
            if allowed:
                retry_after = 0
            elif cost > limit.points:
                retry_after = math.ceil(limit.window)
            else:
                retry_after = max(1, math.ceil((cost - tokens) / limit.rate))
        reset = math.ceil(now + (limit.points - tokens) / limit.rate)
        return RateLimitStatus(limit, allowed, max(0, int(tokens)), reset, retry_after)

    def _tick(self, now: float) -> None:
        self._calls += 1
        if self._calls >= _SWEEP_EVERY:
            self._calls = 0
            self.sweep(now, _SWEEP_BATCH)

    def _refill(self, limit: RateLimit, key: str, now: float) -> list[float]:
        ident = (limit.name, key)
        buckets = self._buckets
        bucket = buckets.get(ident)
        if bucket is None:
            bucket = [float(limit.points), now, float(limit.points), limit.rate]
            buckets[ident] = bucket
            while len(buckets) > self.max_buckets:
                buckets.popitem(last=False)
            return bucket
        buckets.move_to_end(ident)
        # A limit redefined under the same name takes over the bucket.
        bucket[2], bucket[3] = float(limit.points), limit.rate
        elapsed = now - bucket[1]
        if elapsed > 0:
            bucket[0] = min(bucket[2], bucket[0] + elapsed * bucket[3])
            bucket[1] = now
        return bucket

    def sweep(self, now: float | None = None, batch: int | None = None) -> int:
        """Drop idle buckets (refilled completely) from the least recently used end.

        Stops at the first bucket still in use, or after ``batch`` drops.
        Returns how many were dropped.
        """
        if now is None:
            now = self.clock()
        dropped = 0
        buckets = self._buckets
        while buckets and (batch is None or dropped < batch):
            ident, bucket = next(iter(buckets.items()))
            tokens = bucket[0] + max(0.0, now - bucket[1]) * bucket[3]
            if tokens < bucket[2]:
                break
            del buckets[ident]
            dropped += 1
        return dropped
