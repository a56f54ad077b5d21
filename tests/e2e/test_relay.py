"""The relay with two real PDSes on loopback: one ordered firehose, restarts, queries, admin.

One did:plc directory, two roost PDSes (``pds.test`` and ``pds2.test``) and
the relay (``roost.relay``, served the way ``roost relay serve`` serves it),
each on its own loopback port.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import websockets.sync.client

from pds.app import create_app as create_pds_app
from tests.pds.conftest import Network, error, ok, running_network
from tests.relay.helpers import (
    Event,
    RelayHandle,
    commits_of,
    read_firehose,
    running_relay,
    start_relay,
    wait_for,
)
from tests.servers import ServerThread, free_port

POST = "app.bsky.feed.post"


class Pds:
    """A second PDS on the network's directory, restartable on the same port and data."""

    def __init__(self, net: Network, tmp: Path) -> None:
        self.net = net
        port = free_port()
        self.config = replace(
            net.config, port=port, data_dir=tmp / "pds2", hostname="pds2.test", public_url=None
        )
        self.url = f"http://127.0.0.1:{port}"
        self.server: ServerThread | None = None
        self.start()

    def start(self) -> None:
        self.server = ServerThread(create_pds_app(self.config), port=self.config.port)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def create_account(self, name: str) -> dict[str, Any]:
        body = {"handle": f"{name}.pds2.test", "email": f"{name}@example.com", "password": "pw-" + name * 3}
        return ok(self.net.http.post(f"{self.url}/xrpc/com.atproto.server.createAccount", json=body))


def post(net: Network, base: str, session: dict[str, Any], text: str) -> str:
    """Create a post on the PDS at ``base``; returns the new commit's rev."""
    out = ok(net.http.post(
        f"{base}/xrpc/com.atproto.repo.createRecord",
        headers=net.auth(session),
        json={"repo": session["did"], "collection": POST,
              "record": {"$type": POST, "text": text, "createdAt": "2024-01-01T00:00:00.000Z"}},
    ))
    return str(out["commit"]["rev"])


def has_commits(wanted: dict[str, list[str]]) -> Any:
    def check(events: list[Event]) -> bool:
        for did, revs in wanted.items():
            seen = {c["rev"] for c in commits_of(events, did)}
            if not set(revs) <= seen:
                return False
        return True

    return check


@pytest.fixture
def two_pdses(tmp_path: Path) -> Iterator[tuple[Network, Pds]]:
    with running_network(tmp_path) as net:
        second = Pds(net, tmp_path)
        try:
            yield net, second
        finally:
            second.stop()


def connected(relay: RelayHandle, count: int) -> bool:
    hosts = relay.admin("pds/list").json()["hosts"]
    return len(hosts) == count and all(h["connected"] for h in hosts)


