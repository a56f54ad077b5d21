"""Service proxying over real sockets: a PDS, a PLC and a fake upstream service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plc.app import create_app as create_plc_app
from plc.config import PlcConfig
from pds import proxy
from pds.app import create_app as create_pds_app
from pds.config import PdsConfig
from roost.errors import RoostError
from roost.identity import DidDocument
from roost.jwt import parse_jwt, verify_service_jwt
from tests.pds.conftest import Network
from tests.servers import ServerThread, free_port

APPVIEW_DID = "did:web:appview.test"


def upstream_app(service_did: str, port: int, plc_url: str) -> Starlette:
    """Serves its did:web document; checks the service JWT and echoes the call."""
    endpoint = f"http://127.0.0.1:{port}"

    async def did_doc(request: Request) -> Response:
        return JSONResponse(
            {
                "@context": ["https://www.w3.org/ns/did/v1"],
                "id": service_did,
                "service": [
                    {"id": "#echo", "type": "EchoService", "serviceEndpoint": endpoint},
                    {"id": "#bsky_appview", "type": "BskyAppView", "serviceEndpoint": endpoint},
                ],
            }
        )

    async def xrpc(request: Request) -> Response:
        nsid = request.path_params["nsid"]
        if nsid == "com.example.fail":
            return JSONResponse({"error": "NotFound", "message": "no such thing"}, 404)
        if nsid == "com.example.boom":
            return JSONResponse({"error": "InternalServerError", "message": "x"}, 500)
        if nsid == "com.example.slow":
            await asyncio.sleep(5)
        auth = request.headers.get("authorization", "")
        assert auth.startswith("Bearer ")
        parsed = parse_jwt(auth[len("Bearer ") :])
        iss = parsed.payload["iss"]
        async with httpx.AsyncClient() as http:
            doc = DidDocument.from_json((await http.get(f"{plc_url}/{iss}")).content, did=iss)
        key = doc.public_key("atproto")
        assert key is not None
        aud = parsed.payload["aud"]
        try:
            verify_service_jwt(parsed, key, aud=aud, lxm=nsid, now=time.time())
        except RoostError as exc:
            return JSONResponse({"error": "BadJwt", "message": exc.message}, 401)
        body = await request.body()
        return JSONResponse(
            {
                "iss": iss,
                "aud": aud,
                "lxm": parsed.payload.get("lxm"),
                "method": request.method,
                "query": str(request.url.query),
                "body": body.decode(),
                "contentType": request.headers.get("content-type"),
                "language": request.headers.get("accept-language"),
                "cookie": request.headers.get("cookie"),
            },
            headers={"atproto-repo-rev": "3zzz", "x-secret": "nope"},
        )

    return Starlette(
        routes=[
            Route("/.well-known/did.json", did_doc),
            Route("/xrpc/{nsid}", xrpc, methods=["GET", "POST"]),
        ]
    )


@dataclass
class ProxyNet:
    net: Network
    service_did: str
    upstream_url: str
    session: dict[str, Any]

    def call(self, nsid: str, *, proxy_to: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(self.net.auth(self.session))
        headers.update(kw.pop("headers", {}))
        if proxy_to is not None:
            headers["atproto-proxy"] = proxy_to
        method = kw.pop("method", "GET")
        return self.net.http.request(method, self.net.xrpc(nsid), headers=headers, **kw)


def _start(tmp: Path, *, appview: bool, upstream_up: bool = True) -> tuple[ProxyNet, list[ServerThread]]:
    servers: list[ServerThread] = []
    plc = ServerThread(create_plc_app(PlcConfig(data_dir=tmp / "plc")))
    plc_url = plc.start()
    servers.append(plc)
    up_port = free_port()
    service_did = f"did:web:localhost%3A{up_port}"
    upstream_url = f"http://127.0.0.1:{up_port}"
    if upstream_up:
        upstream = ServerThread(upstream_app(service_did, up_port, plc_url), port=up_port)
        upstream.start()
        servers.append(upstream)
    port = free_port()
    config = PdsConfig(
        port=port,
        data_dir=tmp / "pds",
        hostname="pds.test",
        plc_url=plc_url,
        allow_local=True,
        debug=True,
        appview_url=upstream_url if appview else None,
        appview_did=APPVIEW_DID if appview else None,
    )
    pds = ServerThread(create_pds_app(config), port=port)
    servers.insert(0, pds)
    net = Network(plc_url, pds.start(), config, httpx.Client(timeout=30))
    session = net.create_account("alice")
    return ProxyNet(net, service_did, upstream_url, session), servers


@pytest.fixture
def pnet(tmp_path: Path) -> Iterator[ProxyNet]:
    p, servers = _start(tmp_path, appview=True)
    try:
        yield p
    finally:
        p.net.http.close()
        for server in servers:
            server.stop()


def test_header_proxying_signs_for_the_user(pnet: ProxyNet) -> None:
    r = pnet.call(
        "com.example.echo",
        proxy_to=f"{pnet.service_did}#echo",
        params={"a": "1", "b": "two"},
        headers={"accept-language": "fr", "cookie": "secret=1"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["iss"] == pnet.session["did"]
    assert body["aud"] == f"{pnet.service_did}#echo"
    assert body["lxm"] == "com.example.echo"
    assert body["query"] == "a=1&b=two"
    assert body["language"] == "fr"
    assert body["cookie"] is None
    assert r.headers["atproto-repo-rev"] == "3zzz"
    assert "x-secret" not in r.headers


def test_header_proxying_post_body(pnet: ProxyNet) -> None:
    r = pnet.call(
        "com.example.doThing",
        proxy_to=f"{pnet.service_did}#echo",
        method="POST",
        json={"hello": "world"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["method"] == "POST"
    assert r.json()["body"] == '{"hello":"world"}'
    assert r.json()["contentType"] == "application/json"


def test_header_applies_to_methods_served_here(pnet: ProxyNet) -> None:
    r = pnet.call(
        "com.atproto.repo.describeRepo",
        proxy_to=f"{pnet.service_did}#echo",
        params={"repo": pnet.session["did"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["lxm"] == "com.atproto.repo.describeRepo"
    # the header naming this PDS itself: served locally
    r = pnet.call(
        "com.atproto.repo.describeRepo",
        proxy_to="did:web:pds.test#atproto_pds",
        params={"repo": pnet.session["did"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["did"] == pnet.session["did"]


def test_appview_fall_through(pnet: ProxyNet) -> None:
    r = pnet.call("app.bsky.feed.getTimeline", params={"limit": "5"})
    assert r.status_code == 200, r.text
    assert r.json()["aud"] == APPVIEW_DID
    assert r.json()["lxm"] == "app.bsky.feed.getTimeline"


def test_unknown_service_and_bad_header(pnet: ProxyNet) -> None:
    r = pnet.call("com.example.echo", proxy_to=f"{pnet.service_did}#nope")
    assert r.status_code == 400
    r = pnet.call("com.example.echo", proxy_to="not a header")
    assert r.status_code == 400
    assert r.json()["error"] == "InvalidRequest"


def test_no_target_is_501(pnet: ProxyNet) -> None:
    r = pnet.call("com.example.echo")
    assert r.status_code == 501
    assert r.json()["error"] == "MethodNotImplemented"


def test_auth_required(pnet: ProxyNet) -> None:
    r = pnet.net.http.get(
        pnet.net.xrpc("app.bsky.feed.getTimeline"),
        headers={"atproto-proxy": f"{pnet.service_did}#echo"},
    )
    assert r.status_code == 401


def test_deactivated_account_is_told_so(pnet: ProxyNet) -> None:
    r = pnet.net.http.post(
        pnet.net.xrpc("com.atproto.server.deactivateAccount"),
        json={},
        headers=pnet.net.auth(pnet.session),
    )
    assert r.status_code == 200, r.text
    r = pnet.call("app.bsky.feed.getTimeline")
    assert r.status_code == 401 and r.json()["error"] == "AccountDeactivated"


def test_upstream_errors_pass_through(pnet: ProxyNet) -> None:
    r = pnet.call("com.example.fail", proxy_to=f"{pnet.service_did}#echo")
    assert r.status_code == 404
    assert r.json() == {"error": "NotFound", "message": "no such thing"}
    r = pnet.call("com.example.boom", proxy_to=f"{pnet.service_did}#echo")
    assert r.status_code == 502
    assert r.json()["error"] == "UpstreamFailure"


def test_upstream_timeout(pnet: ProxyNet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "PROXY_TIMEOUT_S", 0.5)
    r = pnet.call("com.example.slow", proxy_to=f"{pnet.service_did}#echo")
    assert r.status_code == 504
    assert r.json()["error"] == "UpstreamTimeout"


def test_protected_methods_refused(pnet: ProxyNet) -> None:
    for nsid in ("com.atproto.server.getSession", "com.atproto.identity.signPlcOperation"):
        method = "GET" if nsid.endswith("getSession") else "POST"
        kw: dict[str, Any] = {"json": {}} if method == "POST" else {}
        r = pnet.call(nsid, proxy_to=f"{pnet.service_did}#echo", method=method, **kw)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "InvalidToken"


def test_upstream_down_is_502(tmp_path: Path) -> None:
    p, servers = _start(tmp_path, appview=True, upstream_up=False)
    try:
        r = p.call("app.bsky.feed.getTimeline")
        assert r.status_code == 502
        assert r.json()["error"] == "UpstreamFailure"
    finally:
        p.net.http.close()
        for server in servers:
            server.stop()


def test_no_appview_configured(tmp_path: Path) -> None:
    p, servers = _start(tmp_path, appview=False)
    try:
        r = p.call("app.bsky.feed.getTimeline")
        assert r.status_code == 501
        # header proxying still works without an AppView
        r = p.call("app.bsky.feed.getTimeline", proxy_to=f"{p.service_did}#bsky_appview")
        assert r.status_code == 200, r.text
        assert r.json()["aud"] == f"{p.service_did}#bsky_appview"
    finally:
        p.net.http.close()
        for server in servers:
            server.stop()
