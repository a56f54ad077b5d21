"""One feed index on PostgreSQL, written by one indexer and read by two serving processes.

A did:plc directory and a PDS run in this process; three ``roost feedgen
serve`` processes share one PostgreSQL database: an indexer reading the PDS's
firehose and two servers (``--role server``) under the same public host name,
as behind a load balancer. Both servers must give every reader the same
pages, cursors included, whichever one a page is read from; a second
indexer must be refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from roost.jwt import create_service_jwt
from tests.e2e.test_feedgen import FEEDS, SKELETON, World, eventually
from tests.pds.conftest import running_network
from tests.servers import free_port

HOSTNAME = "feeds.test"
SERVICE_DID = "did:web:feeds.test"
_START_S = 60.0


class Process:
    """A ``roost feedgen serve`` child process on a loopback port."""

    def __init__(self, world: World, folder: Path, dsn: str, role: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "feeds.toml").write_text(FEEDS)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "roost", "feedgen", "serve", "--role", role,
            "--database", dsn, "--port", str(self.port), "--data-dir", str(folder),
            "--hostname", HOSTNAME, "--feeds", str(folder / "feeds.toml"),
            "--relay-url", world.net.pds_url, "--start-cursor", "0",
            "--plc-url", world.net.plc_url, "--allow-local",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
        self.log = folder / "stderr.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=err, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"feedgen exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/xrpc/_health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"feedgen did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, postgres_server: Any) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("feedgen-pg")
    dsn = postgres_server.new_database()
    with running_network(tmp) as net:
        world = World(net, tmp)
        procs: list[Process] = []
        try:
            indexer = Process(world, tmp / "indexer", dsn, "indexer")
            procs.append(indexer)
            indexer.wait_ready()  # the schema exists before the servers open it
            servers = [Process(world, tmp / f"server{n}", dsn, "server") for n in (1, 2)]
            procs += servers
            for p in servers:
                p.wait_ready()
            yield world, dsn, indexer, servers
        finally:
            for p in procs:
                p.stop()


def _skeleton(url: str, rkey: str, **params: Any) -> httpx.Response:
    feed = f"at://{SERVICE_DID}/app.bsky.feed.generator/{rkey}"
    return httpx.get(f"{url}/xrpc/{SKELETON}", params={"feed": feed, **params}, timeout=10)


def _walk(
    urls: list[str], rkey: str, headers: Callable[[], dict[str, str]] | None = None
) -> list[str]:
    """Every post of a feed, two per page, each page from the next server in turn
    (``headers`` makes each request's headers)."""
    out: list[str] = []
    cursor = None
    for page in range(50):
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        feed = f"at://{SERVICE_DID}/app.bsky.feed.generator/{rkey}"
        response = httpx.get(f"{urls[page % len(urls)]}/xrpc/{SKELETON}",
                             params={"feed": feed, **params},
                             headers=headers() if headers else None, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        out += [item["post"] for item in body["feed"]]
        cursor = body.get("cursor")
        if not cursor:
            return out
    raise AssertionError("pagination did not end")


def test_two_servers_answer_what_one_indexer_wrote(shared: Any) -> None:
    world, _, indexer, servers = shared
    alice, bob = world.account("pgalice"), world.account("pgbob")
    world.follow(alice, bob)
    posts = [
        world.write(who, "app.bsky.feed.post",
                    {"text": f"post {n}", **({"tags": ["roost"]} if n % 2 else {})})["uri"]
        for n, who in enumerate([alice, bob, bob, alice, bob])
    ]
    world.like(alice, posts[1])
    urls = [s.url for s in servers]

    def indexed() -> bool:
        return all(len(_walk([u], "new")) == len(posts) for u in urls)

    eventually(indexed, timeout=30)
    newest_first = list(reversed(posts))
    for mixed in (urls, list(reversed(urls))):
        assert _walk(mixed, "new") == newest_first
        assert _walk(mixed, "roost") == [p for p in newest_first if posts.index(p) % 2]
    eventually(lambda: _walk(urls[:1], "hot") == [posts[1]])
    assert _walk(urls[1:], "hot") == [posts[1]]

    # a personal feed, with a service token the servers check against the PLC directory
    signer = world.signing_key(alice)

    def token() -> dict[str, str]:  # a new one each time: the servers refuse replays
        jwt = create_service_jwt(signer, iss=alice.did, aud=SERVICE_DID, lxm=SKELETON)
        return {"Authorization": f"Bearer {jwt}"}

    friends = _walk(urls, "friends", token)
    assert friends == newest_first  # alice follows bob, and sees her own posts

    # the indexer process indexes but serves no feeds
    refused = _skeleton(indexer.url, "new")
    assert refused.status_code == 501 and refused.json()["error"] == "MethodNotImplemented"
    health = httpx.get(f"{indexer.url}/xrpc/_health", timeout=10).json()
    assert health["indexer"]["cursor"] is not None
    assert "indexer" not in httpx.get(f"{urls[0]}/xrpc/_health", timeout=10).json()


def test_a_second_indexer_is_refused(shared: Any, tmp_path: Path) -> None:
    world, dsn, _, _ = shared
    second = Process(world, tmp_path / "second", dsn, "indexer")
    try:
        assert second.proc.wait(_START_S) == 1
    finally:
        second.stop()
    assert "another indexer is already writing the feed index" in second.log.read_text()