def test_two_pdses_one_firehose_with_restarts(two_pdses: tuple[Network, Pds], tmp_path: Path) -> None:
    net, pds2 = two_pdses
    port = free_port()
    crawl = (net.pds_url, pds2.url)
    relay = start_relay(tmp_path, net.plc_url, port=port, crawl=crawl)
    try:
        wait_for(lambda: connected(relay, 2), what="subscriptions to both PDSes")
        alice = net.create_account("alice")
        bob = pds2.create_account("bob")
        revs: dict[str, list[str]] = {alice["did"]: [], bob["did"]: []}
        for i in range(3):
            revs[alice["did"]].append(post(net, net.pds_url, alice, f"a{i}"))
            revs[bob["did"]].append(post(net, pds2.url, bob, f"b{i}"))

        # writes on both hosts appear once each, in each account's order
        events = read_firehose(relay.url, until=has_commits(revs))
        seqs = [body["seq"] for _, body in events]
        assert seqs == sorted(set(seqs))
        for did, mine in revs.items():
            seen = [c["rev"] for c in commits_of(events, did)]
            assert len(seen) == len(set(seen)) == len(mine) + 1  # + the account's first commit
            assert seen == sorted(seen) and seen[1:] == mine
        kinds = {header["t"] for header, _ in events}
        assert {"#identity", "#account", "#commit"} <= kinds

        # a consumer resumes from its cursor: exactly what follows, no gap
        middle = seqs[len(seqs) // 2]
        tail = read_firehose(relay.url, cursor=middle, until=lambda ev: len(ev) >= len(seqs) - seqs.index(middle) - 1)
        assert [b["seq"] for _, b in tail] == seqs[seqs.index(middle) + 1 :]
        last = seqs[-1]

        # the relay restarts (same data and port) while both hosts keep writing
        relay.stop()
        while_down = {alice["did"]: [post(net, net.pds_url, alice, "down a")],
                      bob["did"]: [post(net, pds2.url, bob, "down b")]}
        relay = start_relay(tmp_path, net.plc_url, port=port, crawl=crawl)
        wait_for(lambda: connected(relay, 2), what="resubscription after the restart")
        after = read_firehose(relay.url, cursor=last, until=has_commits(while_down))
        assert commits_of(after) and all(b["seq"] > last for _, b in after)
        for did, mine in while_down.items():  # resumed from the hosts' cursors: no gap, no dup
            assert [c["rev"] for c in commits_of(after, did)] == mine
        full = read_firehose(relay.url, until=has_commits(while_down))
        for did in revs:
            all_revs = [c["rev"] for c in commits_of(full, did)]
            assert len(all_revs) == len(set(all_revs)) == len(revs[did]) + 2

        # a PDS restarts: the relay reconnects and follows it
        pds2.stop()
        pds2.start()
        later = {bob["did"]: [post(net, pds2.url, bob, "after restart")]}
        events = read_firehose(relay.url, cursor=full[-1][1]["seq"], until=has_commits(later))
        assert [c["rev"] for c in commits_of(events, bob["did"])] == later[bob["did"]]
    finally:
        relay.stop()


def test_queries_admin_and_takedown(two_pdses: tuple[Network, Pds], tmp_path: Path) -> None:
    net, pds2 = two_pdses
    with running_relay(tmp_path, net.plc_url, crawl=(net.pds_url,)) as relay:
        wait_for(lambda: connected(relay, 1), what="a subscription")
        alice = net.create_account("alice")
        rev = post(net, net.pds_url, alice, "hello")
        read_firehose(relay.url, until=has_commits({alice["did"]: [rev]}))
        http = relay.http
        did = alice["did"]

        # the same stream as Jetstream JSON at /subscribe
        jetstream = relay.url.replace("http://", "ws://") + "/subscribe?wantedCollections=" + POST
        with websockets.sync.client.connect(jetstream, close_timeout=1) as ws:
            wait_for(lambda: relay.relay.sequencer.live_subscriber_count >= 1, what="Jetstream live")
            jet_rev = post(net, net.pds_url, alice, "as json")
            message = json.loads(ws.recv(timeout=20))
            assert message["did"] == did and message["kind"] == "commit"
            assert message["commit"]["rev"] == jet_rev and message["commit"]["record"]["text"] == "as json"

        # requestCrawl: a live host is subscribed; bad names and dead hosts are refused
        ok(http.post(relay.xrpc("com.atproto.sync.requestCrawl"), json={"hostname": pds2.url}))
        wait_for(lambda: connected(relay, 2), what="the crawled host")
        error(http.post(relay.xrpc("com.atproto.sync.requestCrawl"), json={"hostname": "not a host"}), 400, "InvalidRequest")
        dead = f"http://127.0.0.1:{free_port()}"
        error(http.post(relay.xrpc("com.atproto.sync.requestCrawl"), json={"hostname": dead}), 400, "HostNotFound")

        # the relay's own view of hosts and repos
        hosts = ok(http.get(relay.xrpc("com.atproto.sync.listHosts")))["hosts"]
        pds1 = net.pds_url.removeprefix("http://")
        assert [h["hostname"] for h in hosts] == [pds1]  # only hosts that delivered events
        assert hosts[0]["accountCount"] == 1 and hosts[0]["status"] == "active" and hosts[0]["seq"] > 0
        status = ok(http.get(relay.xrpc("com.atproto.sync.getHostStatus"), params={"hostname": pds1}))
        assert status["hostname"] == pds1 and status["roostLimits"]["accountLimit"] == 100
        error(http.get(relay.xrpc("com.atproto.sync.getHostStatus"), params={"hostname": "nope.example.com"}), 404, "HostNotFound")
        latest = ok(http.get(relay.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did}))
        at_pds = ok(net.http.get(net.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did}))
        assert latest == at_pds
        repos = ok(http.get(relay.xrpc("com.atproto.sync.listRepos")))["repos"]
        assert repos == [{"did": did, "head": latest["cid"], "rev": latest["rev"], "active": True}]
        assert ok(http.get(relay.xrpc("com.atproto.sync.getRepoStatus"), params={"did": did})) == {
            "did": did, "active": True, "rev": latest["rev"]}
        unknown = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
        error(http.get(relay.xrpc("com.atproto.sync.getRepoStatus"), params={"did": unknown}), 404, "RepoNotFound")
        redirect = http.get(relay.xrpc("com.atproto.sync.getRepo"), params={"did": did})
        assert redirect.status_code == 302
        assert redirect.headers["location"] == f"{net.pds_url}/xrpc/com.atproto.sync.getRepo?did={did.replace(':', '%3A')}"

        # admin: authentication, takedown (events stop flowing, live and in replay), restore
        assert http.post(relay.url + "/admin/repo/takeDown", json={"did": did}, auth=("admin", "wrong")).status_code == 401
        ok(relay.admin("repo/takeDown", {"did": did, "reason": "spam"}))
        notice = read_firehose(relay.url, until=lambda ev: any(h["t"] == "#account" and b.get("status") == "takendown" for h, b in ev))
        hidden_rev = post(net, net.pds_url, alice, "while taken down")
        error(http.get(relay.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did}), 403, "RepoTakendown")
        replay = read_firehose(relay.url, idle=1.0)
        assert not commits_of(replay, did)  # gone from replay too
        assert replay and all(b["did"] == did for h, b in replay if h["t"] == "#account")
        assert notice
        ok(relay.admin("repo/reverseTakedown", {"did": did}))
        shown_rev = post(net, net.pds_url, alice, "restored")
        events = read_firehose(relay.url, until=has_commits({did: [shown_rev]}))
        assert hidden_rev not in {c["rev"] for c in commits_of(events, did)}
        counters = relay.host_counters(pds1)
        assert counters["inactive:takendown"] >= 1
        # the #sync a new account's PDS sends after its genesis commit is nothing new, not a failure
        assert counters["sync_unchanged"] == 1 and "stale_rev" not in counters

        # bans: a banned host's connection is dropped; requestCrawl for it is refused
        ok(relay.admin("pds/block", {"host": pds2.url}))
        error(http.post(relay.xrpc("com.atproto.sync.requestCrawl"), json={"hostname": pds2.url}), 400, "HostBanned")
        ok(relay.admin("subs/banDomain", {"domain": "evil.example"}))
        error(http.post(relay.xrpc("com.atproto.sync.requestCrawl"), json={"hostname": "pds.evil.example"}), 400, "HostBanned")
        actions = [a["action"] for a in ok(relay.admin("log"))["actions"]]
        assert actions[:5] == ["domain.ban", "host.ban", "repo.restore", "repo.takedown", "host.add"]
        assert ok(http.get(relay.url + "/xrpc/_health"))["seq"] > 0


