"""Upstream subscriptions: one consumer per host, and the checks every event passes.

:class:`HostConsumer` keeps one WebSocket open to a host's
``subscribeRepos`` (resuming from the host's durable cursor), reconnecting
with exponential backoff and jitter; after :data:`MAX_DIAL_FAILURES`
consecutive failed dials the host is marked ``offline``. Per connection,
a reader task queues raw frames; a preparer takes whatever has arrived (up
to :data:`MAX_BATCH` frames) as a batch, runs step 1 below and starts its
verification; an applier finishes the batches in order and submits them to
the writer without waiting for the disk. So up to :data:`PIPELINE` batches
verify while one is applied, and at most :data:`MAX_INFLIGHT` submissions
per host wait for the disk before reading pauses (backpressure to the host).

:class:`Ingest` checks a batch in three steps (:meth:`Ingest.prepare` is
step 1 and starts step 2, :meth:`Ingest.finish` does the rest):

1. in upstream order: decode and size-check each frame (bad CBOR, a text
   frame or an error frame ends the connection), drop out-of-order seqs,
   charge the host's rate limits (blocking, never dropping), and run the
   cheap checks: field shapes, rev not in the future, the sending host is
   the DID's current PDS (re-resolving once), the account exists (created
   on first sight, throttled past the host's account limit) and is active,
   and the rev is newer than the stored one;
2. verify the commits and syncs of the batch in the worker processes
   (:mod:`relay.verify`); a bad signature re-resolves the DID once and
   verifies again if the key changed;
3. in upstream order again, synchronously: re-check against the account
   state (earlier events of the batch may have moved it), then accept:
   update ``(rev, commit, data)`` and queue the event, unchanged except for
   the relay's seq. A ``since``/``prevData`` discontinuity is passed
   through and counted; a commit that cannot be verified is dropped and its
   account marked ``desynchronized`` for a resync.

Every drop is counted on the host by reason (``HostRuntime.stats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

import websockets
from websockets.asyncio.client import ClientConnection, connect

from roost import __version__
from roost.car import CarReader
from roost.cid import CID
from roost.crypto import PublicKey
from roost.errors import (
    CborDecodeError,
    DidDeactivated,
    DidNotFound,
    IdentityError,
    RoostError,
    UnsafeUrl,
)
from roost.frames import MAX_FRAME_BYTES, OP_ERROR, OP_MESSAGE, decode_frame
from roost.groupcommit import run_group_commits
from roost.identity import DidDocument, IdentityDirectory
from roost.netguard import GuardedBackend
from roost.repo import MAX_COMMIT_OPS
from roost.syntax import is_valid_datetime, is_valid_did
from roost.tid import Tid, is_valid_tid

from relay.eventlog import EventWriter, OutEvent, Submission
from relay.hostnames import endpoint_host
from relay.registry import HostRuntime, Registry
from relay.storage import ACCOUNT_ACTIVE_STATUSES, AccountState
from relay.verify import Job, Verdict, Verifier

if TYPE_CHECKING:
    from relay.resync import Resyncer

__all__ = [
    "BACKOFF_MAX_S",
    "FUTURE_REV_S",
    "MAX_BATCH",
    "MAX_COMMIT_BLOCKS",
    "MAX_DIAL_FAILURES",
    "MAX_INFLIGHT",
    "MAX_SYNC_BLOCKS",
    "PIPELINE",
    "USER_AGENT",
    "HostConsumer",
    "Ingest",
    "backoff_delay",
    "utc_now",
]

log = logging.getLogger(__name__)

#: Frames checked together at most (one verification round trip, one submission).
MAX_BATCH: Final = 256
#: Submissions per host waiting for the disk before the host's reading pauses.
MAX_INFLIGHT: Final = 4
#: Batches per host prepared (verifying) ahead of the one being applied.
PIPELINE: Final = 2
#: Raw frames queued between a host's socket and its consumer.
RECV_QUEUE: Final = 2048
#: ``blocks`` of a ``#commit`` / ``#sync`` (lexicon maxLength).
MAX_COMMIT_BLOCKS: Final = 2_000_000
MAX_SYNC_BLOCKS: Final = 10_000
#: A rev may be this far in the future, no more (clock skew).
FUTURE_REV_S: Final = 300.0
#: Consecutive failed dials before a host is marked offline.
MAX_DIAL_FAILURES: Final = 15
#: Reconnect delays: 1 s, 2 s, 4 s ... capped, each with jitter.
BACKOFF_BASE_S: Final = 1.0
BACKOFF_MAX_S: Final = 30.0
#: WebSocket opening handshake deadline, and keepalive.
HANDSHAKE_TIMEOUT_S: Final = 5.0
PING_INTERVAL_S: Final = 30.0
PING_TIMEOUT_S: Final = 60.0
#: DID documents fetched at once when a batch names many unknown accounts.
PREFETCH_CONCURRENCY: Final = 8
#: DID documents remembered by the event checks, and how many at most.
DOC_MEMO_S: Final = 60.0
DOC_MEMO_SIZE: Final = 200_000
#: Waits before trying a DID document again after a transient failure (then it is dropped).
RESOLVE_RETRY_DELAYS_S: Final = (2.5, 5.0)  # longer than FORCE_REFRESH_MIN_AGE_SECONDS
#: How often a host over its rate limit is checked again.
RATE_LIMIT_POLL_S: Final = 0.1
#: The relay announces itself so another relay does not subscribe to it in a loop.
USER_AGENT: Final = f"roost-relay/{__version__} (atproto-relay)"

_HANDLED: Final = frozenset({"#commit", "#sync", "#identity", "#account"})
#: Verification failures that make the account's chain unverifiable (resync it).
_RESYNC_ERRORS: Final = frozenset(
    {"BadCommitSignature", "InvertError", "MissingBlock", "InvalidMst", "MissingPrevData"}
)


def utc_now() -> str:
    """Current time in the atproto datetime form (milliseconds, ``Z``)."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def backoff_delay(failures: int, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after ``failures`` consecutive failures (>= 1), with jitter."""
    delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, failures - 1))
    return rng(delay / 2, delay)


