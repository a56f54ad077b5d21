"""A real local network for PDS tests: a did:plc directory and a PDS on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from plc.app import create_app as create_plc_app
from plc.config import PlcConfig
from pds.app import create_app as create_pds_app
from pds.config import PdsConfig
from tests.servers import ServerThread, free_port

PASSWORD = "correct horse battery staple"


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
