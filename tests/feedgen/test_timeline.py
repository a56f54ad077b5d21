"""Kept readers' timelines in the SQLite index: pages from the timeline, and below its floor,
stay exactly the following feed while posts, reposts, follows and deletes come and go."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedgen.sqlite import SqliteIndex
from feedgen.storage import Delete, FeedItem, IndexOp, PostRow, PurgeAccount, RepostRow, SortKey
from tests.feedgen.helpers import follow, post, repost

ME = "did:plc:reader"
AUTHORS = [ME, "did:plc:aaa", "did:plc:bbb", "did:plc:ccc"]


def walk(fetch: Callable[[int, SortKey | None], list[FeedItem]], limit: int) -> list[FeedItem]:
    out: list[FeedItem] = []
    before = None
    while True:
        page = fetch(limit, before)
        out += page
        if len(page) < limit:
            return out
        before = page[-1].key


def timeline_rows(index: SqliteIndex) -> int:
    return int(index._db.execute("SELECT count(*) FROM timeline").fetchone()[0])


def check_timeline(index: SqliteIndex, shown: set[str]) -> None:
    """The timeline holds exactly the items of ``shown`` at or above the reader's floor."""
    db = index._db
    rows = db.execute(
        "SELECT coalesce(p.author, s.author) FROM timeline t"
        " LEFT JOIN post p ON t.repost = 0 AND p.id = t.id AND p.uri = t.uri"
        " LEFT JOIN repost s ON t.repost = 1 AND s.id = t.id AND s.uri = t.uri"
        " AND s.subject = t.subject WHERE t.reader = ?", (ME,)
    ).fetchall()
    assert all(author in shown for (author,) in rows), "a stale or foreign timeline row"
    floor = db.execute("SELECT floor_at, floor_cid, floor_id FROM reader WHERE did = ?", (ME,)).fetchone()
    wanted = 0
    for table in ("post", "repost"):
        wanted += sum(
            db.execute(
                f"SELECT count(*) FROM {table} WHERE author = ? AND (sort_at, cid, id) >= (?, ?, ?)",
                (author, *floor),
            ).fetchone()[0]
            for author in shown
        )
    assert len(rows) == wanted, "an item missing from the timeline"


# each step: (kind, author, time); kinds: post, repost, follow, unfollow, delete, trim
_steps = st.lists(
    st.tuples(st.sampled_from(["post", "post", "post", "repost", "follow", "unfollow", "delete",
                               "trim"]),
              st.sampled_from(AUTHORS), st.integers(0, 6)),
    min_size=4, max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps, keep_at=st.integers(0, 12), items=st.integers(1, 4), limit=st.integers(1, 5),
       reposts=st.booleans())
def test_a_kept_reader_reads_exactly_the_following_feed(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, str, int]],
    keep_at: int,
    items: int,
    limit: int,
    reposts: bool,
) -> None:
    index = SqliteIndex(tmp_path_factory.mktemp("tl") / "index.sqlite", timeline_items=items)
    try:
        posts: list[PostRow] = []
        shares: list[RepostRow] = []
        follows: set[str] = set()
        for n, (kind, author, at) in enumerate(steps):
            if n == keep_at:
                index.register_readers([ME], 0)
            ops: list[IndexOp] = []
            if kind == "post" or (kind == "repost" and not posts):
                posts.append(post(author, f"p{n}", at, same_cid_as=f"twin{at}" if n % 3 else None))
                ops.append(posts[-1])
            elif kind == "repost":
                shares.append(repost(author, f"s{n}", posts[n % len(posts)].uri, at))
                ops.append(shares[-1])
            elif kind == "follow" and author != ME:
                follows.add(author)
                ops.append(follow(ME, author))
            elif kind == "unfollow" and author in follows:
                follows.discard(author)
                ops.append(Delete("app.bsky.graph.follow", follow(ME, author).uri))
            elif kind == "delete" and posts:
                gone = posts.pop(at % len(posts))
                ops.append(Delete("app.bsky.feed.post", gone.uri))
            elif kind == "trim":
                index.forget_readers(-1)  # nobody is let go; timelines past 2x are cut back
            if ops:
                index.apply(ops)
        kept = keep_at < len(steps)
        shown = follows | {ME}
        expected = [(p.uri, None) for p in posts if p.author in shown]
        if reposts:
            expected += [(s.subject, s.uri) for s in shares if s.author in shown]
        reader = index.reader()
        seen: list[bool] = []
        reader.on_reader = lambda did, is_kept: seen.append(is_kept)
        got = walk(lambda n, b: reader.following(ME, n, b, reposts=reposts), limit)
        pairs = [(i.post, i.repost) for i in got]
        assert len(pairs) == len(set(pairs)), "an item repeated"
        assert sorted(pairs, key=str) == sorted(expected, key=str), "an item skipped or extra"
        keys = [i.key for i in got]
        assert keys == sorted(keys, reverse=True), "out of order"
        assert all(is_kept == kept for is_kept in seen)
        if kept:
            check_timeline(index, shown)
            index.apply([PurgeAccount(ME)])
            assert timeline_rows(index) == 0
    finally:
        index.close()


def test_a_timeline_starts_with_the_newest_items_and_is_cut_back(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "index.sqlite", timeline_items=3)
    try:
        a = AUTHORS[1]
        index.apply([follow(ME, a), *(post(a, f"{n}", n) for n in range(10))])
        index.register_readers([ME], 0)
        assert timeline_rows(index) == 3  # 9, 8 and 7: the floor is 7
        index.apply([post(a, "new", 50), post(a, "old", 1)])  # below the floor: not kept
        assert timeline_rows(index) == 4
        index.apply([post(a, f"n{n}", 60 + n) for n in range(3)])
        assert timeline_rows(index) == 7
        index.forget_readers(-1)
        assert timeline_rows(index) == 3
        got = walk(lambda n, b: index.reader().following(ME, n, b), 2)
        assert [i.key.at for i in got] == [62, 61, 60, 50, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 0]
        assert index.forget_readers(1) == 1
        assert timeline_rows(index) == 0
    finally:
        index.close()
