"""The single writer: every change to accounts and repos goes through here.

Jobs queue up; the writer takes every job waiting, prepares them one after
another on the event loop (repo math, in memory, each seeing the ones before
it), runs all their SQL and events in **one** SQLite transaction in a worker
thread (one fsync for the whole batch: "group commit"), then answers the
jobs and hands the new events to the sequencer. A job's caller is answered
only after the transaction is durable, so an acknowledged write survives a
crash; a job that fails while being prepared fails alone, and a failed
transaction fails every job of its batch and changes nothing.

Sequence numbers are assigned in the transaction, in order, above the
highest ever used (kept in ``meta``), so they never go backwards across
restarts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from roost.car import car_bytes
from roost.cid import CID
from roost.crypto import PrivateKey
from roost.errors import RepoError, RoostError
from roost.frames import encode_frame
from roost.groupcommit import run_group_commits
from roost.repo import CommitData, Repo, Write
from roost.tid import TidClock

from pds.sqlite import AccountBlocks, PdsDatabase

__all__ = ["WriteContext", "Writer", "MAX_BATCH_JOBS", "utc_now"]

log = logging.getLogger(__name__)

#: Jobs prepared and committed together at most.
MAX_BATCH_JOBS = 256
#: Repos kept in memory between writes (LRU).
REPO_CACHE_SIZE = 1_000


def utc_now() -> str:
    """Current time in the atproto datetime form (milliseconds, ``Z``)."""
    ms = time.time_ns() // 1_000_000
    second, milli = divmod(ms, 1000)
    return f"{_second_prefix(second)}{milli:03d}Z"


@functools.lru_cache(maxsize=4)
def _second_prefix(second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.`` of a Unix second (formatted once per second)."""
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")


@dataclass(slots=True)
class _PendingEvent:
    did: str
    type: str
    body: dict[str, Any]


