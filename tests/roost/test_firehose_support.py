"""Helpers shared by the firehose and Jetstream tests (no tests here).

- :class:`FakeRepo`: an account's repo built with roost's repo engine,
  emitting ``#commit`` / ``#identity`` / ``#account`` / ``#sync`` frames exactly
  as a PDS writer does (``forge_with`` signs with another key).
- :class:`FrameLog`: an in-memory :class:`~roost.sequencer.EventLog` of frames.
- :func:`sequencer_host`: a real :class:`~roost.sequencer.Sequencer` over a
  :class:`FrameLog`, served by ``XrpcRouter`` on a loopback port.
- :func:`scripted_host`: a ``subscribeRepos`` endpoint whose every connection
  runs a test-supplied script (send these frames, an error frame, close...).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from roost.blockstore import MemoryBlockStore
from roost.car import car_bytes
from roost.crypto import PrivateKey
from roost.frames import decode_frame, encode_frame
from roost.lexicon import Catalog
from roost.repo import CommitData, Repo, Write
from roost.sequencer import SUBSCRIBE_REPOS, Sequencer
from roost.tid import TidClock
from roost.xrpc import XrpcRouter
from tests.servers import ServerThread

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def iso(ms: int) -> str:
    """An event time ``ms`` milliseconds after :data:`EPOCH` (atproto datetime form)."""
    when = EPOCH + timedelta(milliseconds=ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def now_ms() -> int:
    """Milliseconds after :data:`EPOCH` now (frames stamped with it are "recent")."""
    return int((datetime.now(timezone.utc) - EPOCH) / timedelta(milliseconds=1))


def post(text: str) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-01-01T00:00:00.000Z"}


def like(uri: str) -> dict[str, Any]:
    return {
        "$type": "app.bsky.feed.like",
        "subject": {"uri": uri, "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"},
        "createdAt": "2026-01-01T00:00:00.000Z",
    }


def _op_json(op: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"action": op.action, "path": op.path, "cid": op.cid}
    if op.prev is not None:
        out["prev"] = op.prev
    return out


class FakeRepo:
    """One account's repo and the firehose frames its changes produce."""

    def __init__(self, did: str, key: PrivateKey | None = None) -> None:
        self.did = did
        self.key = key or PrivateKey.generate()
        self.clock = TidClock()
        self.repo: Repo | None = None

    def commit(
        self,
        seq: int,
        writes: list[Write],
        *,
        time_ms: int = 0,
        forge_with: PrivateKey | None = None,
        edit: Callable[[dict[str, Any], CommitData], None] | None = None,
    ) -> bytes:
        """Apply ``writes`` and return the ``#commit`` frame (``edit`` may tamper with the body)."""
        key = forge_with or self.key
        if self.repo is None:
            repo, data = Repo.create(MemoryBlockStore(), self.did, key, writes, clock=self.clock)
        else:
            repo, data = self.repo.apply_writes(writes, key, clock=self.clock)
        if forge_with is None:
            self.repo = repo
        body: dict[str, Any] = {
            "seq": seq,
            "time": iso(time_ms),
            "repo": self.did,
            "rev": data.rev,
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
        if edit is not None:
            edit(body, data)
        return encode_frame("#commit", body)

    def sync(self, seq: int, *, time_ms: int = 0) -> bytes:
        assert self.repo is not None
        commit = self.repo.commit
        blocks = car_bytes([commit.cid], {commit.cid: commit.block})
        body = {"seq": seq, "did": self.did, "time": iso(time_ms), "rev": commit.rev,
                "blocks": blocks}
        return encode_frame("#sync", body)

    def identity(self, seq: int, handle: str | None = None, *, time_ms: int = 0) -> bytes:
        body: dict[str, Any] = {"seq": seq, "did": self.did, "time": iso(time_ms)}
        if handle is not None:
            body["handle"] = handle
        return encode_frame("#identity", body)

    def account(
        self, seq: int, active: bool = True, status: str | None = None, *, time_ms: int = 0
    ) -> bytes:
        body: dict[str, Any] = {"seq": seq, "did": self.did, "time": iso(time_ms),
                                "active": active}
        if status is not None:
            body["status"] = status
        return encode_frame("#account", body)


def frame_seq(frame: bytes) -> int:
    return int(decode_frame(frame)[1]["seq"])


# -- an in-memory event log --------------------------------------------------------------


class FrameLog:
    """The EventLog protocol over a list of frames; times come from the frames."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, bytes]] = []  # (seq, time_ms since the Unix epoch, frame)

    def add(self, frame: bytes) -> tuple[int, bytes]:
        _, body = decode_frame(frame)
        seq = int(body["seq"])
        when = datetime.fromisoformat(body["time"])
        assert not self.rows or seq > self.rows[-1][0]
        self.rows.append((seq, int(when.timestamp() * 1000), frame))
        return seq, frame

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        await asyncio.sleep(0)
        return [(s, f) for s, _, f in self.rows if s > seq][:limit]

    async def latest_seq(self) -> int:
        return self.rows[-1][0] if self.rows else 0

    async def oldest_seq_since(self, time_ms: int) -> int | None:
        return next((s for s, t, _ in self.rows if t >= time_ms), None)


# -- hosts --------------------------------------------------------------------------------


@dataclass
class SequencerHost:
    """A served Sequencer: ``publish`` commits frames to the log and fans them out."""

    url: str
    thread: ServerThread
    log: FrameLog
    sequencer: Sequencer
    loop: asyncio.AbstractEventLoop

    async def publish(self, frames: list[bytes]) -> None:
        async def run() -> None:
            self.sequencer.publish([self.log.add(f) for f in frames])

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self.loop))


@contextmanager
def sequencer_host(
    frames: list[bytes] = (),  # type: ignore[assignment]
    *,
    routes: Callable[[Sequencer, FrameLog], list[Any]] | None = None,
    **options: Any,
) -> Iterator[SequencerHost]:
    """Serve ``subscribeRepos`` (and ``routes(sequencer, log)``) over a log holding ``frames``."""
    log = FrameLog()
    for frame in frames:
        log.add(frame)
    options.setdefault("replay_window_s", 10 * 365 * 86400.0)
    sequencer = Sequencer(log, **options)
    router = XrpcRouter(_catalog())
    sequencer.register(router)
    loop_box: list[asyncio.AbstractEventLoop] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop_box.append(asyncio.get_running_loop())
        yield
        sequencer.close()

    extra = routes(sequencer, log) if routes is not None else []
    app = Starlette(routes=[*router.routes, *extra], lifespan=lifespan)
    thread = ServerThread(app)
    url = thread.start()
    try:
        yield SequencerHost(url, thread, log, sequencer, loop_box[0])
    finally:
        thread.stop()


_CATALOG: list[Catalog] = []


def _catalog() -> Catalog:
    if not _CATALOG:
        _CATALOG.append(Catalog.load())
    return _CATALOG[0]


Script = Callable[[WebSocket, "Connection"], Awaitable[None]]


@dataclass
class Connection:
    """What a scripted host saw on one connection."""

    number: int
    cursor: int | None


@dataclass
class ScriptedHost:
    url: str
    connections: list[Connection] = field(default_factory=list)


@contextmanager
def scripted_host(script: Script) -> Iterator[ScriptedHost]:
    """A ``subscribeRepos`` endpoint running ``await script(ws, connection)`` per connection.

    The script decides everything: deny (``ws.send_denial_response``),
    accept and send frames, close. ``connection.cursor`` is the client's cursor.
    """
    host = ScriptedHost("")

    async def endpoint(ws: WebSocket) -> None:
        raw = ws.query_params.get("cursor")
        connection = Connection(len(host.connections) + 1, int(raw) if raw else None)
        host.connections.append(connection)
        await script(ws, connection)

    app = Starlette(routes=[WebSocketRoute("/xrpc/" + SUBSCRIBE_REPOS, endpoint)])
    thread = ServerThread(app)
    host.url = thread.start()
    try:
        yield host
    finally:
        thread.stop()
