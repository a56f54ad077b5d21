"""roost.firehose: decoding, filters, cursors and acknowledgements, reconnects, server errors.

Streams come from real loopback servers: a :class:`~roost.sequencer.Sequencer`
over an in-memory log, or a scripted endpoint that misbehaves on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

from roost import cbor
from roost.car import read_car, write_car
from roost.cid import CID
from roost.errors import BlockHashMismatch, CborDecodeError, MissingBlock
from roost.firehose import (
    Account,
    Backoff,
    CollectionFilter,
    Commit,
    ConnectFailed,
    ConsumerTooSlow,
    FileCursorStore,
    FirehoseDecoder,
    FutureCursor,
    Identity,
    Info,
    Invalid,
    MemoryCursorStore,
    SqliteCursorStore,
    StreamError,
    Subscription,
    Sync,
    endpoint_url,
    event_time_us,
    subscribe,
)
from roost.frames import encode_error_frame, encode_frame
from roost.repo import Write
from tests.roost.test_firehose_support import (
    Connection,
    FakeRepo,
    iso,
    like,
    now_ms,
    post,
    scripted_host,
    sequencer_host,
)

ALICE = "did:plc:alicealicealicealicealic"
BOB = "did:plc:bobbobbobbobbobbobbobbobb"
FAST = Backoff(base=0.01, cap=0.05, healthy_after=60.0)


def stream(alice: FakeRepo, bob: FakeRepo) -> list[bytes]:
    """Ten events from two accounts: every message type, creates, an update, a delete."""
    return [
        alice.identity(1, "alice.test"),
        alice.account(2),
        alice.commit(3, [Write.create("app.bsky.feed.post", "3kaaaaaaaaa22", post("one"))]),
        alice.sync(4),
        bob.commit(5, [Write.create("app.bsky.feed.like", "3kaaaaaaaaa22", like("at://x/y/z"))]),
        alice.commit(6, [Write.update("app.bsky.feed.post", "3kaaaaaaaaa22", post("one, edited")),
                         Write.create("app.bsky.graph.follow", "3kaaaaaaaaa23",
                                      {"$type": "app.bsky.graph.follow", "subject": BOB,
                                       "createdAt": "2026-01-01T00:00:00.000Z"})]),
        bob.commit(7, [Write.create("app.bsky.feed.post", "3kaaaaaaaaa23", post("bob"))]),
        alice.commit(8, [Write.delete("app.bsky.feed.post", "3kaaaaaaaaa22")]),
        bob.account(9, active=False, status="deactivated"),
        bob.identity(10),
    ]


@pytest.fixture
def repos() -> tuple[FakeRepo, FakeRepo]:
    return FakeRepo(ALICE), FakeRepo(BOB)


async def collect(sub: Subscription, count: int, *, ack: bool = True) -> list[Any]:
    events: list[Any] = []
    async for event in sub:
        events.append(event)
        if ack and event.seq is not None:
            sub.ack(event.seq)
        if len(events) >= count:
            break
    return events


# -- URLs, times, filters --------------------------------------------------------------------


def test_endpoint_url() -> None:
    xrpc = "/xrpc/com.atproto.sync.subscribeRepos"
    assert endpoint_url("https://relay.example") == "wss://relay.example" + xrpc
    assert endpoint_url("http://127.0.0.1:2583/", 5) == "ws://127.0.0.1:2583" + xrpc + "?cursor=5"
    assert endpoint_url("wss://h" + xrpc + "?cursor=9", 12) == "wss://h" + xrpc + "?cursor=12"
    assert endpoint_url("ws://h" + xrpc + "?cursor=9") == "ws://h" + xrpc
    for bad in ("ftp://host", "relay.example", "https://"):
        with pytest.raises(ValueError):
            endpoint_url(bad)


def test_event_time_us() -> None:
    assert event_time_us("1970-01-01T00:00:01.5Z") == 1_500_000
    assert event_time_us("2024-11-18T20:11:09.123456Z") == 1_731_960_669_123_456
    assert event_time_us("2024-11-18T21:11:09.123+01:00") == 1_731_960_669_123_000
    assert event_time_us("yesterday") is None
    assert event_time_us(12) is None


def test_collection_filter() -> None:
    wanted = CollectionFilter(["app.bsky.feed.*", "app.bsky.graph.follow"])
    assert wanted("app.bsky.feed.post") and wanted("app.bsky.feed.like")
    assert wanted("app.bsky.graph.follow")
    assert not wanted("app.bsky.graph.block")
    assert not wanted("app.bsky.feedx.post")  # a prefix ends at a segment boundary
    assert CollectionFilter(["app.*"])("app.bsky.feed.post")
    for bad in ("app.bsky.*.post", "*", ".*", "not an nsid", "app.bsky..*", "feed"):
        with pytest.raises(ValueError):
            CollectionFilter([bad])
    with pytest.raises(ValueError):
        CollectionFilter([f"com.example.c{i}" for i in range(101)])


# -- the decoder ------------------------------------------------------------------------------


def test_decoder_types(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, bob = repos
    frames = stream(alice, bob)
    events = [FirehoseDecoder().decode(f) for f in frames]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Identity", "Account", "Commit", "Sync", "Commit", "Commit", "Commit",
                     "Commit", "Account", "Identity"]
    assert events[0] == Identity(1, ALICE, iso(0), "alice.test")
    assert events[9] == Identity(10, BOB, iso(0), None)
    assert events[8] == Account(9, BOB, iso(0), False, "deactivated")
    sync = events[3]
    assert isinstance(sync, Sync) and sync.did == ALICE and read_car(sync.blocks)[0]
    created = events[2]
    assert isinstance(created, Commit)
    assert created.since is None and created.prev_data is None and not created.too_big
    (op,) = created.ops
    assert (op.action, op.path, op.prev) == ("create", "app.bsky.feed.post/3kaaaaaaaaa22", None)
    assert op.record == post("one") and op.cid == CID.for_cbor(post("one"))
    updated = events[5]
    assert isinstance(updated, Commit) and updated.since == created.rev
    assert updated.prev_data is not None
    assert [(o.action, o.collection) for o in updated.ops] == [
        ("update", "app.bsky.feed.post"), ("create", "app.bsky.graph.follow")]
    assert updated.ops[0].prev == op.cid and updated.ops[0].record == post("one, edited")
    deleted = events[7]
    assert isinstance(deleted, Commit)
    (gone,) = deleted.ops
    assert gone.action == "delete" and gone.cid is None and gone.record is None
    assert gone.prev == updated.ops[0].cid


def test_decoder_without_records_leaves_the_car_alone(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, _ = repos

    def no_blocks(body: dict[str, Any], data: Any) -> None:
        body["blocks"] = b"not a CAR"

    frame = alice.commit(1, [Write.create("app.bsky.feed.post", "3kaaaaaaaaa22", post("x"))],
                         edit=no_blocks)
    event = FirehoseDecoder(decode_records=False).decode(frame)
    assert isinstance(event, Commit) and event.ops[0].record is None
    assert isinstance(FirehoseDecoder().decode(frame), Invalid)


def test_info_unknown_types_and_error_frames() -> None:
    decoder = FirehoseDecoder()
    info = decoder.decode(encode_frame("#info", {"name": "OutdatedCursor", "message": "old"}))
    assert info == Info("OutdatedCursor", "old") and info.seq is None
    # a deprecated type with a seq is skipped, but the cursor may pass it
    raw = decoder.read(encode_frame("#handle", {"seq": 7, "did": ALICE, "handle": "a.test"}))
    assert raw is not None and not isinstance(raw, Info) and raw.seq == 7 and not raw.wanted
    assert decoder.decode(encode_frame("#handle", {"seq": 7})) is None
    assert decoder.decode(encode_frame("#future", {"no": "seq"})) is None
    assert decoder.decode(cbor.encode({"op": 2, "t": "#commit"}) + cbor.encode({})) is None
    with pytest.raises(FutureCursor):
        decoder.decode(encode_error_frame("FutureCursor", "Cursor in the future."))
    with pytest.raises(ConsumerTooSlow):
        decoder.decode(encode_error_frame("ConsumerTooSlow"))
    with pytest.raises(StreamError) as caught:
        decoder.decode(encode_error_frame("InvalidRequest", "bad cursor"))
    assert caught.value.error == "InvalidRequest" and caught.value.message == "bad cursor"
    for bad in (b"", b"\xff\x00", cbor.encode({"op": 1, "t": "#commit"}),
                encode_frame("#commit", {"seq": "one"})):
        with pytest.raises(CborDecodeError):
            decoder.decode(bad)


def test_malformed_events_are_reported_not_passed_on(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, _ = repos
    decoder = FirehoseDecoder()
    bad_ops = encode_frame("#commit", {"seq": 3, "repo": ALICE, "time": iso(0), "ops": "none"})
    event = decoder.decode(bad_ops)
    assert isinstance(event, Invalid) and event.seq == 3 and event.did == ALICE
    bad_account = encode_frame("#account", {"seq": 4, "did": ALICE, "time": iso(0), "active": 1})
    assert isinstance(decoder.decode(bad_account), Invalid)

    # the body skips the float scan: a float where a field is used fails its type check
    header = cbor.encode({"t": "#account", "op": 1})
    float_active = header + cbor.encode(
        {"seq": 5, "did": ALICE, "time": iso(0), "active": 1.5}, check_floats=False)
    assert isinstance(decoder.decode(float_active), Invalid)
    with pytest.raises(CborDecodeError):
        decoder.decode(header + cbor.encode({"seq": 5.0, "did": ALICE}, check_floats=False))

    def create_without_cid(body: dict[str, Any], data: Any) -> None:
        body["ops"][0]["cid"] = None

    frame = alice.commit(6, [Write.create("app.bsky.feed.post", "3kaaaaaaaaa21", post("x"))],
                         edit=create_without_cid)
    event = decoder.decode(frame)
    assert isinstance(event, Invalid) and "wrong cid" in event.reason

    def swap_record(body: dict[str, Any], data: Any) -> None:
        # the record block is replaced by another record under the same CID
        blocks = dict(data.blocks)
        (op,) = data.ops
        blocks[op.cid] = cbor.encode(post("something else"))
        body["blocks"] = b"".join(write_car([data.cid], blocks.items()))

    frame = alice.commit(7, [Write.create("app.bsky.feed.post", "3kaaaaaaaaa22", post("x"))],
                         edit=swap_record)
    event = decoder.decode(frame)
    assert isinstance(event, Invalid) and isinstance(event.error, BlockHashMismatch)


def test_filters_apply_before_records_are_read(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, _ = repos

    def drop_like_block(body: dict[str, Any], data: Any) -> None:
        like_cid = next(op.cid for op in data.ops if op.path.startswith("app.bsky.feed.like"))
        blocks = {cid: b for cid, b in data.blocks.items() if cid != like_cid}
        body["blocks"] = b"".join(write_car([data.cid], blocks.items()))

    frame = alice.commit(
        1,
        [Write.create("app.bsky.feed.post", "3kaaaaaaaaa22", post("kept")),
         Write.create("app.bsky.feed.like", "3kaaaaaaaaa22", like("at://x/y/z"))],
        edit=drop_like_block,
    )
    only_posts = FirehoseDecoder(collections=["app.bsky.feed.post"]).decode(frame)
    assert isinstance(only_posts, Commit)
    assert [(o.path, o.record) for o in only_posts.ops] == [
        ("app.bsky.feed.post/3kaaaaaaaaa22", post("kept"))]
    everything = FirehoseDecoder().decode(frame)
    assert isinstance(everything, Invalid) and isinstance(everything.error, MissingBlock)
    assert FirehoseDecoder(collections=["app.bsky.graph.*"]).decode(frame) is None


def test_did_and_collection_filters(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, bob = repos
    frames = stream(alice, bob)
    decoder = FirehoseDecoder(dids=[ALICE], collections=["app.bsky.feed.*"])
    events = [e for e in map(decoder.decode, frames) if e is not None]
    # identity/account/sync pass on the DID alone; commits need a matching op
    assert [(type(e).__name__, e.seq) for e in events] == [
        ("Identity", 1), ("Account", 2), ("Commit", 3), ("Sync", 4), ("Commit", 6), ("Commit", 8)]
    assert [o.path for o in events[4].ops] == ["app.bsky.feed.post/3kaaaaaaaaa22"]
    with pytest.raises(ValueError):
        FirehoseDecoder(dids=["alice"])


# -- cursor stores ------------------------------------------------------------------------------


async def test_file_cursor_store(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cursor"
    store = FileCursorStore(path)
    assert await store.load() is None
    await store.save(41)
    await store.save(42)
    assert await FileCursorStore(path).load() == 42
    assert sorted(p.name for p in path.parent.iterdir()) == ["cursor"]  # no temporary left
    with pytest.raises(ValueError):
        await store.save(-1)
    path.write_text("garbage")
    with pytest.raises(ValueError):
        await store.load()


async def test_sqlite_cursor_store(tmp_path: Path) -> None:
    path = tmp_path / "cursors.sqlite"
    a, b = SqliteCursorStore(path, "relay-a"), SqliteCursorStore(path, "relay-b")
    try:
        assert await a.load() is None
        await a.save(10)
        await b.save(20)
        await a.save(11)
    finally:
        a.close()
        b.close()
    again = SqliteCursorStore(path, "relay-a")
    try:
        assert await again.load() == 11
    finally:
        again.close()


# -- subscriptions over a sequencer -------------------------------------------------------------


async def test_replay_from_cursor_then_live(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, bob = repos
    frames = stream(alice, bob)
    with sequencer_host(frames[:6]) as host:
        async with subscribe(host.url, cursor=2, backoff=FAST) as sub:
            first = await collect(sub, 4)
            assert [e.seq for e in first] == [3, 4, 5, 6]
            await host.publish(frames[6:])
            rest = await collect(sub, 4)
            assert [e.seq for e in rest] == [7, 8, 9, 10]
            assert sub.cursor == 10 and sub.lag_seq == 0 and sub.reconnects == 0
            assert sub.lag_seconds is not None and sub.lag_seconds > 0


async def test_live_without_cursor(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, bob = repos
    frames = stream(alice, bob)
    with sequencer_host(frames[:5]) as host:
        async with subscribe(host.url, backoff=FAST) as sub:
            task = asyncio.ensure_future(collect(sub, 2))
            while host.sequencer.live_subscriber_count == 0:
                await asyncio.sleep(0.01)
            await host.publish(frames[5:7])
            assert [e.seq for e in await task] == [6, 7]


async def test_acks_move_the_cursor_only_over_finished_events(
    repos: tuple[FakeRepo, FakeRepo],
) -> None:
    alice, bob = repos
    store = MemoryCursorStore()
    with sequencer_host(stream(alice, bob)) as host:
        sub = subscribe(host.url, cursor=0, dids=[BOB], cursor_store=store, save_interval=0)
        async with sub:
            first = await collect(sub, 1, ack=False)
            assert first[0].seq == 5  # 1-4 are alice's: filtered, acknowledged internally
            assert sub.cursor == 4
            second = await collect(sub, 1, ack=False)
            assert second[0].seq == 7 and sub.cursor == 4  # 5 is not acknowledged yet
            assert sub.lag_seq == 3
            sub.ack(5)
            assert sub.cursor == 6  # 6 is alice's, so the cursor passes it
            with pytest.raises(ValueError):
                sub.ack(8)  # not received yet
            rest = await collect(sub, 1, ack=False)  # 8 (alice) filtered, then 9
            assert rest[0].seq == 9 and store.seq == 6  # saved before handing out 9
            sub.ack(9)
            assert sub.cursor == 9
        assert store.seq == 9  # close saves the last acknowledged seq


async def test_restart_resumes_after_the_saved_cursor(
    repos: tuple[FakeRepo, FakeRepo], tmp_path: Path,
) -> None:
    alice, bob = repos
    store = FileCursorStore(tmp_path / "cursor")
    with sequencer_host(stream(alice, bob)) as host:
        async with subscribe(host.url, cursor=0, cursor_store=store) as sub:
            events = await collect(sub, 5, ack=False)
            for event in events[:3]:
                sub.ack(event.seq)
        assert await store.load() == 3
        async with subscribe(host.url, cursor_store=store) as sub:
            again = await collect(sub, 7)
    # 4 and 5 were delivered but never acknowledged: they come again, nothing else does
    assert [e.seq for e in again] == [4, 5, 6, 7, 8, 9, 10]


async def test_outdated_cursor_is_reported(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, bob = repos
    old = stream(alice, bob)
    fresh = alice.commit(11, [Write.create("app.bsky.feed.post", "3kaaaaaaaab22", post("new"))],
                         time_ms=now_ms())
    with sequencer_host([*old, fresh], replay_window_s=3600.0) as host:
        async with subscribe(host.url, cursor=3, backoff=FAST) as sub:
            events = await collect(sub, 2)
    assert events[0] == Info("OutdatedCursor", events[0].message) and events[0].message
    assert events[1].seq == 11


async def test_future_cursor_raises(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, bob = repos
    with sequencer_host(stream(alice, bob)) as host:
        async with subscribe(host.url, cursor=99, backoff=FAST) as sub:
            with pytest.raises(FutureCursor):
                await collect(sub, 1)


# -- reconnects ------------------------------------------------------------------------------


def test_backoff_bounds() -> None:
    backoff = Backoff(base=0.5, cap=8.0)
    assert [backoff.bound(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.bound(10_000) == 8.0
    rng = random.Random(1)
    delays = [backoff.delay(3, rng) for _ in range(200)]
    assert all(0.0 <= d <= 4.0 for d in delays) and max(delays) > 2.0 and min(delays) < 1.0


def _frames_after(frames: list[bytes], cursor: int | None) -> list[bytes]:
    return [f for i, f in enumerate(frames, start=1) if cursor is None or i > cursor]


async def test_dropped_connections_resume_without_loss_or_repeats(
    repos: tuple[FakeRepo, FakeRepo],
) -> None:
    alice, bob = repos
    frames = stream(alice, bob)

    async def three_then_drop(ws: WebSocket, conn: Connection) -> None:
        await ws.accept()
        pending = _frames_after(frames, conn.cursor)
        # the second connection also replays one old event: it must be dropped
        if conn.cursor:
            pending = [frames[conn.cursor - 1], *pending]
        for frame in pending[:3]:
            await ws.send_bytes(frame)
        await ws.close(1011)

    with scripted_host(three_then_drop) as host:
        async with subscribe(host.url, cursor=0, backoff=FAST) as sub:
            events = await collect(sub, 10)
            assert [e.seq for e in events] == list(range(1, 11))
            assert sub.reconnects >= 4
    assert [c.cursor for c in host.connections[:5]] == [0, 3, 5, 7, 9]


async def test_consumer_too_slow_reconnects_from_the_cursor(
    repos: tuple[FakeRepo, FakeRepo],
) -> None:
    alice, bob = repos
    frames = stream(alice, bob)

    async def slow(ws: WebSocket, conn: Connection) -> None:
        await ws.accept()
        for frame in _frames_after(frames, conn.cursor)[:4]:
            await ws.send_bytes(frame)
        if conn.number == 1:
            await ws.send_bytes(encode_error_frame("ConsumerTooSlow", "Stream consumer too slow"))
            await ws.close(1008, "ConsumerTooSlow")
        else:
            await ws.receive()  # stay open until the client goes

    with scripted_host(slow) as host:
        async with subscribe(host.url, cursor=0, backoff=FAST) as sub:
            events = await collect(sub, 8)
            assert sub.too_slow == 1 and sub.reconnects == 1
    assert [e.seq for e in events] == list(range(1, 9))
    assert host.connections[1].cursor == 4


async def test_http_refusals(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, _ = repos
    frame = alice.identity(1)

    async def busy_then_ok(ws: WebSocket, conn: Connection) -> None:
        if conn.number < 3:
            await ws.send_denial_response(PlainTextResponse("busy", status_code=503))
            return
        await ws.accept()
        await ws.send_bytes(frame)
        await ws.receive()

    with scripted_host(busy_then_ok) as host:
        async with subscribe(host.url, backoff=FAST) as sub:
            events = await collect(sub, 1)
            assert events[0].seq == 1 and sub.failures == 2

    async def not_found(ws: WebSocket, conn: Connection) -> None:
        await ws.send_denial_response(PlainTextResponse("no", status_code=404))

    with scripted_host(not_found) as host:
        async with subscribe(host.url, backoff=FAST) as sub:
            with pytest.raises(ConnectFailed):
                await collect(sub, 1)
        assert len(host.connections) == 1


async def test_bad_frames_drop_the_connection(repos: tuple[FakeRepo, FakeRepo]) -> None:
    alice, _ = repos
    good = [alice.identity(1), alice.identity(2)]

    async def garbage_first(ws: WebSocket, conn: Connection) -> None:
        await ws.accept()
        if conn.number == 1:
            await ws.send_bytes(good[0])
            await ws.send_text("this is not a frame")
            await ws.send_bytes(good[1])  # never read: the connection is dropped first
        elif conn.number == 2:
            await ws.send_bytes(b"\xa1\x62op\x01garbage")
        else:
            for frame in _frames_after(good, conn.cursor):
                await ws.send_bytes(frame)
        await ws.receive()

    with scripted_host(garbage_first) as host:
        async with subscribe(host.url, cursor=0, backoff=FAST) as sub:
            events = await collect(sub, 2)
    assert [e.seq for e in events] == [1, 2]
    assert [c.cursor for c in host.connections] == [0, 1, 1]


async def test_other_error_frames_raise(repos: tuple[FakeRepo, FakeRepo]) -> None:
    async def refuse(ws: WebSocket, conn: Connection) -> None:
        await ws.accept()
        await ws.send_bytes(encode_error_frame("InvalidRequest", "cursor must be an integer"))
        await ws.close(1008)

    with scripted_host(refuse) as host:
        async with subscribe(host.url, backoff=FAST) as sub:
            with pytest.raises(StreamError) as caught:
                await collect(sub, 1)
    assert caught.value.error == "InvalidRequest"


async def test_close_from_another_task_ends_iteration() -> None:
    async def silent(ws: WebSocket, conn: Connection) -> None:
        await ws.accept()
        await ws.receive()

    with scripted_host(silent) as host:
        sub = subscribe(host.url, backoff=FAST)
        task = asyncio.ensure_future(collect(sub, 1))
        while not sub.connected:
            await asyncio.sleep(0.01)
        await sub.close()
        assert await task == []


async def test_status_lines_are_logged(
    repos: tuple[FakeRepo, FakeRepo], caplog: pytest.LogCaptureFixture,
) -> None:
    alice, bob = repos
    caplog.set_level(logging.INFO, logger="roost.firehose")
    with sequencer_host(stream(alice, bob)) as host:
        async with subscribe(host.url, cursor=0, status_interval=0.02) as sub:
            await collect(sub, 10)
            for _ in range(500):
                if any("firehose status" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.01)
    line = next(r.getMessage() for r in caplog.records if "firehose status" in r.getMessage())
    assert "seq=10" in line and "events=10" in line and "reconnects=0" in line