@dataclass(slots=True)
class WriteContext:
    """What a job sees while it is prepared: repos, SQL to run, events to emit."""

    writer: Writer
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    events: list[_PendingEvent] = field(default_factory=list)
    touched: dict[str, tuple[Repo, AccountBlocks]] = field(default_factory=dict)

    @property
    def db(self) -> PdsDatabase:
        return self.writer.db

    def execute(self, sql: str, *params: Any) -> None:
        self.statements.append((sql, params))

    def event(self, did: str, type_: str, body: dict[str, Any]) -> None:
        """Sequence an event (``seq`` and ``time`` are filled in at commit)."""
        self.events.append(_PendingEvent(did, type_, body))

    def repo(self, did: str) -> Repo | None:
        """The account's repo as of the jobs prepared so far (None if it has none)."""
        if did in self.touched:
            return self.touched[did][0]
        return self.writer._load_repo(did)

    # -- repo commits ------------------------------------------------------

    def create_repo(self, did: str, key: PrivateKey, writes: list[Write] = ()) -> CommitData:  # type: ignore[assignment]
        blocks = AccountBlocks(self.db, did)
        repo, data = Repo.create(blocks, did, key, writes, clock=self.writer.clock)
        self._record_commit(did, repo, blocks, data)
        return data

    def commit(
        self, did: str, key: PrivateKey, writes: list[Write], swap_commit: CID | None = None
    ) -> CommitData:
        """Apply ``writes`` to the account's repo as one signed commit, and emit ``#commit``."""
        repo = self.repo(did)
        if repo is None:
            raise RepoError(f"{did} has no repository")
        blocks: AccountBlocks = repo.blocks  # type: ignore[assignment]
        repo, data = repo.apply_writes(writes, key, swap_commit=swap_commit, clock=self.writer.clock)
        self._record_commit(did, repo, blocks, data)
        return data

    def _record_commit(self, did: str, repo: Repo, blocks: AccountBlocks, data: CommitData) -> None:
        """The commit's rows: its blocks in, the record index, the blocks it
        took out of the repo gone, the new root, and its ``#commit`` event.

        The block table holds exactly the blocks of each account's current
        commit (getRepo streams it as is), so the previous commit block and
        the MST nodes the edits replaced are deleted in the same transaction.
        """
        self.touched[did] = (repo, blocks)
        rev = data.rev
        # a block written again (same content) takes the new rev: getRepo?since
        # must include it for the new revision
        items = list(blocks.take_pending().items())
        for start in range(0, len(items), _SQL_ROWS):
            chunk = items[start : start + _SQL_ROWS]
            params: list[Any] = []
            for cid, block in chunk:
                params += (did, cid.bytes, block, rev)
            self.execute(_insert_blocks_sql(len(chunk)), *params)
        for op in data.ops:
            collection, _, rkey = op.path.partition("/")
            if op.cid is None:
                self.execute(
                    "DELETE FROM record WHERE did = ? AND collection = ? AND rkey = ?",
                    did, collection, rkey,
                )
            else:
                self.execute(
                    "INSERT OR REPLACE INTO record (did, collection, rkey, cid, rev)"
                    " VALUES (?, ?, ?, ?, ?)",
                    did, collection, rkey, op.cid.bytes, rev,
                )
        # old record blocks no other path of this repo still uses
        for op in data.ops:
            if op.prev is not None and op.prev != op.cid:
                self.execute(
                    "DELETE FROM block WHERE did = ? AND cid = ? AND NOT EXISTS"
                    " (SELECT 1 FROM record WHERE did = ? AND cid = ?)",
                    did, op.prev.bytes, did, op.prev.bytes,
                )
        gone = [cid.bytes for cid in data.removed_nodes()]
        if data.prev_commit is not None and data.prev_commit != data.cid:
            gone.append(data.prev_commit.bytes)
        for start in range(0, len(gone), _SQL_ROWS):
            chunk = gone[start : start + _SQL_ROWS]
            self.execute(_delete_blocks_sql(len(chunk)), did, *chunk)
        self.execute(
            "INSERT INTO repo_root (did, cid, rev, data) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (did) DO UPDATE SET cid = excluded.cid, rev = excluded.rev,"
            " data = excluded.data",
            did, data.cid.bytes, rev, data.commit.data.bytes,
        )
        body: dict[str, Any] = {
            "repo": did,
            "rev": rev,
            "since": data.since,
            "commit": data.cid,
            "blocks": data.car(),
            "ops": [_op_json(op) for op in data.ops],
            "blobs": [],
            "rebase": False,
            "tooBig": False,
        }
        if data.prev_data is not None:
            body["prevData"] = data.prev_data
        self.event(did, "#commit", body)

    def sync_event(self, did: str) -> None:
        """Emit ``#sync``: the account's current commit, alone in a CAR."""
        repo = self.repo(did)
        if repo is None:
            raise RepoError(f"{did} has no repository")
        commit = repo.commit
        self.event(
            did,
            "#sync",
            {"did": did, "rev": commit.rev, "blocks": car_bytes([commit.cid], {commit.cid: commit.block})},
        )


#: Rows bound into one multi-row statement at most (4 parameters a row, far
#: below SQLite's 32766-parameter limit).
_SQL_ROWS = 500


@functools.lru_cache(maxsize=64)
def _insert_blocks_sql(n: int) -> str:
    """One statement upserting ``n`` blocks (fewer statements: less work per commit)."""
    return (
        "INSERT INTO block (did, cid, data, rev) VALUES "
        + ", ".join(["(?, ?, ?, ?)"] * n)
        + " ON CONFLICT (did, cid) DO UPDATE SET rev = excluded.rev"
    )


@functools.lru_cache(maxsize=64)
def _insert_events_sql(n: int) -> str:
    """One statement adding ``n`` events."""
    return "INSERT INTO event (seq, did, time_ms, frame) VALUES " + ", ".join(["(?, ?, ?, ?)"] * n)


@functools.lru_cache(maxsize=64)
def _delete_blocks_sql(n: int) -> str:
    """One statement deleting ``n`` blocks of an account (parameters: did, cids)."""
    return f"DELETE FROM block WHERE did = ? AND cid IN ({', '.join('?' * n)})"


def _op_json(op: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"action": op.action, "path": op.path, "cid": op.cid}
    if op.prev is not None:
        out["prev"] = op.prev
    return out


