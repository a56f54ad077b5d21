"""Firehose fan-out: live delivery of sequenced events and ``subscribeRepos``.

Shared by the PDS and the relay. The durable event log lives in the
service's database; its writer appends each event (a complete binary frame
carrying its ``seq``) in the same transaction as the data it describes, then
calls :meth:`Sequencer.publish` with the new
events. The sequencer never writes the log: it only reads it (through the
narrow :class:`EventLog` protocol) to replay, and pushes published events
into one bounded queue per live subscriber.

Connection-time cursor rules (``spec/event-stream.md`` section 4)::

    cursor absent             live only
    cursor > latest seq       FutureCursor error frame, close (nothing else sent)
    cursor 0                  the whole replay window, then live
    cursor inside the window  every stored event with seq > cursor, then live
    cursor before the window  #info OutdatedCursor, the whole window, then live

Replay-to-live cutover, as the reference PDS does it:

1. page through the log (``seq > last``, :data:`PAGE_SIZE` per page) until
   a short page or within :data:`CUTOVER_MARGIN` of the latest seq;
2. register the live queue (published events start buffering), then read
   the log again until it is exhausted;
3. drain the live queue, dropping anything with ``seq <=`` the last event
   yielded.

Every event with a larger seq is either committed before the reads of step 2
(so they return it) or committed after registration, and therefore
published to the queue; deduplication by seq makes the overlap harmless.
This relies on the writer publishing in seq order, after its commit.

A subscriber whose queue would exceed ``buffer_size`` is dropped: it stops
receiving events, its stream raises :class:`ConsumerTooSlow` (an error frame,
then close 1008) and the client can reconnect with its cursor. If its
connection is stuck (the client stopped reading, so the server cannot even
write the error frame), the subscription task passed as ``stuck_task`` is
cancelled after ``slow_grace_s``, so a silent client cannot pin a handler.

With ``stall_s`` set (the relay sets it), only a *stalled* subscriber is
dropped: one that has not taken a batch for ``stall_s`` seconds. A subscriber
that overflows while still reading is merely behind: it leaves the live set,
its queue is freed, and it catches up from the log (steps 1-3 again, from the
last seq it was given). Every published event is already in the log, so
nothing is lost, and memory per subscriber stays bounded by ``buffer_size``.

:meth:`Sequencer.subscribe_batches` yields the same frames grouped as they
become available (a replay page, or everything queued), so a server can
write many frames to a socket at once; :meth:`Sequencer.subscribe` yields
them one by one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Final, Protocol

from roost.errors import RoostError
from roost.frames import encode_frame
from roost.xrpc import XrpcContext, XrpcRouter

__all__ = [
    "CUTOVER_MARGIN",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_REPLAY_WINDOW_S",
    "PAGE_SIZE",
    "SLOW_CONSUMER_GRACE_S",
    "SUBSCRIBE_REPOS",
    "ConsumerTooSlow",
    "EventLog",
    "FutureCursor",
    "Sequencer",
]

logger = logging.getLogger(__name__)

#: The firehose method this module serves.
SUBSCRIBE_REPOS: Final = "com.atproto.sync.subscribeRepos"
#: Events read from the log per replay query (reference PDS: 500).
PAGE_SIZE: Final = 500
#: Backfill stops paging once this close to the latest seq (half a page).
CUTOVER_MARGIN: Final = PAGE_SIZE // 2
#: Live events buffered per subscriber before it is dropped (reference PDS: 500).
DEFAULT_BUFFER_SIZE: Final = 500
#: How far back a cursor can replay (the relay default of 72 h; the reference PDS keeps 24 h).
DEFAULT_REPLAY_WINDOW_S: Final = 72 * 3600.0
#: How long a dropped subscriber may take to get its error frame out before
#: its task is cancelled (indigo: 5 s).
SLOW_CONSUMER_GRACE_S: Final = 5.0

_OUTDATED_MESSAGE: Final = "Requested cursor exceeded limit. Possibly missing events"
_OUTDATED_FRAME: Final = encode_frame(
    "#info", {"name": "OutdatedCursor", "message": _OUTDATED_MESSAGE}
)


class ConsumerTooSlow(RoostError):
    """The subscriber's outgoing buffer overflowed; it may reconnect with its cursor."""

    error = "ConsumerTooSlow"


class FutureCursor(RoostError):
    """The requested cursor is greater than the latest seq."""

    error = "FutureCursor"


class EventLog(Protocol):
    """Read access to the durable, seq-ordered event log (written by the writer)."""

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """``(seq, frame)`` with seq greater than ``seq``, ascending, at most ``limit``."""
        ...

    async def latest_seq(self) -> int:
        """The highest seq ever used; 0 when there is none."""
        ...

    async def oldest_seq_since(self, time_ms: int) -> int | None:
        """The smallest seq whose event time is at or after ``time_ms`` (None if none)."""
        ...


