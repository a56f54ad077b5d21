"""A relay frontend: ``subscribeRepos`` served from a log that another process writes.

One ingest process (``roost relay serve --role ingest``) crawls, verifies and
appends to the event log in PostgreSQL (:mod:`relay.postgres`); any number
of frontends (``--role frontend``), on this machine or others, serve
consumers from that log. A frontend has no writer, no host consumers and no
verification workers. Its :class:`LogTail` follows the log: each append's
``NOTIFY`` (carrying the new head seq) wakes it, it reads the new rows in seq
order and publishes them to the frontend's own
:class:`~roost.sequencer.Sequencer`, which fans them out exactly as the
ingest's would. A poll every :data:`POLL_S` covers a lost notification or a
dropped listening connection.

Because the store makes appends visible in seq order and without holes
(see :mod:`relay.postgres`), every frontend publishes the same events in the
same order under the same seqs, and a consumer can move to another frontend
and resume from its cursor. :class:`SharedLogReader` keeps the sequencer's
"latest seq" at or below what this frontend has published, and waits for its
tail to reach the database's head first, so a cursor just handed out by
another frontend is never taken for a future one.

The read-only ``com.atproto.sync`` methods are answered from the shared
tables; hosts, bans and takedowns are re-read every :data:`REFRESH_S` (and at
once after a takedown notice in the log), and accounts are loaded afresh
after each refresh. Anything that would change state (``requestCrawl``, the
admin API's actions) is refused with :class:`FrontendReadOnly`: send it to
the ingest process.

:func:`create_relay` picks the store and the role for a config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from roost.errors import MethodNotImplemented
from roost.identity import IdentityDirectory, IdentityResolver
from roost.sequencer import Sequencer

from relay.config import RelayConfig
from relay.core import Relay
from relay.eventlog import EventLogReader, Submission
from relay.postgres import PostgresStore
from relay.registry import HostRuntime, Registry
from relay.storage import AccountState

__all__ = [
    "CATCH_UP_WAIT_S",
    "POLL_S",
    "REFRESH_S",
    "TAIL_PAGE",
    "Frontend",
    "FrontendReadOnly",
    "LogTail",
    "SharedLogReader",
    "create_relay",
]

log = logging.getLogger(__name__)

#: Rows read from the log per query while following it.
TAIL_PAGE: Final = 2_000
#: The log is read at least this often, notification or not (seconds).
POLL_S: Final = 1.0
#: Hosts, bans and takedowns are re-read this often (seconds).
REFRESH_S: Final = 2.0
#: How long a new stream waits for this frontend to catch up with the log's head.
CATCH_UP_WAIT_S: Final = 10.0
#: Pause after a failed read of the log before the next try (seconds).
RETRY_S: Final = 1.0


class FrontendReadOnly(MethodNotImplemented):
    """A frontend serves the log; it does not crawl or change anything."""


def create_relay(config: RelayConfig) -> Relay:
    """The relay process ``config`` asks for: on SQLite or PostgreSQL, ingest or frontend."""
    url = config.postgres_url
    store = PostgresStore(url) if url is not None else None
    if config.role == "frontend":
        assert store is not None  # RelayConfig refuses a frontend without PostgreSQL
        return Frontend(config, store=store)
    return Relay(config, store=store)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` passes (a cancellation is never lost)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def _read_only() -> FrontendReadOnly:
    return FrontendReadOnly(
        "this relay process is a frontend and changes nothing; use the ingest process's admin API"
    )


class LogTail:
    """Follows the shared log and publishes its new events, in seq order, to a sequencer."""

    def __init__(self, store: PostgresStore, sequencer: Sequencer) -> None:
        self.store = store
        self.sequencer = sequencer
        #: The highest seq published here (``writer.committed_seq`` for the dashboard).
        self.committed_seq = 0
        #: The highest head a notification announced.
        self.heard_seq = 0
        self.events_published = 0
        self.notifications = 0
        self.failures = 0
        #: Called after publishing a takedown notice (an event of uid 0).
        self.on_notice: Any = None
        self._wake = asyncio.Event()
        self._moved = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self.committed_seq = await self.store.run(self.store.fetch_head)
        self.sequencer.last_published_seq = self.committed_seq
        await self._listen()
        self._task = asyncio.create_task(self._run(), name="relay-log-tail")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        loop = self._loop
        assert loop is not None

        def heard(seq: int) -> None:  # on the store's thread
            loop.call_soon_threadsafe(self._heard, seq)

        await self.store.run(self.store.listen, heard)

    def _heard(self, seq: int) -> None:
        self.notifications += 1
        if seq > self.heard_seq:
            self.heard_seq = seq
        if seq > self.committed_seq:
            self._wake.set()

    def poke(self) -> None:
        """Read the log now."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            await _wait(self._wake, POLL_S)
            self._wake.clear()
            try:
                if not self.store.listening():
                    log.warning("relay log notifications lost; listening again")
                    await self._listen()
                await self.catch_up()
            except Exception:  # noqa: BLE001 - the database may come back
                self.failures += 1
                log.exception("reading the shared relay log failed")
                await asyncio.sleep(RETRY_S)

    async def catch_up(self) -> None:
        """Publish every stored event past :attr:`committed_seq`."""
        while True:
            rows = await self.store.run(self.store.fetch_events_after, self.committed_seq, TAIL_PAGE)
            if not rows:
                return
            self.sequencer.publish([(seq, frame) for seq, _, frame in rows])
            self.committed_seq = rows[-1][0]
            self.events_published += len(rows)
            async with self._moved:
                self._moved.notify_all()
            if self.on_notice is not None and any(uid == 0 for _, uid, _ in rows):
                self.on_notice()
            if len(rows) < TAIL_PAGE:
                return

    async def reach(self, seq: int, timeout: float) -> bool:
        """Wait until everything up to ``seq`` is published here; False on timeout."""
        self._wake.set()
        try:
            async with asyncio.timeout(timeout), self._moved:
                await self._moved.wait_for(lambda: self.committed_seq >= seq)
        except TimeoutError:
            return False
        return True


