"""roost.tid: TID encoding, ordering and the monotonic TidClock."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import InvalidTid
from roost.tid import (
    MAX_TID_TIMESTAMP_US,
    Tid,
    TidClock,
    ensure_tid,
    is_valid_tid,
    parse_tid,
)

SYNTAX_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "interop" / "syntax"
UTC = dt.UTC


def read_cases(path: Path) -> list[str]:
    """The interop README reader (no trimming)."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = [ln.removesuffix("\r") for ln in f.read().split("\n")]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def fake_clock(values: list[int]) -> Iterator[int]:
    yield from values


# -- known vectors --------------------------------------------------------------


def test_interop_valid_tids_decode_and_round_trip() -> None:
    cases = read_cases(SYNTAX_DIR / "tid_syntax_valid.txt")
    assert {"3jzfcijpj2z2a", "7777777777777", "2222222222222"} <= set(cases)
    for case in cases:
        tid = parse_tid(case)
        assert str(tid) == case
        assert Tid.from_parts(tid.timestamp_us, tid.clock_id) == tid
        assert str(Tid(tid.value)) == case


def test_interop_invalid_tids_are_rejected() -> None:
    cases = read_cases(SYNTAX_DIR / "tid_syntax_invalid.txt")
    assert cases
    for case in cases:
        assert not is_valid_tid(case)
        with pytest.raises(InvalidTid):
            parse_tid(case)
        with pytest.raises(InvalidTid):
            ensure_tid(case)


@pytest.mark.parametrize(
    ("text", "timestamp_us", "clock_id", "when"),
    [
        ("3jzfcijpj2z2a", 1688137381887007, 6, "2023-06-30T15:03:01.887007"),
        ("3k5nobkf2w72g", 1692822957032325, 12, "2023-08-23T20:35:57.032325"),
        ("3khuwc44c222b", 1704067200000000, 7, "2024-01-01T00:00:00"),
        ("2222222222222", 0, 0, "1970-01-01T00:00:00"),
    ],
)
def test_known_decodings(text: str, timestamp_us: int, clock_id: int, when: str) -> None:
    tid = parse_tid(text)
    assert (tid.timestamp_us, tid.clock_id) == (timestamp_us, clock_id)
    assert tid.to_datetime() == dt.datetime.fromisoformat(when).replace(tzinfo=UTC)
    assert str(Tid.from_parts(timestamp_us, clock_id)) == text


def test_value_of_worked_example() -> None:
    assert parse_tid("3jzfcijpj2z2a").value == 0x17FD6873EAF07C06


def test_loose_first_character_is_accepted() -> None:
    # The syntax allows c..j (top bit set); such TIDs parse but are never generated.
    top = parse_tid("jzzzzzzzzzzzz")
    assert top.value == (1 << 64) - 1
    assert top.timestamp_us == (1 << 54) - 1 and top.clock_id == 1023
    assert top.to_datetime().year > 2500
    assert parse_tid("bzzzzzzzzzzzz").timestamp_us == MAX_TID_TIMESTAMP_US


# -- value type -------------------------------------------------------------------


def test_tid_value_type() -> None:
    tid = parse_tid("3jzfcijpj2z2a")
    assert parse_tid(tid) is tid
    assert tid == Tid.parse("3jzfcijpj2z2a") and hash(tid) == hash(Tid(tid.value))
    assert repr(tid) == "Tid('3jzfcijpj2z2a')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        tid.value = 1  # type: ignore[misc]
    assert ensure_tid("3jzfcijpj2z2a") == "3jzfcijpj2z2a"


@pytest.mark.parametrize(
    ("timestamp_us", "clock_id"),
    [(-1, 0), (1 << 54, 0), (0, -1), (0, 1024), (1.5, 0), (0, True), ("1", 0)],
)
def test_from_parts_rejects_out_of_range(timestamp_us: object, clock_id: object) -> None:
    with pytest.raises(InvalidTid):
        Tid.from_parts(timestamp_us, clock_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, 1 << 64, "3jzfcijpj2z2a", None])
def test_direct_construction_checks_value(value: object) -> None:
    with pytest.raises(InvalidTid):
        Tid(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, 13, b"3jzfcijpj2z2a", "3jzfcijpj2z2a\n", ""])
def test_non_tids(value: object) -> None:
    assert is_valid_tid(value) is False
    with pytest.raises(InvalidTid):
        ensure_tid(value)
    with pytest.raises(InvalidTid):
        parse_tid(value)  # type: ignore[arg-type]


timestamps = st.integers(0, MAX_TID_TIMESTAMP_US)
clock_ids = st.integers(0, 1023)