Job = Callable[[WriteContext], Any]


@dataclass(slots=True)
class _Queued:
    job: Job
    future: asyncio.Future[Any]


class Writer:
    """Serialises and batches every write. Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        db: PdsDatabase,
        *,
        on_events: Callable[[list[tuple[int, bytes]]], None] | None = None,
        clock: TidClock | None = None,
    ) -> None:
        self.db = db
        self.clock = clock or TidClock()
        self.on_events = on_events
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._repos: OrderedDict[str, Repo] = OrderedDict()
        self._last_seq = db.last_seq()
        self.batches = 0
        self.jobs_done = 0

    @property
    def last_seq(self) -> int:
        return self._last_seq

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pds-writer")

    async def stop(self) -> None:
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None

    def submit(self, job: Job) -> Awaitable[Any]:
        """Queue ``job(ctx)``; the result is available once its batch is durable."""
        if self._task is None:
            raise RuntimeError("the writer is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Queued(job, future))
        return future

    def _load_repo(self, did: str) -> Repo | None:
        repo = self._repos.get(did)
        if repo is not None:
            self._repos.move_to_end(did)
            return repo
        root = self.db.repo_root(did)
        if root is None:
            return None
        repo = Repo.load(AccountBlocks(self.db, did), root[0], did=did)
        self._remember(did, repo)
        return repo

    def _remember(self, did: str, repo: Repo) -> None:
        self._repos[did] = repo
        self._repos.move_to_end(did)
        while len(self._repos) > REPO_CACHE_SIZE:
            self._repos.popitem(last=False)

    def forget(self, did: str) -> None:
        """Drop a cached repo (after an import or deletion done outside a commit)."""
        self._repos.pop(did, None)

    async def _run(self) -> None:
        await run_group_commits(self._queue, MAX_BATCH_JOBS, self._process)

    async def _process(self, batch: list[_Queued]) -> None:
        ctx = WriteContext(self)
        done: list[tuple[_Queued, Any]] = []
        for item in batch:
            mark = (len(ctx.statements), len(ctx.events), dict(ctx.touched))
            try:
                result = item.job(ctx)
            except Exception as exc:  # the job fails alone; undo what it added
                del ctx.statements[mark[0] :]
                del ctx.events[mark[1] :]
                for did in set(ctx.touched) - set(mark[2]):
                    ctx.touched.pop(did)
                ctx.touched.update(mark[2])
                if not isinstance(exc, RoostError):
                    log.exception("write job failed")
                if not item.future.done():
                    item.future.set_exception(exc)
                continue
            done.append((item, result))
        if not done:
            return
        frames = self._sequence(ctx)
        try:
            await asyncio.to_thread(self.db.run_transaction, ctx.statements)
        except Exception as exc:
            log.exception("write transaction failed; %d jobs failed", len(done))
            self._last_seq -= len(frames)
            for did in ctx.touched:
                self.forget(did)
            for item, _ in done:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for did, (repo, _) in ctx.touched.items():
            self._remember(did, repo)
        self.batches += 1
        self.jobs_done += len(done)
        for item, result in done:
            if not item.future.done():
                item.future.set_result(result)
        if frames and self.on_events is not None:
            self.on_events(frames)

    def _sequence(self, ctx: WriteContext) -> list[tuple[int, bytes]]:
        """Give each pending event its seq and frame; add the event rows to the batch."""
        frames: list[tuple[int, bytes]] = []
        now_ms = int(time.time() * 1000)
        now = utc_now()
        rows: list[Any] = []
        for event in ctx.events:
            self._last_seq += 1
            seq = self._last_seq
            body = {"seq": seq, "time": now, **event.body}
            frame = encode_frame(event.type, body)
            rows += (seq, event.did, now_ms, frame)
            frames.append((seq, frame))
        for start in range(0, len(rows), 4 * _SQL_ROWS):
            chunk = rows[start : start + 4 * _SQL_ROWS]
            ctx.execute(_insert_events_sql(len(chunk) // 4), *chunk)
        if frames:
            ctx.execute(
                "INSERT INTO meta (key, value) VALUES ('last_seq', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(self._last_seq),
            )
        return frames
