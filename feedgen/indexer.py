"""The indexer: a firehose (relay or PDS ``subscribeRepos``) into the feed index.

One task reads the stream through :func:`roost.firehose.subscribe` (from the
stored cursor; from ``start_cursor``, or live, the first time), asking
only for the indexed collections (the client drops other ops before
touching their record blocks). Events are batched: a batch is committed
when it holds ``batch_size`` events or has waited ``batch_delay`` seconds,
in a worker thread that turns its events into index ops
(:mod:`feedgen.records`) and applies them, while the event loop reads and
decodes the next batch. Each commit writes the batch's
rows and its last seq as the stream cursor in one transaction, and only
then acknowledges the seq to the subscription, so:

- a restart resumes from the stored cursor (``subscribe(url, cursor=...)``)
  and loses nothing that was acknowledged;
- events after the stored cursor come again, and applying them again changes
  nothing (the store ignores rows it has and deletes of rows it lacks).

While idle, the cursor is still moved past events the filters dropped.

Event handling: creates and updates index the record (an update replaces
it); deletes remove it; ``#account`` with status ``deleted`` or
``takendown`` purges the account's records (other inactive states are left
to the AppView, which hides those accounts). Commits marked ``tooBig`` carry
no records and are counted as skipped.

:class:`HostTracker` places authors on their PDS host (for ``latest`` feeds
of one host) by resolving the DIDs of authors the index has not placed yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from roost import firehose
from roost.errors import RoostError
from roost.identity import IdentityDirectory

from feedgen.records import INDEXED_COLLECTIONS, delete_op, index_op, parse_time_ms
from feedgen.storage import ActorHost, IndexOp, IndexStore, PurgeAccount

__all__ = ["HostTracker", "Indexer", "PURGED_STATUSES"]

log = logging.getLogger(__name__)

#: ``#account`` statuses after which an account's records are removed.
PURGED_STATUSES: Final = frozenset({"deleted", "takendown"})
#: Events waiting between the stream and the batcher at most.
QUEUE_EVENTS: Final = 10_000
#: How often the cursor is saved while no indexed events arrive, seconds.
IDLE_SAVE_S: Final = 5.0
#: Wait before re-subscribing after the stream failed for good, seconds.
RETRY_S: Final = 10.0
#: Window of the events/s figure, seconds.
RATE_WINDOW_S: Final = 60.0


class Indexer:
    """Keeps ``store`` up to date with the firehose at ``url`` (see the module docstring)."""

    def __init__(
        self,
        store: IndexStore,
        url: str,
        *,
        batch_size: int = 2_000,
        batch_delay: float = 0.1,
        collections: Iterable[str] = INDEXED_COLLECTIONS,
        start_cursor: int | None = None,
        verify: bool = False,
        plc_url: str = "https://plc.directory",
        allow_local: bool = False,
        subscribe: Callable[..., Any] = firehose.subscribe,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.url = url
        self.service = firehose.endpoint_url(url)
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self.collections = tuple(collections)
        self.start_cursor = start_cursor
        self.verify = verify
        self.plc_url = plc_url
        self.allow_local = allow_local
        self._subscribe = subscribe
        self._clock = clock
        self.subscription: Any = None
        # counters
        self.events = 0
        self.ops = 0
        self.batches = 0
        self.skipped = 0
        self.saved_cursor: int | None = None
        self.error: str | None = None
        self._rate: deque[tuple[float, int]] = deque()

    # -- events to ops --------------------------------------------------------------

    def ops_for(self, event: object) -> list[IndexOp]:
        """The index ops one firehose event calls for (pure: no I/O)."""
        if isinstance(event, firehose.Commit):
            return self._commit_ops(event)
        if isinstance(event, firehose.Account):
            if not event.active and event.status in PURGED_STATUSES:
                return [PurgeAccount(event.did)]
            return []
        if isinstance(event, firehose.Invalid):
            self.skipped += 1
            log.info("skipping invalid firehose event seq=%s did=%s: %s",
                     event.seq, event.did, event.reason)
        return []

    def _commit_ops(self, event: firehose.Commit) -> list[IndexOp]:
        if event.too_big:
            self.skipped += 1
            return []
        now = int(self._clock() * 1000)
        seen = parse_time_ms(event.time)
        indexed_at = now if seen is None or seen > now else seen
        did = event.did
        out: list[IndexOp] = []
        for op in event.ops:
            action = op.action
            if action == "delete":
                gone = delete_op(did, op.collection, op.rkey)
                if gone is not None:
                    out.append(gone)
                continue
            if op.cid is None:
                continue
            row = index_op(did, op.collection, op.rkey, op.cid, op.record, indexed_at)
            if row is None:
                self.skipped += 1
                continue
            if action == "update":
                gone = delete_op(did, op.collection, op.rkey)
                if gone is not None:
                    out.append(gone)
            out.append(row)
        return out

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Index until cancelled; re-subscribes after fatal stream errors."""
        while True:
            try:
                await self._run_once()
                return
            except Exception as exc:  # noqa: BLE001 - a stream or storage failure: start over
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("indexer stopped url=%s: %s; resuming from the stored cursor in %gs",
                          self.url, self.error, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _run_once(self) -> None:
        cursor = await asyncio.to_thread(self.store.cursor, self.service)
        self.saved_cursor = cursor
        if cursor is None:
            cursor = self.start_cursor
        log.info("indexer subscribing url=%s cursor=%s", self.url, cursor)
        sub = self._subscribe(
            self.url,
            cursor=cursor,
            collections=self.collections,
            decode_records=True,
            verify=self.verify,
            plc_url=self.plc_url,
            allow_local=self.allow_local,
        )
        self.subscription = sub
        queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_EVENTS)
        done = object()

        async def read() -> None:
            try:
                async for event in sub:
                    await queue.put(event)
            finally:
                await queue.put(done)

        reader = asyncio.create_task(read(), name="feedgen-firehose-reader")
        in_flight: asyncio.Task[None] | None = None
        pending: list[Any] = []  # events, mapped to ops by the writer thread
        pending_events = 0
        last_seq: int | None = None
        deadline = 0.0
        try:
            while True:
                try:
                    event = queue.get_nowait()
                except asyncio.QueueEmpty:
                    wait = max(0.0, deadline - time.monotonic()) if pending_events else IDLE_SAVE_S
                    try:
                        event = await asyncio.wait_for(queue.get(), wait)
                    except TimeoutError:
                        event = None
                if event is done:
                    reader.result()  # re-raise what ended the stream
                    break
                if event is not None:
                    self.events += 1
                    pending.append(event)
                    seq = getattr(event, "seq", None)
                    if seq is not None:
                        if not pending_events:
                            deadline = time.monotonic() + self.batch_delay
                        last_seq = seq
                        pending_events += 1
                if pending_events and (
                    pending_events >= self.batch_size or time.monotonic() >= deadline
                ):
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.create_task(self._commit(sub, pending, last_seq))
                    pending, pending_events = [], 0
                elif event is None and not pending_events:
                    if in_flight is not None:
                        await in_flight
                        in_flight = None
                    await self._save_idle_cursor(sub)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if in_flight is not None:
                with contextlib.suppress(Exception):
                    await in_flight
            if pending_events and last_seq is not None:
                # shutting down: commit what was received (it is acknowledged below)
                with contextlib.suppress(Exception):
                    await self._commit(sub, pending, last_seq)
            with contextlib.suppress(Exception):
                await sub.close()

    def _apply(self, events: list[Any], cursor: int) -> int:
        """Map ``events`` and apply them with ``cursor`` (in the writer thread); ops applied."""
        ops: list[IndexOp] = []
        for event in events:
            ops.extend(self.ops_for(event))
        self.store.apply(ops, cursor=(self.service, cursor))
        return len(ops)

    async def _commit(self, sub: Any, events: list[Any], seq: int | None) -> None:
        assert seq is not None
        cursor = seq
        applied = await asyncio.to_thread(self._apply, events, cursor)
        sub.ack(seq)
        self.saved_cursor = cursor
        self.ops += applied
        self.batches += 1
        self.error = None
        self._note_rate()

    async def _save_idle_cursor(self, sub: Any) -> None:
        cursor = sub.cursor
        if cursor is None or cursor == self.saved_cursor:
            return
        if self.saved_cursor is not None and cursor < self.saved_cursor:
            return
        await asyncio.to_thread(self.store.apply, [], cursor=(self.service, cursor))
        self.saved_cursor = cursor

    def _note_rate(self) -> None:
        now = time.monotonic()
        self._rate.append((now, self.events))
        while self._rate and now - self._rate[0][0] > RATE_WINDOW_S:
            self._rate.popleft()

    # -- status --------------------------------------------------------------------------------

    @property
    def events_per_second(self) -> float:
        if len(self._rate) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def status(self) -> dict[str, Any]:
        sub = self.subscription
        lag = sub.lag_seconds if sub is not None else None
        return {
            "url": self.url,
            "connected": bool(sub is not None and sub.connected),
            "cursor": self.saved_cursor,
            "events": self.events,
            "ops": self.ops,
            "batches": self.batches,
            "skipped": self.skipped,
            "eventsPerSecond": round(self.events_per_second, 1),
            "lagSeconds": None if lag is None else round(lag, 3),
            "error": self.error,
        }


