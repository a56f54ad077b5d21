"""A hostile host next to an honest PDS: nothing bad gets through, the honest events keep flowing.

The honest host is a real roost PDS; the hostile one is a :class:`FakeHost`
that sends, in one stream: a forged signature, another host's (validly
signed) commits, a rev rollback, a replayed frame, a commit whose ops do not
invert to its ``prevData``, a rev from the future, a DID that does not
resolve, an ``#identity`` for someone else's DID, a flood over its rate
limit, then malformed CBOR, a text frame and an oversized frame (each ends
the connection; the relay reconnects from its cursor). The relay's own
firehose must hold exactly the honest events, each once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plc.app import create_app as create_plc_app
from plc.config import PlcConfig
from roost.car import CarReader
from roost.crypto import PrivateKey
from tests.pds.conftest import Network, ok, running_network
from tests.relay.helpers import (
    Event,
    FakeHost,
    RelayHandle,
    commits_of,
    read_firehose,
    running_relay,
    wait_for,
)
from tests.servers import ServerThread

FLOOD = 120  # over the 50 events/s of an untrusted host with the default account limit


def test_hostile_host_cannot_get_bad_events_through(tmp_path: Path) -> None:
    with running_network(tmp_path) as net:
        fake = FakeHost(net.plc_url).start()
        try:
            with running_relay(
                tmp_path, net.plc_url, crawl=(net.pds_url, fake.url), verify_workers=1
            ) as relay:
                run_hostile_script(net, fake, relay)
        finally:
            fake.stop()


def run_hostile_script(net: Network, fake: FakeHost, relay: RelayHandle) -> None:
    wait_for(lambda: all(h["connected"] for h in relay.admin("pds/list").json()["hosts"]),
             what="the relay to subscribe to both hosts")
    alice = net.create_account("alice")
    create = net.xrpc("com.atproto.repo.createRecord")
    record = {"$type": "app.bsky.feed.post", "text": "hi", "createdAt": "2024-01-01T00:00:00.000Z"}
    post = {"repo": alice["did"], "collection": "app.bsky.feed.post", "record": record}
    ok(net.http.post(create, headers=net.auth(alice), json=post))
    alice_commits = commits_of(read_firehose(net.pds_url, idle=1.0), alice["did"])
    alice_all = len(alice_commits) + 1  # and one more during the flood

    good, rollback, badprev, forged, flood = (fake.account() for _ in range(5))
    future = fake.account(clock_skew_s=900)
    expected: set[tuple[str, str]] = set()

    def accepted(body: dict[str, Any]) -> None:
        fake.send("#commit", body)
        expected.add((body["repo"], body["rev"]))

    accepted(good.post("fine"))
    fake.send("#commit", forged.post("forged", key=PrivateKey.generate("k256")))
    for body in alice_commits:  # validly signed, but alice lives on the honest PDS
        fake.send("#commit", {k: v for k, v in body.items() if k != "seq"})
    fake.send("#identity", {"did": alice["did"], "handle": "evil.test"})
    fake.send("#account", {"did": alice["did"], "active": False, "status": "deleted"})
    r1 = rollback.post("one")
    accepted(r1)
    r2 = rollback.post("two")
    r2_seq = fake.send("#commit", r2)
    expected.add((rollback.did, r2["rev"]))
    fake.send("#commit", r1)  # rev rollback: an older rev under a new seq
    fake.send("#commit", r2, seq=r2_seq)  # replayed frame: the same upstream seq again
    accepted(badprev.post("first"))
    bad = badprev.post("second")
    bad["prevData"] = bad["commit"]  # the ops cannot invert to this
    fake.send("#commit", bad)
    fake.send("#commit", future.post("from the future"))
    fake.send("#commit", {**good.post("x"), "repo": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"})
    for i in range(FLOOD):
        accepted(flood.post(f"flood {i}"))
    ok(net.http.post(create, headers=net.auth(alice), json=post))  # honest, during the flood
    fake.send_raw(b"\xa2\x61\x74\x67#commit\x62op\x01\xff\xff")  # malformed CBOR
    fake.send_raw("a text frame")
    fake.send_raw(b"\xa1\x62op\x01" + b"\x00" * 5_000_100)  # over the 5 MB frame limit
    accepted(good.post("after the garbage"))

    def complete(events: list[Event]) -> bool:
        commits = commits_of(events)
        mine = {(c["repo"], c["rev"]) for c in commits if c["repo"] != alice["did"]}
        return mine >= expected and len(commits_of(events, alice["did"])) >= alice_all

    events = read_firehose(relay.url, until=complete, timeout=60)
    # anything late would show up now; then check exactly what came through
    events += read_firehose(relay.url, cursor=int(events[-1][1]["seq"]), idle=1.0)
    commits = commits_of(events)
    from_fake = [(c["repo"], c["rev"]) for c in commits if c["repo"] != alice["did"]]
    assert sorted(from_fake) == sorted(expected)  # nothing else, nothing twice
    from_alice = [c["rev"] for c in commits_of(events, alice["did"])]
    assert len(from_alice) == len(set(from_alice)) == alice_all
    seqs = [body["seq"] for _, body in events]
    assert seqs == sorted(set(seqs))
    for header, body in events:  # no #identity/#account for alice from the hostile host
        if header["t"] in ("#identity", "#account") and body["did"] == alice["did"]:
            assert body.get("handle") != "evil.test" and body.get("status") != "deleted"
    # the honest post made during the flood was not stuck behind it
    last_flood = max(c["seq"] for c in commits_of(events, flood.did))
    assert commits_of(events, alice["did"])[-1]["seq"] < last_flood

    counters = relay.host_counters(fake.hostname)
    for name in (
        "invalid:BadCommitSignature",
        "not_authoritative",
        "stale_rev",
        "out_of_order",
        "invalid:InvertError",
        "future_rev",
        "unresolvable_dids",
        "malformed_frames",
        "oversized_frames",
        "rate_limit_waits",
    ):
        assert counters.get(name, 0) >= 1, (name, counters)
    assert counters["malformed_frames"] >= 2  # the bad CBOR and the text frame
    assert fake.connections >= 4 and fake.cursors[-1] is not None
    honest = relay.host_counters(net.pds_url.removeprefix("http://"))
    assert not any(k.startswith("invalid") or k == "not_authoritative" for k in honest), honest

    # the account whose commit failed verification waits for a resync
    status = relay.http.get(
        relay.xrpc("com.atproto.sync.getRepoStatus"), params={"did": badprev.did}
    ).json()
    assert status == {"did": badprev.did, "active": False, "status": "desynchronized"}
    wait_for(
        lambda: relay.host_counters(fake.hostname).get("resyncs_failed", 0) >= 1,
        what="a resync attempt (the fake host serves no getRepo)",
    )
    assert relay.http.get(relay.url + "/xrpc/_health").status_code == 200


def test_an_unverifiable_account_is_resynced_from_its_pds(tmp_path: Path) -> None:
    plc = ServerThread(create_plc_app(PlcConfig(data_dir=tmp_path / "plc")))
    plc_url = plc.start()
    fake = FakeHost(plc_url).start()
    try:
        with running_relay(tmp_path, plc_url, crawl=(fake.url,)) as relay:
            wait_for(lambda: relay.admin("pds/list").json()["hosts"][0]["connected"], what="a subscription")
            account = fake.account()
            first = account.post("one")
            fake.send("#commit", first)
            broken = account.post("two")
            skipped = account.post("three")
            fake.repos[account.did] = account.car()  # what getRepo serves: the repo as of "three"
            fake.send("#commit", {**broken, "prevData": first["commit"]})  # cannot be verified
            fake.send("#commit", skipped)  # dropped: the account is waiting for its resync

            def has_sync(events: list[Event]) -> bool:
                return any(h["t"] == "#sync" for h, _ in events)

            events = read_firehose(relay.url, until=has_sync, timeout=30)
            after = account.post("four")
            fake.send("#commit", after)
            events += read_firehose(
                relay.url, cursor=events[-1][1]["seq"], until=lambda ev: bool(commits_of(ev))
            )
            kinds = [(h["t"], b.get("rev")) for h, b in events if h["t"] in ("#commit", "#sync")]
            # "two" never passes; the #sync carries the repo's state; then commits flow again
            assert kinds == [
                ("#commit", first["rev"]), ("#sync", skipped["rev"]), ("#commit", after["rev"])
            ]
            sync = next(b for h, b in events if h["t"] == "#sync")
            assert sync["did"] == account.did and CarReader(sync["blocks"]).roots == [skipped["commit"]]
            status = relay.http.get(
                relay.xrpc("com.atproto.sync.getRepoStatus"), params={"did": account.did}
            ).json()
            assert status == {"did": account.did, "active": True, "rev": after["rev"]}
            assert relay.host_counters(fake.hostname)["resyncs_done"] == 1
    finally:
        fake.stop()
        plc.stop()
