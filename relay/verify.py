"""Commit verification, run in a pool of worker processes.

Checking a ``#commit`` costs a frame decode, a CAR parse, a k256 signature
check and the sync v1.1 inversion of its ops on the partial tree
(:func:`roost.repo.verify_commit_event`): about a fifth of a millisecond of
pure CPU, too much for the one process that also reads every upstream
socket, writes the log and feeds every consumer. So that part runs in
worker processes (:class:`Verifier`), in batches, one chunk per worker.

The work is stateless, so batches verify in parallel and out of order: the
server process resolves the signing key first (its identity cache) and
afterwards checks the result against the account's stored state in
upstream order (rev ordering, ``since``/``prevData`` continuity). A worker
gets the raw frame and the key, and answers with a :data:`Verdict`:
``(None, data CID bytes)`` when the event is valid, or ``(error name,
message)``. With ``workers=0`` the same function runs in the server process
(tests, single-core machines).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Final

from roost.car import CarReader
from roost.cid import CID
from roost.commit import Commit
from roost.crypto import PublicKey
from roost.errors import InvalidCommit, RoostError
from roost.frames import decode_frame
from roost.repo import ops_from_firehose, verify_car, verify_commit_event
from roost.syntax import is_valid_datetime

__all__ = [
    "MIN_CHUNK",
    "Job",
    "RepoCheck",
    "Verdict",
    "Verifier",
    "check_repo",
    "verify_batch",
    "verify_one",
]

log = logging.getLogger(__name__)

#: (raw frame, (curve, compressed public key)).
Job = tuple[bytes, tuple[str, bytes]]
#: (None, data CID bytes) if valid, else (error name, message).
Verdict = tuple[str | None, bytes | str]
#: Resync result: (rev, commit CID bytes, data CID bytes, commit block).
RepoCheck = tuple[str, bytes, bytes, bytes]

#: Fewer jobs than this are not split between workers.
MIN_CHUNK: Final = 16
#: Parsed keys kept per worker.
_KEY_CACHE_SIZE: Final = 100_000
_keys: dict[tuple[str, bytes], PublicKey] = {}


def _key(spec: tuple[str, bytes]) -> PublicKey:
    key = _keys.get(spec)
    if key is None:
        if len(_keys) >= _KEY_CACHE_SIZE:
            _keys.clear()
        key = _keys[spec] = PublicKey(spec[0], spec[1])
    return key


def verify_one(frame: bytes, key_spec: tuple[str, bytes]) -> Verdict:
    """Verify one ``#commit`` or ``#sync`` frame with the account's signing key."""
    try:
        # no float scan: the fields read below are type-checked, and the
        # relay re-emits only those
        header, body = decode_frame(frame, check_floats=False)
        key = _key(key_spec)
        t = header.get("t")
        if t == "#commit":
            time = body.get("time")
            if not is_valid_datetime(time):
                raise InvalidCommit("commit event time is not a datetime")
            prev_data = body.get("prevData")
            if prev_data is not None and type(prev_data) is not CID:
                raise InvalidCommit("prevData must be a link")
            commit = verify_commit_event(
                repo=body["repo"],
                commit_cid=body["commit"],
                rev=body["rev"],
                blocks=body["blocks"],
                ops=ops_from_firehose(body["ops"]),
                prev_data=prev_data,
                key=key,
            )
        elif t == "#sync":
            reader = CarReader(body["blocks"])
            if len(reader.roots) != 1:
                raise InvalidCommit("sync CAR must have exactly one root")
            root = reader.roots[0]
            block = None
            for cid, data in reader:
                if cid == root:
                    block = data
            if block is None:
                raise InvalidCommit("sync CAR does not hold its commit block")
            commit = Commit.decode(block, root)
            commit.check(key, did=body["did"])
            if commit.rev != body["rev"]:
                raise InvalidCommit(f"event rev {body['rev']} does not match commit rev {commit.rev}")
        else:
            return ("UnexpectedFrame", f"cannot verify a {t!r} frame")
    except RoostError as exc:
        return (type(exc).__name__, exc.message or type(exc).__name__)
    except (KeyError, TypeError, ValueError) as exc:
        return ("InvalidCommit", f"malformed event: {exc!r}"[:300])
    return (None, commit.data.bytes)


def verify_batch(jobs: Sequence[Job]) -> list[Verdict]:
    """:func:`verify_one` for each job (the unit of work sent to a worker)."""
    return [verify_one(frame, key) for frame, key in jobs]


def check_repo(car: bytes, did: str, key_spec: tuple[str, bytes]) -> RepoCheck:
    """Verify a whole repo CAR (for a resync); raises a ``RoostError`` subclass."""
    summary = verify_car(car, did=did, key=_key(key_spec))
    block = b""
    for cid, data in CarReader(car):
        if cid == summary.commit_cid:
            block = data
            break
    return summary.rev, summary.commit_cid.bytes, summary.data_cid.bytes, block


def _warm_up() -> None:
    """Runs in each new worker: import everything before the first batch arrives."""


class Verifier:
    """Runs :func:`verify_batch` in ``workers`` processes (or inline when 0)."""

    def __init__(self, workers: int) -> None:
        if workers < 0:
            raise ValueError("workers must not be negative")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = self._new_pool() if workers else None
        self.jobs = 0
        self.batches = 0
        self.restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: the server process runs threads (uvicorn, SQLite); forking it is unsafe.
        return ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_warm_up
        )

    def _replace_pool(self, broken: ProcessPoolExecutor) -> None:
        """A worker died (killed, out of memory): start a fresh pool once per breakage."""
        if self._pool is broken:
            self.restarts += 1
            log.error("a verification worker died; restarting the pool (restart %d)", self.restarts)
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    async def start(self) -> None:
        """Start the worker processes now rather than on the first batch."""
        if self._pool is not None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(self._pool, _warm_up) for _ in range(self.workers))
            )

    async def verify(self, jobs: Sequence[Job]) -> list[Verdict]:
        """Verdicts for ``jobs``, in order."""
        if not jobs:
            return []
        self.jobs += len(jobs)
        self.batches += 1
        pool = self._pool
        if pool is None:
            return verify_batch(jobs)
        loop = asyncio.get_running_loop()
        parts = max(1, min(self.workers, len(jobs) // MIN_CHUNK))
        size = -(-len(jobs) // parts)
        chunks = [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]
        for attempt in (1, 2):
            try:
                results = await asyncio.gather(
                    *(loop.run_in_executor(pool, verify_batch, chunk) for chunk in chunks)
                )
                break
            except BrokenProcessPool:
                self._replace_pool(pool)
                if attempt == 2 or self._pool is None:
                    raise
                pool = self._pool
        return [verdict for chunk in results for verdict in chunk]

    async def check_repo(self, car: bytes, did: str, key: PublicKey) -> RepoCheck:
        """:func:`check_repo` off the event loop."""
        spec = (key.curve, key.compressed)
        pool = self._pool
        if pool is None:
            return await asyncio.to_thread(check_repo, car, did, spec)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, check_repo, car, did, spec
            )
        except BrokenProcessPool:
            self._replace_pool(pool)
            raise RoostError("a verification worker died while checking the repo") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
