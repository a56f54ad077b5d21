"""Test helpers for the relay: a running relay, firehose readers, and a scriptable fake PDS.

:class:`FakeHost` is a PDS that says whatever the test tells it to: its
``subscribeRepos`` sends a script of frames (honest ones built by
:class:`FakeAccount`, or garbage), each with an upstream seq, resuming after
the relay's cursor on reconnect. Script entries marked ``once`` are sent on
one connection only (a malformed frame would otherwise be resent forever),
and nothing after them on that connection: it is expected to end.
It also answers ``describeServer`` and, when given a CAR, ``getRepo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets.sync.client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay.app import create_app
from relay.config import RelayConfig
from relay.fanout import FanoutWebSocketProtocol
from roost.blockstore import MemoryBlockStore
from roost.crypto import PrivateKey
from roost.frames import decode_frame, encode_frame
from roost.plc import build_genesis, did_for_genesis, sign_op
from roost.repo import CommitData, Repo, Write
from roost.tid import TidClock
from tests.servers import ServerThread, free_port

ADMIN_PASSWORD = "relay-admin-secret"
POST = "app.bsky.feed.post"
SUBSCRIBE = "/xrpc/com.atproto.sync.subscribeRepos"

Event = tuple[dict[str, Any], dict[str, Any]]


def commit_event(did: str, data: CommitData) -> dict[str, Any]:
    """The ``#commit`` body (``seq`` and ``time`` not set) for a commit of ``did``."""
    body: dict[str, Any] = {
        "repo": did,
        "rev": data.rev,
        "since": data.since,
        "commit": data.cid,
        "blocks": data.car(),
        "ops": [
            {"action": op.action, "path": op.path, "cid": op.cid, **({"prev": op.prev} if op.prev else {})}
            for op in data.ops
        ],
        "blobs": [],
        "rebase": False,
        "tooBig": False,
    }
    if data.prev_data is not None:
        body["prevData"] = data.prev_data
    return body


def register_did(plc_url: str, key: PrivateKey, endpoint: str) -> str:
    """Create a did:plc whose PDS is ``endpoint`` and signing key ``key``."""
    op = sign_op(build_genesis(rotation_keys=[key], signing_key=key, handle=None, pds_endpoint=endpoint), key)
    did = did_for_genesis(op)
    response = httpx.post(f"{plc_url}/{did}", json=op.to_json(), timeout=10)
    assert response.status_code == 200, response.text
    return did


