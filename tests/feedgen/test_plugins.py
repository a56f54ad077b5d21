"""The plugin API: labelling, registries, entry points, feeds and cursor helpers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from feedgen.algos import register_builtins
from feedgen.plugins import (
    ENTRY_POINT_GROUP,
    Feed,
    FeedConfigError,
    FeedRequest,
    Registry,
    check_unique,
    default_feeds,
    page,
)
from feedgen.storage import FeedItem, InvalidCursor, SortKey
from roost.cid import CID
from tests.feedgen import sample_plugins

PUB = "did:plc:publisher"


def test_modules_register_only_their_labelled_algorithms() -> None:
    registry = Registry()
    added = registry.add_module(sample_plugins)
    assert sorted(a.name for a in added) == ["counting", "echo"]
    assert registry.get("echo").anonymous and registry.get("echo").description.startswith("Echoes")
    assert not registry.get("counting").anonymous
    assert registry.get("counting").needs_options()
    with pytest.raises(FeedConfigError, match="no algorithm named 'nope'"):
        registry.get("nope")


def test_load_by_name_records_failures_instead_of_raising() -> None:
    registry = Registry()
    assert [a.name for a in registry.load("tests.feedgen.sample_plugins:echo")] == ["echo"]
    assert [a.name for a in registry.load("tests.feedgen.sample_plugins:unlabelled")] == ["unlabelled"]
    assert registry.load("tests.feedgen.no_such_module") == []
    assert registry.load("tests.feedgen.sample_plugins:missing") == []
    assert [w for w, _ in registry.failures] == [
        "tests.feedgen.no_such_module", "tests.feedgen.sample_plugins:missing"]


def _distribution(root: Path, name: str, module: str, source: str, entry: str) -> None:
    """A minimal installed distribution: a module and a dist-info with entry points."""
    (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry}\n")


def test_entry_points_are_loaded_and_a_broken_one_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _distribution(tmp_path, "good-feeds", "good_feeds", """
        from feedgen.plugins import FeedPage
        def newest(index, request):
            return FeedPage(["at://did:plc:x/app.bsky.feed.post/1"])
    """, "good = good_feeds:newest")
    _distribution(tmp_path, "bad-feeds", "bad_feeds", "raise RuntimeError('broken at import')\n",
                  "bad = bad_feeds:anything")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry()
    added = registry.load_entry_points()
    assert "good" in [a.name for a in added]
    assert "good" in registry and "bad" not in registry
    [(where, why)] = [f for f in registry.failures if "bad" in f[0]]
    assert "bad_feeds:anything" in where and "broken at import" in why


def test_feeds_build_classes_with_their_options() -> None:
    registry = Registry()
    registry.add_module(sample_plugins)
    feed = Feed.build(registry.get("counting"), publisher=PUB, rkey="count", options={"start": 5})
    assert feed.uri == f"at://{PUB}/app.bsky.feed.generator/count"
    assert feed.handler.count == 5 and not feed.anonymous and not feed.is_async
    with pytest.raises(FeedConfigError, match="bad options for counting"):
        Feed.build(registry.get("counting"), publisher=PUB, rkey="c", options={"start": "x"})
    with pytest.raises(FeedConfigError, match="bad options"):
        Feed.build(registry.get("counting"), publisher=PUB, rkey="c", options={"stop": 1})
    with pytest.raises(FeedConfigError, match="record key"):
        Feed.build(registry.get("echo"), publisher=PUB, rkey="no/slash")
    with pytest.raises(FeedConfigError, match="not a DID"):
        Feed.build(registry.get("echo"), publisher="alice", rkey="e")
    assert not Feed.build(registry.get("echo"), publisher=PUB, rkey="e", anonymous=False).anonymous


def test_default_feeds_serve_every_algorithm_without_required_options() -> None:
    registry = Registry()
    register_builtins(registry)
    registry.add_module(sample_plugins)
    names = [f.rkey for f in default_feeds(registry, PUB)]
    assert names == ["echo", "following", "language", "latest", "mentions", "whats-hot"]
    feeds = default_feeds(registry, PUB)
    with pytest.raises(FeedConfigError, match="two feeds"):
        check_unique(feeds + feeds[:1])


def _item(n: int) -> FeedItem:
    return FeedItem(f"at://did:plc:a/app.bsky.feed.post/{n}", "did:plc:a",
                    SortKey(n, CID.for_cbor({"n": n}).bytes, n))


def test_page_gives_a_cursor_only_when_more_items_exist() -> None:
    items = [_item(n) for n in (9, 8, 7)]
    first = page(items, 2)
    assert list(first.items) == items[:2]
    assert first.cursor is not None and SortKey.parse(first.cursor) == items[1].key
    assert page(items, 3).cursor is None
    assert page([], 5).cursor is None


@pytest.mark.parametrize("cursor", [
    "", "1::2", "x::bafyreib2rxk3rh6kzwq::1", "1::notacid::1", "1::" + "a" * 600 + "::1",
    "-1::bafyreib2rxk3rh6kzwq3vqzs4jdhdw72grzeqf3fvh5dnkiw3lvndwwj5i::1",
])
def test_malformed_cursors_are_refused(cursor: str) -> None:
    request = FeedRequest(feed="at://x/y/z", requester=None, limit=5, cursor=cursor)
    with pytest.raises(InvalidCursor):
        request.before()
