"""The relay's own event log: one writer appends (group commit), streams replay it.

Writing. Host consumers hand their accepted events, the account states those
events produced and their new upstream cursor to :meth:`EventWriter.submit`.
The writer takes everything queued, gives each event the next seq, encodes
its frame once, and stores all of it in **one** transaction (one fsync for
many events and many hosts); only when that transaction is durable does it
publish the frames to the :class:`~roost.sequencer.Sequencer` and answer the
submitters. So an event is on disk before anyone sees it, and a host cursor
is stored together with exactly the events it covers. On SQLite a seq is
never reused (the highest one is kept in ``meta``; a failed transaction
leaves a gap, which the protocol allows). A store that numbers events inside
its transaction (``numbers_events``: :mod:`relay.postgres`) may renumber the
batch from the log's head; the writer then publishes and answers with the
seqs that were stored, and after a failure it numbers from the last
committed seq again, so that log has no gaps.

Time of an event (for the replay window) is the relay's clock when it was
sequenced, kept non-decreasing so "the first event at or after T" is a seq.
Retention: :meth:`EventWriter.prune` deletes events older than the replay
window, then the oldest ones while the log is larger than its size cap.

Reading. :class:`EventLogReader` is the sequencer's
:class:`~roost.sequencer.EventLog`: pages of stored frames read in worker
threads, skipping events of accounts taken down since (their events stop
flowing, in replay as well as live).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from roost import cbor
from roost.frames import encode_frame
from roost.groupcommit import run_group_commits
from roost.sequencer import Sequencer

from relay.storage import AccountState, Statement, Store, WriteSet

__all__ = [
    "PRUNE_BATCH",
    "EventLogReader",
    "EventWriter",
    "OutEvent",
    "Submission",
]

log = logging.getLogger(__name__)

#: Events deleted per pruning transaction (keeps the write lock short).
PRUNE_BATCH: Final = 20_000
#: Submissions merged into one transaction at most.
MAX_SUBMISSIONS_PER_COMMIT: Final = 512
#: ``dirty_batch`` of an account changed by a submission still being built.
_NOT_SUBMITTED: Final = 1 << 62


@dataclass(slots=True)
class OutEvent:
    """An event to sequence: its type, its body (``seq`` is filled in) and account uid."""

    t: str
    body: dict[str, Any]
    uid: int


@dataclass(slots=True)
class Submission:
    """What one piece of work wants written together."""

    events: list[OutEvent] = field(default_factory=list)
    #: Accounts to store, as they are when submitted (later changes go in later submissions).
    accounts: dict[int, Any] = field(default_factory=dict)
    #: (host id, upstream seq): the host's cursor after this work.
    cursor: tuple[int, int] | None = None
    host_counts: dict[int, int] = field(default_factory=dict)
    statements: list[Statement] = field(default_factory=list)
    tracked: dict[int, AccountState] = field(default_factory=dict)

    def account(self, state: AccountState) -> None:
        """Store ``state`` (its columns are read when the submission is submitted).

        It stays in the account cache until this submission is durable.
        """
        self.tracked[state.uid] = state
        state.dirty_batch = _NOT_SUBMITTED

    def __bool__(self) -> bool:
        return bool(
            self.events or self.tracked or self.cursor or self.host_counts or self.statements
        )


@dataclass(slots=True)
class _Queued:
    submission: Submission
    number: int
    future: asyncio.Future[list[int]]


class EventWriter:
    """The single writer of the relay's store. :meth:`start`, then :meth:`submit`."""

    def __init__(
        self,
        store: Store,
        sequencer: Sequencer,
        *,
        initial_seq: int = 1,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.sequencer = sequencer
        self.clock = clock
        self.on_failure = on_failure
        self.last_seq = max(store.last_seq(), initial_seq - 1)
        #: Highest seq whose event is durable.
        self.committed_seq = self.last_seq
        #: Submissions are numbered; every one up to this is durable.
        self.committed_number = 0
        self._numbers = 0
        self._last_time_ms = 0
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.events_written = 0
        self.failures = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, submission: Submission) -> asyncio.Future[list[int]]:
        """Queue ``submission``; the future gives its events' seqs once durable."""
        if self._task is None:
            raise RuntimeError("the writer is not running")
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._numbers += 1
        for uid, state in submission.tracked.items():
            submission.accounts[uid] = state.row()
            state.dirty_batch = self._numbers
        self._queue.put_nowait(_Queued(submission, self._numbers, future))
        return future


    async def _run(self) -> None:
        await run_group_commits(self._queue, MAX_SUBMISSIONS_PER_COMMIT, self._commit)

    async def _commit(self, batch: list[_Queued]) -> None:
        writes = WriteSet()
        now_ms = max(int(self.clock() * 1000), self._last_time_ms)
        self._last_time_ms = now_ms
        first_seq = self.last_seq
        events: list[OutEvent] = []
        counts: list[int] = []
        for item in batch:
            sub = item.submission
            writes.statements.extend(sub.statements)
            events.extend(sub.events)
            counts.append(len(sub.events))
            writes.accounts.update(sub.accounts)
            if sub.cursor is not None:
                writes.cursors[sub.cursor[0]] = sub.cursor[1]
            writes.host_counts.update(sub.host_counts)

        def number(first: int) -> list[tuple[int, int, int, bytes]]:
            out = []
            for seq, event in enumerate(events, first):
                event.body["seq"] = seq
                out.append((seq, event.uid, now_ms, _frame(event.t, event.body)))
            return out

        if events:
            writes.events = number(first_seq + 1)
            writes.last_seq = first_seq + len(events)
            writes.renumber = number
        try:
            await asyncio.to_thread(self.store.commit, writes)
        except Exception as exc:
            self.failures += 1
            log.exception(
                "relay log transaction failed events=%d seqs=%d..%d", len(events), first_seq + 1,
                first_seq + len(events),
            )
            if not getattr(self.store, "numbers_events", False):
                self.last_seq = first_seq + len(events)  # never reused: the failed seqs are a gap
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if self.on_failure is not None:
                self.on_failure(exc)
            return
        # the store may have numbered the events from its own head
        frames = [(seq, frame) for seq, _, _, frame in writes.events]
        if frames:
            self.last_seq = frames[-1][0]
        self.commits += 1
        self.events_written += len(frames)
        self.committed_seq = self.last_seq
        self.committed_number = batch[-1].number
        if frames:
            self.sequencer.publish(frames)
        start = 0
        for item, count in zip(batch, counts):
            if not item.future.done():
                item.future.set_result([seq for seq, _ in frames[start : start + count]])
            start += count

    async def prune(self, window_s: float, max_bytes: int) -> int:
        """Delete events past the replay window or the size cap; returns how many."""
        before_ms = int((self.clock() - window_s) * 1000)
        total = 0
        while True:
            deleted = await asyncio.to_thread(
                self.store.prune_events, before_ms, max_bytes, PRUNE_BATCH
            )
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        if total:
            log.info("relay log pruned events=%d", total)
        return total


