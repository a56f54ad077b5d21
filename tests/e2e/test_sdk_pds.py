"""The `atproto` Python SDK (PyPI) drives a roost PDS over real sockets, unchanged.

A did:plc directory and a PDS run on loopback; the SDK creates an account,
logs in, writes and reads records, refreshes its session, and its firehose
client decodes the PDS's subscribeRepos stream, whose commits roost's own
verifier checks by sync v1.1 inversion.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

atproto = pytest.importorskip("atproto")

from atproto import CAR, Client, FirehoseSubscribeReposClient, models, parse_subscribe_repos_message  # noqa: E402

from roost.cid import CID  # noqa: E402
from roost.identity import DidDocument  # noqa: E402
from roost.repo import RepoOp, verify_car, verify_commit_event  # noqa: E402
from tests.pds.conftest import PASSWORD, Network, running_network  # noqa: E402


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with running_network(tmp_path) as network:
        yield network


@pytest.fixture
def sdk(net: Network) -> Iterator[Any]:
    """A factory of SDK clients pointed at the PDS; all closed afterwards."""
    clients: list[Client] = []

    def make() -> Client:
        client = Client(base_url=f"{net.pds_url}/xrpc")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.request.close()


def test_sdk_account_records_and_session(net: Network, sdk: Any) -> None:
    client = sdk()
    created = client.com.atproto.server.create_account(
        models.ComAtprotoServerCreateAccount.Data(
            handle="alice.pds.test", email="alice@example.com", password=PASSWORD
        )
    )
    assert created.handle == "alice.pds.test"
    did = created.did

    client = sdk()
    # no AppView in this network: skip the login's app.bsky profile lookup
    client.login("alice.pds.test", PASSWORD, fetch_bsky_profile=False)
    now = client.get_current_time_iso()

    # profile record
    client.com.atproto.repo.put_record(
        models.ComAtprotoRepoPutRecord.Data(
            repo=did,
            collection="app.bsky.actor.profile",
            rkey="self",
            record={"$type": "app.bsky.actor.profile", "displayName": "Alice", "description": "hi"},
        )
    )
    post = client.send_post("Hello from the SDK, on a roost PDS", profile_identify=did)
    reply_ref = models.AppBskyFeedPost.ReplyRef(
        parent=models.create_strong_ref(post), root=models.create_strong_ref(post)
    )
    reply = client.send_post("replying to myself", reply_to=reply_ref, profile_identify=did)
    strong = models.ComAtprotoRepoStrongRef.Main(cid=post.cid, uri=post.uri)
    like = client.app.bsky.feed.like.create(
        did, models.AppBskyFeedLike.Record(created_at=now, subject=strong)
    )
    repost = client.app.bsky.feed.repost.create(
        did, models.AppBskyFeedRepost.Record(created_at=now, subject=strong)
    )

    bob = sdk().com.atproto.server.create_account(
        models.ComAtprotoServerCreateAccount.Data(
            handle="bob.pds.test", email="bob@example.com", password=PASSWORD
        )
    )
    follow = client.app.bsky.graph.follow.create(
        did, models.AppBskyGraphFollow.Record(created_at=now, subject=bob.did)
    )

    fetched = client.get_post(post.uri.split("/")[-1], did)
    assert fetched.value.text == "Hello from the SDK, on a roost PDS"
    listed = client.com.atproto.repo.list_records(
        models.ComAtprotoRepoListRecords.Params(repo=did, collection="app.bsky.feed.post")
    )
    assert {r.uri for r in listed.records} == {post.uri, reply.uri}
    described = client.com.atproto.repo.describe_repo(
        models.ComAtprotoRepoDescribeRepo.Params(repo=did)
    )
    assert set(described.collections) >= {
        "app.bsky.actor.profile", "app.bsky.feed.post", "app.bsky.feed.like",
        "app.bsky.feed.repost", "app.bsky.graph.follow",
    }

    assert client.delete_post(reply.uri)
    for uri in (like.uri, repost.uri, follow.uri):
        _, _, repo, collection, rkey = uri.split("/")
        client.com.atproto.repo.delete_record(
            models.ComAtprotoRepoDeleteRecord.Data(repo=repo, collection=collection, rkey=rkey)
        )
    listed = client.com.atproto.repo.list_records(
        models.ComAtprotoRepoListRecords.Params(repo=did, collection="app.bsky.feed.post")
    )
    assert [r.uri for r in listed.records] == [post.uri]

    # refresh the session and keep going
    client._refresh_and_set_session()  # noqa: SLF001 - the SDK's own refresh path
    session = client.com.atproto.server.get_session()
    assert session.did == did

    # the exported repo verifies with roost's own verifier against the DID's key
    car = net.http.get(net.xrpc("com.atproto.sync.getRepo"), params={"did": did}).content
    doc = DidDocument.parse(net.http.get(f"{net.plc_url}/{did}").json(), did=did)
    summary = verify_car(car, did=did, key=doc.signing_key)
    assert summary.collections["app.bsky.feed.post"] == 1
    assert summary.collections["app.bsky.actor.profile"] == 1
    # the SDK reads the same CAR
    parsed = CAR.from_bytes(car)
    assert str(parsed.root) == str(summary.commit_cid)


def test_sdk_firehose_decodes_and_commits_verify(net: Network) -> None:
    alice = net.create_account("alice")
    did = alice["did"]
    doc = DidDocument.parse(net.http.get(f"{net.plc_url}/{did}").json(), did=did)
    headers = net.auth(alice)
    for i in range(5):
        response = net.http.post(
            net.xrpc("com.atproto.repo.createRecord"),
            headers=headers,
            json={
                "repo": did,
                "collection": "app.bsky.feed.post",
                "record": {"$type": "app.bsky.feed.post", "text": f"post {i}",
                           "createdAt": "2026-01-01T00:00:00.000Z"},
            },
        )
        assert response.status_code == 200, response.text

    ws_base = net.pds_url.replace("http://", "ws://") + "/xrpc"
    firehose = FirehoseSubscribeReposClient({"cursor": 0}, base_uri=ws_base)
    received: list[Any] = []
    errors: list[BaseException] = []

    def on_message(message: Any) -> None:
        try:
            received.append(parse_subscribe_repos_message(message))
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test thread
            errors.append(exc)
        if len(received) >= 9 or errors:
            firehose.stop()

    thread = threading.Thread(target=firehose.start, args=(on_message,), daemon=True)
    thread.start()
    thread.join(timeout=30)
    firehose.stop()
    assert not errors, errors
    # account creation: #identity, #account, #commit, #sync; then 5 commits
    kinds = [type(m).__name__ for m in received]
    assert kinds[:4] == ["Identity", "Account", "Commit", "Sync"], kinds
    commits = [m for m in received if isinstance(m, models.ComAtprotoSyncSubscribeRepos.Commit)]
    assert len(commits) == 6
    seqs = [m.seq for m in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for commit in commits[1:]:
        ops = [
            RepoOp(op.action, op.path, CID.from_str(str(op.cid)) if op.cid else None,
                   CID.from_str(str(op.prev)) if op.prev else None)
            for op in commit.ops
        ]
        verified = verify_commit_event(
            repo=commit.repo,
            commit_cid=CID.from_str(str(commit.commit)),
            rev=commit.rev,
            blocks=commit.blocks,
            ops=ops,
            prev_data=CID.from_str(str(commit.prev_data)),
            key=doc.signing_key,
        )
        assert verified.did == did
