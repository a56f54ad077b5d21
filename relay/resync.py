"""Resynchronising an account whose commits could not be verified.

When a commit from an account's own host fails verification (bad
signature after a fresh key lookup, ops that do not invert to ``prevData``,
missing blocks...), the relay drops it and can no longer check the next
ones against a known state: the account becomes ``desynchronized`` and its
commits are dropped until it is resynced. :class:`Resyncer` then fetches the
whole repo from the account's PDS (``com.atproto.sync.getRepo``), verifies
it (:func:`roost.repo.verify_car`: every block, the signature with the
DID's current key, the canonical MST), adopts its ``(rev, commit, data)``
and emits ``#sync`` with the signed commit, so consumers know to refetch.
A ``#sync`` from the host itself also ends the state.

Resyncs are bounded: one at a time per host, :data:`MAX_CONCURRENT` in all,
and a failed one is retried with a growing delay, :data:`MAX_ATTEMPTS`
times; they are counted on the host (``resyncs_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

import httpx

from roost.car import car_bytes
from roost.cid import CID
from roost.errors import IdentityError, RoostError
from roost.identity import IdentityDirectory

from relay.eventlog import EventWriter, OutEvent, Submission
from relay.hostnames import endpoint_host
from relay.registry import HostRuntime, Registry
from relay.storage import ACCOUNT_ACTIVE_STATUSES, AccountState
from relay.verify import Verifier

__all__ = ["MAX_ATTEMPTS", "MAX_CONCURRENT", "RETRY_DELAY_S", "Resyncer"]

log = logging.getLogger(__name__)

#: Resyncs running at once (all hosts).
MAX_CONCURRENT: Final = 8
#: Tries per account, and the delay before the second one (doubling after).
MAX_ATTEMPTS: Final = 5
RETRY_DELAY_S: Final = 30.0
#: Deadline for one getRepo download.
FETCH_TIMEOUT_S: Final = 120.0


class ResyncFailed(RoostError):
    """A repo could not be fetched or did not verify."""


class Resyncer:
    """Schedules and runs resyncs (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        identity: IdentityDirectory,
        verifier: Verifier,
        writer: EventWriter,
        http: httpx.AsyncClient,
        *,
        max_bytes: int,
        now: Callable[[], str],
        retry_delay_s: float = RETRY_DELAY_S,
    ) -> None:
        self.registry = registry
        self.identity = identity
        self.verifier = verifier
        self.writer = writer
        self.http = http
        self.max_bytes = max_bytes
        self.now = now
        self.retry_delay_s = retry_delay_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._all = asyncio.Semaphore(MAX_CONCURRENT)
        self._per_host: dict[int, asyncio.Semaphore] = {}

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def request(self, host: HostRuntime, acct: AccountState, sub: Submission) -> None:
        """Mark ``acct`` desynchronized (in ``sub``) and resync it soon."""
        if not acct.desync:
            acct.desync = True
            sub.account(acct)
        if acct.did in self._tasks:
            return
        host.stats["resyncs_requested"] += 1
        task = asyncio.get_running_loop().create_task(
            self._run(host, acct.did), name=f"relay-resync-{acct.did}"
        )
        self._tasks[acct.did] = task
        task.add_done_callback(lambda _: self._tasks.pop(acct.did, None))

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, host: HostRuntime, did: str) -> None:
        delay = self.retry_delay_s
        lock = self._per_host.setdefault(host.id, asyncio.Semaphore(1))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            acct = self.registry.account(did)
            if acct is None or not acct.desync:
                return  # a #sync from the host settled it meanwhile
            try:
                async with self._all, lock:
                    await self._resync(host, acct)
            except (RoostError, httpx.HTTPError, TimeoutError) as exc:
                host.stats["resyncs_failed"] += 1
                message = exc.message if isinstance(exc, RoostError) else str(exc) or "timed out"
                log.warning(
                    "resync failed did=%s host=%s attempt=%d error=%s: %s",
                    did, host.name, attempt, type(exc).__name__, message,
                )
                if attempt < MAX_ATTEMPTS:
                    await asyncio.sleep(delay)
                    delay *= 2
                continue
            return
        log.warning("giving up resync did=%s host=%s", did, host.name)

    async def _resync(self, host: HostRuntime, acct: AccountState) -> None:
        did = acct.did
        try:
            doc = await self.identity.lookup_did(did, force_refresh=True)
        except IdentityError as exc:
            raise ResyncFailed(f"cannot resolve {did}: {exc.message}") from None
        endpoint = doc.pds_endpoint
        key = doc.signing_key
        if endpoint is None or key is None:
            raise ResyncFailed(f"{did} has no PDS endpoint or signing key")
        if endpoint_host(endpoint) != host.name:
            raise ResyncFailed(f"{did} is no longer hosted by {host.name}")
        car = await self._fetch(f"{endpoint}/xrpc/com.atproto.sync.getRepo", did)
        rev, commit_raw, data_raw, block = await self.verifier.check_repo(car, did, key)
        acct = self.registry.account(did) or acct
        if acct.rev is not None and rev < acct.rev:
            raise ResyncFailed(f"the host's repo (rev {rev}) is older than the relay's ({acct.rev})")
        commit = CID.from_bytes(commit_raw)
        sub = Submission()
        acct.rev = rev
        acct.commit_cid = commit
        acct.data_cid = CID.from_bytes(data_raw)
        acct.desync = False
        sub.account(acct)
        if acct.status in ACCOUNT_ACTIVE_STATUSES and acct.upstream_status == "active":
            body = {
                "did": did,
                "rev": rev,
                "blocks": car_bytes([commit], {commit: block}),
                "time": self.now(),
            }
            sub.events.append(OutEvent("#sync", body, acct.uid))
        await self.writer.submit(sub)
        host.stats["resyncs_done"] += 1
        log.info("resynced did=%s host=%s rev=%s", did, host.name, rev)

    async def _fetch(self, url: str, did: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            async with self.http.stream("GET", url, params={"did": did}) as response:
                if response.status_code != 200:
                    raise ResyncFailed(f"getRepo answered HTTP {response.status_code}")
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ResyncFailed(f"repo is larger than {self.max_bytes} bytes")
                    chunks.append(chunk)
        return b"".join(chunks)
