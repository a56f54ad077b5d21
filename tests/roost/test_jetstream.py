"""roost.jetstream: the Jetstream v1 JSON shape, filters, cursors and the WebSocket route.

Expected messages are derived from the CBOR events through roost.firehose
(an independent decoding path), then compared message for message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from roost import cbor
from roost.firehose import Account, Commit, FirehoseDecoder, Identity
from roost.jetstream import JetstreamOptions, jetstream_messages, jetstream_route
from roost.repo import Write
from tests.roost.test_firehose import ALICE, BOB
from tests.roost.test_firehose_support import FakeRepo, SequencerHost, like, post, sequencer_host

_KINDS = {"commit", "identity", "account"}


def expected_messages(frames: list[bytes]) -> list[dict[str, Any]]:
    """Jetstream messages (without ``time_us``) for CBOR frames, via roost.firehose."""
    decoder = FirehoseDecoder()
    return expected_for_events([e for e in map(decoder.decode, frames) if e is not None])


def expected_for_events(events: Iterable[Any]) -> list[dict[str, Any]]:
    """Jetstream messages (without ``time_us``) for decoded firehose events."""
    out: list[dict[str, Any]] = []
    for event in events:
        if isinstance(event, Commit):
            for op in event.ops:
                commit: dict[str, Any] = {"rev": event.rev, "operation": op.action,
                                          "collection": op.collection, "rkey": op.rkey}
                if op.action != "delete":
                    commit["record"] = cbor.to_json(op.record)
                    commit["cid"] = str(op.cid)
                out.append({"did": event.did, "kind": "commit", "commit": commit})
        elif isinstance(event, Identity):
            identity: dict[str, Any] = {"did": event.did, "seq": event.seq, "time": event.time}
            if event.handle is not None:
                identity["handle"] = event.handle
            out.append({"did": event.did, "kind": "identity", "identity": identity})
        elif isinstance(event, Account):
            account: dict[str, Any] = {"active": event.active, "did": event.did,
                                       "seq": event.seq, "time": event.time}
            if event.status is not None:
                account["status"] = event.status
            out.append({"did": event.did, "kind": "account", "account": account})
    return out


def check_jetstream_shape(message: dict[str, Any]) -> None:
    """What a Jetstream v1 client (Go models.Event) expects, field by field."""
    assert set(message) <= {"did", "time_us", "kind", "commit", "identity", "account"}
    assert isinstance(message["did"], str) and message["did"].startswith("did:")
    assert type(message["time_us"]) is int and message["time_us"] > 0
    kind = message["kind"]
    assert kind in _KINDS and set(message) == {"did", "time_us", "kind", kind}
    body = message[kind]
    if kind == "commit":
        required = {"rev", "operation", "collection", "rkey"}
        assert all(isinstance(body[k], str) for k in required)
        assert body["operation"] in ("create", "update", "delete")
        if body["operation"] == "delete":
            assert set(body) == required
        else:
            assert set(body) == required | {"record", "cid"}
            assert isinstance(body["record"], dict) and isinstance(body["cid"], str)
            assert isinstance(body["record"].get("$type"), str)
    elif kind == "identity":
        assert set(body) - {"handle"} == {"did", "seq", "time"}
        assert body["did"] == message["did"] and type(body["seq"]) is int
        assert isinstance(body["time"], str) and isinstance(body.get("handle", ""), str)
    else:
        assert set(body) - {"status"} == {"active", "did", "seq", "time"}
        assert type(body["active"]) is bool and type(body["seq"]) is int
        assert isinstance(body.get("status", ""), str)


def without_time(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "time_us"}


def jet_stream(alice: FakeRepo, bob: FakeRepo) -> list[bytes]:
    """Events with varied times: some share a millisecond, one commit has two ops."""
    return [
        alice.identity(1, "alice.test", time_ms=1_000),
        alice.account(2, time_ms=1_000),
        alice.commit(3, [Write.create("app.bsky.feed.post", "3kaaaaaaaaa22", post("one"))],
                     time_ms=1_000),
        alice.sync(4, time_ms=1_000),
        bob.commit(5, [Write.create("app.bsky.feed.like", "3kaaaaaaaaa22", like("at://a/b/c")),
                       Write.create("app.bsky.feed.post", "3kaaaaaaaaa23", post("bob 🐦"))],
                   time_ms=2_500),
        alice.commit(6, [Write.update("app.bsky.feed.post", "3kaaaaaaaaa22", post("edited"))],
                     time_ms=9_000),
        bob.commit(7, [Write.create("app.bsky.graph.follow", "3kaaaaaaaaa24",
                                    {"$type": "app.bsky.graph.follow", "subject": ALICE,
                                     "createdAt": "2026-01-01T00:00:00.000Z"})], time_ms=9_000),
        alice.commit(8, [Write.delete("app.bsky.feed.post", "3kaaaaaaaaa22")], time_ms=20_000),
        bob.account(9, active=False, status="deactivated", time_ms=20_000),
        bob.identity(10, time_ms=30_000),
    ]


@pytest.fixture
def frames() -> list[bytes]:
    return jet_stream(FakeRepo(ALICE), FakeRepo(BOB))


# -- conversion -----------------------------------------------------------------------------


def test_messages_match_the_cbor_events(frames: list[bytes]) -> None:
    got = [json.loads(m.text(1)) for f in frames for m in jetstream_messages(f)]
    for message in got:
        check_jetstream_shape(message)
    assert [without_time(m) for m in got] == expected_messages(frames)
    kinds = [(m["kind"], m.get("commit", {}).get("operation")) for m in got]
    assert kinds == [("identity", None), ("account", None), ("commit", "create"),
                     ("commit", "create"), ("commit", "create"), ("commit", "update"),
                     ("commit", "create"), ("commit", "delete"), ("account", None),
                     ("identity", None)]
    # field order as Jetstream writes it
    first = jetstream_messages(frames[2])[0].text(7)
    assert first.startswith('{"did":"' + ALICE + '","time_us":7,"kind":"commit","commit":{"rev":')


def test_event_times(frames: list[bytes]) -> None:
    (identity,) = jetstream_messages(frames[0])
    assert identity.event_us == 1_767_225_601_000_000  # 2026-01-01T00:00:01.000Z
    assert jetstream_messages(frames[3]) == []  # #sync is not part of the v1 shape


def test_options() -> None:
    options = JetstreamOptions.parse(["app.bsky.feed.*"], [ALICE], "100")
    assert options.max_message_bytes == 100
    assert options.wants(ALICE, "app.bsky.feed.post") and options.wants(ALICE, "")
    assert not options.wants(ALICE, "app.bsky.graph.follow") and not options.wants(BOB, "")
    assert JetstreamOptions.parse(None, None, "-5").max_message_bytes == 0
    for collections, dids in ((["bad collection"], None), (None, ["alice"])):
        with pytest.raises(Exception) as caught:
            JetstreamOptions.parse(collections, dids)
        assert getattr(caught.value, "status", None) == 400


# -- the route -------------------------------------------------------------------------------


def jetstream_host(frames: list[bytes]) -> Any:
    return sequencer_host(frames, routes=lambda seq, log: [jetstream_route(seq)])


def ws_url(host: SequencerHost, query: str = "") -> str:
    return host.url.replace("http://", "ws://") + "/subscribe" + (f"?{query}" if query else "")


async def read(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(count):
        message = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(message, str)  # Jetstream sends text frames
        out.append(json.loads(message))
    return out


async def test_stream_matches_and_resumes_from_any_time_us(frames: list[bytes]) -> None:
    expected = expected_messages(frames)
    with jetstream_host(frames) as host:
        async with connect(ws_url(host, "cursor=0")) as ws:
            got = await read(ws, len(expected))
        assert [without_time(m) for m in got] == expected
        times = [m["time_us"] for m in got]
        assert times == sorted(set(times))  # strictly increasing
        # ops of one commit and events of one millisecond get consecutive microseconds
        assert times[:3] == [times[0], times[0] + 1, times[0] + 2]
        for k in (0, 4, 5, 8):
            async with connect(ws_url(host, f"cursor={times[k]}")) as ws:
                again = await read(ws, len(expected) - k)
            assert again == got[k:]  # inclusive, exactly where it left off


async def test_server_side_filters(frames: list[bytes]) -> None:
    expected = [m for m in expected_messages(frames)
                if m["did"] == BOB and m["kind"] != "commit"
                or m["did"] == BOB and m["commit"]["collection"].startswith("app.bsky.feed.")]
    query = f"cursor=0&wantedCollections=app.bsky.feed.*&wantedDids={BOB}"
    with jetstream_host(frames) as host:
        async with connect(ws_url(host, query)) as ws:
            got = await read(ws, len(expected))
            # anything after is live: publish a marker and check it comes next
            marker = FakeRepo(BOB).identity(11, "marker.test", time_ms=40_000)
            await host.publish([marker])
            (last,) = await read(ws, 1)
    assert [without_time(m) for m in got] == expected
    assert last["identity"]["handle"] == "marker.test"  # nothing else came in between


async def test_live_tail_and_option_updates(frames: list[bytes]) -> None:
    alice, bob = FakeRepo(ALICE), FakeRepo(BOB)
    with jetstream_host(frames[:4]) as host:
        async with connect(ws_url(host, f"wantedDids={ALICE}")) as ws:
            while host.sequencer.live_subscriber_count == 0:
                await asyncio.sleep(0.01)
            await host.publish(frames[4:6])  # bob's two ops are filtered out
            (update,) = await read(ws, 1)
            assert update["did"] == ALICE and update["commit"]["operation"] == "update"
            await ws.send(json.dumps({"type": "something_else"}))  # ignored
            await ws.send(json.dumps({"type": "options_update",
                                      "payload": {"wantedDids": [BOB]}}))
            # the update has no acknowledgement: publish bob markers until one comes through
            seq = 100
            while True:
                seq += 1
                await host.publish([bob.identity(seq, "marker.test")])
                try:
                    (marker,) = await asyncio.wait_for(read(ws, 1), 0.5)
                    break
                except TimeoutError:
                    assert seq < 160, "the options update was never applied"
            assert marker["did"] == BOB
            await host.publish([alice.identity(seq + 1, "alice.test"),
                                bob.account(seq + 2, active=False, status="takendown")])
            (after,) = await read(ws, 1)
    assert after["did"] == BOB and after["account"]["status"] == "takendown"


async def test_require_hello_waits_for_options(frames: list[bytes]) -> None:
    with jetstream_host(frames) as host:
        async with connect(ws_url(host, "cursor=0&requireHello=true")) as ws:
            await ws.send(json.dumps({"type": "options_update",
                                      "payload": {"wantedDids": [BOB],
                                                  "maxMessageSizeBytes": 0}}))
            first = (await read(ws, 1))[0]
    # had anything been sent before the hello, alice's identity would have come first
    assert first["did"] == BOB and first["commit"]["collection"] == "app.bsky.feed.like"


async def test_max_message_size_skips_large_messages(frames: list[bytes]) -> None:
    sizes = sorted(len(m.text(10**15).encode()) for f in frames for m in jetstream_messages(f))
    limit = sizes[len(sizes) // 2]
    with jetstream_host(frames) as host:
        async with connect(ws_url(host, f"cursor=0&maxMessageSizeBytes={limit}")) as ws:
            got = await read(ws, sum(1 for s in sizes if s <= limit))
    assert all(len(json.dumps(m, ensure_ascii=False, separators=(",", ":")).encode()) <= limit
               for m in got)


@pytest.mark.parametrize(
    "query",
    ["cursor=yesterday", "wantedCollections=not%20an%20nsid", "wantedDids=alice", "compress=true"],
)
async def test_bad_requests_get_400(frames: list[bytes], query: str) -> None:
    with jetstream_host(frames[:2]) as host:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url(host, query)):
                pass
    response = caught.value.response
    assert response.status_code == 400
    assert json.loads(response.body)["error"] == "InvalidRequest"