class StopConsuming(Exception):
    """Ends a connection for good: ``reason`` is ``idle`` (FutureCursor) or ``banned``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Action:
    """One event that passed step 1, waiting for its verdict and step 3."""

    t: str
    acct: AccountState
    body: dict[str, Any]
    doc: DidDocument | None = None
    job: int = -1


@dataclass(slots=True)
class Outcome:
    """What :meth:`Ingest.process` made of a batch."""

    submission: Submission
    #: Set when the connection must end: ``malformed``, ``error-frame``, ``idle``.
    close: str | None = None


@dataclass(slots=True)
class Prepared:
    """A batch after step 1, its verification under way."""

    outcome: Outcome
    actions: list[_Action]
    jobs: list[Job]
    verifying: asyncio.Future[list[Verdict]] | None

    def cancel(self) -> None:
        if self.verifying is not None:
            self.verifying.cancel()


class Ingest:
    """The event checks and state changes shared by every host consumer."""

    def __init__(
        self,
        registry: Registry,
        identity: IdentityDirectory,
        verifier: Verifier,
        writer: EventWriter,
        resync: Resyncer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.identity = identity
        self.verifier = verifier
        self.writer = writer
        self.resync = resync
        self.clock = clock
        self._latest_at = -1
        self._latest = ""
        self._docs: dict[str, tuple[float, DidDocument]] = {}

    # -- a batch ----------------------------------------------------------------------

    async def process(self, host: HostRuntime, frames: list[Any], socket_seq: list[int]) -> Outcome:
        """Check ``frames`` (raw messages of one connection, in order): all three steps."""
        return await self.finish(host, await self.prepare(host, frames, socket_seq))

    async def prepare(self, host: HostRuntime, frames: list[Any], socket_seq: list[int]) -> Prepared:
        """Step 1, and step 2 started (the verification runs while the caller goes on).

        ``socket_seq`` holds the last upstream seq seen on the connection
        (a one-element list, updated). Batches of one connection must be
        prepared and finished in order; a batch may be prepared before the
        previous one is finished (its checks are repeated against the state
        then).
        """
        stats = host.stats
        out = Outcome(Submission())
        sub = out.submission
        await self._charge(host, len(frames))
        decoded: list[tuple[bytes, dict[str, Any], dict[str, Any]]] = []
        for raw in frames:
            try:
                if type(raw) is not bytes:
                    raise CborDecodeError("text frame")
                # no float scan here: the worker decodes commits strictly, and other
                # bodies are read field by field
                header, body = decode_frame(raw, check_floats=False)
            except CborDecodeError:
                stats["malformed_frames"] += 1
                out.close = "malformed"
                break
            decoded.append((raw, header, body))
        await self._prefetch(decoded)
        actions: list[_Action] = []
        jobs: list[Job] = []
        last = socket_seq[0]
        cursor: int | None = None
        for raw, header, body in decoded:
            op = header["op"]
            if op == OP_ERROR:
                error = body.get("error")
                stats[f"error_frames:{error}"[:80]] += 1
                out.close = "idle" if error == "FutureCursor" else "error-frame"
                break
            if op != OP_MESSAGE:
                stats["unknown_frames"] += 1
                continue
            t = header["t"]
            if t == "#info":
                log.info("upstream info host=%s name=%r", host.name, body.get("name"))
                continue
            seq = body.get("seq")
            if type(seq) is not int:
                stats["malformed_events"] += 1
                continue
            if seq <= last:
                stats["out_of_order"] += 1
                continue
            last = cursor = seq
            if t not in _HANDLED:
                stats["unknown_types"] += 1
                continue
            action = await self._precheck(host, t, body, sub)
            if action is None:
                continue
            if t in ("#commit", "#sync"):
                key = action.doc.signing_key if action.doc is not None else None
                if key is None:
                    stats["no_signing_key"] += 1
                    continue
                action.job = len(jobs)
                jobs.append((raw, (key.curve, key.compressed)))
            actions.append(action)
        socket_seq[0] = last
        if cursor is not None:
            sub.cursor = (host.id, cursor)
        verifying = asyncio.ensure_future(self.verifier.verify(jobs)) if jobs else None
        return Prepared(out, actions, jobs, verifying)

    async def finish(self, host: HostRuntime, prepared: Prepared) -> Outcome:
        """Steps 2 and 3: wait for the verdicts, then accept or drop each event in order."""
        verdicts: list[Verdict] = []
        if prepared.verifying is not None:
            verdicts = await prepared.verifying
            await self._retry_bad_signatures(prepared.actions, prepared.jobs, verdicts)
        sub = prepared.outcome.submission
        for action in prepared.actions:
            self._apply(host, action, verdicts, sub)
        return prepared.outcome

    def _latest_rev(self) -> str:
        """The largest acceptable rev now (TID strings sort like their timestamps)."""
        now = int(self.clock())
        if now != self._latest_at:
            self._latest_at = now
            self._latest = str(Tid.from_parts(int((now + 1 + FUTURE_REV_S) * 1e6), 1023))
        return self._latest

    async def _prefetch(self, decoded: list[tuple[bytes, dict[str, Any], dict[str, Any]]]) -> None:
        """Resolve the batch's DIDs concurrently (first contact with many accounts)."""
        dids = set()
        for _, header, body in decoded:
            did = body.get("repo") if header.get("t") == "#commit" else body.get("did")
            if isinstance(did, str) and did not in self.registry.accounts:
                dids.add(did)
        if not dids:
            return
        gate = asyncio.Semaphore(PREFETCH_CONCURRENCY)

        async def one(did: str) -> None:
            async with gate:
                with contextlib.suppress(RoostError):
                    await self.identity.lookup_did(did)

        await asyncio.gather(*(one(did) for did in dids if is_valid_did(did)))

    async def _charge(self, host: HostRuntime, count: int) -> None:
        """Take ``count`` events from the host's budgets, waiting while they are spent."""
        limiter = self.registry.rate_limiter
        while count > 0:
            chunk = min(count, host.limits[0].points)
            charges = [(limit, host.name) for limit in host.limits]
            waited = False
            while not all(s.allowed for s in limiter.consume_many(charges, chunk)):
                if not waited:
                    waited = True
                    host.stats["rate_limit_waits"] += 1
                    if host.stats["rate_limit_waits"] % 100 == 1:
                        log.warning(
                            "host over its event rate limit host=%s per_second=%d waits=%d",
                            host.name, host.limits[0].points, host.stats["rate_limit_waits"],
                        )
                await asyncio.sleep(RATE_LIMIT_POLL_S)
            count -= chunk

    # -- step 1 -----------------------------------------------------------------------

    async def _precheck(
        self, host: HostRuntime, t: str, body: dict[str, Any], sub: Submission
    ) -> _Action | None:
        stats = host.stats
        if t == "#commit":
            did = body.get("repo")
            rev = body.get("rev")
            blocks = body.get("blocks")
            ops = body.get("ops")
            since = body.get("since")
            if not (
                is_valid_did(did)
                and is_valid_tid(rev)
                and type(body.get("commit")) is CID
                and type(blocks) is bytes
                and type(ops) is list
                and (since is None or is_valid_tid(since))
            ):
                stats["malformed_events"] += 1
                return None
            if body.get("tooBig") or body.get("rebase"):
                stats["too_big_or_rebase"] += 1
                return None
            if not blocks or len(blocks) > MAX_COMMIT_BLOCKS or len(ops) > MAX_COMMIT_OPS:
                stats["oversized_events"] += 1
                return None
        elif t == "#sync":
            did = body.get("did")
            rev = body.get("rev")
            blocks = body.get("blocks")
            if not (is_valid_did(did) and is_valid_tid(rev) and type(blocks) is bytes):
                stats["malformed_events"] += 1
                return None
            if len(blocks) > MAX_SYNC_BLOCKS:
                stats["oversized_events"] += 1
                return None
        else:
            did = body.get("did")
            if not is_valid_did(did):
                stats["malformed_events"] += 1
                return None
            if t == "#account" and type(body.get("active")) is not bool:
                stats["malformed_events"] += 1
                return None
            rev = None
        if rev is not None and rev > self._latest_rev():
            stats["future_rev"] += 1
            return None
        if t == "#identity":
            return await self._precheck_identity(host, did, body, sub)
        found = await self._authority(host, did, sub)
        if found is None:
            return None
        acct, doc = found
        if t == "#account":
            return _Action(t, acct, body, doc)
        if not _hosted(acct):
            stats[f"inactive:{acct.public_status}"] += 1
            return None
        if t == "#commit" and acct.desync:
            stats["desynchronized"] += 1
            return None
        if acct.rev is not None and rev is not None and rev <= acct.rev:
            # a #sync of the revision we hold (a PDS announces a new repo with its
            # genesis #commit and then a #sync of it) says nothing new: not a failure
            stats["sync_unchanged" if t == "#sync" and rev == acct.rev else "stale_rev"] += 1
            return None
        return _Action(t, acct, body, doc)

    async def _precheck_identity(
        self, host: HostRuntime, did: str, body: dict[str, Any], sub: Submission
    ) -> _Action | None:
        # Forget our copy whoever sends it: from a host other than the account's,
        # it is how a migration announces itself (the DID now names that host),
        # and a cached document younger than the refresh floor would hide the move.
        # The host's rate limits bound the lookups this costs.
        self.forget(did)
        found = await self._authority(host, did, sub, fresh=True)
        if found is None:
            return None
        return _Action("#identity", found[0], body, found[1])

    async def _authority(
        self, host: HostRuntime, did: str, sub: Submission, *, fresh: bool = False
    ) -> tuple[AccountState, DidDocument] | None:
        """The account, if ``host`` is its current PDS (re-resolving once); else None."""
        stats = host.stats
        try:
            doc = await self._resolve(host, did, fresh)
            if endpoint_host(doc.pds_endpoint) != host.name and not fresh:
                doc = await self._resolve(host, did, True)
        except IdentityError as exc:
            stats["unresolvable_dids"] += 1
            log.info("cannot resolve did=%s host=%s error=%s", did, host.name, exc.message)
            return None
        if endpoint_host(doc.pds_endpoint) != host.name:
            stats["not_authoritative"] += 1
            return None
        registry = self.registry
        acct = registry.account(did)
        if acct is None:
            row = host.row
            status = "active"
            if row.account_count >= row.account_limit:
                status = "host-throttled"
                stats["accounts_throttled"] += 1
                if stats["accounts_throttled"] % 100 == 1:
                    log.warning(
                        "host at its account limit host=%s limit=%d throttled=%d",
                        host.name, row.account_limit, stats["accounts_throttled"],
                    )
            acct = registry.new_account(did, host.id, status, utc_now())
            row.account_count += 1
            sub.host_counts[host.id] = row.account_count
            self._touch(acct, sub)
        elif acct.host_id != host.id:
            old = registry.hosts.get(acct.host_id)
            if old is not None:
                old.row.account_count = max(0, old.row.account_count - 1)
                sub.host_counts[old.id] = old.row.account_count
            host.row.account_count += 1
            sub.host_counts[host.id] = host.row.account_count
            log.info("account moved did=%s from=%s to=%s", did, old.name if old else "?", host.name)
            acct.host_id = host.id
            stats["accounts_moved_in"] += 1
            self._touch(acct, sub)
        return acct, doc

    async def _resolve(self, host: HostRuntime, did: str, fresh: bool) -> DidDocument:
        """The DID document; a transient failure is retried (the host's stream waits).

        Documents are also memoised here for :data:`DOC_MEMO_S` (the identity
        cache's lookup costs more than the rest of an event's checks).
        """
        now = time.monotonic()
        if not fresh:
            hit = self._docs.get(did)
            if hit is not None and hit[0] > now:
                return hit[1]
        for delay in (*RESOLVE_RETRY_DELAYS_S, None):
            try:
                doc = await self.identity.lookup_did(did, force_refresh=fresh)
                break
            except (DidNotFound, DidDeactivated, UnsafeUrl):
                raise
            except IdentityError:
                if delay is None:
                    raise
                host.stats["resolve_retries"] += 1
                await asyncio.sleep(delay)
                fresh = True
        if len(self._docs) >= DOC_MEMO_SIZE:
            self._docs.clear()
        self._docs[did] = (now + DOC_MEMO_S, doc)
        return doc

    def forget(self, did: str) -> None:
        """Drop a DID's document everywhere (``#identity``)."""
        self._docs.pop(did, None)
        self.identity.purge(did)

    # -- step 2 -----------------------------------------------------------------------

    async def _retry_bad_signatures(
        self, actions: list[_Action], jobs: list[Job], verdicts: list[Verdict]
    ) -> None:
        """Re-resolve the DIDs whose signature failed; verify again if the key changed."""
        retry: list[tuple[int, Job]] = []
        for action in actions:
            if action.job < 0 or verdicts[action.job][0] != "BadCommitSignature":
                continue
            did = action.acct.did
            self._docs.pop(did, None)
            try:
                doc = await self.identity.lookup_did(did, force_refresh=True)
            except IdentityError:
                continue
            key: PublicKey | None = doc.signing_key
            if key is None or (key.curve, key.compressed) == jobs[action.job][1]:
                continue
            action.doc = doc
            retry.append((action.job, (jobs[action.job][0], (key.curve, key.compressed))))
        if retry:
            again = await self.verifier.verify([job for _, job in retry])
            for (index, _), verdict in zip(retry, again):
                verdicts[index] = verdict

    # -- step 3 -----------------------------------------------------------------------

    def _touch(self, acct: AccountState, sub: Submission) -> None:
        sub.account(acct)

    def _apply(
        self, host: HostRuntime, action: _Action, verdicts: list[Verdict], sub: Submission
    ) -> None:
        stats = host.stats
        acct = self.registry.account(action.acct.did) or action.acct
        body = action.body
        t = action.t
        if acct.status == "takendown" and t in ("#identity", "#account"):
            if t == "#account":  # remember what the host says; announce nothing
                acct.upstream_status = _upstream_status(body)
                self._touch(acct, sub)
            stats["inactive:takendown"] += 1
            return
        if t == "#identity":
            out: dict[str, Any] = {"did": acct.did, "time": _time(body)}
            handle = body.get("handle")
            if isinstance(handle, str) and action.doc is not None and handle == action.doc.handle:
                out["handle"] = handle
            sub.events.append(OutEvent(t, out, acct.uid))
            stats["accepted:#identity"] += 1
            return
        if t == "#account":
            acct.upstream_status = _upstream_status(body)
            self._touch(acct, sub)
            out = {"did": acct.did, "time": _time(body), "active": acct.active}
            public = acct.public_status
            if public is not None:
                out["status"] = public
            sub.events.append(OutEvent(t, out, acct.uid))
            stats["accepted:#account"] += 1
            return
        rev = body["rev"]
        if not _hosted(acct) or (t == "#commit" and acct.desync):
            stats[f"inactive:{acct.public_status}"] += 1
            return
        if acct.rev is not None and rev <= acct.rev:
            stats["sync_unchanged" if t == "#sync" and rev == acct.rev else "stale_rev"] += 1
            return
        error, value = verdicts[action.job]
        if error is None and t == "#commit" and acct.rev is not None and body.get("prevData") is None:
            error, value = "MissingPrevData", "a commit after the first must carry prevData"
        if error is not None:
            stats[f"invalid:{error}"] += 1
            log.info(
                "dropped invalid %s host=%s did=%s rev=%s error=%s: %s",
                t, host.name, acct.did, rev, error, value,
            )
            if error in _RESYNC_ERRORS:
                self.resync.request(host, acct, sub)
            return
        assert isinstance(value, bytes)
        data = CID.from_bytes(value)
        if t == "#commit":
            if acct.rev is not None and (
                body.get("since") != acct.rev or body.get("prevData") != acct.data_cid
            ):
                stats["discontinuities"] += 1
            out = _commit_body(body)
            acct.commit_cid = body["commit"]
        else:
            out = {"did": acct.did, "rev": rev, "blocks": body["blocks"], "time": _time(body)}
            acct.commit_cid = CarReader(body["blocks"]).roots[0]  # checked by the verifier
            acct.desync = False  # the host stated the repo's state: nothing left to resync
        acct.rev = rev
        acct.data_cid = data
        self._touch(acct, sub)
        sub.events.append(OutEvent(t, out, acct.uid))
        stats[f"accepted:{t}"] += 1


