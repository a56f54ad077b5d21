"""com.atproto.identity.updateHandle, and the startup requestCrawl, over real sockets."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pds.app import create_app as create_pds_app
from pds.app import request_crawl
from pds.config import PdsConfig
from roost.identity import DidDocument
from tests.pds.conftest import Network, firehose_events
from tests.servers import ServerThread, free_port


def _update(network: Network, session: dict[str, Any], handle: str) -> httpx.Response:
    return network.http.post(
        network.xrpc("com.atproto.identity.updateHandle"),
        json={"handle": handle},
        headers=network.auth(session),
    )


def test_update_handle(network: Network) -> None:
    alice = network.create_account("alice")
    did = alice["did"]
    response = _update(network, alice, "Alicia.pds.test")
    assert response.status_code == 200, response.text

    doc = DidDocument.parse(network.http.get(f"{network.plc_url}/{did}").json(), did=did)
    assert doc.handle == "alicia.pds.test"
    resolve = network.xrpc("com.atproto.identity.resolveHandle")
    assert network.http.get(resolve, params={"handle": "alicia.pds.test"}).json() == {"did": did}
    old = network.http.get(resolve, params={"handle": "alice.pds.test"})
    assert old.status_code == 400 and old.json()["error"] == "HandleNotFound"
    me = network.http.get(network.xrpc("com.atproto.server.getSession"), headers=network.auth(alice))
    assert me.json()["handle"] == "alicia.pds.test"
    well_known = network.http.get(
        f"{network.pds_url}/.well-known/atproto-did", headers={"Host": "alicia.pds.test"}
    )
    assert well_known.text == did

    # the same handle again is accepted (re-announces it)
    assert _update(network, alice, "alicia.pds.test").status_code == 200
    events = firehose_events(network.pds_url, "#identity")
    handles = [e["handle"] for e in events if e["did"] == did]
    assert handles == ["alice.pds.test", "alicia.pds.test", "alicia.pds.test"]
    # the old handle is free again
    assert network.create_account("alice", email="new@example.com")["did"] != did


def test_update_handle_errors(network: Network) -> None:
    alice = network.create_account("alice")
    network.create_account("bobby")
    did = alice["did"]

    def error(handle: str) -> tuple[int, str]:
        response = _update(network, alice, handle)
        return response.status_code, response.json()["error"]

    assert error("bobby.pds.test") == (400, "HandleNotAvailable")
    assert error("ab.pds.test")[1] == "InvalidHandle"  # too short, as at createAccount
    assert error("a.b.pds.test")[1] == "InvalidHandle"
    assert error("-bad-.pds.test")[1] in ("InvalidRequest", "InvalidHandle")
    assert error("alice.example.invalid") == (400, "InvalidHandle")  # reserved TLD
    # a foreign domain must resolve to the account's DID
    assert error("alice.example.test") == (400, "InvalidRequest")
    unauth = network.http.post(
        network.xrpc("com.atproto.identity.updateHandle"), json={"handle": "carol.pds.test"}
    )
    assert unauth.status_code == 401
    # nothing changed
    doc = DidDocument.parse(network.http.get(f"{network.plc_url}/{did}").json(), did=did)
    assert doc.handle == "alice.pds.test"
    events = firehose_events(network.pds_url, "#identity")
    assert [e["handle"] for e in events if e["did"] == did] == ["alice.pds.test"]


# -- requestCrawl on startup ---------------------------------------------------------------


class _Relay:
    """A stub relay recording requestCrawl bodies; fails the first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.bodies: list[Any] = []
        self.failures = failures
        self.called = threading.Event()

    async def request_crawl(self, request: Request) -> Response:
        self.bodies.append(await request.json())
        if self.failures > 0:
            self.failures -= 1
            return JSONResponse({"error": "InternalServerError"}, status_code=503)
        self.called.set()
        return JSONResponse({})

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/xrpc/com.atproto.sync.requestCrawl", self.request_crawl, methods=["POST"])]
        )


def test_crawl_hostname_is_the_public_name_behind_https() -> None:
    assert PdsConfig(hostname="pds.example", public_url="https://pds.example").crawl_hostname == (
        "pds.example"
    )
    local = PdsConfig(hostname="pds.example", public_url="http://127.0.0.1:2583")
    assert local.crawl_hostname == "http://127.0.0.1:2583"


def test_request_crawl_on_startup(tmp_path: Path) -> None:
    relay = _Relay()
    relay_server = ServerThread(relay.app())
    relay_url = relay_server.start()
    port = free_port()
    config = PdsConfig(
        port=port,
        data_dir=tmp_path / "pds",
        hostname="crawl.test",
        plc_url="http://127.0.0.1:9",  # never reached
        allow_local=True,
        relay_urls=(relay_url, "http://127.0.0.1:9"),  # the second is down: logged only
        debug=True,
    )
    pds = ServerThread(create_pds_app(config), port=port)
    try:
        pds_url = pds.start()
        assert httpx.get(pds_url + "/").status_code == 200  # startup did not wait
        assert relay.called.wait(10)
        # on loopback the relay is told the URL clients use, not the public name
        assert relay.bodies == [{"hostname": pds_url}]
    finally:
        pds.stop()
        relay_server.stop()


def test_request_crawl_retries_and_throttles() -> None:
    relay = _Relay(failures=1)
    relay_server = ServerThread(relay.app())
    relay_url = relay_server.start()

    async def run() -> None:
        async with httpx.AsyncClient() as http:
            await request_crawl(http, [relay_url], "retry.test", retry_delay=0.01)
            # asked again at once: skipped (at most once per interval)
            await request_crawl(http, [relay_url], "retry.test", retry_delay=0.01)

    try:
        asyncio.run(run())
        assert relay.bodies == [{"hostname": "retry.test"}] * 2  # one failure, one retry
    finally:
        relay_server.stop()
