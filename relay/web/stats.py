"""What the relay dashboard shows, read from the running relay.

The relay keeps running totals (per host: events accepted and dropped by
reason; overall: the head seq; per consumer: the last frame written to it).
A rate needs two readings, so :class:`Sampler` keeps a short history of
readings, taken when the dashboard or its JSON view is asked for (at most
one per :data:`SAMPLE_INTERVAL_S`): events per second are the difference
between two readings over the time between them. Nothing runs while nobody
looks, and the hot path pays nothing for the dashboard.

:func:`snapshot` turns the relay's state plus the sampler into plain
:class:`HostView` / :class:`ConsumerView` values for the page and the JSON
view; :func:`chart` lays the events/s history out as SVG coordinates.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from roost.errors import CborDecodeError
from roost.frames import decode_frame

from relay.core import Relay
from relay.fanout import Consumer
from relay.registry import HostRuntime

__all__ = [
    "CHART_HEIGHT",
    "CHART_SPAN_S",
    "CHART_WIDTH",
    "HISTORY_POINTS",
    "RATE_WINDOW_S",
    "SAMPLE_INTERVAL_S",
    "Chart",
    "ConsumerView",
    "HostView",
    "Sample",
    "Sampler",
    "Snapshot",
    "chart",
    "consumer_view",
    "failures",
    "snapshot",
]

#: Readings closer together than this are not taken (the last one is reused).
SAMPLE_INTERVAL_S: Final = 1.0
#: Readings kept (the chart's history).
HISTORY_POINTS: Final = 180
#: Events/s figures average over about this long.
RATE_WINDOW_S: Final = 10.0
#: The chart shows this much time, ending now.
CHART_SPAN_S: Final = 180.0
#: The chart's SVG coordinate space (it scales to the page's width).
CHART_WIDTH: Final = 600
CHART_HEIGHT: Final = 140
#: Host counters that count normal life, not a failure.
_NOT_FAILURES: Final = frozenset(
    {"connects", "accounts_moved_in", "resyncs_requested", "resyncs_done", "sync_unchanged"}
)
_ACCEPTED: Final = "accepted:"


def accepted(host: HostRuntime) -> int:
    """Events of ``host`` the relay has accepted since it started, all types."""
    return sum(n for name, n in host.stats.items() if name.startswith(_ACCEPTED))


def failures(stats: Mapping[str, int]) -> list[tuple[str, int]]:
    """A host's failure and drop counters (reason, count), most frequent first."""
    found = [
        (name, n)
        for name, n in stats.items()
        if n and not name.startswith(_ACCEPTED) and name not in _NOT_FAILURES
    ]
    return sorted(found, key=lambda item: (-item[1], item[0]))


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading: when, the relay's head seq, and each host's accepted total."""

    mono: float
    wall: float
    head: int
    accepted: Mapping[int, int]


class Sampler:
    """Readings of the relay's totals over time, and the rates between them."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self.samples: deque[Sample] = deque(maxlen=HISTORY_POINTS)

    def take(self, head: int, hosts: Iterable[HostRuntime]) -> Sample:
        """A reading now, unless the last one is younger than :data:`SAMPLE_INTERVAL_S`."""
        now = self._clock()
        if self.samples and now - self.samples[-1].mono < SAMPLE_INTERVAL_S:
            return self.samples[-1]
        sample = Sample(now, self._wall(), head, {h.id: accepted(h) for h in hosts})
        self.samples.append(sample)
        return sample

    def _base(self) -> Sample | None:
        """The earliest reading within :data:`RATE_WINDOW_S` of the latest (else the one before)."""
        samples = self.samples
        if len(samples) < 2:
            return None
        latest = samples[-1]
        base = samples[-2]
        for sample in reversed(samples):
            if sample is latest:
                continue
            if latest.mono - sample.mono > RATE_WINDOW_S:
                break
            base = sample
        return base

    def rate(self) -> float | None:
        """Events the relay sequenced per second lately; None before two readings."""
        base = self._base()
        if base is None:
            return None
        latest = self.samples[-1]
        return max(0, latest.head - base.head) / (latest.mono - base.mono)

    def host_rate(self, host_id: int) -> float | None:
        """Events of one host accepted per second lately; None before two readings."""
        base = self._base()
        if base is None:
            return None
        latest = self.samples[-1]
        now, then = latest.accepted.get(host_id), base.accepted.get(host_id, 0)
        if now is None:
            return None
        return max(0, now - then) / (latest.mono - base.mono)

    def history(self) -> list[tuple[float, float]]:
        """``(unix time, events/s)`` between each pair of consecutive readings."""
        samples = list(self.samples)
        return [
            (b.wall, max(0, b.head - a.head) / (b.mono - a.mono))
            for a, b in zip(samples, samples[1:], strict=False)
        ]


