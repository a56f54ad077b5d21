"""An account moves between two PDSes while the network watches.

One did:plc directory, two roost PDSes, a relay crawling both and a feed
generator reading the relay, all on loopback. Alice lives on host 1 with
posts, images, a like and preferences; Bob (host 1) and Carol (host 2) follow
her. She moves to host 2 with ``roost account migrate``'s flow (in process,
with the relay among its checks). Afterwards her DID is the same, host 2
holds every record (same CIDs) and every blob, the follows still name her,
what she posts from host 2 reaches the relay and Bob's ``following`` feed,
host 1 answers for her as deactivated, and when host 1 is made to write for
her anyway (its operator re-activates her there and posts with her old key)
the relay passes none of it on.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from feedgen.app import create_app as create_feedgen_app
from feedgen.config import FeedgenConfig
from roost.migrate import MigrateOptions, Migration
from tests.e2e.test_feedgen import eventually
from tests.e2e.test_migration_endpoints import (
    ADMIN,
    CREATED,
    POST,
    _outbox_token,
    active_hosts,
    blob_cids,
    check_content_moved,
    create,
    did_document,
    login,
    plc_ops,
    populate,
    records,
    second_pds,
)
from tests.pds.conftest import PASSWORD, Network, error, ok, running_network
from tests.relay.helpers import RelayHandle, commits_of, read_firehose, running_relay
from tests.servers import ServerThread, free_port

FOLLOW = "app.bsky.graph.follow"
SKELETON = "app.bsky.feed.getFeedSkeleton"
#: How long the relay and the feed generator get to catch up (they run asynchronously).
CATCH_UP_S = 30.0


def relay_status(relay: RelayHandle, did: str) -> dict[str, Any]:
    """The relay's getRepoStatus for ``did`` (``{}`` while it has not seen the account)."""
    response = relay.http.get(relay.xrpc("com.atproto.sync.getRepoStatus"), params={"did": did})
    if response.status_code == 404:
        return {}
    return ok(response)


def start_feedgen(tmp: Path, relay: RelayHandle, plc_url: str) -> tuple[str, str, ServerThread]:
    """A feed generator on the relay's firehose; (its URL, its DID, the server)."""
    port = free_port()
    config = FeedgenConfig(
        port=port, data_dir=tmp / "feedgen", hostname=f"localhost:{port}",
        relay_url=relay.url, start_cursor=0, plc_url=plc_url, allow_local=True,
        entry_points=False, batch_delay_s=0.02,
    )
    server = ServerThread(create_feedgen_app(config), port=port)
    return server.start(), config.did, server


def following_feed(net: Network, reader: dict[str, Any], feedgen_did: str) -> Callable[[], list[str]]:
    """The reader's ``following`` feed, read through their own PDS (which signs for them)."""
    uri = f"at://{feedgen_did}/app.bsky.feed.generator/following"

    def read() -> list[str]:
        response = net.http.get(
            net.xrpc(SKELETON), params={"feed": uri, "limit": 100},
            headers={**net.auth(reader), "atproto-proxy": f"{feedgen_did}#bsky_fg"},
        )
        assert response.status_code == 200, response.text
        return [item["post"] for item in response.json()["feed"]]

    return read


def own_posts(net: Network, did: str) -> list[str]:
    out = ok(net.query("com.atproto.repo.listRecords", repo=did, collection=POST, limit=100))
    return [r["uri"] for r in out["records"]]


async def test_a_followed_account_moves_and_keeps_its_followers(tmp_path: Path) -> None:
    with (
        running_network(tmp_path) as one,
        second_pds(tmp_path, one, "pds2.test") as two,
        running_relay(tmp_path, one.plc_url, crawl=(one.pds_url, two.pds_url)) as relay,
    ):
        feedgen_url, feedgen_did, feedgen = start_feedgen(tmp_path, relay, one.plc_url)
        try:
            await _scenario(one, two, relay, feedgen_did)
        finally:
            feedgen.stop()