_HEADERS: Final = {t: encode_frame(t, {})[:-1] for t in ("#commit", "#sync", "#identity", "#account")}


def _frame(t: str, body: dict[str, Any]) -> bytes:
    """:func:`roost.frames.encode_frame` without its float scan.

    Bodies here are built from decoded DAG-CBOR and the relay's own strings and
    booleans: they cannot hold a float, and the scan costs more than the encoding.
    """
    return _HEADERS[t] + cbor.encode(body, check_floats=False)


class EventLogReader:
    """The sequencer's view of the log (also what a Jetstream endpoint replays from).

    Built before the store is open (the app's routes need it); :meth:`bind`
    connects it when the relay starts.
    """

    def __init__(self) -> None:
        self.store: Store | None = None
        self.writer: EventWriter | None = None
        self.takendown: set[int] = set()

    def bind(self, store: Store, writer: EventWriter, takendown: set[int]) -> None:
        self.store = store
        self.writer = writer
        self.takendown = takendown

    def _store(self) -> Store:
        if self.store is None:
            raise RuntimeError("the relay is not running")
        return self.store

    async def page(self, seq: int, limit: int) -> list[tuple[int, int, bytes]]:
        """Stored ``(seq, uid, frame)`` after ``seq``, unfiltered (read in a worker thread)."""
        return await asyncio.to_thread(self._store().events_after, seq, limit)

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        # A short page means "the end of the log" to the sequencer: keep reading
        # past events that are filtered out until the page is full or the log ends.
        while len(out) < limit:
            rows = await self.page(seq, limit)
            hidden = self.takendown
            out.extend((s, frame) for s, uid, frame in rows if uid not in hidden)
            if len(rows) < limit:
                break
            seq = rows[-1][0]
        return out[:limit]

    async def latest_seq(self) -> int:
        if self.writer is None:
            raise RuntimeError("the relay is not running")
        return self.writer.committed_seq

    async def oldest_seq_since(self, time_ms: int) -> int | None:
        return await asyncio.to_thread(self._store().oldest_seq_since, time_ms)
