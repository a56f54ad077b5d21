"""Commit verification, run in a pool of worker processes.

Checking a ``#commit`` costs a frame decode, a CAR parse, a k256 signature
check and the sync v1.1 inversion of its ops on the partial tree
(:func:`roost.repo.verify_commit_event`): about a fifth of a millisecond of
pure CPU, too much for the one process that also reads every upstream
socket, writes the log and feeds every consumer. So that part runs in
worker processes (:class:`Verifier`). Their jobs wait in one queue and go
out in batches: whatever has queued by the time a worker has room travels
in one message, so the cost of a round trip is shared by many events when
the relay is busy and nothing waits when it is not. The server process
talks to the workers over socket pairs from its event loop, with no
helper threads (a process pool's per-call threads and pickling cost more
than the verification of a small batch).

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
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import pickle
import signal
import socket
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from roost.car import CarReader
from roost.cid import CID
from roost.commit import Commit
from roost.crypto import PublicKey
from roost.errors import InternalServerError, InvalidCommit, RoostError
from roost.frames import decode_frame
from roost.repo import ops_from_firehose, verify_car, verify_commit_event
from roost.syntax import is_valid_datetime

__all__ = [
    "MAX_MESSAGE_JOBS",
    "MIN_CHUNK",
    "WORKER_DEPTH",
    "Job",
    "RepoCheck",
    "Verdict",
    "Verifier",
    "WorkerDied",
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
#: Jobs in one message to a worker at most.
MAX_MESSAGE_JOBS: Final = 512
#: Messages a worker holds at once (one being verified, one waiting).
WORKER_DEPTH: Final = 2
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


# -- the worker processes ------------------------------------------------------------------
#
# Each worker is a process on one end of a socket pair. A message either way
# is a 4-byte big-endian length and a pickle: ("batch", [Job]) answered by
# [Verdict], ("repo", car, did, key spec) answered by ("ok", RepoCheck) or
# ("error", exception). The server process reads and writes its ends with
# the event loop (no threads), and a worker answers its messages in order.

_HEAD: Final = struct.Struct(">I")


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    parts = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _send(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEAD.pack(len(data)) + data)


def _answer(message: tuple[Any, ...]) -> object:
    kind = message[0]
    if kind == "batch":
        return verify_batch(message[1])
    try:
        return ("ok", check_repo(*message[1:]))
    except RoostError as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - an error type pickle cannot rebuild
            exc = RoostError(exc.message)
        return ("error", exc)


def _worker_main(sock: socket.socket) -> None:
    """A worker process: answer messages until the server closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    _send(sock, "ready")
    while True:
        head = _recv_exact(sock, _HEAD.size)
        if head is None:
            return
        body = _recv_exact(sock, _HEAD.unpack(head)[0])
        if body is None:
            return
        _send(sock, _answer(pickle.loads(body)))


class WorkerDied(InternalServerError):
    """A verification worker process ended while it held work."""


class _Request:
    """One :meth:`Verifier.verify` call: its verdicts arrive in pieces."""

    __slots__ = ("future", "verdicts", "remaining")

    def __init__(self, future: asyncio.Future[list[Verdict]], size: int) -> None:
        self.future = future
        self.verdicts: list[Verdict | None] = [None] * size
        self.remaining = size


#: A job waiting for a worker: (job, its request, index in the request, attempt).
_Slot = tuple[Job, _Request, int, int]