@settings(max_examples=300, deadline=None)
@given(timestamps, clock_ids)
def test_parts_round_trip(timestamp_us: int, clock_id: int) -> None:
    tid = Tid.from_parts(timestamp_us, clock_id)
    text = str(tid)
    assert len(text) == 13 and is_valid_tid(text) and text[0] in "234567ab"
    again = parse_tid(text)
    assert again == tid
    assert (again.timestamp_us, again.clock_id) == (timestamp_us, clock_id)
    assert tid.to_datetime() == dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(
        microseconds=timestamp_us)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(timestamps, clock_ids), min_size=2, max_size=20))
def test_order_is_string_order_is_time_order(parts: list[tuple[int, int]]) -> None:
    tids = [Tid.from_parts(ts, c) for ts, c in parts]
    assert [str(t) for t in sorted(tids)] == sorted(str(t) for t in tids)
    assert sorted(tids) == sorted(tids, key=lambda t: (t.timestamp_us, t.clock_id))
    a, b = tids[0], tids[1]
    assert (a < b) == (str(a) < str(b))
    assert (a <= b) == (str(a) <= str(b))
    assert (a > b) == (str(a) > str(b))
    assert (a == b) == (str(a) == str(b))


# -- clock -----------------------------------------------------------------------


def test_clock_never_repeats_or_goes_backwards_with_a_backwards_clock() -> None:
    times = fake_clock([1_000, 1_000, 500, 2_000, 10, 2_000, 3_000])
    clock = TidClock(clock_id=5, now_us=lambda: next(times))
    got = [clock.next() for _ in range(7)]
    assert [t.timestamp_us for t in got] == [1_000, 1_001, 1_002, 2_000, 2_001, 2_002, 3_000]
    assert all(t.clock_id == 5 for t in got)
    assert all(a < b for a, b in pairwise(got))
    assert [str(t) for t in got] == sorted(str(t) for t in got)


def test_next_str() -> None:
    clock = TidClock(clock_id=7, now_us=lambda: 1704067200000000)
    assert clock.next_str() == "3khuwc44c222b"
    assert clock.next_str() > "3khuwc44c222b"


def test_next_after_a_future_rev() -> None:
    clock = TidClock(clock_id=1, now_us=lambda: 1_000_000)
    previous = Tid.from_parts(5_000_000, 1023)
    rev = clock.next_after(str(previous))
    assert rev > previous and rev.timestamp_us == 5_000_001
    assert clock.next() > rev  # the clock does not fall back afterwards
    assert clock.next_after(previous) > rev


def test_next_after_a_past_rev_uses_the_clock() -> None:
    clock = TidClock(clock_id=1, now_us=lambda: 9_000_000)
    rev = clock.next_after(Tid.from_parts(5_000_000, 3))
    assert rev.timestamp_us == 9_000_000
    assert clock.next_after(None).timestamp_us == 9_000_001


def test_next_after_same_timestamp_higher_clock_id() -> None:
    clock = TidClock(clock_id=0, now_us=lambda: 42)
    previous = Tid.from_parts(42, 1023)
    assert clock.next_after(previous) > previous


def test_next_after_rejects_bad_rev() -> None:
    clock = TidClock(clock_id=0, now_us=lambda: 42)
    with pytest.raises(InvalidTid):
        clock.next_after("not-a-tid")
    with pytest.raises(InvalidTid):
        clock.next_after("jzzzzzzzzzzzz")  # no layout-valid TID is greater


def test_clock_is_thread_safe() -> None:
    clock = TidClock(clock_id=3, now_us=lambda: 1_700_000_000_000_000)
    results: list[list[Tid]] = [[] for _ in range(4)]

    def work(out: list[Tid]) -> None:
        for _ in range(2_000):
            out.append(clock.next())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [t for out in results for t in out]
    assert len(set(everything)) == 8_000
    for out in results:
        assert all(a < b for a, b in pairwise(out))


def test_default_clock_uses_wall_time_and_random_id() -> None:
    clock = TidClock()
    assert 0 <= clock.clock_id < 1024
    before = time.time_ns() // 1000
    tid = clock.next()
    after = time.time_ns() // 1000
    assert before <= tid.timestamp_us <= after + 1
    assert tid.clock_id == clock.clock_id
    assert abs(tid.to_datetime() - dt.datetime.now(UTC)) < dt.timedelta(seconds=5)
    ids = {TidClock().clock_id for _ in range(50)}
    assert len(ids) > 1


@pytest.mark.parametrize("clock_id", [-1, 1024, 1.0])
def test_clock_rejects_bad_clock_id(clock_id: object) -> None:
    with pytest.raises(ValueError):
        TidClock(clock_id=clock_id)  # type: ignore[arg-type]
