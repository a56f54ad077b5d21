"""What only the PostgreSQL store does: seqs numbered in the transaction, NOTIFY on append."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest

from relay.eventlog import EventWriter, OutEvent, Submission
from relay.frontend import LogTail, SharedLogReader
from relay.postgres import PostgresStore
from roost.frames import decode_frame
from roost.sequencer import Sequencer

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


class Published:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def publish(self, events: Sequence[tuple[int, bytes]]) -> None:
        self.seqs.extend(seq for seq, _ in events)


def identity() -> OutEvent:
    return OutEvent("#identity", {"did": DID, "time": "2024-01-01T00:00:00.000Z"}, 1)


@pytest.fixture
def stores(postgres_dsn: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two relay processes would have."""
    first, second = PostgresStore(postgres_dsn), PostgresStore(postgres_dsn)
    yield first, second
    first.close()
    second.close()


async def test_two_writers_share_one_gap_free_log(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = stores
    seen_one, seen_two = Published(), Published()
    writer_one = EventWriter(one, seen_one, initial_seq=10)  # type: ignore[arg-type]
    writer_two = EventWriter(two, seen_two, initial_seq=10)  # type: ignore[arg-type]
    await writer_one.start()
    await writer_two.start()
    assert await writer_one.submit(Submission(events=[identity(), identity()])) == [10, 11]
    # the second writer still believes the log is empty: the store renumbers its batch
    assert await writer_two.submit(Submission(events=[identity()])) == [12]
    assert await writer_one.submit(Submission(events=[identity()])) == [13]
    batches = [writer_one.submit(Submission(events=[identity()])) for _ in range(5)]
    batches += [writer_two.submit(Submission(events=[identity()])) for _ in range(5)]
    await asyncio.gather(*batches)
    stored = one.events_after(0, 100)
    assert [seq for seq, _, _ in stored] == list(range(10, 24))
    # every frame carries the seq it is stored under
    assert all(decode_frame(frame)[1]["seq"] == seq for seq, _, frame in stored)
    assert sorted(seen_one.seqs + seen_two.seqs) == list(range(10, 24))
    assert two.last_seq() == 23
    await writer_one.stop()
    await writer_two.stop()


async def test_listeners_hear_the_head_after_each_commit(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    writer_store, reader_store = stores
    loop = asyncio.get_running_loop()
    heads: asyncio.Queue[int] = asyncio.Queue()
    await reader_store.run(
        reader_store.listen, lambda seq: loop.call_soon_threadsafe(heads.put_nowait, seq)
    )
    assert reader_store.listening()
    writer = EventWriter(writer_store, Sequencer(_NoLog()))
    await writer.start()
    await writer.submit(Submission(events=[identity(), identity(), identity()]))
    assert await asyncio.wait_for(heads.get(), 30) == 3
    # a transaction without events notifies nobody
    await writer.submit(Submission(statements=[writer_store.ban_domain_sql("evil.example", "now")]))
    await writer.submit(Submission(events=[identity()]))
    assert await asyncio.wait_for(heads.get(), 30) == 4
    assert await reader_store.run(reader_store.fetch_events_after, 2, 10) == [
        (seq, uid, frame) for seq, uid, frame in writer_store.events_after(2, 10)
    ]
    await writer.stop()


class _NoLog:
    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        return []

    async def latest_seq(self) -> int:
        return 0

    async def oldest_seq_since(self, time_ms: int) -> int | None:
        return None


async def test_a_frontend_tail_follows_the_log_and_survives_a_lost_listener(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    writer_store, reader_store = stores
    writer = EventWriter(writer_store, Published())  # type: ignore[arg-type]
    await writer.start()
    await writer.submit(Submission(events=[identity(), identity()]))  # before the frontend starts
    published = Published()
    sequencer = Sequencer(_NoLog())
    sequencer.publish = published.publish  # type: ignore[method-assign]  # records them
    tail = LogTail(reader_store, sequencer)
    await tail.start()
    reader = SharedLogReader(catch_up_wait_s=0.5)
    reader.attach(reader_store, tail, set())
    assert tail.committed_seq == 2 and await reader.latest_seq() == 2
    await writer.submit(Submission(events=[identity() for _ in range(3)]))
    assert await tail.reach(5, 30)
    assert published.seqs == [3, 4, 5]  # only what was appended after it started, in order
    # the listening connection drops: the tail listens again and misses nothing
    assert reader_store._listener is not None
    await reader_store.run(reader_store._listener.close)
    await writer.submit(Submission(events=[identity()]))
    assert await tail.reach(6, 30)
    assert published.seqs == [3, 4, 5, 6]
    assert reader_store.listening()
    # a cursor handed out elsewhere is never "in the future" here: latest waits for the tail
    await tail.stop()
    await writer.submit(Submission(events=[identity()]))
    assert await reader.latest_seq() == 6  # the tail is stopped: it cannot catch up
    assert [s for s, _ in await reader.read_after(4, 10)] == [5, 6, 7]
    await writer.stop()