class _Worker:
    """The server's side of one worker process."""

    def __init__(self, process: multiprocessing.process.BaseProcess, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        #: Messages sent and not answered yet, oldest first: the slots of a batch,
        #: or the future of a repo check.
        self.inflight: deque[list[_Slot] | asyncio.Future[RepoCheck]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.alive = False


class Verifier:
    """Runs :func:`verify_batch` in ``workers`` processes (or inline when 0).

    Calls are queued together: a worker with room takes every job waiting
    (split evenly when several have room), so under load the jobs of many
    hosts' batches travel in one message each way, and at low load a job
    goes out at once. Each worker has at most :data:`WORKER_DEPTH`
    messages outstanding. A worker that dies is replaced and the jobs it
    held are queued again, once; a second loss fails their calls with
    :class:`WorkerDied`.
    """

    def __init__(self, workers: int) -> None:
        if workers < 0:
            raise ValueError("workers must not be negative")
        self.workers = workers
        self._workers: list[_Worker] = []
        self._pending: deque[_Slot] = deque()
        self._starting: asyncio.Future[Any] | None = None
        self._closed = False
        self.jobs = 0
        self.batches = 0
        self.messages = 0
        self.restarts = 0

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.process.pid for w in self._workers if w.alive and w.process.pid is not None]

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker processes and wait until each is ready."""
        if self.workers and self._starting is None:
            self._starting = asyncio.ensure_future(
                asyncio.gather(*(self._spawn() for _ in range(self.workers)))
            )
        if self._starting is not None:
            await asyncio.shield(self._starting)

    async def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        # spawn: the server process runs threads (uvicorn, SQLite); forking it is unsafe.
        process = multiprocessing.get_context("spawn").Process(
            target=_worker_main, args=(theirs,), name="relay-verify", daemon=True
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        worker.reader, worker.writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
        if await self._read(worker) != "ready":
            raise RoostError("a verification worker did not start")
        worker.alive = True
        worker.task = asyncio.create_task(self._receive(worker), name="relay-verify-results")
        self._workers.append(worker)
        self._dispatch()

    def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
        for worker in self._workers:
            worker.alive = False
            if worker.task is not None:
                worker.task.cancel()
            # Shut the socket down now: the transport's close() only takes effect
            # on a later loop iteration, and the joins below block the loop, so
            # without this the workers would wait for an EOF that never comes.
            with contextlib.suppress(OSError):
                worker.sock.shutdown(socket.SHUT_RDWR)
            if worker.writer is not None:
                worker.writer.close()
            else:
                worker.sock.close()
        for worker in self._workers:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
        self._workers.clear()
        self._fail_pending(RoostError("the verifier is closed"))

    # -- calls --------------------------------------------------------------------------

    async def verify(self, jobs: Sequence[Job]) -> list[Verdict]:
        """Verdicts for ``jobs``, in order."""
        if not jobs:
            return []
        self.jobs += len(jobs)
        self.batches += 1
        if not self.workers:
            return verify_batch(jobs)
        if self._closed:
            raise RoostError("the verifier is closed")
        await self.start()
        future: asyncio.Future[list[Verdict]] = asyncio.get_running_loop().create_future()
        request = _Request(future, len(jobs))
        self._pending.extend((job, request, i, 0) for i, job in enumerate(jobs))
        self._dispatch()
        return await future

    async def check_repo(self, car: bytes, did: str, key: PublicKey) -> RepoCheck:
        """:func:`check_repo` in a worker (in a thread when there are none)."""
        spec = (key.curve, key.compressed)
        if not self.workers:
            return await asyncio.to_thread(check_repo, car, did, spec)
        await self.start()
        live = [w for w in self._workers if w.alive]
        if not live:
            raise WorkerDied("no verification worker is running")
        worker = min(live, key=lambda w: len(w.inflight))
        future: asyncio.Future[RepoCheck] = asyncio.get_running_loop().create_future()
        worker.inflight.append(future)
        self._write(worker, ("repo", car, did, spec))
        return await future

    # -- the queue ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give waiting jobs to the workers with room."""
        pending = self._pending
        while pending:
            while pending and pending[0][1].future.done():  # its caller went away
                pending.popleft()
            if not pending:
                return
            free = [w for w in self._workers if w.alive and len(w.inflight) < WORKER_DEPTH]
            if not free:
                return
            least = min(len(w.inflight) for w in free)
            free = [w for w in free if len(w.inflight) == least]
            share = max(MIN_CHUNK, -(-len(pending) // len(free)))
            take = min(share, MAX_MESSAGE_JOBS, len(pending))
            slots = [pending.popleft() for _ in range(take)]
            worker = free[0]
            worker.inflight.append(slots)
            self.messages += 1
            self._write(worker, ("batch", [slot[0] for slot in slots]))

    def _write(self, worker: _Worker, message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        assert worker.writer is not None
        worker.writer.write(_HEAD.pack(len(data)) + data)

    @staticmethod
    async def _read(worker: _Worker) -> Any:
        assert worker.reader is not None
        head = await worker.reader.readexactly(_HEAD.size)
        return pickle.loads(await worker.reader.readexactly(_HEAD.unpack(head)[0]))

    async def _receive(self, worker: _Worker) -> None:
        """Hand a worker's answers to their callers; replace the worker if it dies."""
        try:
            while True:
                answer = await self._read(worker)
                sent = worker.inflight.popleft()
                if isinstance(sent, list):
                    self._settle(sent, answer)
                elif not sent.done():
                    if answer[0] == "ok":
                        sent.set_result(answer[1])
                    else:
                        sent.set_exception(answer[1])
                self._dispatch()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, pickle.UnpicklingError):
            if not self._closed:
                self._lost(worker)

    @staticmethod
    def _settle(slots: list[_Slot], verdicts: list[Verdict]) -> None:
        for (_, request, index, _), verdict in zip(slots, verdicts):
            request.verdicts[index] = verdict
            request.remaining -= 1
            if request.remaining == 0 and not request.future.done():
                request.future.set_result(request.verdicts)  # type: ignore[arg-type]

    def _lost(self, worker: _Worker) -> None:
        """A worker died (killed, out of memory): retry its jobs once, start another."""
        worker.alive = False
        self._workers.remove(worker)
        if worker.writer is not None:
            worker.writer.close()
        worker.process.join(1)
        self.restarts += 1
        log.error("a verification worker died; starting another (restart %d)", self.restarts)
        died = WorkerDied("a verification worker died while holding the job")
        retry: list[_Slot] = []
        for sent in worker.inflight:
            if isinstance(sent, list):
                for job, request, index, attempt in sent:
                    if attempt == 0:
                        retry.append((job, request, index, 1))
                    elif not request.future.done():
                        request.future.set_exception(died)
            elif not sent.done():
                sent.set_exception(WorkerDied("a verification worker died while checking the repo"))
        self._pending.extendleft(reversed(retry))
        replacement = asyncio.ensure_future(self._spawn())
        replacement.add_done_callback(self._spawned)

    def _spawned(self, task: asyncio.Future[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("cannot start a verification worker: %r", task.exception())
        if not any(w.alive for w in self._workers):
            self._fail_pending(WorkerDied("no verification worker is running"))

    def _fail_pending(self, exc: RoostError) -> None:
        while self._pending:
            _, request, _, _ = self._pending.popleft()
            if not request.future.done():
                request.future.set_exception(exc)
