"""The skeleton of a page of index items: the quick path answers what the item-by-item one does."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feedgen.plugins import FeedPage
from feedgen.runner import AlgorithmFailed, skeleton
from feedgen.storage import FeedItem, SortKey
from roost.syntax import is_valid_at_uri

KEY = SortKey(1, b"\x01", 1)
REASON = "app.bsky.feed.defs#skeletonReasonRepost"

# mostly URIs that need no escaping, now and then one that is not valid at all
_did = st.sampled_from(["did:plc:abc", "did:web:example.com", "did:plc:x%41"] * 6
                       + ["did:plc:a\u00e9", 'did:plc:q"'])
_rkey = st.sampled_from(["3k2a", "self", "a.b", "a~b:c"] * 6 + ["x\\y", "tab\t"])


@st.composite
def items(draw: st.DrawFn) -> FeedItem:
    post = f"at://{draw(_did)}/app.bsky.feed.post/{draw(_rkey)}"
    repost = None
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["repost"] * 9 + ["post"]))
        repost = f"at://{draw(_did)}/app.bsky.feed.{kind}/{draw(_rkey)}"
    return FeedItem(post, "did:plc:abc", KEY, repost)


class _Feed:
    rkey = "test"

    class algorithm:
        name = "test"


@given(page=st.lists(items(), max_size=8))
def test_quick_and_item_by_item_skeletons_agree(page: list[FeedItem]) -> None:
    expected = []
    for item in page:
        entry: dict[str, object] = {"post": item.post}
        if item.repost is not None:
            entry["reason"] = {"$type": REASON, "repost": item.repost}
        expected.append(entry)
    def acceptable(item: FeedItem) -> bool:
        return ("/app.bsky.feed.post/" in item.post and is_valid_at_uri(item.post)) and (
            item.repost is None
            or ("/app.bsky.feed.repost/" in item.repost and is_valid_at_uri(item.repost)))

    if not all(acceptable(i) for i in page):
        with pytest.raises(AlgorithmFailed):
            skeleton(_Feed(), FeedPage(page), 10)  # type: ignore[arg-type]
        return
    body, _ = skeleton(_Feed(), FeedPage(page), 10)  # type: ignore[arg-type]
    assert json.loads(body) == {"feed": expected}


@pytest.mark.parametrize("repost", ["at://did:plc:abc/app.bsky.feed.post/1", 'at://did:plc:a"/x'])
def test_a_page_with_a_bad_repost_uri_is_refused(repost: str) -> None:
    page = [FeedItem("at://did:plc:abc/app.bsky.feed.post/1", "did:plc:abc", KEY, repost)]
    with pytest.raises(AlgorithmFailed):
        skeleton(_Feed(), FeedPage(page), 10)  # type: ignore[arg-type]