def test_account_limit_throttles_new_accounts_until_raised(tmp_path: Path) -> None:
    with running_network(tmp_path) as net, running_relay(
        tmp_path, net.plc_url, crawl=(net.pds_url,), default_account_limit=1
    ) as relay:
        wait_for(lambda: connected(relay, 1), what="a subscription")
        first = net.create_account("first")
        second = net.create_account("second")
        shown = post(net, net.pds_url, first, "counted")
        hidden = post(net, net.pds_url, second, "over the limit")
        events = read_firehose(relay.url, until=has_commits({first["did"]: [shown]}))
        events += read_firehose(relay.url, cursor=events[-1][1]["seq"], idle=1.0)
        assert hidden not in {c["rev"] for c in commits_of(events, second["did"])}
        status = ok(relay.http.get(relay.xrpc("com.atproto.sync.getRepoStatus"), params={"did": second["did"]}))
        assert status == {"did": second["did"], "active": False, "status": "throttled"}
        pds1 = net.pds_url.removeprefix("http://")
        limits = ok(relay.http.get(relay.xrpc("com.atproto.sync.getHostStatus"), params={"hostname": pds1}))
        assert limits["accountCount"] == 2 and limits["roostLimits"]["throttledAccounts"] == 1
        assert relay.host_counters(pds1)["inactive:throttled"] >= 1

        # the operator raises the limit: the throttled account is active again, and announced
        ok(relay.admin("pds/changeLimits", {"host": pds1, "repo_limit": 10}))
        later = post(net, net.pds_url, second, "now counted")
        events = read_firehose(relay.url, until=has_commits({second["did"]: [later]}))
        assert any(h["t"] == "#account" and b["did"] == second["did"] and b["active"] for h, b in events)
        assert ok(relay.admin("log"))["actions"][0]["action"] == "host.limit"
