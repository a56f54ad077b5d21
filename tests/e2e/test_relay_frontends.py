"""One relay ingest and two frontends on PostgreSQL, with a PDS, all on loopback.

The ingest (``role="ingest"``) crawls the PDS and appends to the shared log;
the frontends (``role="frontend"``) serve ``subscribeRepos`` from it. Consumers
on either frontend see the same events in the same order, and a consumer
whose frontend goes away mid-stream resumes on the other from its cursor
without losing or repeating anything.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from roost.frames import decode_frame
from tests.e2e.test_relay import has_commits, post
from tests.pds.conftest import Network, running_network
from tests.relay.helpers import (
    SUBSCRIBE,
    Event,
    RelayHandle,
    commits_of,
    read_firehose,
    start_relay,
    wait_for,
)


class Relays:
    def __init__(self, tmp: Path, net: Network, dsn: str) -> None:
        self.ingest = start_relay(
            tmp, net.plc_url, data_dir=tmp / "ingest", database=dsn, role="ingest",
            crawl=(net.pds_url,),
        )
        self.frontends = [
            start_relay(tmp, net.plc_url, data_dir=tmp / f"frontend{i}", database=dsn, role="frontend")
            for i in (1, 2)
        ]

    def stop(self) -> None:
        for handle in [*self.frontends, self.ingest]:
            handle.stop()


@pytest.fixture
def relays(tmp_path: Path, postgres_dsn: str) -> Iterator[tuple[Network, Relays]]:
    with running_network(tmp_path) as net:
        relays = Relays(tmp_path, net, postgres_dsn)
        try:
            yield net, relays
        finally:
            relays.stop()


def connected(relay: RelayHandle) -> bool:
    hosts = relay.admin("pds/list").json()["hosts"]
    return len(hosts) == 1 and hosts[0]["connected"]


def seqs_of(events: list[Event]) -> list[int]:
    return [body["seq"] for _, body in events]


class Consumer(threading.Thread):
    """Reads a firehose in the background until its connection ends."""

    def __init__(self, url: str, cursor: int | None) -> None:
        super().__init__(daemon=True)
        query = "" if cursor is None else f"?cursor={cursor}"
        self.target = url.replace("http://", "ws://") + SUBSCRIBE + query
        self.events: list[Event] = []
        self.connected = threading.Event()
        self.ws: Any = None
        self.start()
        assert self.connected.wait(20), "could not connect"

    def run(self) -> None:
        with websockets.sync.client.connect(self.target, max_size=None, close_timeout=1) as ws:
            self.ws = ws
            self.connected.set()
            try:
                for message in ws:
                    assert isinstance(message, bytes)
                    self.events.append(decode_frame(message))
            except ConnectionClosed:
                pass

    def close(self) -> None:
        self.ws.close()
        self.join(10)


def test_frontends_serve_one_log_and_a_consumer_moves_between_them(
    relays: tuple[Network, Relays],
) -> None:
    net, r = relays
    one, two = r.frontends
    wait_for(lambda: connected(r.ingest), what="the ingest's subscription to the PDS")
    live = Consumer(two.url, None)  # a live-only consumer on the second frontend
    alice = net.create_account("alice")
    bob = net.create_account("bob")
    revs: dict[str, list[str]] = {alice["did"]: [], bob["did"]: []}
    for i in range(3):
        revs[alice["did"]].append(post(net, net.pds_url, alice, f"a{i}"))
        revs[bob["did"]].append(post(net, net.pds_url, bob, f"b{i}"))

    # both frontends replay the same events, in the same order, as the ingest
    from_ingest = read_firehose(r.ingest.url, until=has_commits(revs))
    from_one = read_firehose(one.url, until=lambda ev: len(ev) >= len(from_ingest))
    from_two = read_firehose(two.url, until=lambda ev: len(ev) >= len(from_ingest))
    assert from_one == from_two == from_ingest
    seqs = seqs_of(from_ingest)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gap-free
    wait_for(lambda: len(live.events) >= len(from_ingest), what="live events on frontend 2")
    assert live.events[: len(from_ingest)] == from_ingest

    # read-only sync methods answer from the shared tables; changes are refused
    status = one.http.get(
        one.xrpc("com.atproto.sync.getLatestCommit"), params={"did": alice["did"]}
    )
    assert status.status_code == 200 and status.json()["rev"] == revs[alice["did"]][-1]
    crawl = one.http.post(one.xrpc("com.atproto.sync.requestCrawl"), json={"hostname": "pds.test"})
    assert crawl.status_code == 501 and crawl.json()["error"] == "MethodNotImplemented"
    health = one.http.get(one.url + "/xrpc/_health").json()
    assert health["role"] == "frontend" and health["seq"] == seqs[-1]

    # a consumer on frontend 1 reads live, the frontend goes away mid-stream...
    moving = Consumer(one.url, seqs[-1])
    more: dict[str, list[str]] = {alice["did"]: [post(net, net.pds_url, alice, "c0")]}
    wait_for(lambda: bool(commits_of(moving.events)), what="a live event on frontend 1")
    one.stop()
    moving.join(20)
    assert not moving.is_alive()
    more[bob["did"]] = [post(net, net.pds_url, bob, "after the frontend stopped")]
    more[alice["did"]].append(post(net, net.pds_url, alice, "c1"))
    got = moving.events
    assert got

    # ...and resumes on frontend 2 from its cursor: nothing lost, nothing repeated
    done = has_commits(more)
    rest = read_firehose(two.url, cursor=seqs_of(got)[-1], until=lambda ev: done(got + ev))
    everything = read_firehose(r.ingest.url, until=has_commits(more))
    assert got + rest == everything[len(from_ingest) :]
    for did, mine in more.items():
        assert [c["rev"] for c in commits_of(got + rest, did)] == mine
    wait_for(lambda: len(live.events) >= len(everything), what="frontend 2's live consumer")
    assert live.events[: len(everything)] == everything
    live.close()

    # a takedown is the ingest's to make; the frontends follow it, in replay too
    refused = two.admin("repo/takeDown", {"did": bob["did"]})
    assert refused.status_code == 501 and refused.json()["error"] == "MethodNotImplemented"
    assert not two.relay.registry.takendown  # refused before it changed anything
    assert r.ingest.admin("repo/takeDown", {"did": bob["did"]}).status_code == 200
    wait_for(lambda: bool(two.relay.registry.takendown), what="the takedown on frontend 2")
    replay = read_firehose(two.url, idle=1.0)
    assert commits_of(replay, alice["did"]) and not commits_of(replay, bob["did"])
    notice = replay[-1][1]
    assert notice["did"] == bob["did"] and notice["status"] == "takendown"