@dataclass(frozen=True, slots=True)
class HostView:
    id: int
    name: str
    status: str
    connected: bool
    cursor: int
    accounts: int
    accepted: int
    rate: float | None
    failures: list[tuple[str, int]]
    last_error: str | None


@dataclass(frozen=True, slots=True)
class ConsumerView:
    id: int
    remote: str
    user_agent: str
    connected_at: float
    #: The seq of the last event written to it (None: nothing yet, no cursor).
    position: int | None
    #: Events the relay has sequenced past ``position``.
    lag: int
    events_sent: int


@dataclass(frozen=True, slots=True)
class Chart:
    """The events/s history as SVG coordinates (``points`` for a polyline)."""

    points: str
    area: str
    top: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    head: int
    rate: float | None
    hosts: list[HostView]
    consumers: list[ConsumerView]
    dropped_consumers: int
    chart: Chart

    @property
    def layout(self) -> str:
        """Which rows the page has: the JSON view tells when a reload shows new ones."""
        hosts = ",".join(f"{h.id}:{h.status}" for h in self.hosts)
        return f"{hosts};{','.join(str(c.id) for c in self.consumers)}"


def _frame_seq(frame: bytes) -> int | None:
    try:
        _, body = decode_frame(frame, check_floats=False)
    except CborDecodeError:
        return None
    seq = body.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def consumer_view(consumer: Consumer, head: int) -> ConsumerView:
    """How far behind the head ``consumer`` is (the seq of the last frame written to it)."""
    position = _frame_seq(consumer.last_frame) if consumer.last_frame is not None else None
    if position is None:
        # nothing with a seq written yet: it starts after its cursor, or live at the head
        position = consumer.cursor if consumer.cursor is not None else None
    lag = max(0, head - position) if position is not None else 0
    return ConsumerView(
        id=consumer.id,
        remote=consumer.remote,
        user_agent=consumer.user_agent,
        connected_at=consumer.connected_at,
        position=position,
        lag=lag,
        events_sent=consumer.events_sent,
    )


def _nice_top(value: float) -> float:
    """The chart's top: ``value`` rounded up to 1, 2 or 5 times a power of ten (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # unreachable


def chart(history: list[tuple[float, float]], now: float) -> Chart:
    """Lay out ``history`` (unix time, events/s) over the :data:`CHART_SPAN_S` ending ``now``."""
    shown = [(t, r) for t, r in history if now - t <= CHART_SPAN_S]
    top = _nice_top(max((r for _, r in shown), default=0.0))
    coords = [
        (
            round(CHART_WIDTH * (1 - (now - t) / CHART_SPAN_S), 1),
            round(CHART_HEIGHT * (1 - r / top), 1),
        )
        for t, r in shown
    ]
    points = " ".join(f"{x:g},{y:g}" for x, y in coords)
    area = ""
    if len(coords) >= 2:
        area = f"{coords[0][0]:g},{CHART_HEIGHT} {points} {coords[-1][0]:g},{CHART_HEIGHT}"
    return Chart(points=points if len(coords) >= 2 else "", area=area, top=top)


def snapshot(relay: Relay, sampler: Sampler) -> Snapshot:
    """The relay as the dashboard shows it now (takes a reading if one is due)."""
    head = relay.writer.committed_seq
    hosts = sorted(relay.registry.hosts.values(), key=lambda h: h.id)
    sampler.take(head, hosts)
    views = [
        HostView(
            id=h.id,
            name=h.name,
            status=h.row.status,
            connected=h.connected,
            cursor=h.cursor,
            accounts=h.row.account_count,
            accepted=accepted(h),
            rate=sampler.host_rate(h.id),
            failures=failures(h.stats),
            last_error=h.last_error,
        )
        for h in hosts
    ]
    consumers = [consumer_view(c, head) for c in relay.fanout.consumers.values()]
    fanout = relay.fanout
    return Snapshot(
        head=head,
        rate=sampler.rate(),
        hosts=views,
        consumers=consumers,
        dropped_consumers=relay.sequencer.dropped_too_slow + fanout.stalled_dropped,
        chart=chart(sampler.history(), sampler.samples[-1].wall),
    )

