"""Reconnect delays: exponential, capped, jittered."""

from __future__ import annotations

from relay.ingest import BACKOFF_MAX_S, backoff_delay


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    highest = [backoff_delay(n, lambda low, high: high) for n in range(1, 10)]
    assert highest == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    lowest = [backoff_delay(n, lambda low, high: low) for n in range(1, 4)]
    assert lowest == [0.5, 1.0, 2.0]  # jitter: anywhere in the upper half
    assert backoff_delay(1000) <= BACKOFF_MAX_S