class SharedLogReader(EventLogReader):
    """The frontend sequencer's :class:`~roost.sequencer.EventLog` (see the module docstring)."""

    def __init__(self, *, catch_up_wait_s: float = CATCH_UP_WAIT_S) -> None:
        super().__init__()
        self.catch_up_wait_s = catch_up_wait_s
        self.tail: LogTail | None = None
        self.pg: PostgresStore | None = None

    def attach(self, store: PostgresStore, tail: LogTail, takendown: set[int]) -> None:
        self.store = self.pg = store
        self.tail = tail
        self.takendown = takendown

    async def page(self, seq: int, limit: int) -> list[tuple[int, int, bytes]]:
        if self.pg is None:
            raise RuntimeError("the relay is not running")
        return await self.pg.run(self.pg.fetch_events_after, seq, limit)

    async def latest_seq(self) -> int:
        if self.pg is None or self.tail is None:
            raise RuntimeError("the relay is not running")
        head = await self.pg.run(self.pg.fetch_head)
        if head > self.tail.committed_seq and not await self.tail.reach(head, self.catch_up_wait_s):
            log.warning("relay frontend is behind the log head=%d published=%d", head,
                        self.tail.committed_seq)
        return self.tail.committed_seq


class Frontend(Relay):
    """A relay process serving a shared log (see the module docstring)."""

    def __init__(self, config: RelayConfig, *, store: PostgresStore) -> None:
        super().__init__(config, store=store)
        self.pg = store
        self.shared_log = SharedLogReader()
        self.log = self.sequencer.log = self.shared_log
        self.tail = LogTail(store, self.sequencer)
        self._refresh = asyncio.Event()

    async def start(self) -> None:
        config = self.config
        store = self.pg
        await asyncio.to_thread(store.open)
        self.store = store
        self.registry = await asyncio.to_thread(
            Registry, store, account_cache=config.account_cache
        )
        # what the dashboard and health read as the writer's position
        self.writer = self.tail  # type: ignore[assignment]
        self.shared_log.attach(store, self.tail, self.registry.takendown)
        self.resolver = IdentityResolver.create(plc_url=config.plc_url, allow_local=config.allow_local)
        self.identity = IdentityDirectory(self.resolver)
        self.tail.on_notice = self._refresh.set
        await self.tail.start()
        self.started = True
        self._tasks.append(asyncio.create_task(self._refresh_forever(), name="relay-refresh"))
        log.info("relay frontend started hosts=%d seq=%d", len(self.registry.hosts),
                 self.tail.committed_seq)

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        for task in self._tasks:
            task.cancel()
        await self.tail.stop()
        self.sequencer.close()
        await self.identity.aclose()
        await self.resolver.aclose()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self.pg.close)

    async def _refresh_forever(self) -> None:
        while self.started:
            await _wait(self._refresh, REFRESH_S)
            self._refresh.clear()
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - next round
                log.exception("re-reading the relay's hosts and accounts failed")

    async def refresh(self) -> None:
        """Re-read hosts, bans and takedowns; forget cached accounts."""
        store = self.pg
        rows = await asyncio.to_thread(store.hosts)
        takendown = await asyncio.to_thread(store.takendown_uids)
        bans = await asyncio.to_thread(store.domain_bans)
        registry = self.registry
        for row in rows:
            host = registry.hosts.get(row.id)
            if host is None:
                registry.add_host(row)
            else:
                host.row = row
                host.cursor = row.last_seq
                host.refresh_limits()
        # the same set objects: the log reader holds the takedown set
        registry.takendown.intersection_update(takendown)
        registry.takendown.update(takendown)
        registry.domain_bans.intersection_update(bans)
        registry.domain_bans.update(bans)
        registry.accounts.clear()

    # -- refused here ------------------------------------------------------------------

    async def request_crawl(
        self, text: str, *, admin: bool = False, check: bool = True, actor: str = "public"
    ) -> HostRuntime:
        raise FrontendReadOnly(
            "this relay process is a frontend and does not crawl; ask the relay's ingest process"
        )

    async def _write(self, sub: Submission) -> list[int]:
        raise _read_only()

    # Admin changes are refused before they touch the in-memory registry (the
    # base class changes it first and writes after).
    async def ban_host(self, text: str, *, actor: str = "admin") -> HostRuntime:
        raise _read_only()

    async def unban_host(self, text: str, *, actor: str = "admin") -> HostRuntime:
        raise _read_only()

    async def set_account_limit(self, text: str, limit: int, *, actor: str = "admin") -> HostRuntime:
        raise _read_only()

    async def ban_domain(self, domain: str, *, actor: str = "admin") -> None:
        raise _read_only()

    async def unban_domain(self, domain: str, *, actor: str = "admin") -> None:
        raise _read_only()

    async def takedown(self, did: str, *, actor: str = "admin", reason: str = "") -> AccountState:
        raise _read_only()

    async def restore(self, did: str, *, actor: str = "admin") -> AccountState:
        raise _read_only()

    def health(self) -> dict[str, Any]:
        """Extra ``/xrpc/_health`` fields; ``head`` minus ``seq`` is how far behind it is."""
        head = self.pg.last_seq()  # raises if the database is unusable
        return {
            "seq": self.tail.committed_seq,
            "head": head,
            "role": "frontend",
            "hosts": len(self.registry.hosts),
            "consumers": self.sequencer.subscriber_count,
        }
