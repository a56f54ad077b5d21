"""The built-in algorithms over a real index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feedgen.algos.following import Following
from feedgen.algos.language import Language
from feedgen.algos.latest import Latest
from feedgen.algos.mentions import Mentions
from feedgen.algos.topics import Hashtag, Keyword
from feedgen.algos.whats_hot import WhatsHot
from feedgen.plugins import FeedPage, FeedRequest
from feedgen.sqlite import SqliteIndex, SqliteReader
from feedgen.storage import InvalidCursor
from roost.errors import AuthRequired, RoostError
from tests.feedgen.helpers import follow, like, post, store

A, B, V = "did:plc:aaa", "did:plc:bbb", "did:plc:viewer"


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SqliteIndex]:
    s = store(tmp_path, fulltext=True)
    s.apply([
        post(A, "a1", 10, text="rust and python", tags=("code",), langs=("en",)),
        post(B, "b1", 20, text="bonjour", langs=("fr",), mentions=(V,)),
        post(A, "a2", 30, text="more python", tags=("code", "py"), langs=("en-gb", "en")),
        post(B, "b2", 40, text="hello @viewer", mentions=(V,), langs=("en",)),
        follow(V, A),
    ])
    yield s
    s.close()


def _walk(algo: Any, reader: SqliteReader, limit: int = 1, **request: Any) -> list[str]:
    """Every post of the feed, following cursors."""
    out: list[str] = []
    cursor = None
    for _ in range(50):
        result: FeedPage = algo(reader, FeedRequest(feed="f", limit=limit, cursor=cursor, **request))
        out.extend(i if isinstance(i, str) else i.post for i in result.items)
        cursor = result.cursor
        if cursor is None:
            return out
    raise AssertionError("pagination did not end")


def _rkeys(uris: list[str]) -> list[str]:
    return [u.rsplit("/", 1)[1] for u in uris]


def test_latest_everyone_or_a_community(index: SqliteIndex) -> None:
    reader = index.reader()
    assert _rkeys(_walk(Latest(), reader, requester=None)) == ["b2", "a2", "b1", "a1"]
    assert _rkeys(_walk(Latest(authors=[B]), reader, 2, requester=None)) == ["b2", "b1"]
    for bad in ({"authors": "did:plc:x"}, {"authors": ["bob"]}, {"host": "a/b"},
                {"authors": [A], "host": "x"}, {"replies": "no"}):
        with pytest.raises(ValueError):
            Latest(**bad)


def test_following_is_personal(index: SqliteIndex) -> None:
    reader = index.reader()
    assert _rkeys(_walk(Following(), reader, requester=V)) == ["a2", "a1"]
    with pytest.raises(AuthRequired):
        Following()(reader, FeedRequest(feed="f", requester=None, limit=5))


def test_topics(index: SqliteIndex) -> None:
    reader = index.reader()
    assert _rkeys(_walk(Hashtag(tags=["#CODE"]), reader, requester=None)) == ["a2", "a1"]
    assert _rkeys(_walk(Keyword(words=["Python", "bonjour"]), reader, 2, requester=None)) == [
        "a2", "b1", "a1"]
    for bad in ([], "code", [""], ["#"], ["x"] * 33):
        with pytest.raises(ValueError):
            Hashtag(tags=bad)


def test_language_from_options_or_accept_language(index: SqliteIndex) -> None:
    reader = index.reader()
    assert _rkeys(_walk(Language(langs=["FR"]), reader, requester=None)) == ["b1"]
    result = Language()(reader, FeedRequest(feed="f", requester=None, limit=10,
                                            languages=("en-US", "fr")))
    assert _rkeys([i.post for i in result.items]) == ["b2", "a2", "b1", "a1"]
    assert result.content_language == "en, fr"
    with pytest.raises(RoostError, match="Accept-Language"):
        Language()(reader, FeedRequest(feed="f", requester=None, limit=10))


def test_mentions_of_the_requester_or_a_named_account(index: SqliteIndex) -> None:
    reader = index.reader()
    assert _rkeys(_walk(Mentions(), reader, requester=V)) == ["b2", "b1"]
    assert _rkeys(_walk(Mentions(did=V), reader, requester=None)) == ["b2", "b1"]
    with pytest.raises(AuthRequired):
        Mentions()(reader, FeedRequest(feed="f", requester=None, limit=5))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_whats_hot_pages_one_snapshot_while_likes_move(index: SqliteIndex) -> None:
    reader = index.reader()
    uris = {r: f"at://{a}/app.bsky.feed.post/{r}" for a, r in ((A, "a1"), (B, "b1"), (A, "a2"), (B, "b2"))}
    index.apply([like(f"did:plc:l{i}", r, uris[r]) for i, r in enumerate(["a1", "a1", "a1", "b1", "b1", "a2"])])
    clock = Clock()
    hot = WhatsHot(size=10, refresh_s=5, clock=clock)
    first = hot(reader, FeedRequest(feed="f", requester=None, limit=2))
    assert _rkeys(list(first.items)) == ["a1", "b1"]  # type: ignore[arg-type]
    # a2 overtakes everything before page 2 is read: page 2 still continues page 1's ranking
    index.apply([like(f"did:plc:m{i}", "x", uris["a2"]) for i in range(20)])
    clock.now = 10
    second = hot(reader, FeedRequest(feed="f", requester=None, limit=2, cursor=first.cursor))
    assert _rkeys(list(second.items)) == ["a2"]  # type: ignore[arg-type]
    assert second.cursor is None
    fresh = hot(reader, FeedRequest(feed="f", requester=None, limit=2))
    assert _rkeys(list(fresh.items))[0] == "a2"  # type: ignore[arg-type]


def test_whats_hot_refreshes_only_after_refresh_s_and_a_change(index: SqliteIndex) -> None:
    reader = index.reader()
    clock = Clock()
    hot = WhatsHot(size=10, refresh_s=5, clock=clock)
    request = FeedRequest(feed="f", requester=None, limit=5)
    assert not hot(reader, request).items
    index.apply([like("did:plc:l", "1", f"at://{A}/app.bsky.feed.post/a1")])
    assert not hot(reader, request).items  # within refresh_s
    clock.now = 6
    assert len(hot(reader, request).items) == 1
    stale = hot(reader, FeedRequest(feed="f", requester=None, limit=5, cursor="abcdef:0"))
    assert len(stale.items) == 1  # an unknown snapshot continues in the current one
    for bad in ("nocolon", "zz-1:1", "abc:x", "abc:99999999"):
        with pytest.raises(InvalidCursor):
            hot(reader, FeedRequest(feed="f", requester=None, limit=5, cursor=bad))
    with pytest.raises(ValueError):
        WhatsHot(size=0)