class HostTracker:
    """Resolves the PDS host of authors the index has not placed yet."""

    #: DIDs resolved per round, and resolutions in flight at once.
    ROUND: Final = 200
    CONCURRENCY: Final = 8
    #: Pause between rounds when there was nothing (or something) to do, seconds.
    IDLE_S: Final = 10.0
    BUSY_S: Final = 0.5

    def __init__(self, store: IndexStore, identity: IdentityDirectory) -> None:
        self.store = store
        self.identity = identity
        self.resolved = 0

    async def host_of(self, did: str) -> str:
        """``name[:port]`` of the DID's PDS; '' when it cannot be found."""
        try:
            doc = await self.identity.lookup_did(did)
        except RoostError:
            return ""
        endpoint = doc.pds_endpoint
        return urlsplit(endpoint).netloc.lower() if endpoint else ""

    async def round(self) -> int:
        """Place one round of authors; returns how many."""
        dids = await asyncio.to_thread(self.store.unknown_authors, self.ROUND)
        if not dids:
            return 0
        limit = asyncio.Semaphore(self.CONCURRENCY)

        async def one(did: str) -> ActorHost:
            async with limit:
                return ActorHost(did, await self.host_of(did))

        ops: list[IndexOp] = list(await asyncio.gather(*(one(d) for d in dids)))
        await asyncio.to_thread(self.store.apply, ops)
        self.resolved += len(ops)
        return len(ops)

    async def run(self) -> None:
        while True:
            try:
                busy = await self.round()
            except (RoostError, OSError, ValueError) as exc:
                log.warning("author host resolution failed: %s", exc)
                busy = 0
            await asyncio.sleep(self.BUSY_S if busy else self.IDLE_S)
