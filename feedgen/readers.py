"""Readers of the following feed whose follow lists the index keeps ready.

A ``following`` page read from scratch probes every account the reader
follows. For a *kept* reader the index also holds, per followed account, the
time of its newest item, updated as posts arrive (see ``reader_follow`` in
:mod:`feedgen.sqlite`), so a page reads only the accounts that can be on it.
Keeping a reader costs a little on every post by an account they follow, so
only readers who actually read the feed are kept, and only while they do:

- the first time someone reads their following feed, :class:`ReaderKeeper`
  has the writer keep them (that request, and any before the writer got to
  it, is answered the slow way, with the same result);
- a kept reader is marked seen at most every :data:`TOUCH_INTERVAL_S`;
- readers not seen for :data:`READER_TTL_S` are let go.

The index reader calls :meth:`ReaderKeeper.note` (from any thread); the
keeper batches the writes in its own task.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["READER_TTL_S", "SWEEP_INTERVAL_S", "TOUCH_INTERVAL_S", "ReaderKeeper"]

log = logging.getLogger(__name__)

#: A kept reader is marked seen at most this often.
TOUCH_INTERVAL_S: Final = 3600.0
#: Readers not seen for this long stop being kept.
READER_TTL_S: Final = 30 * 86400.0
#: How often readers past the TTL are let go.
SWEEP_INTERVAL_S: Final = 3600.0
#: Readers remembered in memory (to skip repeated notes) at most.
MAX_NOTED: Final = 100_000
#: Readers registered per write at most.
BATCH: Final = 500


class ReaderKeeper:
    """Turns "this reader read their following feed" into kept readers (see the module doc).

    ``store`` has ``register_readers(dids, now_ms)`` and ``forget_readers(seen_before_ms)``.
    """

    def __init__(
        self,
        store: Any,
        *,
        clock: Callable[[], float] = time.time,
        touch_interval: float = TOUCH_INTERVAL_S,
        ttl: float = READER_TTL_S,
    ) -> None:
        self.store = store
        self.clock = clock
        self.touch_interval = touch_interval
        self.ttl = ttl
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[str] | None = None
        self._lock = threading.Lock()
        self._noted: dict[str, float] = {}
        self.registered = 0

    def note(self, did: str, kept: bool) -> None:
        """``did`` read their following feed (``kept``: the index keeps them already)."""
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            return
        now = self.clock()
        with self._lock:
            last = self._noted.get(did)
            if last is not None and now - last < (self.touch_interval if kept else 60.0):
                return
            if len(self._noted) >= MAX_NOTED:
                self._noted.clear()
            self._noted[did] = now
        loop.call_soon_threadsafe(queue.put_nowait, did)

    async def run(self) -> None:
        """Write what was noted, and let go of readers gone quiet, until cancelled."""
        self._loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queue = queue
        next_sweep = time.monotonic()
        try:
            while True:
                timeout = max(0.0, next_sweep - time.monotonic())
                try:
                    first = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    first = None
                if first is not None:
                    batch = [first]
                    while len(batch) < BATCH and not queue.empty():
                        batch.append(queue.get_nowait())
                    now_ms = int(self.clock() * 1000)
                    try:
                        added = await asyncio.to_thread(self.store.register_readers, batch, now_ms)
                        self.registered += added
                    except Exception:  # noqa: BLE001 - noted again on their next read
                        log.exception("keeping following-feed readers failed")
                        with self._lock:
                            for did in batch:
                                self._noted.pop(did, None)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL_S
                    cutoff = int((self.clock() - self.ttl) * 1000)
                    try:
                        gone = await asyncio.to_thread(self.store.forget_readers, cutoff)
                        if gone:
                            log.info("stopped keeping %d quiet following-feed readers", gone)
                    except Exception:  # noqa: BLE001 - tried again at the next sweep
                        log.exception("letting go of quiet readers failed")
        finally:
            self._loop = None
            self._queue = None
