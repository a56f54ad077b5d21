"""roost.firehose and the Jetstream route against a real PDS (and PLC) on loopback.

- the replay-to-live switch under continuous writes loses and reorders nothing;
- a consumer killed (SIGKILL) and restarted resumes from its saved cursor and
  sees again only the event it had not acknowledged;
- collection and DID filters deliver exactly the matching events;
- the Jetstream JSON stream, mounted on the PDS, matches the CBOR firehose
  message for message over the same range.

One network serves the whole module; each test makes its own accounts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import connect

from pds.app import create_app as create_pds_app
from roost.firehose import Account, Backoff, Commit, Event, Identity, Invalid, Sync, subscribe
from roost.identity import IdentityDirectory, IdentityResolver
from roost.jetstream import jetstream_route
from tests.pds.conftest import Network, running_network, start_network
from tests.servers import ServerThread
from tests.roost.test_jetstream import check_jetstream_shape, expected_for_events, without_time

ROOT = Path(__file__).resolve().parents[2]
#: Longest any one stream read may take before the test fails instead of hanging.
DEADLINE_S = 60.0
FAST = Backoff(base=0.05, cap=0.2)


def _mount_jetstream(app: Starlette) -> None:
    app.router.routes.append(jetstream_route(lambda ws: ws.app.state.pds.sequencer))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with running_network(tmp_path_factory.mktemp("firehose"), customize=_mount_jetstream) as n:
        yield n


def _post(text: str) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-01-01T00:00:00.000Z"}


def create(net: Network, session: dict[str, Any], collection: str, record: dict[str, Any],
           http: httpx.Client | None = None) -> dict[str, Any]:
    response = (http or net.http).post(
        net.xrpc("com.atproto.repo.createRecord"),
        headers=net.auth(session),
        json={"repo": session["did"], "collection": collection, "record": record},
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def read_until(sub: Any, done: Any) -> list[Event]:
    """Events (acknowledged as they come) until ``done(events)`` holds."""

    async def run() -> list[Event]:
        events: list[Event] = []
        async for event in sub:
            events.append(event)
            if event.seq is not None:
                sub.ack(event.seq)
            if done(events):
                return events
        raise AssertionError("the stream ended early")

    return await asyncio.wait_for(run(), DEADLINE_S)


def post_texts(events: list[Event], did: str) -> list[str]:
    return [op.record["text"] for e in events if isinstance(e, Commit) and e.did == did
            for op in e.ops if op.action == "create" and op.record is not None
            and op.collection == "app.bsky.feed.post"]


# -- replay to live ---------------------------------------------------------------------------


async def test_replay_to_live_under_continuous_writes(net: Network) -> None:
    alice = net.create_account("rl-alice")
    did = alice["did"]
    texts = [f"post {i}" for i in range(120)]
    for text in texts[:40]:
        create(net, alice, "app.bsky.feed.post", _post(text))

    def keep_writing() -> None:
        with httpx.Client(timeout=30) as http:
            for text in texts[40:]:
                create(net, alice, "app.bsky.feed.post", _post(text), http)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        async with subscribe(net.pds_url, cursor=0) as sub:
            events = await read_until(sub, lambda ev: len(post_texts(ev, did)) == len(texts))
    finally:
        writer.join()
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))  # the PDS numbers without gaps: none lost
    assert post_texts(events, did) == texts  # each exactly once, in write order


# -- verification and server restarts ----------------------------------------------------------


async def test_pds_commits_verify_against_the_plc_keys(net: Network) -> None:
    gail = net.create_account("v-gail")
    for i in range(3):
        create(net, gail, "app.bsky.feed.post", _post(f"signed {i}"))
    resolver = IdentityResolver.create(plc_url=net.plc_url, allow_local=True)
    directory = IdentityDirectory(resolver)
    try:
        async with subscribe(net.pds_url, cursor=0, dids=[gail["did"]], verify=True,
                             identity=directory) as sub:
            events = await read_until(sub, lambda ev: len(post_texts(ev, gail["did"])) == 3)
            assert sub.invalid == 0
    finally:
        await directory.aclose()
        await resolver.aclose()
    assert not any(isinstance(e, Invalid) for e in events)
    assert sum(isinstance(e, Commit) for e in events) == 4 and any(isinstance(e, Sync)
                                                                   for e in events)


async def test_reconnects_across_a_pds_restart(tmp_path: Path) -> None:
    network, servers = start_network(tmp_path)
    pds = servers[0]
    try:
        hank = network.create_account("hank")
        create(network, hank, "app.bsky.feed.post", _post("before"))
        async with subscribe(network.pds_url, cursor=0, backoff=FAST) as sub:
            await read_until(sub, lambda ev: post_texts(ev, hank["did"]) == ["before"])
            pds.stop()  # the PDS goes away; the consumer keeps trying
            pds = ServerThread(create_pds_app(network.config), port=network.config.port)
            servers[0] = pds
            pds.start()
            create(network, hank, "app.bsky.feed.post", _post("after"))
            events = await read_until(sub, lambda ev: post_texts(ev, hank["did"]) == ["after"])
            assert sub.reconnects >= 1
        assert [e.seq for e in events][-1] == 6
    finally:
        network.http.close()
        for server in servers:
            server.stop()


# -- kill and restart ---------------------------------------------------------------------------

CONSUMER = """
import asyncio, os, signal, sys
from roost.firehose import FileCursorStore, subscribe

