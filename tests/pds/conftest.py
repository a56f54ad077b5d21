"""A real local network for PDS tests: a did:plc directory and a PDS on loopback."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client
from starlette.applications import Starlette

from plc.app import create_app as create_plc_app
from plc.config import PlcConfig
from pds.app import create_app as create_pds_app
from pds.config import PdsConfig
from roost.frames import decode_frame
from tests.servers import ServerThread, free_port

PASSWORD = "correct horse battery staple"
#: Procedures whose lexicon declares no input: :meth:`Network.call` sends no body.
NO_INPUT = frozenset({
    "com.atproto.server.activateAccount",
    "com.atproto.server.requestAccountDelete",
    "com.atproto.identity.requestPlcOperationSignature",
})


def ok(response: httpx.Response) -> dict[str, Any]:
    """Assert a 200 and return the JSON body (empty dict without one)."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json() if response.content else {}
    return body


def error(response: httpx.Response, status: int, name: str) -> str:
    """Assert an XRPC error with this status and name; return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == name, body
    return body.get("message", "")  # type: ignore[no-any-return]


def firehose_events(pds_url: str, message_type: str, *, idle_s: float = 1.0) -> list[dict[str, Any]]:
    """Bodies of every ``message_type`` frame (e.g. ``"#sync"``) replayed from cursor 0.

    Reads until the stream has been quiet for ``idle_s``.
    """
    url = pds_url.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos?cursor=0"
    events: list[dict[str, Any]] = []
    with websockets.sync.client.connect(url) as ws:
        while True:
            try:
                message = ws.recv(timeout=idle_s)
            except TimeoutError:
                return events
            assert isinstance(message, bytes)
            header, body = decode_frame(message)
            if header.get("t") == message_type:
                events.append(body)


def stored_events(net: Network) -> list[tuple[str, dict[str, Any]]]:
    """(type, body) of every event in the PDS's log, oldest first (read from its database)."""
    conn = sqlite3.connect(net.config.data_dir / "pds.sqlite")
    try:
        frames = [row[0] for row in conn.execute("SELECT frame FROM event ORDER BY seq")]
    finally:
        conn.close()
    return [(header["t"], body) for header, body in map(decode_frame, frames)]


@dataclass
class Network:
    plc_url: str
    pds_url: str
    config: PdsConfig
    http: httpx.Client

    def xrpc(self, nsid: str) -> str:
        return f"{self.pds_url}/xrpc/{nsid}"

    def create_account(self, name: str, **extra: Any) -> dict[str, Any]:
        """Create ``<name>.<hostname>``; returns the createAccount output."""
        body = {
            "handle": f"{name}.{self.config.hostname}",
            "email": f"{name}@example.com",
            "password": PASSWORD,
            **extra,
        }
        response = self.http.post(self.xrpc("com.atproto.server.createAccount"), json=body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def auth(self, session: dict[str, Any]) -> dict[str, str]:
        return {"Authorization": f"Bearer {session['accessJwt']}"}

    def call(self, nsid: str, session: dict[str, Any] | None = None, **body: Any) -> httpx.Response:
        """POST a procedure (as ``session``, if given) with ``body`` as its JSON input."""
        headers = self.auth(session) if session else {}
        if nsid in NO_INPUT:
            return self.http.post(self.xrpc(nsid), headers=headers)
        return self.http.post(self.xrpc(nsid), json=body, headers=headers)

    def query(self, nsid: str, session: dict[str, Any] | None = None, **params: Any) -> httpx.Response:
        """GET a query (as ``session``, if given)."""
        headers = self.auth(session) if session else {}
        return self.http.get(self.xrpc(nsid), params=params, headers=headers)


def start_network(
    tmp: Path, *, customize: Callable[[Starlette], None] | None = None, **overrides: Any
) -> tuple[Network, list[ServerThread]]:
    """A PLC directory and a PDS on loopback; ``overrides`` change PdsConfig fields.

    ``customize`` may add routes to the PDS app before it starts (test hooks).
    """
    plc = ServerThread(create_plc_app(PlcConfig(data_dir=tmp / "plc")))
    plc_url = plc.start()
    port = free_port()
    config = PdsConfig(
        port=port,
        data_dir=tmp / "pds",
        hostname="pds.test",
        plc_url=plc_url,
        allow_local=True,
        admin_password="admin-secret",
        debug=True,
    )
    config = replace(config, **overrides)
    app = create_pds_app(config)
    if customize is not None:
        customize(app)
    pds = ServerThread(app, port=port)
    pds_url = pds.start()
    return Network(plc_url, pds_url, config, httpx.Client(timeout=30)), [pds, plc]


@contextmanager
def running_network(tmp: Path, **options: Any) -> Iterator[Network]:
    """``start_network`` as a context manager: everything is stopped afterwards."""
    net, servers = start_network(tmp, **options)
    try:
        yield net
    finally:
        net.http.close()
        for server in servers:
            server.stop()


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with running_network(tmp_path) as net:
        yield net
