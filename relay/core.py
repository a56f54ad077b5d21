"""The running relay: its parts wired together, and the operations on hosts and accounts.

:class:`Relay` is built with the app (the routes need its sequencer) and
started by the app's lifespan: it opens the store, starts the writer, the
verification workers and one :class:`~relay.ingest.HostConsumer` per active
host (plus the hosts named in the config), and a pruning task for the
event log. Handlers and the admin API call its methods:

- hosts: :meth:`Relay.request_crawl` (public or admin), :meth:`Relay.ban_host`,
  :meth:`Relay.unban_host`, :meth:`Relay.set_account_limit`, domain bans;
- accounts: :meth:`Relay.takedown` and :meth:`Relay.restore` (local status;
  an ``#account`` event tells consumers).

Every admin action is written to the ``admin_action`` table in the same
transaction as its effect, and logged. If a log transaction ever fails,
the relay resets to its durable state: consumers stop, the account cache is
dropped, and hosts resume from their stored cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any, Final

import httpx

from roost.errors import Forbidden, RateLimitExceeded, RoostError
from roost.identity import IdentityDirectory, IdentityResolver
from roost.netguard import Fetcher, GuardedTransport, OutboundPolicy
from roost.sequencer import Sequencer
from roost.syntax import ensure_did

from relay.config import RelayConfig
from relay.errors import HostBanned, RelayRepoNotFound, UnknownHost, UnreachableHost
from relay.eventlog import EventLogReader, EventWriter, OutEvent, Submission
from relay.fanout import Fanout
from relay.hostnames import HostName, domain_banned, is_trusted, parse_hostname
from relay.ingest import HostConsumer, Ingest, utc_now
from relay.registry import HostRuntime, Registry
from relay.resync import Resyncer
from relay.sqlite import SqliteStore
from relay.storage import AccountState, HostRow, Store
from relay.verify import Verifier

__all__ = ["DESCRIBE_TIMEOUT_S", "PRUNE_INTERVAL_S", "Relay"]

log = logging.getLogger(__name__)

#: A host asking to be crawled must answer describeServer within this.
DESCRIBE_TIMEOUT_S: Final = 5.0
#: How often old events are pruned from the log.
PRUNE_INTERVAL_S: Final = 600.0
#: Window of the new-hosts-per-day quota.
NEW_HOST_WINDOW_S: Final = 86_400.0
#: Host throttled accounts re-activated per admin limit change at most.
MAX_REACTIVATE: Final = 100_000


class Relay:
    """The relay engine (see the module docstring)."""

    def __init__(self, config: RelayConfig, *, store: Store | None = None) -> None:
        self.config = config
        self.log = EventLogReader()
        self.sequencer = Sequencer(
            self.log,
            replay_window_s=config.replay_window_s,
            buffer_size=config.consumer_buffer,
            stall_s=config.consumer_stall_s,
        )
        self.fanout = Fanout(self.sequencer, stall_s=config.consumer_stall_s)
        self._given_store = store
        self.started = False
        self._new_hosts: deque[float] = deque()
        self._host_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._pruning: asyncio.Future[int] | None = None
        self._recovering = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = self._given_store or SqliteStore(config.database_path)
        self.registry = Registry(self.store, account_cache=config.account_cache)
        for domain in config.banned_domains:
            self.registry.domain_bans.add(domain.lower())
        self.writer = EventWriter(
            self.store, self.sequencer, initial_seq=config.initial_seq, on_failure=self._failed
        )
        self.log.bind(self.store, self.writer, self.registry.takendown)
        self.resolver = IdentityResolver.create(plc_url=config.plc_url, allow_local=config.allow_local)
        self.identity = IdentityDirectory(self.resolver)
        self.fetcher = Fetcher(allow_local=config.allow_local)
        self.http = httpx.AsyncClient(
            transport=GuardedTransport(OutboundPolicy(allow_local=config.allow_local)),
            timeout=httpx.Timeout(30.0, connect=10.0),
            follow_redirects=False,
            trust_env=False,
        )
        self.verifier = Verifier(config.workers)
        await self.verifier.start()
        self.resync = Resyncer(
            self.registry,
            self.identity,
            self.verifier,
            self.writer,
            self.http,
            max_bytes=config.max_resync_bytes,
            now=utc_now,
        )
        self.ingest = Ingest(self.registry, self.identity, self.verifier, self.writer, self.resync)
        await self.writer.start()
        self.started = True
        for text in config.crawl:
            try:
                await self.request_crawl(text, admin=True, check=False, actor="config")
            except RoostError as exc:
                log.warning("cannot crawl configured host %r: %s", text, exc.message)
        for host in list(self.registry.hosts.values()):
            if host.row.status == "active":
                self._start_consumer(host)
        self._tasks.append(asyncio.create_task(self._prune_forever(), name="relay-prune"))
        self._tasks.append(asyncio.create_task(self._trim_forever(), name="relay-cache-trim"))
        log.info(
            "relay started hosts=%d last_seq=%d workers=%d",
            len(self.registry.hosts), self.writer.last_seq, self.verifier.workers,
        )

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        for task in self._tasks:
            task.cancel()
        await self._stop_consumers()
        await self.resync.aclose()
        self.sequencer.close()
        await self.writer.stop()
        self.verifier.close()
        await self.identity.aclose()
        await self.resolver.aclose()
        await self.fetcher.aclose()
        await self.http.aclose()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pruning is not None:
            with contextlib.suppress(Exception):
                await self._pruning
        self.store.close()

    async def _stop_consumers(self) -> None:
        tasks = [h.task for h in self.registry.hosts.values() if h.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _start_consumer(self, host: HostRuntime) -> None:
        if host.task is not None and not host.task.done():
            return
        consumer = HostConsumer(
            host, self.ingest, allow_local=self.config.allow_local, on_status=self._host_stopped
        )
        host.task = asyncio.create_task(consumer.run(), name=f"relay-host-{host.name}")
        host.task.add_done_callback(lambda task: _report(task, host))

    async def _host_stopped(self, host: HostRuntime, status: str) -> None:
        """A consumer ended for good (``idle``, ``offline`` or ``banned``)."""
        log.info("host %s is now %s", host.name, status)
        host.row.status = status
        await self._write(Submission(statements=[self.store.update_host_sql(host.row)]))

    def _failed(self, exc: BaseException) -> None:
        """A log transaction failed: reset everything to the durable state."""
        if not self._recovering and self.started:
            self._recovering = True
            self._tasks.append(asyncio.create_task(self._recover(), name="relay-recover"))

    async def _recover(self) -> None:
        try:
            log.error("resetting the relay to its durable state after a failed transaction")
            await self._stop_consumers()
            self.registry.accounts.clear()
            stored = {row.id: row for row in self.store.hosts()}
            for host in self.registry.hosts.values():
                row = stored.get(host.id)
                if row is not None:
                    host.row.last_seq = row.last_seq
                    host.row.account_count = row.account_count
                    host.cursor = row.last_seq
            for host in self.registry.hosts.values():
                if host.row.status == "active":
                    self._start_consumer(host)
        finally:
            self._recovering = False

    async def _prune_forever(self) -> None:
        while True:
            # Shielded: pruning runs in a thread, which cancelling this task would not
            # stop; stop() waits for it instead, so the store is never closed under it.
            self._pruning = asyncio.ensure_future(
                self.writer.prune(self.config.replay_window_s, self.config.max_log_bytes)
            )
            try:
                await asyncio.shield(self._pruning)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - retried next round
                log.exception("pruning the relay log failed")
            await asyncio.sleep(PRUNE_INTERVAL_S)

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            self.registry.trim(self.writer.committed_number)

    async def _write(self, sub: Submission) -> list[int]:
        return await self.writer.submit(sub)

    def _admin(self, sub: Submission, actor: str, action: str, subject: str, **detail: Any) -> None:
        text = json.dumps({"by": actor, **detail}, sort_keys=True)
        sub.statements.append(self.store.admin_action_sql(utc_now(), action, subject, text))
        log.warning("admin action=%s subject=%s detail=%s", action, subject, text)

    # -- hosts ---------------------------------------------------------------------------

    def _host_by_name(self, text: str) -> HostRuntime:
        try:
            name = parse_hostname(text, allow_local=True).name
        except RoostError:
            name = str(text).strip().lower()
        host = self.registry.host(name)
        if host is None:
            raise UnknownHost(f"unknown host: {text}")
        return host

    def host_status(self, text: str) -> HostRuntime:
        return self._host_by_name(text)

    async def request_crawl(
        self, text: str, *, admin: bool = False, check: bool = True, actor: str = "public"
    ) -> HostRuntime:
        """Subscribe to a host (``requestCrawl``); ``admin`` skips the quota and the switch."""
        config = self.config
        if not admin and not config.crawl_enabled:
            raise Forbidden("requestCrawl is disabled on this relay")
        name = parse_hostname(text, allow_local=config.allow_local)
        if not admin and config.allowed_hosts and not is_trusted(name.name, config.allowed_hosts):
            raise Forbidden(f"{name.name} is not on this relay's list of hosts to crawl")
        if domain_banned(name.host, self.registry.domain_bans):
            raise HostBanned(f"{name.host} is banned")
        existing = self.registry.host(name.name)
        if existing is not None and existing.row.status == "banned":
            raise HostBanned(f"{name.name} is banned")
        if check:
            await self._describe(name)
        async with self._host_lock:
            host = self.registry.host(name.name)
            if host is not None:
                if host.row.status == "banned":
                    raise HostBanned(f"{name.name} is banned")
                if host.row.status != "active":  # idle or offline: subscribe again
                    log.info("host %s was %s; subscribing again", host.name, host.row.status)
                    host.row.status = "active"
                    sub = Submission(statements=[self.store.update_host_sql(host.row)])
                    if admin:
                        self._admin(sub, actor, "host.crawl", host.name)
                    await self._write(sub)
                if self.started:
                    self._start_consumer(host)
                return host
            if not admin:
                self._take_new_host_quota()
            trusted = is_trusted(name.name, config.trusted_hosts)
            row = HostRow(
                id=self.registry.new_host_id(),
                hostname=name.name,
                no_ssl=name.no_ssl,
                status="active",
                account_limit=(
                    config.trusted_account_limit if trusted else config.default_account_limit
                ),
                trusted=trusted,
                created_at=utc_now(),
            )
            sub = Submission(statements=[self.store.insert_host_sql(row)])
            if admin:
                self._admin(sub, actor, "host.add", row.hostname, trusted=trusted)
            await self._write(sub)
            host = self.registry.add_host(row)
            log.info("new host %s trusted=%s limit=%d", row.hostname, trusted, row.account_limit)
            if self.started:
                self._start_consumer(host)
            return host

    def _take_new_host_quota(self) -> None:
        now = time.monotonic()
        window = self._new_hosts
        while window and window[0] <= now - NEW_HOST_WINDOW_S:
            window.popleft()
        if len(window) >= self.config.new_hosts_per_day:
            raise RateLimitExceeded("This relay accepts no more new hosts today")
        window.append(now)

    async def _describe(self, name: HostName) -> None:
        url = f"{name.http_url}/xrpc/com.atproto.server.describeServer"
        try:
            result = await self.fetcher.get(url, timeout=DESCRIBE_TIMEOUT_S, max_bytes=65_536)
        except RoostError as exc:
            raise UnreachableHost(f"{name.name} did not answer describeServer: {exc.message}") from None
        if result.status != 200:
            raise UnreachableHost(f"{name.name} answered describeServer with HTTP {result.status}")
        try:
            body = json.loads(result.body)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("did"), str):
            raise UnreachableHost(f"{name.name} did not answer describeServer with a server description")

    async def ban_host(self, text: str, *, actor: str = "admin") -> HostRuntime:
        host = self._host_by_name(text)
        host.row.status = "banned"
        if host.task is not None:
            host.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await host.task
        sub = Submission(statements=[self.store.update_host_sql(host.row)])
        self._admin(sub, actor, "host.ban", host.name)
        await self._write(sub)
        return host

    async def unban_host(self, text: str, *, actor: str = "admin") -> HostRuntime:
        host = self._host_by_name(text)
        host.row.status = "active"
        sub = Submission(statements=[self.store.update_host_sql(host.row)])
        self._admin(sub, actor, "host.unban", host.name)
        await self._write(sub)
        self._start_consumer(host)
        return host

    async def set_account_limit(self, text: str, limit: int, *, actor: str = "admin") -> HostRuntime:
        """Change a host's account limit; raising it re-activates throttled accounts."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise RoostError("account limit must be a non-negative integer")
        host = self._host_by_name(text)
        old = host.row.account_limit
        host.row.account_limit = limit
        host.refresh_limits()
        sub = Submission(statements=[self.store.update_host_sql(host.row)])
        self._admin(sub, actor, "host.limit", host.name, old=old, new=limit)
        if limit > old:
            for stored in self.store.throttled_accounts(host.id, min(limit - old, MAX_REACTIVATE)):
                acct = self.registry.account(stored.did) or stored
                if acct.status != "host-throttled":
                    continue
                acct.status = "active"
                sub.account(acct)
                sub.events.append(OutEvent("#account", _account_body(acct), acct.uid))
        await self._write(sub)
        return host

    async def ban_domain(self, domain: str, *, actor: str = "admin") -> None:
        domain = _domain(domain)
        self.registry.domain_bans.add(domain)
        sub = Submission(statements=[self.store.ban_domain_sql(domain, utc_now())])
        self._admin(sub, actor, "domain.ban", domain)
        await self._write(sub)
        for host in list(self.registry.hosts.values()):
            if host.row.status != "banned" and domain_banned(host.row.hostname.partition(":")[0], [domain]):
                await self.ban_host(host.name, actor=actor)

    async def unban_domain(self, domain: str, *, actor: str = "admin") -> None:
        domain = _domain(domain)
        self.registry.domain_bans.discard(domain)
        sub = Submission(statements=[self.store.unban_domain_sql(domain)])
        self._admin(sub, actor, "domain.unban", domain)
        await self._write(sub)

    # -- accounts ------------------------------------------------------------------------

    async def takedown(self, did: str, *, actor: str = "admin", reason: str = "") -> AccountState:
        """Take an account down at this relay: its events stop flowing, live and in replay."""
        acct = self._account_for_admin(did)
        acct.status = "takendown"
        self.registry.takendown.add(acct.uid)
        sub = Submission()
        sub.account(acct)
        # uid 0: the notice itself stays in replay while the account's events are hidden
        sub.events.append(OutEvent("#account", _account_body(acct), 0))
        self._admin(sub, actor, "repo.takedown", did, reason=reason)
        await self._write(sub)
        return acct

    async def restore(self, did: str, *, actor: str = "admin") -> AccountState:
        acct = self.registry.account(did)
        if acct is None:
            raise RelayRepoNotFound(f"unknown account: {did}")
        acct.status = "active"
        self.registry.takendown.discard(acct.uid)
        sub = Submission()
        sub.account(acct)
        sub.events.append(OutEvent("#account", _account_body(acct), acct.uid))
        self._admin(sub, actor, "repo.restore", did)
        await self._write(sub)
        return acct

    def _account_for_admin(self, did: str) -> AccountState:
        ensure_did(did)
        acct = self.registry.account(did)
        if acct is None:  # not seen yet: the decision applies when it shows up
            acct = self.registry.new_account(did, 0, "active", utc_now())
        return acct

    def health(self) -> dict[str, Any]:
        """Extra fields for ``/xrpc/_health``; raises if the database is unusable."""
        self.store.meta("last_seq")
        return {
            "seq": self.writer.committed_seq,
            "hosts": sum(1 for h in self.registry.hosts.values() if h.connected),
            "consumers": self.sequencer.subscriber_count,
        }


def _domain(text: str) -> str:
    domain = str(text).strip().lower().strip(".")
    if not domain or "/" in domain or ":" in domain:
        raise RoostError("a domain name is required")
    return domain


def _account_body(acct: AccountState) -> dict[str, Any]:
    body: dict[str, Any] = {"did": acct.did, "time": utc_now(), "active": acct.active}
    if acct.public_status is not None:
        body["status"] = acct.public_status
    return body


def _report(task: asyncio.Task[None], host: HostRuntime) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        host.last_error = f"{type(exc).__name__}: {exc}"[:300]
        log.error("consumer of host %s failed", host.name, exc_info=exc)
