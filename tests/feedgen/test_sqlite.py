"""The feed index on SQLite and PostgreSQL: batches, cursors, counters, and pagination that
never skips or repeats."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedgen.postgres import IndexerRunning, PostgresIndex
from feedgen.sqlite import HOT_HALF_LIFE_MS, FulltextOff, SqliteIndex
from feedgen.storage import (
    ActorHost,
    BlockRow,
    Delete,
    FeedItem,
    PostRow,
    PurgeAccount,
    RepostRow,
    IndexStore,
    SortKey,
    open_store,
)
from tests.feedgen.helpers import follow, like, post, repost, store

A, B, C, V = "did:plc:aaa", "did:plc:bbb", "did:plc:ccc", "did:plc:viewer"


MakeIndex = Callable[..., IndexStore]


@pytest.fixture
def index(make_index: MakeIndex) -> IndexStore:
    """An empty index on each engine."""
    return make_index()


def pages(fetch: Callable[[int, SortKey | None], list[FeedItem]], limit: int) -> list[FeedItem]:
    """Every item, page by page, as a client following cursors sees them."""
    out: list[FeedItem] = []
    before = None
    while True:
        batch = fetch(limit + 1, before)
        out.extend(batch[:limit])
        if len(batch) <= limit:
            return out
        before = batch[limit - 1].key


def test_apply_saves_rows_and_cursor_together_and_reapplying_changes_nothing(
    index: IndexStore,
) -> None:
    ops = [post(A, "1", 10), post(B, "2", 20), like(C, "l", f"at://{A}/app.bsky.feed.post/1"),
           follow(V, A)]
    index.apply(ops, cursor=("wss://relay", 7))
    index.apply(ops, cursor=("wss://relay", 8))
    assert index.cursor("wss://relay") == 8
    assert index.cursor("wss://other") is None
    assert dict(index.counts()) == {"posts": 2, "likes": 1, "reposts": 0, "follows": 1, "blocks": 0}
    assert index.reader().like_count(f"at://{A}/app.bsky.feed.post/1") == 1


def test_a_failed_batch_keeps_neither_rows_nor_cursor(index: IndexStore) -> None:
    index.apply([post(A, "1", 10)], cursor=("s", 1))
    second = post(A, "2", 20)
    # the repeat of ``second`` commits a first run of the batch before the bad op fails
    with pytest.raises(TypeError):
        index.apply([second, second, object()], cursor=("s", 2))  # type: ignore[list-item]
    assert index.cursor("s") == 1
    assert index.counts()["posts"] == 1


def test_ops_on_one_uri_apply_in_order(index: IndexStore) -> None:
    p = post(A, "1", 10)
    gone = Delete("app.bsky.feed.post", p.uri)
    index.apply([p, gone])
    assert index.counts()["posts"] == 0
    index.apply([gone, p, gone, p])
    assert index.counts()["posts"] == 1


def test_like_counts_and_hot_scores_follow_likes_in_any_order(index: IndexStore) -> None:
    p = post(A, "1", 1_000)
    index.apply([like(B, "1", p.uri), like(C, "1", p.uri)])  # likes before the post
    index.apply([p])
    reader = index.reader()
    assert reader.like_count(p.uri) == 2
    [hot] = reader.hot(10)
    assert hot.like_count == 2
    assert hot.score == pytest.approx(1.584962500721156 + 1_000 / HOT_HALF_LIFE_MS)
    index.apply([Delete("app.bsky.feed.like", like(B, "1", p.uri).uri)])
    assert reader.like_count(p.uri) == 1
    index.apply([Delete("app.bsky.feed.like", like(C, "1", p.uri).uri)])
    assert reader.like_count(p.uri) == 0 and reader.hot(10) == []


def test_hot_ranking_decays_with_age(index: IndexStore) -> None:
    old = post(A, "old", 0)
    new = post(B, "new", HOT_HALF_LIFE_MS * 2)  # two half-lives younger
    ops: list[object] = [old, new]
    ops += [like(f"did:plc:o{i}", "l", old.uri) for i in range(7)]  # 8x the score in likes
    ops += [like(f"did:plc:n{i}", "l", new.uri) for i in range(1)]
    index.apply(ops)  # type: ignore[arg-type]
    assert [h.post for h in index.reader().hot(10)] == [old.uri, new.uri]
    index.apply([like("did:plc:n9", "l", new.uri)])  # 3 vs 8 likes at 4x the weight
    assert [h.post for h in index.reader().hot(10)] == [new.uri, old.uri]


def test_topics_and_deletes_keep_derived_tables_in_step(make_index: MakeIndex) -> None:
    index = make_index(fulltext=True)
    cats = post(A, "1", 10, text="a cat", tags=("cats", "pets"), langs=("en",), mentions=(B,))
    dogs = post(B, "2", 20, text="a dog", tags=("dogs", "pets"), langs=("de",))
    index.apply([cats, dogs])
    reader = index.reader()
    assert [i.post for i in reader.tagged(["pets"], 10)] == [dogs.uri, cats.uri]
    assert [i.post for i in reader.tagged(["CATS", "dogs"], 10)] == [dogs.uri, cats.uri]
    assert [i.post for i in reader.in_languages(["EN"], 10)] == [cats.uri]
    assert [i.post for i in reader.mentioning(B, 10)] == [cats.uri]
    assert [i.post for i in reader.search(["CAT"], 10)] == [cats.uri]
    assert [i.post for i in reader.search(["cat", "dog"], 10)] == [dogs.uri, cats.uri]
    index.apply([Delete("app.bsky.feed.post", cats.uri)])
    assert [i.post for i in reader.tagged(["pets", "cats"], 10)] == [dogs.uri]
    assert reader.mentioning(B, 10) == [] and reader.search(["cat"], 10) == []
    index.close()


def test_the_fulltext_index_comes_and_goes_on_demand(make_index: MakeIndex) -> None:
    index = make_index()
    index.apply([post(A, "1", 10, text="hello world")])
    with pytest.raises(FulltextOff):
        index.reader().search(["hello"], 5)
    index.close()
    index = make_index(fulltext=True)  # built from the posts already indexed
    assert len(index.reader().search(["hello"], 5)) == 1
    index.close()
    index = make_index()  # None: left as it is (a backfill does not drop it)
    assert index.fulltext
    index.close()
    index = make_index(fulltext=False)
    assert not index.fulltext
    index.apply([post(A, "2", 20, text="hello again")])
    index.close()


def test_purge_removes_an_account_and_its_likes(index: IndexStore) -> None:
    mine = post(A, "1", 10)
    theirs = post(B, "1", 20)
    index.apply([mine, theirs, like(A, "1", theirs.uri), follow(A, B), repost(A, "1", theirs.uri, 5),
                 BlockRow(f"at://{A}/app.bsky.graph.block/1", A, C, 0), like(B, "2", mine.uri)])
    # a DID that is a prefix of A's must not be touched
    index.apply([post(A + "x", "1", 30)])
    index.apply([PurgeAccount(A)])
    counts = index.counts()
    # B's like of A's post stays (it is B's record); A's like of B's post is gone
    assert counts == {"posts": 2, "likes": 1, "reposts": 0, "follows": 0, "blocks": 0}
    assert index.reader().like_count(theirs.uri) == 0


def test_following_merges_posts_and_reposts_of_followed_accounts(index: IndexStore) -> None:
    index.apply([
        follow(V, A), follow(V, B),
        post(A, "a1", 10), post(B, "b1", 20), post(C, "c1", 30), post(V, "v1", 25),
        repost(B, "r1", f"at://{C}/app.bsky.feed.post/c1", 40),
    ])
    items = index.reader().following(V, 10)
    assert [(i.post.rsplit("/", 1)[1], i.repost is not None) for i in items] == [
        ("c1", True), ("v1", False), ("b1", False), ("a1", False)]
    assert items[0].author == B
    assert [i.post for i in index.reader().following(V, 10, reposts=False)][0].endswith("v1")
    assert index.reader().following("did:plc:nobody", 10) == []


def test_latest_by_host_uses_placed_authors(index: IndexStore) -> None:
    index.apply([post(A, "1", 10), post(B, "1", 20), post(C, "1", 30)])
    assert sorted(index.unknown_authors(10)) == [A, B, C]
    index.apply([ActorHost(A, "pds.one"), ActorHost(C, "pds.one"), ActorHost(B, "pds.two")])
    reader = index.reader()
    assert [i.author for i in reader.latest(10, host="pds.one")] == [C, A]
    assert reader.host_of(B) == "pds.two" and index.unknown_authors(10) == []


def test_latest_can_leave_out_replies(index: IndexStore) -> None:
    top = post(A, "1", 10)
    index.apply([top, post(B, "2", 20, reply_to=top.uri)])
    assert [i.post for i in index.reader().latest(10, replies=False)] == [top.uri]
    assert len(index.reader().latest(10, authors=[A, B], replies=False)) == 1


def test_graph_queries(index: IndexStore) -> None:
    index.apply([follow(V, A), follow(B, A), BlockRow(f"at://{C}/app.bsky.graph.block/1", C, V, 0),
                 BlockRow(f"at://{V}/app.bsky.graph.block/1", V, B, 0)])
    reader = index.reader()
    assert reader.follows(V) == [A]
    assert sorted(reader.followers(A)) == [B, V]
    assert reader.blocks(V) == {B, C}
    stored = reader.post("at://nope/app.bsky.feed.post/1")
    assert stored is None


def test_prune_forgets_old_posts_reposts_and_likes(index: IndexStore) -> None:
    old, new = post(A, "1", 10), post(A, "2", 1_000)
    index.apply([old, new, like(B, "1", new.uri, at=5), repost(B, "1", old.uri, 5),
                 like(C, "1", new.uri, at=2_000)])
    assert index.prune(100, batch=1) == 3
    assert index.counts() == {"posts": 1, "likes": 1, "reposts": 0, "follows": 0, "blocks": 0}


def test_reader_works_from_other_threads_and_sees_new_versions(index: IndexStore) -> None:
    reader = index.reader()
    before = reader.version()
    index.apply([post(A, "1", 10)])
    assert reader.version() > before
    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.append(len(reader.latest(5))))
    worker.start()
    worker.join()
    assert seen == [1]


def test_open_store_opens_a_file_or_a_database(tmp_path: Path, postgres_dsn: str) -> None:
    s = open_store(tmp_path / "x.sqlite")
    assert isinstance(s, SqliteIndex)
    s.close()
    s = open_store(postgres_dsn)
    assert isinstance(s, PostgresIndex)
    s.close()
    s.close()  # twice is harmless


def test_open_store_explains_an_unreachable_database_without_its_password() -> None:
    with pytest.raises(OSError, match="cannot reach the feed index") as caught:
        open_store("postgresql://me:secret@127.0.0.1:1/feeds")
    assert "secret" not in str(caught.value)


def test_a_second_indexer_is_refused_until_the_first_closes(postgres_dsn: str) -> None:
    first, second = PostgresIndex(postgres_dsn), PostgresIndex(postgres_dsn)
    try:
        first.claim_indexer()
        with pytest.raises(IndexerRunning, match="--role server"):
            second.claim_indexer()
        second.apply([post(A, "1", 10)])  # other writers (a backfill) are not refused
        first.close()
        second.claim_indexer()
    finally:
        first.close()
        second.close()


# -- pagination, against a model ------------------------------------------------------------

AUTHORS = [f"did:plc:a{i}" for i in range(6)]
_specs = st.lists(
    st.tuples(st.sampled_from(AUTHORS), st.integers(0, 5), st.booleans(), st.integers(0, 2),
              st.sampled_from(["post", "post", "reply", "repost", "gone"])),
    min_size=0, max_size=40,
)


def _post_specs(
    specs: list[tuple[str, int, bool, int, str]],
) -> list[tuple[str, int, bool, int, str]]:
    """The specs that became posts (a repost with nothing to repost becomes a post too)."""
    out: list[tuple[str, int, bool, int, str]] = []
    for spec in specs:
        if spec[4] == "repost" and out:
            continue
        out.append(spec)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=_specs,
    follows=st.sets(st.sampled_from(AUTHORS), max_size=6),
    unfollow=st.sets(st.sampled_from(AUTHORS), max_size=2),
    keep=st.sampled_from([None, "before", "between"]),
    limit=st.integers(1, 7),
    mask=st.integers(0, 3),
)
def test_pages_neither_skip_nor_repeat(
    make_index: MakeIndex,
    specs: list[tuple[str, int, bool, int, str]],
    follows: set[str],
    unfollow: set[str],
    keep: str | None,
    limit: int,
    mask: int,
) -> None:
    """Many ties (same ms, byte-identical records of different accounts), deletes, replies,
    reposts, a reader kept before, between or never: every page walk returns each expected
    item exactly once, newest first."""
    index = make_index(fresh=True)
    me = AUTHORS[0]
    try:
        posts: list[PostRow] = []
        shares: list[RepostRow] = []
        for n, (author, at, twin, tag, kind) in enumerate(specs):
            if kind == "repost" and posts:
                shares.append(repost(author, f"s{n}", posts[n % len(posts)].uri, at))
                continue
            tags = ("t0",) if tag == 0 else ("t1",) if tag == 1 else ("t0", "t1")
            posts.append(post(author, f"r{n}", at, tags=tags,
                              same_cid_as=f"twin{at}" if twin else None,
                              reply_to=posts[0].uri if kind == "reply" and posts else None))
        if keep == "before":
            index.register_readers([me], 0)
        half = len(posts) // 2
        first_follows = sorted(follows)[: len(follows) // 2]
        index.apply([*posts[:half], *shares[: len(shares) // 2],
                     *(follow(me, a) for a in first_follows)])
        if keep == "between":
            index.register_readers([me], 0)
        index.apply([*posts[half:], *shares[len(shares) // 2 :],
                     *(follow(me, a) for a in sorted(follows) if a not in first_follows)])
        # unfollows, and deleted posts (their authors' kept newest-item times stay too new)
        index.apply([Delete("app.bsky.graph.follow", follow(me, a).uri) for a in sorted(unfollow)])
        following = (follows - unfollow) | {me}
        gone = {posts[i].uri for i, spec in enumerate(_post_specs(specs)) if spec[4] == "gone"}
        index.apply([Delete("app.bsky.feed.post", uri) for uri in sorted(gone)])
        posts = [r for r in posts if r.uri not in gone]
        reader = index.reader()
        seen: list[tuple[str, bool]] = []
        reports = isinstance(index, SqliteIndex)  # only SQLite keeps readers for this feed
        if reports:
            reader.on_reader = lambda did, kept: seen.append((did, kept))  # type: ignore[attr-defined]

        def check(walk: list[FeedItem], expected: list[tuple[str, str | None]]) -> None:
            items = [(i.post, i.repost) for i in walk]
            assert len(items) == len(set(items)), "an item repeated"
            assert sorted(items, key=str) == sorted(expected, key=str), "an item skipped"
            keys = [(i.key.at, i.key.cid) for i in walk]
            assert keys == sorted(keys, reverse=True), "out of order"

        def as_items(rows: list[PostRow]) -> list[tuple[str, str | None]]:
            return [(r.uri, None) for r in rows]

        check(pages(lambda n, b: reader.latest(n, b), limit), as_items(posts))
        check(pages(lambda n, b: reader.latest(n, b, replies=False), limit),
              as_items([r for r in posts if r.reply_parent is None]))
        chosen = [a for i, a in enumerate(AUTHORS) if mask >> (i % 2) & 1] or AUTHORS[:1]
        check(pages(lambda n, b: reader.latest(n, b, authors=chosen), limit),
              as_items([r for r in posts if r.author in chosen]))
        check(pages(lambda n, b: reader.following(me, n, b), limit),
              as_items([r for r in posts if r.author in following])
              + [(s.subject, s.uri) for s in shares if s.author in following])
        assert not reports or seen and all(kept == (keep is not None) for _, kept in seen)
        wanted = ["t0", "t1"][: 1 + (mask & 1)]
        check(pages(lambda n, b: reader.tagged(wanted, n, b), limit),
              as_items([r for r in posts if set(r.tags) & set(wanted)]))
    finally:
        index.close()


def test_kept_readers_follow_their_follows(tmp_path: Path) -> None:
    index = store(tmp_path)
    index.apply([follow(V, A), post(A, "1", 10), post(B, "1", 20)])
    assert index.register_readers([V, V], now_ms=5) == 1
    assert index.register_readers([V], now_ms=6) == 0

    def kept() -> dict[str, int | None]:
        rows = index._db.execute("SELECT subject, latest FROM reader_follow WHERE reader = ?", (V,))
        return dict(rows.fetchall())

    assert kept() == {A: 10, V: None}
    index.apply([follow(V, B), post(A, "2", 30), post(V, "1", 40)])
    assert kept() == {A: 30, B: 20, V: 40}
    index.apply([Delete("app.bsky.graph.follow", follow(V, A).uri)])
    assert kept() == {B: 20, V: 40}
    assert [i.post.rsplit("/", 1)[1] for i in index.reader().following(V, 5)] == ["1", "1"]
    assert index.forget_readers(seen_before_ms=6) == 0
    assert index.forget_readers(seen_before_ms=7) == 1
    assert kept() == {}
    index.register_readers([V], now_ms=8)
    index.apply([PurgeAccount(V)])
    assert index._db.execute("SELECT count(*) FROM reader").fetchone()[0] == 0
    index.close()


def test_readers_are_registered_once_and_forgotten_when_quiet(index: IndexStore) -> None:
    assert index.register_readers([V, V], now_ms=5) == 1
    assert index.register_readers([V, A], now_ms=6) == 1
    assert index.forget_readers(seen_before_ms=6) == 0
    assert index.forget_readers(seen_before_ms=7) == 2
    assert index.register_readers([V], now_ms=8) == 1
    index.apply([PurgeAccount(V)])
    assert index.register_readers([V], now_ms=9) == 1  # the purge let V go


def test_reader_answers_on_an_event_loop_too_and_stops_when_closed(make_index: MakeIndex) -> None:
    index = make_index()
    index.apply([post(A, "1", 10)])
    reader = index.reader()

    async def on_a_loop() -> int:  # a built-in algorithm called from the server's loop
        return len(reader.latest(5))

    assert asyncio.run(on_a_loop()) == 1
    assert len(reader.latest(5)) == 1
    index.close()
    with pytest.raises((RuntimeError, sqlite3.ProgrammingError)):
        reader.latest(5)