async def _scenario(one: Network, two: Network, relay: RelayHandle, feedgen_did: str) -> None:
    alice = one.create_account("alice")
    bob = one.create_account("bob")
    carol = two.create_account("carol")
    did = alice["did"]
    images = populate(one, alice)
    follows = {
        "bob": create(one, bob, FOLLOW, {"$type": FOLLOW, "subject": did, "createdAt": CREATED}),
        "carol": create(two, carol, FOLLOW, {"$type": FOLLOW, "subject": did, "createdAt": CREATED}),
    }
    before = records(one, did)
    blobs_before = sorted(blob_cids(one, did))
    assert len(blobs_before) == len(images) == 3
    ops_before = plc_ops(one, did)
    old_posts = own_posts(one, did)

    # the network has seen Alice on host 1: the relay at her latest rev, Bob's feed her posts
    latest = ok(one.query("com.atproto.sync.getLatestCommit", did=did))["rev"]
    eventually(lambda: relay_status(relay, did).get("rev") == latest, timeout=CATCH_UP_S)
    bobs_feed = following_feed(one, bob, feedgen_did)
    carols_feed = following_feed(two, carol, feedgen_did)
    assert eventually(lambda: set(bobs_feed()) == set(old_posts) or None, timeout=CATCH_UP_S)

    # the move, as `roost account migrate --yes` runs it, checks against the relay included
    out = io.StringIO()
    options = MigrateOptions(
        from_url=one.pds_url, to_url=two.pds_url, identifier="alice.pds.test",
        password=PASSWORD, plc_url=one.plc_url, relay_url=relay.url, allow_local=True,
        yes=True, ask_token=lambda prompt: _outbox_token(one, did),
        out=out, progress_stream=io.StringIO(),
    )
    assert await Migration(options).run() == 0, out.getvalue()
    assert f"done: {did} now lives at {two.pds_url}" in out.getvalue()

    # the same identity, now naming host 2; one more PLC operation, no more
    doc = did_document(one, did)
    assert doc.id == did and doc.pds_endpoint == two.pds_url
    assert doc.handle == "alice.pds2.test"
    ops_after = plc_ops(one, did)
    assert ops_after[: len(ops_before)] == ops_before and len(ops_after) == len(ops_before) + 1
    session = login(two, did)
    assert session["did"] == did and session["active"] is True

    # every record with the same CID, every blob byte for byte; nothing twice
    check_content_moved(two, session, before, blobs_before, images)

    # the followers' records still point at her DID, untouched
    assert ok(one.query("com.atproto.repo.getRecord", repo=bob["did"], collection=FOLLOW,
                        rkey=follows["bob"]["uri"].rsplit("/", 1)[1]))["value"]["subject"] == did
    assert ok(two.query("com.atproto.repo.getRecord", repo=carol["did"], collection=FOLLOW,
                        rkey=follows["carol"]["uri"].rsplit("/", 1)[1]))["value"]["subject"] == did

    # host 1 reports her deactivated; only host 2 answers for her
    assert active_hosts(one, two, did=did) == [two.pds_url]
    assert ok(one.query("com.atproto.sync.getRepoStatus", did=did))["status"] == "deactivated"
    old_session = login(one, "alice.pds.test")
    assert old_session["active"] is False and old_session["status"] == "deactivated"
    assert ok(one.query("com.atproto.server.getSession", old_session))["status"] == "deactivated"
    error(one.call("com.atproto.repo.createRecord", old_session, repo=did, collection=POST,
                   record={"$type": POST, "text": "lost", "createdAt": CREATED}),
          401, "AccountDeactivated")
    old_check = ok(one.query("com.atproto.server.checkAccountStatus", old_session))
    assert old_check["activated"] is False and old_check["validDid"] is False

    # she posts from host 2: the relay passes it on, Bob's and Carol's feeds show it
    new_post = create(two, session, POST, {"$type": POST, "text": "hello from host 2",
                                           "createdAt": CREATED})
    new_rev = ok(two.query("com.atproto.sync.getLatestCommit", did=did))["rev"]
    eventually(lambda: relay_status(relay, did).get("rev") == new_rev, timeout=CATCH_UP_S)
    assert relay_status(relay, did)["active"] is True
    relayed = read_firehose(relay.url, until=lambda events: any(
        any(op["path"] == new_post["uri"].split("/", 3)[3] for op in c["ops"])
        for c in commits_of(events, did)), timeout=CATCH_UP_S)
    assert eventually(lambda: new_post["uri"] in bobs_feed() or None, timeout=CATCH_UP_S)
    assert set(bobs_feed()) == {*old_posts, new_post["uri"]}
    assert eventually(lambda: new_post["uri"] in carols_feed() or None, timeout=CATCH_UP_S)

    # host 1 writes for her anyway: its operator re-activates her there, she posts with
    # the old key. Host 1 sends it out; the relay (the DID names host 2) drops it.
    relayed_seqs = [body["seq"] for _, body in relayed]
    ok(one.http.post(one.xrpc("com.atproto.admin.updateSubjectStatus"), auth=ADMIN, json={
        "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
        "deactivated": {"applied": False}}))
    rogue = create(one, old_session, POST, {"$type": POST, "text": "written on host 1",
                                            "createdAt": CREATED})
    rogue_path = rogue["uri"].split("/", 3)[3]
    from_host_one = read_firehose(one.pds_url, idle=1.0)
    assert any(op["path"] == rogue_path for c in commits_of(from_host_one, did) for op in c["ops"])
    # a marker from Bob, after the rogue commit on host 1's stream: once the relay passed
    # it on, it has judged the rogue commit
    marker = create(one, bob, POST, {"$type": POST, "text": "marker", "createdAt": CREATED})
    marker_path = marker["uri"].split("/", 3)[3]
    events = read_firehose(relay.url, until=lambda evs: any(
        op["path"] == marker_path for c in commits_of(evs, bob["did"]) for op in c["ops"]),
        timeout=CATCH_UP_S)
    alices = [body for header, body in events
              if body.get("repo", body.get("did")) == did and body["seq"] not in relayed_seqs]
    assert alices == [], alices  # no commit, no #account "active" from host 1
    assert relay.host_counters(_hostname(one))["not_authoritative"] >= 1
    status = relay_status(relay, did)
    assert status["active"] is True and status["rev"] == new_rev
    assert rogue["uri"] not in bobs_feed()


def _hostname(net: Network) -> str:
    return httpx.URL(net.pds_url).netloc.decode()
