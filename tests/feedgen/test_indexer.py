"""The indexer: firehose events to index ops, batches with their cursor, resuming after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import feedgen.indexer
from feedgen.indexer import HostTracker, Indexer
from feedgen.records import INDEXED_COLLECTIONS
from feedgen.sqlite import SqliteIndex
from feedgen.storage import Delete, LikeRow, PostRow, PurgeAccount
from roost import firehose
from roost.cid import CID
from roost.errors import DidNotFound
from roost.identity import DidDocument
from tests.feedgen.helpers import store

ALICE = "did:plc:alice"
TIME = "2024-05-01T12:00:00.000Z"
NOW = 1_800_000_000.0


def _op(action: str, collection: str, rkey: str, record: dict[str, Any] | None) -> firehose.RepoOp:
    cid = CID.for_cbor(record) if record is not None else None
    return firehose.RepoOp(action, collection, rkey, cid, None, record)


def _post(text: str) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": "2024-05-01T11:00:00Z"}


def commit(seq: int, *ops: firehose.RepoOp, did: str = ALICE, too_big: bool = False) -> firehose.Commit:
    return firehose.Commit(seq=seq, did=did, rev="3k", since=None, commit=CID.for_cbor({"c": seq}),
                           prev_data=None, time=TIME, ops=tuple(ops), blocks=b"", too_big=too_big)


def _indexer(index: SqliteIndex, **kwargs: Any) -> Indexer:
    return Indexer(index, "http://pds.test", clock=lambda: NOW, **kwargs)


def test_events_become_index_ops(tmp_path: Path) -> None:
    indexer = _indexer(store(tmp_path))
    like = {"$type": "app.bsky.feed.like", "createdAt": TIME,
            "subject": {"uri": f"at://{ALICE}/app.bsky.feed.post/1", "cid": "x"}}
    ops = indexer.ops_for(commit(
        1,
        _op("create", "app.bsky.feed.post", "1", _post("hello")),
        _op("update", "app.bsky.feed.post", "2", _post("edited")),
        _op("create", "app.bsky.feed.like", "l", like),
        _op("delete", "app.bsky.graph.follow", "f", None),
        _op("create", "app.bsky.feed.post", "bad", {"$type": "app.bsky.feed.post"}),
    ))
    kinds = [type(op).__name__ for op in ops]
    assert kinds == ["PostRow", "Delete", "PostRow", "LikeRow", "Delete"]
    first = ops[0]
    assert isinstance(first, PostRow) and first.indexed_at == 1714564800000  # the event's time
    assert isinstance(ops[1], Delete) and ops[1].uri.endswith("/app.bsky.feed.post/2")
    assert isinstance(ops[3], LikeRow)
    assert indexer.skipped == 1
    assert indexer.ops_for(commit(2, too_big=True)) == [] and indexer.skipped == 2
    gone = firehose.Account(seq=3, did=ALICE, time=TIME, active=False, status="deleted")
    assert indexer.ops_for(gone) == [PurgeAccount(ALICE)]
    resting = firehose.Account(seq=4, did=ALICE, time=TIME, active=False, status="deactivated")
    assert indexer.ops_for(resting) == []
    assert indexer.ops_for(firehose.Identity(seq=5, did=ALICE, time=TIME, handle=None)) == []


class FakeSubscription:
    """The Subscription contract, over a fixed list of events (then it waits)."""

    def __init__(self, events: list[Any], cursor: int | None) -> None:
        self.events = list(events)
        self.start = cursor
        self.acked: list[int] = []
        self.cursor: int | None = cursor
        self.connected = True
        self.lag_seconds = 0.5
        self.closed = False

    def __aiter__(self) -> FakeSubscription:
        return self

    async def __anext__(self) -> Any:
        if self.events:
            return self.events.pop(0)
        await asyncio.Event().wait()
        raise StopAsyncIteration

    def ack(self, seq: int) -> None:
        self.acked.append(seq)
        self.cursor = max(self.cursor or 0, seq)

    async def close(self) -> None:
        self.closed = True


class FakeFirehose:
    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.subscriptions: list[FakeSubscription] = []
        self.options: dict[str, Any] = {}

    def __call__(self, url: str, *, cursor: int | None, **options: Any) -> FakeSubscription:
        self.options = options
        sub = FakeSubscription([e for e in self.events if cursor is None or e.seq > cursor], cursor)
        self.subscriptions.append(sub)
        return sub


async def _run_until(indexer: Indexer, done: Any, timeout: float = 5.0) -> None:
    task = asyncio.create_task(indexer.run())
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_batches_commit_rows_with_their_cursor_and_a_restart_resumes(tmp_path: Path) -> None:
    index = store(tmp_path)
    events = [commit(seq, _op("create", "app.bsky.feed.post", str(seq), _post(f"n{seq}")))
              for seq in range(1, 8)]
    source = FakeFirehose(events)
    indexer = _indexer(index, batch_size=3, batch_delay=0.05, subscribe=source)
    await _run_until(indexer, lambda: index.cursor(indexer.service) == 7)
    sub = source.subscriptions[0]
    assert sub.start is None and sub.closed
    assert sub.acked == [3, 6, 7]  # acknowledged only after each batch committed
    assert source.options["collections"] == INDEXED_COLLECTIONS
    assert index.counts()["posts"] == 7 and indexer.batches == 3
    status = indexer.status()
    assert status["cursor"] == 7 and status["events"] == 7 and status["connected"]

    # more events arrive while it is down; the next run starts after the stored cursor
    source.events = events + [commit(seq, _op("create", "app.bsky.feed.post", str(seq), _post("x")))
                              for seq in (8, 9)]
    again = _indexer(index, batch_size=100, batch_delay=0.05, subscribe=source)
    await _run_until(again, lambda: index.cursor(again.service) == 9)
    assert source.subscriptions[1].start == 7
    assert again.events == 2
    assert index.counts()["posts"] == 9
    index.close()


async def test_idle_streams_still_move_the_cursor_past_filtered_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feedgen.indexer, "IDLE_SAVE_S", 0.02)
    index = store(tmp_path)
    source = FakeFirehose([commit(1, _op("create", "app.bsky.feed.post", "1", _post("a")))])
    indexer = _indexer(index, batch_size=1, subscribe=source)
    task = asyncio.create_task(indexer.run())
    try:
        async with asyncio.timeout(5):
            while index.cursor(indexer.service) != 1:
                await asyncio.sleep(0.01)
            source.subscriptions[0].cursor = 40  # the client skipped filtered events up to 40
            while index.cursor(indexer.service) != 40:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        index.close()


class FakeIdentity:
    def __init__(self, docs: dict[str, DidDocument]) -> None:
        self.docs = docs

    async def lookup_did(self, did: str) -> DidDocument:
        if did not in self.docs:
            raise DidNotFound(did)
        return self.docs[did]


async def test_host_tracker_places_new_authors(tmp_path: Path) -> None:
    index = store(tmp_path)
    indexer = _indexer(index)
    index.apply(indexer.ops_for(commit(1, _op("create", "app.bsky.feed.post", "1", _post("a")))))
    index.apply(indexer.ops_for(commit(2, _op("create", "app.bsky.feed.post", "1", _post("b")),
                                       did="did:plc:ghost")))
    doc = DidDocument.parse({"id": ALICE, "service": [
        {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
         "serviceEndpoint": "https://PDS.example:8443"}]})
    tracker = HostTracker(index, FakeIdentity({ALICE: doc}))  # type: ignore[arg-type]
    assert await tracker.round() == 2
    assert await tracker.round() == 0
    reader = index.reader()
    assert reader.host_of(ALICE) == "pds.example:8443"
    assert reader.host_of("did:plc:ghost") is None
    assert [i.author for i in reader.latest(5, host="pds.example:8443")] == [ALICE]
    index.close()


async def test_a_failing_stream_is_resumed_from_the_stored_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feedgen.indexer, "RETRY_S", 0.01)
    index = store(tmp_path)
    events = [commit(seq, _op("create", "app.bsky.feed.post", str(seq), _post("x")))
              for seq in (1, 2, 3)]

    class Broken(FakeSubscription):
        async def __anext__(self) -> Any:
            if self.events and self.events[0].seq == 2:
                self.events.pop(0)
                raise ConnectionResetError("the relay went away")
            return await super().__anext__()

    subscriptions: list[FakeSubscription] = []

    def subscribe(url: str, *, cursor: int | None, **options: Any) -> FakeSubscription:
        kind = Broken if not subscriptions else FakeSubscription
        sub = kind([e for e in events if cursor is None or e.seq > cursor], cursor)
        subscriptions.append(sub)
        return sub

    indexer = _indexer(index, batch_size=1, batch_delay=0.01, subscribe=subscribe)
    await _run_until(indexer, lambda: index.cursor(indexer.service) == 3)
    assert [s.start for s in subscriptions] == [None, 1]
    assert index.counts()["posts"] == 3
    index.close()