class FakeAccount:
    """An account with a real, correctly signed repo, hosted (per its DID document) anywhere."""

    def __init__(self, plc_url: str, endpoint: str, *, clock_skew_s: float = 0.0) -> None:
        self.key = PrivateKey.generate("k256")
        self.did = register_did(plc_url, self.key, endpoint)
        skew_us = int(clock_skew_s * 1e6)
        self.clock = TidClock(now_us=lambda: time.time_ns() // 1000 + skew_us)
        self.repo: Repo | None = None
        self.rkeys: list[str] = []

    def post(self, text: str = "hello", *, key: PrivateKey | None = None, size: int = 0) -> dict[str, Any]:
        """A new commit creating one post; its ``#commit`` body. ``key`` signs instead (forgery)."""
        rkey = self.clock.next_str()
        record = {"$type": POST, "text": text + "x" * size, "createdAt": "2024-01-01T00:00:00.000Z"}
        write = Write.create(POST, rkey, record)
        if self.repo is None:
            self.repo, data = Repo.create(MemoryBlockStore(), self.did, key or self.key, [write], clock=self.clock)
        else:
            self.repo, data = self.repo.apply_writes([write], key or self.key, clock=self.clock)
        self.rkeys.append(rkey)
        return commit_event(self.did, data)

    def car(self) -> bytes:
        assert self.repo is not None
        return b"".join(self.repo.export_car())


@dataclass
class _Entry:
    seq: int | None
    payload: bytes | str
    once: bool
    sent: bool = False


@dataclass
class FakeHost:
    """A scriptable PDS on a loopback port (see the module docstring)."""

    plc_url: str
    server: ServerThread | None = None
    url: str = ""
    script: list[_Entry] = field(default_factory=list)
    repos: dict[str, bytes] = field(default_factory=dict)
    connections: int = 0
    cursors: list[int | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wakeups: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)
    _seq: int = 0

    @property
    def hostname(self) -> str:
        return self.url.removeprefix("http://")

    def account(self, *, clock_skew_s: float = 0.0) -> FakeAccount:
        """A new account whose DID document names this host."""
        return FakeAccount(self.plc_url, self.url, clock_skew_s=clock_skew_s)

    # -- the script --------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, t: str, body: dict[str, Any], *, seq: int | None = None) -> int:
        """Queue a well-formed frame; returns its upstream seq."""
        seq = self.next_seq() if seq is None else seq
        body = {**body, "seq": seq}
        body.setdefault("time", "2024-01-01T00:00:00.000Z")
        self._append(_Entry(seq, encode_frame(t, body), once=False))
        return seq

    def send_raw(self, payload: bytes | str, *, seq: int | None = None) -> None:
        """Queue arbitrary bytes (or a text frame), sent on one connection only."""
        self._append(_Entry(seq, payload, once=True))

    def _append(self, entry: _Entry) -> None:
        with self._lock:
            self.script.append(entry)
            wakeups = list(self._wakeups)
        for loop, event in wakeups:
            loop.call_soon_threadsafe(event.set)

    # -- the server --------------------------------------------------------------------

    def start(self) -> FakeHost:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = ServerThread(self._app(), port=port)
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def _app(self) -> Starlette:
        async def describe(request: Request) -> Response:
            return JSONResponse({"did": "did:web:fake.test", "availableUserDomains": []})

        async def get_repo(request: Request) -> Response:
            car = self.repos.get(request.query_params.get("did", ""))
            if car is None:
                return JSONResponse({"error": "RepoNotFound", "message": "no"}, status_code=404)
            return Response(car, media_type="application/vnd.ipld.car")

        async def subscribe(ws: WebSocket) -> None:
            await ws.accept()
            cursor_text = ws.query_params.get("cursor")
            cursor = int(cursor_text) if cursor_text else None
            self.connections += 1
            self.cursors.append(cursor)
            event = asyncio.Event()
            me = (asyncio.get_running_loop(), event)
            with self._lock:
                self._wakeups.append(me)
            position = 0
            gone = asyncio.Event()

            async def watch() -> None:
                with contextlib.suppress(Exception):
                    while (await ws.receive())["type"] != "websocket.disconnect":
                        pass
                gone.set()
                event.set()

            watcher = asyncio.create_task(watch())
            try:
                while not gone.is_set():
                    with self._lock:
                        pending = self.script[position:]
                        position = len(self.script)
                    for entry in pending:
                        if entry.seq is not None and cursor is not None and entry.seq <= cursor:
                            continue
                        if entry.once:
                            if entry.sent:
                                continue
                            entry.sent = True
                        if isinstance(entry.payload, str):
                            await ws.send_text(entry.payload)
                        else:
                            await ws.send_bytes(entry.payload)
                        if entry.once:  # garbage ends a connection: one per connection
                            await gone.wait()
                            return
                    event.clear()
                    with self._lock:
                        if len(self.script) > position:
                            continue
                    await event.wait()
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            finally:
                watcher.cancel()
                with self._lock:
                    self._wakeups.remove(me)

        return Starlette(
            routes=[
                Route("/xrpc/com.atproto.server.describeServer", describe),
                Route("/xrpc/com.atproto.sync.getRepo", get_repo),
                WebSocketRoute(SUBSCRIBE, subscribe),
            ]
        )


# -- a running relay --------------------------------------------------------------------


@dataclass
class RelayHandle:
    url: str
    config: RelayConfig
    server: ServerThread
    app: Any
    http: httpx.Client

    @property
    def relay(self) -> Any:
        """The running :class:`relay.core.Relay` (read its counters, do not call it)."""
        return self.app.state.relay

    def xrpc(self, nsid: str) -> str:
        return f"{self.url}/xrpc/{nsid}"

    def admin(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        url = f"{self.url}/admin/{path}"
        auth = ("admin", ADMIN_PASSWORD)
        if body is None:
            return self.http.get(url, auth=auth)
        return self.http.post(url, json=body, auth=auth)

    def host_counters(self, hostname: str) -> dict[str, int]:
        response = self.admin("pds/list")
        assert response.status_code == 200, response.text
        for host in response.json()["hosts"]:
            if host["hostname"] == hostname:
                return host["counters"]  # type: ignore[no-any-return]
        raise AssertionError(f"{hostname} is not a host of the relay")

    def stop(self) -> None:
        self.http.close()
        self.server.stop()


def start_relay(tmp: Path, plc_url: str, *, port: int = 0, **overrides: Any) -> RelayHandle:
    options: dict[str, Any] = {
        "data_dir": tmp / "relay",
        "plc_url": plc_url,
        "allow_local": True,
        "admin_password": ADMIN_PASSWORD,
        "verify_workers": 0,
        "debug": True,
    }
    options.update(overrides)
    config = RelayConfig(**options)
    app = create_app(config)
    server = ServerThread(app, ws=FanoutWebSocketProtocol, port=port)  # type: ignore[arg-type]
    url = server.start()
    return RelayHandle(url, config, server, app, httpx.Client(timeout=30))


@contextmanager
def running_relay(tmp: Path, plc_url: str, **overrides: Any) -> Iterator[RelayHandle]:
    handle = start_relay(tmp, plc_url, **overrides)
    try:
        yield handle
    finally:
        handle.stop()


# -- reading a firehose --------------------------------------------------------------------


def read_firehose(
    url: str,
    *,
    cursor: int | None = 0,
    until: Callable[[list[Event]], bool] | None = None,
    timeout: float = 20.0,
    idle: float | None = None,
) -> list[Event]:
    """Frames from ``url``'s subscribeRepos until ``until(events)`` holds (or it is idle).

    Fails the test if ``until`` is given and not met within ``timeout``.
    """
    target = url.replace("http://", "ws://") + SUBSCRIBE
    if cursor is not None:
        target += f"?cursor={cursor}"
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    with websockets.sync.client.connect(target, max_size=None, close_timeout=1) as ws:
        while until is None or not until(events):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                message = ws.recv(timeout=min(left, idle) if idle is not None else left)
            except TimeoutError:
                if idle is not None:
                    break
                continue
            assert isinstance(message, bytes)
            events.append(decode_frame(message))
    if until is not None:
        assert until(events), f"firehose condition not met in {timeout}s; got {len(events)} events"
    return events


def commits_of(events: list[Event], did: str | None = None) -> list[dict[str, Any]]:
    return [
        body
        for header, body in events
        if header.get("t") == "#commit" and (did is None or body["repo"] == did)
    ]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
