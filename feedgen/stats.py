"""Per-feed request counters, for the catalogue page and the health check.

:class:`FeedStats` counts, for each feed, the ``getFeedSkeleton`` requests
it answered or refused, the recent request rate (requests in the last
:data:`RATE_WINDOW_S` seconds, kept as one counter per second, so recording
a request costs a clock read and two additions), and the last error: what
the client was told and when. Errors the client caused (a bad cursor, a
missing sign-in) are counted apart from the feed's own failures (an
algorithm that raised or timed out), which are what an operator needs to
see first.

Everything runs on the event loop; there is no locking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from roost.errors import RoostError

__all__ = ["RATE_WINDOW_S", "FeedCounters", "FeedStats", "LastError"]

#: Seconds of history behind the requests/s figure.
RATE_WINDOW_S: Final = 10
#: Longest error text kept.
MAX_ERROR_CHARS: Final = 500


@dataclass(frozen=True, slots=True)
class LastError:
    """The most recent failure: its XRPC name, message, HTTP status and wall-clock time."""

    error: str
    message: str
    status: int
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, "status": self.status,
                "at": self.at}


@dataclass(slots=True)
class FeedCounters:
    """One feed's counters (see :class:`FeedStats`)."""

    requests: int = 0
    failures: int = 0
    rejected: int = 0
    last_error: LastError | None = None
    last_rejection: LastError | None = None
    #: ``[second, count]`` pairs, oldest first, at most RATE_WINDOW_S of them.
    _buckets: list[list[int]] = field(default_factory=list)

    def note(self, second: int) -> None:
        self.requests += 1
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
            return
        buckets.append([second, 1])
        if len(buckets) > RATE_WINDOW_S:
            del buckets[0]

    def rate(self, now: float) -> float:
        """Requests per second over the last RATE_WINDOW_S seconds, this one included."""
        start = int(now) - RATE_WINDOW_S
        total = sum(count for second, count in self._buckets if second > start)
        return total / RATE_WINDOW_S


class FeedStats:
    """Counters for every feed, by feed URI; ``clock`` is wall-clock seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._feeds: dict[str, FeedCounters] = {}

    def counters(self, uri: str) -> FeedCounters:
        found = self._feeds.get(uri)
        if found is None:
            found = self._feeds[uri] = FeedCounters()
        return found

    def request(self, uri: str) -> None:
        """A request for ``uri`` arrived."""
        self.counters(uri).note(int(self._clock()))

    def failed(self, uri: str, exc: BaseException) -> None:
        """The request for ``uri`` ended in ``exc`` (what the client was sent)."""
        counters = self.counters(uri)
        if isinstance(exc, RoostError):
            error, message, status = exc.error, exc.message or "", exc.status
        else:
            error, message, status = "InternalServerError", type(exc).__name__, 500
        last = LastError(error, message[:MAX_ERROR_CHARS], status, self._clock())
        if status >= 500:
            counters.failures += 1
            counters.last_error = last
        else:
            counters.rejected += 1
            counters.last_rejection = last

    def rate(self, uri: str) -> float:
        return self.counters(uri).rate(self._clock())

    def snapshot(self, uri: str) -> dict[str, Any]:
        """The counters of ``uri`` as JSON."""
        counters = self.counters(uri)
        return {
            "requests": counters.requests,
            "requestsPerSecond": round(counters.rate(self._clock()), 2),
            "failures": counters.failures,
            "rejected": counters.rejected,
            "lastError": counters.last_error.to_json() if counters.last_error else None,
            "lastRejection": (
                counters.last_rejection.to_json() if counters.last_rejection else None
            ),
        }