def _hosted(acct: AccountState) -> bool:
    """Local and upstream status allow its events (desync aside)."""
    return acct.status in ACCOUNT_ACTIVE_STATUSES and acct.upstream_status == "active"


def _upstream_status(body: dict[str, Any]) -> str:
    """What an upstream ``#account`` says: ``active`` or its status (``inactive`` if none)."""
    if body["active"]:
        return "active"
    status = body.get("status")
    return status if isinstance(status, str) and status else "inactive"


def _time(body: dict[str, Any]) -> str:
    value = body.get("time")
    return value if is_valid_datetime(value) else utc_now()


def _commit_body(body: dict[str, Any]) -> dict[str, Any]:
    """The ``#commit`` re-emitted: the known fields only, blocks and ops unchanged."""
    ops = []
    for op in body["ops"]:
        item = {"action": op["action"], "path": op["path"], "cid": op.get("cid")}
        prev = op.get("prev")
        if prev is not None:
            item["prev"] = prev
        ops.append(item)
    out = {
        "repo": body["repo"],
        "rev": body["rev"],
        "since": body.get("since"),
        "commit": body["commit"],
        "blocks": body["blocks"],
        "ops": ops,
        "blobs": [],
        "rebase": False,
        "tooBig": False,
        "time": body["time"],
    }
    prev_data = body.get("prevData")
    if prev_data is not None:
        out["prevData"] = prev_data
    return out


