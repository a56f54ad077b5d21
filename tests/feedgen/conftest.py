"""The feed index on each engine: SQLite (a file) and PostgreSQL (a database of the test server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest

from feedgen.storage import IndexStore, open_store

#: Engines the storage-level tests run on.
ENGINES = ["sqlite", "postgres"]

_EMPTY_PG = (
    "TRUNCATE feed_post, feed_post_tag, feed_post_lang, feed_post_mention, feed_like,"
    " feed_repost, feed_follow, feed_block, feed_reader, feed_actor, feed_cursor"
    " RESTART IDENTITY; UPDATE feed_meta SET value = 0"
)


async def _empty(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_EMPTY_PG)
    finally:
        await conn.close()


@pytest.fixture(params=ENGINES)
def make_index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., IndexStore]]:
    """``make_index(fulltext=None, fresh=False)``: open this test's index (the same one again
    after a close); ``fresh=True``: an empty one. Every store opened is closed at the end."""
    opened: list[IndexStore] = []
    postgres = request.param == "postgres"
    place: list[Any] = [
        request.getfixturevalue("postgres_dsn") if postgres
        else tmp_path_factory.mktemp("index") / "index.sqlite"
    ]

    def make(*, fulltext: bool | None = None, fresh: bool = False) -> IndexStore:
        if fresh and not postgres:
            place[0] = tmp_path_factory.mktemp("index") / "index.sqlite"
        store = open_store(place[0], fulltext=fulltext)
        opened.append(store)
        if fresh and postgres:
            asyncio.run(_empty(place[0]))
        return store

    yield make
    for store in opened:
        store.close()
