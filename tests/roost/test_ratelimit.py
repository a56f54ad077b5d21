"""roost.ratelimit: token buckets, headers, bounded memory (a fake clock drives time)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.ratelimit import RateLimit, RateLimiter, RateLimitStatus, tightest


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_bucket_drains_and_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limit = RateLimit("x", 10, 100)  # 0.1 point per second
    for left in range(9, -1, -1):
        status = limiter.consume(limit, "ip:1")
        assert status.allowed and status.remaining == left
    refused = limiter.consume(limit, "ip:1")
    assert not refused.allowed
    assert refused.retry_after == 10
    assert refused.reset == int(clock.now) + 100
    clock.now += 9.9
    assert not limiter.consume(limit, "ip:1").allowed
    clock.now += 0.1
    assert limiter.consume(limit, "ip:1").allowed
    clock.now += 10_000
    assert limiter.consume(limit, "ip:1").remaining == 9  # capped at the bucket size


def test_keys_and_names_are_separate_buckets() -> None:
    limiter = RateLimiter(clock=Clock())
    a, b = RateLimit("a", 1, 60), RateLimit("b", 1, 60)
    assert limiter.consume(a, "k1").allowed
    assert not limiter.consume(a, "k1").allowed
    assert limiter.consume(a, "k2").allowed
    assert limiter.consume(b, "k1").allowed
    # Same name, same bucket (a budget shared by several methods).
    assert not limiter.consume(RateLimit("a", 1, 60), "k1").allowed


def test_costs() -> None:
    limiter = RateLimiter(clock=Clock())
    limit = RateLimit("writes", 10, 3600)
    assert limiter.consume(limit, "did:a", 3).remaining == 7
    assert limiter.consume(limit, "did:a", 7).remaining == 0
    assert limiter.consume(limit, "did:a", 0).allowed
    too_big = limiter.consume(RateLimit("small", 2, 60), "did:a", 3)
    assert not too_big.allowed and too_big.retry_after == 60
    with pytest.raises(ValueError):
        limiter.consume(limit, "did:a", -1)


def test_consume_many_is_all_or_nothing() -> None:
    limiter = RateLimiter(clock=Clock())
    wide, narrow = RateLimit("wide", 100, 60), RateLimit("narrow", 1, 60)
    first = limiter.consume_many([(wide, "k"), (narrow, "k")])
    assert [s.allowed for s in first] == [True, True]
    second = limiter.consume_many([(wide, "k"), (narrow, "k")])
    assert [s.allowed for s in second] == [True, False]
    assert second[0].remaining == 99  # the refused call charged nothing
    assert tightest(second) is second[1]
    assert tightest(first) is first[1]
    assert tightest([]) is None


def test_headers() -> None:
    limiter = RateLimiter(clock=Clock(1_700_000_000.5))
    limit = RateLimit("global", 3000, 300)
    status = limiter.consume(limit, "ip:1")
    assert status.headers() == {
        "RateLimit-Limit": "3000",
        "RateLimit-Remaining": "2999",
        "RateLimit-Reset": "1700000001",
        "RateLimit-Policy": "3000;w=300",
    }
    refused = RateLimitStatus(limit, False, 0, 1_700_000_300, 7)
    assert refused.headers()["Retry-After"] == "7"
    assert RateLimit("d", 300, 86400).policy == "300;w=86400"
    assert RateLimit("f", 5, 1.5).policy == "5;w=1.5"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "", "points": 1, "window": 1},
        {"name": "x", "points": 0, "window": 1},
        {"name": "x", "points": True, "window": 1},
        {"name": "x", "points": 1, "window": 0},
        {"name": "x", "points": 1, "window": 1, "per": "did"},
    ],
)
def test_bad_limits(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RateLimit(**kwargs)  # type: ignore[arg-type]


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, max_buckets=100)
    limit = RateLimit("x", 5, 10)
    for i in range(1000):
        limiter.consume(limit, f"ip:{i}")
    assert len(limiter) <= 100


def test_idle_buckets_are_swept() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limit = RateLimit("x", 5, 10)
    for i in range(50):
        limiter.consume(limit, f"ip:{i}", 5)
    assert len(limiter) == 50
    clock.now += 5  # half refilled: still in use
    assert limiter.sweep() == 0
    clock.now += 5  # full again: a new bucket would look the same
    limiter.consume(limit, "ip:new")
    assert limiter.sweep() == 50
    assert len(limiter) == 1
    # Sweeping also happens on its own as calls go by.
    for i in range(300):
        clock.now += 10
        limiter.consume(limit, f"other:{i}")
    assert len(limiter) < 100


def test_clock_going_backwards_does_not_mint_points() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limit = RateLimit("x", 1, 60)
    assert limiter.consume(limit, "k").allowed
    clock.now -= 1000
    assert not limiter.consume(limit, "k").allowed


@given(
    st.lists(st.tuples(st.floats(0, 50), st.integers(0, 4)), max_size=60),
    st.integers(1, 20),
    st.integers(1, 100),
)
def test_never_more_than_the_budget(
    steps: list[tuple[float, int]], points: int, window: int
) -> None:
    """Over any run, points spent <= bucket size + refill over the elapsed time."""
    clock = Clock(0.0)
    limiter = RateLimiter(clock=clock)
    limit = RateLimit("p", points, window)
    spent = 0
    for dt, cost in steps:
        clock.now += dt
        status = limiter.consume(limit, "k", cost)
        assert 0 <= status.remaining <= points
        if status.allowed:
            spent += cost
        else:
            assert status.retry_after >= 1
    assert spent <= points + clock.now * points / window + 1e-6