# -- the connection ------------------------------------------------------------------


class HostConsumer:
    """One host's subscription: dial, read, hand batches to :class:`Ingest`, reconnect."""

    def __init__(
        self,
        host: HostRuntime,
        ingest: Ingest,
        *,
        allow_local: bool,
        on_status: Callable[[HostRuntime, str], Any],
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.host = host
        self.ingest = ingest
        self.allow_local = allow_local
        self.on_status = on_status
        self.rng = rng
        self._ws: ClientConnection | None = None

    async def run(self) -> None:
        host = self.host
        failures = 0
        while host.row.status in ("active", "throttled"):
            try:
                ws = await self._dial()
            except StopConsuming as stop:
                await self._stop(stop.reason)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any dial failure is retried
                failures += 1
                host.stats["dial_failures"] += 1
                host.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if failures > MAX_DIAL_FAILURES:
                    log.warning("host offline after %d failed dials host=%s", failures - 1, host.name)
                    await self._stop("offline")
                    return
                delay = backoff_delay(failures, self.rng)
                log.info(
                    "cannot reach host=%s failures=%d retry_in=%.1fs error=%s",
                    host.name, failures, delay, host.last_error,
                )
                await asyncio.sleep(delay)
                continue
            try:
                progressed, reason = await self._consume(ws)
            except Exception as exc:  # noqa: BLE001 - a bug or a failed write: start over
                log.exception("consuming host=%s failed", host.name)
                host.stats["consumer_errors"] += 1
                host.last_error = f"{type(exc).__name__}: {exc}"[:300]
                progressed, reason = False, None
            finally:
                host.connected = False
                self._ws = None
                with contextlib.suppress(Exception):
                    await ws.close()
            if reason in ("idle", "banned"):
                await self._stop(reason)
                return
            host.stats["disconnects"] += 1
            failures = 0 if progressed else failures + 1
            await asyncio.sleep(backoff_delay(max(1, failures), self.rng))

    async def _stop(self, status: str) -> None:
        result = self.on_status(self.host, status)
        if asyncio.iscoroutine(result):
            await result

    async def _dial(self) -> ClientConnection:
        host = self.host
        cursor = host.cursor
        url = host.row.hostname
        scheme = "ws" if host.row.no_ssl else "wss"
        target = f"{scheme}://{url}/xrpc/com.atproto.sync.subscribeRepos"
        if cursor > 0:
            target += f"?cursor={cursor}"
        name = url.rpartition(":")[0] if ":" in url else url
        port = int(url.rpartition(":")[2]) if ":" in url else (80 if host.row.no_ssl else 443)
        backend = GuardedBackend(allow_local=self.allow_local, local_only=host.row.no_ssl)
        addresses = await backend.vetted_addresses(name, HANDSHAKE_TIMEOUT_S)
        ws = await connect(
            target,
            host=addresses[0],
            port=port,
            proxy=None,
            compression=None,
            max_size=MAX_FRAME_BYTES,
            max_queue=RECV_QUEUE,
            open_timeout=HANDSHAKE_TIMEOUT_S,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            close_timeout=2,
            user_agent_header=USER_AGENT,
        )
        server = ws.response.headers.get("Server", "") if ws.response is not None else ""
        if "atproto-relay" in server.lower():
            await ws.close()
            log.warning("host is a relay (Server: %s); banning it host=%s", server, host.name)
            raise StopConsuming("banned")
        host.connected = True
        host.connected_at = time.time()
        host.stats["connects"] += 1
        log.info("subscribed host=%s cursor=%d", host.name, cursor)
        return ws

    async def _consume(self, ws: ClientConnection) -> tuple[bool, str | None]:
        """Read until the connection ends; (made progress, stop reason).

        Three tasks: a reader queues raw frames; a preparer takes whatever has
        arrived as a batch and starts verifying it; an applier finishes the
        batches in order and submits them, while the next ones verify.
        """
        host = self.host
        self._ws = ws
        frames_in: asyncio.Queue[Any] = asyncio.Queue(RECV_QUEUE)
        prepared: asyncio.Queue[Prepared | None] = asyncio.Queue(PIPELINE)
        done = object()
        progressed = False
        reason: str | None = None

        async def read() -> None:
            try:
                async for message in ws:
                    await frames_in.put(message)
            except websockets.ConnectionClosed as exc:
                codes = {frame.code for frame in (exc.rcvd, exc.sent) if frame is not None}
                if 1009 in codes:  # "message too big": over MAX_FRAME_BYTES
                    host.stats["oversized_frames"] += 1
                host.last_error = f"connection closed: {exc}"[:300]
            except Exception as exc:  # noqa: BLE001
                host.last_error = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                await frames_in.put(done)

        async def prepare() -> None:
            socket_seq = [0]

            async def one(frames: list[Any]) -> bool:
                batch = await self.ingest.prepare(host, frames, socket_seq)
                await prepared.put(batch)
                return batch.outcome.close is not None

            try:
                await run_group_commits(frames_in, MAX_BATCH, one, end=done)
            finally:
                await prepared.put(None)

        async def apply() -> None:
            nonlocal progressed, reason
            inflight: deque[tuple[asyncio.Future[list[int]], bool]] = deque()
            while (batch := await prepared.get()) is not None:
                try:
                    outcome = await self.ingest.finish(host, batch)
                finally:
                    batch.cancel()
                submission = outcome.submission
                if submission:
                    future = self.ingest.writer.submit(submission)
                    future.add_done_callback(self._advance(submission.cursor))
                    inflight.append((future, submission.cursor is not None))
                while inflight and (len(inflight) > MAX_INFLIGHT or inflight[0][0].done()):
                    progressed |= await self._settle(*inflight.popleft())
                if outcome.close is not None:
                    reason = outcome.close
                    host.last_error = f"closed: {outcome.close}"
                    log.warning("closing connection host=%s reason=%s", host.name, outcome.close)
                    reader.cancel()
            while inflight:
                progressed |= await self._settle(*inflight.popleft())

        reader = asyncio.create_task(read(), name=f"relay-read-{host.name}")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(prepare(), name=f"relay-prepare-{host.name}")
                group.create_task(apply(), name=f"relay-apply-{host.name}")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            while not prepared.empty():
                leftover = prepared.get_nowait()
                if leftover is not None:
                    leftover.cancel()
        return progressed, reason

    def _advance(self, cursor: tuple[int, int] | None) -> Callable[[asyncio.Future[Any]], None]:
        """A callback moving the host's cursor once a submission is durable."""

        def done(future: asyncio.Future[Any]) -> None:
            if cursor is not None and not future.cancelled() and future.exception() is None:
                host = self.host
                host.cursor = host.row.last_seq = cursor[1]

        return done

    async def _settle(self, future: asyncio.Future[list[int]], moves_cursor: bool) -> bool:
        """Wait for a submission to be durable; True if it moved the cursor."""
        # a failed transaction raises here: the relay restarts from the durable cursors
        await future
        return moves_cursor
