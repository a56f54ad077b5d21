"""The reader keeper: following-feed readers get kept once, touched rarely, let go when quiet."""

from __future__ import annotations

import asyncio
from pathlib import Path

from feedgen.readers import ReaderKeeper
from tests.feedgen.helpers import follow, post, store

A, V, W = "did:plc:aaa", "did:plc:viewer", "did:plc:other"


async def test_readers_are_kept_after_their_first_read_and_let_go_when_quiet(tmp_path: Path) -> None:
    index = store(tmp_path)
    index.apply([follow(V, A), post(A, "1", 10)])
    now = [1_000.0]
    keeper = ReaderKeeper(index, clock=lambda: now[0], touch_interval=10, ttl=100)
    reader = index.reader()
    reader.on_reader = keeper.note
    task = asyncio.create_task(keeper.run())
    try:
        while keeper._queue is None:
            await asyncio.sleep(0.01)
        for _ in range(3):
            assert len(reader.following(V, 5)) == 1  # answered before and after being kept
        async with asyncio.timeout(5):
            while keeper.registered < 1:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert keeper.registered == 1
        db = index._db
        assert db.execute("SELECT seen FROM reader WHERE did = ?", (V,)).fetchone()[0] == 1_000_000
        now[0] = 1_050.0
        reader.following(V, 5)  # a kept reader is marked seen again after touch_interval
        reader.following(W, 5)
        async with asyncio.timeout(5):
            while db.execute("SELECT count(*) FROM reader").fetchone()[0] < 2:
                await asyncio.sleep(0.01)
        assert db.execute("SELECT seen FROM reader WHERE did = ?", (V,)).fetchone()[0] == 1_050_000
        assert index.forget_readers(int((now[0] - 10) * 1000)) == 0
        now[0] = 1_200.0
        assert index.forget_readers(int((now[0] - 100) * 1000)) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        index.close()