# Subscriber states.
_OPEN: Final = "open"
_TOO_SLOW: Final = "too-slow"
_CLOSED: Final = "closed"


class _Subscriber:
    """One open stream: its live queue (once registered) and state."""

    __slots__ = ("queue", "wakeup", "state", "stuck_task", "timer", "behind", "pulled_at")

    def __init__(self, stuck_task: asyncio.Task[Any] | None, now: float) -> None:
        self.queue: deque[tuple[int, bytes]] = deque()
        self.wakeup = asyncio.Event()
        self.state: str = _OPEN
        self.stuck_task = stuck_task
        self.timer: asyncio.TimerHandle | None = None
        #: Set when it must (re)play from the log before going live.
        self.behind = False
        #: When it last took a batch (the sequencer's clock).
        self.pulled_at = now


class Sequencer:
    """Fan-out of published events to ``subscribeRepos`` streams.

    ``log``: the event log to replay from. ``replay_window_s``: how far back
    (by event time) cursors may replay. ``buffer_size``: live events queued
    per subscriber before it is dropped as too slow. ``clock``: seconds since
    the epoch. ``slow_grace_s``: see the module docstring (``None``: never
    cancel). ``stall_s``: see the module docstring (``None``: every
    overflowing subscriber is dropped).

    Metrics (plain attributes, for an operator page): ``subscriber_count``
    (open streams, replaying or live), ``live_subscriber_count``,
    ``events_published``, ``dropped_too_slow``, ``sent_back_to_replay``,
    ``last_published_seq``.

    All methods must be called on the event loop that serves the streams.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        replay_window_s: float = DEFAULT_REPLAY_WINDOW_S,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        clock: Callable[[], float] = time.time,
        slow_grace_s: float | None = SLOW_CONSUMER_GRACE_S,
        stall_s: float | None = None,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if replay_window_s < 0:
            raise ValueError("replay_window_s must not be negative")
        if stall_s is not None and stall_s <= 0:
            raise ValueError("stall_s must be positive")
        self.log = log
        self.replay_window_s = replay_window_s
        self.buffer_size = buffer_size
        self.slow_grace_s = slow_grace_s
        self.stall_s = stall_s
        self._clock = clock
        self._streams: set[_Subscriber] = set()
        self._live: set[_Subscriber] = set()
        self._closed = False
        self.events_published = 0
        self.dropped_too_slow = 0
        self.sent_back_to_replay = 0
        self.last_published_seq = 0

    # -- metrics ----------------------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        """Open streams, whether still replaying or live."""
        return len(self._streams)

    @property
    def live_subscriber_count(self) -> int:
        """Streams registered for live events."""
        return len(self._live)

    @property
    def queued_events(self) -> int:
        """Events waiting in subscriber queues, all subscribers together."""
        return sum(len(sub.queue) for sub in self._streams)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the writer's side ------------------------------------------------------------

    def publish(self, events: Sequence[tuple[int, bytes]]) -> None:
        """Hand newly committed events (in seq order) to every live subscriber.

        Never blocks: a subscriber whose queue cannot take them all is dropped
        as too slow.
        """
        if not events:
            return
        self.events_published += len(events)
        self.last_published_seq = max(self.last_published_seq, events[-1][0])
        stalled_before = None if self.stall_s is None else self._clock() - self.stall_s
        for sub in list(self._live):
            if len(sub.queue) + len(events) > self.buffer_size:
                if stalled_before is not None and sub.pulled_at > stalled_before:
                    self._send_back(sub)
                else:
                    self._drop(sub)
            else:
                sub.queue.extend(events)
                sub.wakeup.set()

    def _send_back(self, sub: _Subscriber) -> None:
        """Overflowing but still reading: free its queue, let it catch up from the log."""
        self._live.discard(sub)
        sub.queue.clear()
        sub.behind = True
        sub.wakeup.set()
        self.sent_back_to_replay += 1

    def _drop(self, sub: _Subscriber) -> None:
        self._live.discard(sub)
        sub.queue.clear()
        sub.state = _TOO_SLOW
        sub.wakeup.set()
        self.dropped_too_slow += 1
        logger.info("subscriber dropped reason=too-slow buffer=%d", self.buffer_size)
        task = sub.stuck_task
        if task is not None and self.slow_grace_s is not None and not task.done():
            sub.timer = task.get_loop().call_later(self.slow_grace_s, task.cancel)

    def close(self) -> None:
        """End every stream (server shutdown); later subscriptions end at once."""
        self._closed = True
        for sub in list(self._streams):
            if sub.state == _OPEN:
                sub.state = _CLOSED
            sub.queue.clear()
            sub.wakeup.set()
        self._live.clear()

    # -- the subscribers' side --------------------------------------------------------

    async def subscribe(
        self, cursor: int | None = None, *, stuck_task: asyncio.Task[Any] | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The frames of one ``subscribeRepos`` stream, per the cursor rules above.

        Raises :class:`FutureCursor` before yielding anything when ``cursor``
        is past the latest seq, and :class:`ConsumerTooSlow` when dropped. Ends
        when :meth:`close` is called. A negative cursor counts as 0.
        ``stuck_task``: the task sending this stream to the client, cancelled
        if it is still running ``slow_grace_s`` after the drop.
        """
        batches = self.subscribe_batches(cursor, stuck_task=stuck_task)
        try:
            async for batch in batches:
                for frame in batch:
                    yield frame
        finally:
            await batches.aclose()

    async def subscribe_batches(
        self, cursor: int | None = None, *, stuck_task: asyncio.Task[Any] | None = None
    ) -> AsyncGenerator[list[bytes], None]:
        """:meth:`subscribe`, with the frames in non-empty lists as they become available."""
        if self._closed:
            return
        sub = _Subscriber(stuck_task, self._clock())
        self._streams.add(sub)
        try:
            if cursor is None:
                latest = await self.log.latest_seq()
                self._live.add(sub)
                # Only used if it is ever sent back to replay: everything
                # published from here on is in its queue.
                last = max(latest, self.last_published_seq)
            else:
                last, outdated = await self._start(cursor)
                if outdated:
                    yield [_OUTDATED_FRAME]
                sub.behind = True
            while True:
                if sub.behind and sub.state == _OPEN:
                    sub.behind = False
                    # 1. backfill, page by page, until close to the head of the log
                    while sub.state == _OPEN:
                        page = await self.log.read_after(last, PAGE_SIZE)
                        if page:
                            last = page[-1][0]
                            sub.pulled_at = self._clock()
                            yield [frame for _, frame in page]
                        if len(page) < PAGE_SIZE:
                            break
                        if await self.log.latest_seq() - last <= CUTOVER_MARGIN:
                            break
                    # 2. cutover: buffer live events, then read what the log has left
                    if sub.state == _OPEN:
                        self._live.add(sub)
                    while sub.state == _OPEN and not sub.behind:
                        page = await self.log.read_after(last, PAGE_SIZE)
                        if page:
                            last = page[-1][0]
                            sub.pulled_at = self._clock()
                            yield [frame for _, frame in page]
                        if len(page) < PAGE_SIZE:
                            break
                # 3. live, deduplicated against what replay already sent
                if sub.state == _CLOSED:
                    return
                if sub.state == _TOO_SLOW:
                    raise ConsumerTooSlow("Stream consumer too slow")
                if sub.behind:
                    continue
                queue = sub.queue
                if not queue:
                    sub.wakeup.clear()
                    await sub.wakeup.wait()
                    continue
                # everything queued at once; seqs increase, so only a prefix can be old
                items = list(queue)
                queue.clear()
                start = 0
                while start < len(items) and items[start][0] <= last:
                    start += 1
                if start < len(items):
                    last = items[-1][0]
                    sub.pulled_at = self._clock()
                    yield [frame for _, frame in items[start:]]
        finally:
            self._streams.discard(sub)
            self._live.discard(sub)

    async def _start(self, cursor: int) -> tuple[int, bool]:
        """Where replay starts (the last seq *not* to send) and whether to send OutdatedCursor."""
        cursor = max(cursor, 0)
        latest = await self.log.latest_seq()
        if cursor > latest:
            raise FutureCursor("Cursor in the future.")
        window_start_ms = int((self._clock() - self.replay_window_s) * 1000)
        first = await self.log.oldest_seq_since(window_start_ms)
        if first is None:
            # Every stored event is older than the window: nothing to replay.
            return latest, 0 < cursor < latest
        if cursor == 0:
            return first - 1, False
        if cursor >= first - 1:
            return cursor, False
        # The cursor is before the window; it missed events only if some exist
        # between it and the window (seqs may have gaps).
        after = await self.log.read_after(cursor, 1)
        return first - 1, bool(after) and after[0][0] < first

    # -- XRPC -------------------------------------------------------------------------

    def register(self, router: XrpcRouter) -> None:
        """Serve ``com.atproto.sync.subscribeRepos`` from this sequencer on ``router``."""

        @router.subscription(SUBSCRIBE_REPOS)
        async def subscribe_repos(ctx: XrpcContext) -> AsyncIterator[bytes]:
            # A coroutine returning the stream: the XRPC layer iterates it in
            # its own task (the one to cancel if the client stops reading) and
            # closes it when the client goes away.
            cursor = ctx.params.get("cursor")
            return self.subscribe(cursor, stuck_task=asyncio.current_task())