url, cursor_file, out_file, did, kill_after, stop_at = sys.argv[1:]

async def main():
    handled = 0
    store = FileCursorStore(cursor_file)
    async with subscribe(url, cursor_store=store, dids=[did], save_interval=0) as sub:
        async for event in sub:
            with open(out_file, "a") as out:  # the work: record the event durably
                out.write(f"{event.seq}\\n")
                out.flush()
                os.fsync(out.fileno())
            handled += 1
            if handled == int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)  # dies before acknowledging
            sub.ack(event.seq)
            if event.seq >= int(stop_at):
                break

asyncio.run(main())
"""


def run_consumer(net: Network, tmp: Path, did: str, kill_after: int, stop_at: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", CONSUMER, net.pds_url, str(tmp / "cursor"), str(tmp / "out"),
         did, str(kill_after), str(stop_at)],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S,
    )
    return proc.returncode


async def test_killed_consumer_resumes_with_nothing_lost(net: Network, tmp_path: Path) -> None:
    bob = net.create_account("kill-bob")
    did = bob["did"]
    for i in range(12):
        create(net, bob, "app.bsky.feed.post", _post(f"before {i}"))
    (tmp_path / "cursor").write_text("0\n")  # start from the beginning of the log

    assert run_consumer(net, tmp_path, did, kill_after=8, stop_at=10**9) == -9
    for i in range(6):  # written while the consumer is down
        create(net, bob, "app.bsky.feed.post", _post(f"while down {i}"))
    async with subscribe(net.pds_url, cursor=0, dids=[did]) as sub:
        expected = [e.seq for e in await read_until(
            sub, lambda ev: len(post_texts(ev, did)) == 18)]
    first = [int(line) for line in (tmp_path / "out").read_text().split()]
    assert first == expected[:8]
    saved = int((tmp_path / "cursor").read_text())
    assert saved == expected[6]  # the 8th event was handled but never acknowledged

    assert run_consumer(net, tmp_path, did, kill_after=0, stop_at=expected[-1]) == 0
    lines = [int(line) for line in (tmp_path / "out").read_text().split()]
    assert lines == expected[:8] + expected[7:]  # one duplicate: the unacknowledged event
    assert int((tmp_path / "cursor").read_text()) == expected[-1]


# -- filters ------------------------------------------------------------------------------------


def _summary(event: Event) -> tuple[Any, ...]:
    if isinstance(event, Commit):
        ops = tuple((op.action, op.path, op.cid, json.dumps(op.record, sort_keys=True,
                                                                  default=str)) for op in event.ops)
        return ("commit", event.seq, event.did, event.rev, ops)
    return (type(event).__name__, event.seq, getattr(event, "did", None))


async def test_filters_deliver_exactly_the_matching_events(net: Network) -> None:
    carol, dave = net.create_account("f-carol"), net.create_account("f-dave")
    posted = create(net, carol, "app.bsky.feed.post", _post("carol's post"))
    like = {"$type": "app.bsky.feed.like", "createdAt": "2026-01-01T00:00:00.000Z",
            "subject": {"uri": posted["uri"], "cid": posted["cid"]}}
    create(net, dave, "app.bsky.feed.post", _post("dave's post"))
    create(net, dave, "app.bsky.feed.like", like)
    create(net, carol, "app.bsky.feed.like", like)
    create(net, carol, "app.bsky.graph.follow", {"$type": "app.bsky.graph.follow",
                                                 "subject": dave["did"],
                                                 "createdAt": "2026-01-01T00:00:00.000Z"})
    last = create(net, carol, "app.bsky.feed.post", _post("carol's last"))
    rkey = posted["uri"].rsplit("/", 1)[1]
    response = net.http.post(net.xrpc("com.atproto.repo.deleteRecord"), headers=net.auth(carol),
                             json={"repo": carol["did"], "collection": "app.bsky.feed.post",
                                   "rkey": rkey})
    assert response.status_code == 200, response.text
    end_rev = response.json()["commit"]["rev"]

    def reached_end(events: list[Event]) -> bool:
        return any(isinstance(e, Commit) and e.rev == end_rev for e in events)

    async with subscribe(net.pds_url, cursor=0) as sub:
        everything = await read_until(sub, reached_end)
    end_seq = everything[-1].seq
    wanted = []
    for event in everything:
        if getattr(event, "did", None) != carol["did"]:
            continue
        if isinstance(event, Commit):
            ops = tuple(op for op in event.ops if op.collection.startswith("app.bsky.feed."))
            if not ops:
                continue
            event = Commit(event.seq, event.did, event.rev, event.since, event.commit,
                           event.prev_data, event.time, ops, event.blocks, event.too_big)
        wanted.append(event)
    assert any(isinstance(e, (Identity, Account, Sync)) for e in wanted)
    assert last["uri"].rsplit("/", 1)[1] in {op.rkey for e in wanted if isinstance(e, Commit)
                                             for op in e.ops}

    async with subscribe(net.pds_url, cursor=0, dids=[carol["did"]],
                         collections=["app.bsky.feed.*"]) as sub:
        filtered = await read_until(sub, lambda ev: ev[-1].seq == wanted[-1].seq)
        assert sub.cursor == wanted[-1].seq and sub.last_seq == end_seq
    assert [_summary(e) for e in filtered] == [_summary(e) for e in wanted]


# -- Jetstream over the same range ------------------------------------------------------------


async def test_jetstream_matches_the_cbor_firehose(net: Network) -> None:
    erin = net.create_account("js-erin")
    did = erin["did"]
    first = create(net, erin, "app.bsky.feed.post", _post("hello 🐦 jetstream"))
    rkey = first["uri"].rsplit("/", 1)[1]
    writes = {"repo": did, "writes": [
        {"$type": "com.atproto.repo.applyWrites#create", "collection": "app.bsky.feed.post",
         "value": _post("two at once (1)")},
        {"$type": "com.atproto.repo.applyWrites#create", "collection": "app.bsky.feed.like",
         "value": {"$type": "app.bsky.feed.like", "createdAt": "2026-01-01T00:00:00.000Z",
                   "subject": {"uri": first["uri"], "cid": first["cid"]}}},
        {"$type": "com.atproto.repo.applyWrites#update", "collection": "app.bsky.feed.post",
         "rkey": rkey, "value": _post("hello, edited")},
    ]}
    response = net.http.post(net.xrpc("com.atproto.repo.applyWrites"), headers=net.auth(erin),
                             json=writes)
    assert response.status_code == 200, response.text
    response = net.http.post(net.xrpc("com.atproto.identity.updateHandle"),
                             headers=net.auth(erin), json={"handle": "js-erin2.pds.test"})
    assert response.status_code == 200, response.text
    response = net.http.post(net.xrpc("com.atproto.repo.deleteRecord"), headers=net.auth(erin),
                             json={"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey})
    assert response.status_code == 200, response.text
    end_rev = response.json()["commit"]["rev"]

    async with subscribe(net.pds_url, cursor=0) as sub:
        cbor_events = await read_until(
            sub, lambda ev: any(isinstance(e, Commit) and e.rev == end_rev for e in ev))
    expected = expected_for_events(cbor_events)
    assert {m["kind"] for m in expected} == {"commit", "identity", "account"}
    assert {m["commit"]["operation"] for m in expected if m["kind"] == "commit"} == {
        "create", "update", "delete"}

    url = net.pds_url.replace("http://", "ws://") + "/subscribe?cursor=0"
    async with connect(url) as ws:
        got = [json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
               for _ in range(len(expected))]
    for message in got:
        check_jetstream_shape(message)
    assert [without_time(m) for m in got] == expected
    times = [m["time_us"] for m in got]
    assert times == sorted(set(times))
    # resuming from a message's time_us starts exactly there
    k = len(got) // 2
    async with connect(url.replace("cursor=0", f"cursor={times[k]}")) as ws:
        again = [json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
                 for _ in range(len(got) - k)]
    assert again == got[k:]
