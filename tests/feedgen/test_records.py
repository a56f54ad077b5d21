"""Records to index rows: what is kept of each kind, and what is skipped."""

from __future__ import annotations

from typing import Any

from feedgen.records import LIKE, POST, delete_op, index_op, parse_time_ms
from feedgen.storage import BlockRow, Delete, FollowRow, LikeRow, PostRow, RepostRow
from roost.cid import CID

ALICE = "did:plc:alice"
NOW = 1_700_000_000_000


def _op(collection: str, record: dict[str, Any], rkey: str = "3k") -> Any:
    return index_op(ALICE, collection, rkey, CID.for_cbor(record), record, NOW)


def _facet(feature: dict[str, Any]) -> dict[str, Any]:
    return {"index": {"byteStart": 0, "byteEnd": 1}, "features": [feature]}


def test_post_keeps_text_langs_facets_reply_and_embed() -> None:
    record = {
        "$type": POST,
        "text": "hi @bob #Python see https://x.example",
        "createdAt": "2023-11-14T22:13:20.000Z",
        "langs": ["pt-BR", "EN"],
        "tags": ["Extra", "#python"],
        "facets": [
            _facet({"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:bob"}),
            _facet({"$type": "app.bsky.richtext.facet#tag", "tag": "Python"}),
            _facet({"$type": "app.bsky.richtext.facet#link", "uri": "https://x.example"}),
            _facet({"$type": "app.bsky.richtext.facet#mention", "did": "not a did"}),
        ],
        "reply": {
            "root": {"uri": "at://did:plc:r/app.bsky.feed.post/1", "cid": "bafy"},
            "parent": {"uri": "at://did:plc:p/app.bsky.feed.post/2", "cid": "bafy"},
        },
        "embed": {
            "$type": "app.bsky.embed.recordWithMedia",
            "record": {"record": {"uri": "at://did:plc:q/app.bsky.feed.post/3", "cid": "bafy"}},
            "media": {"$type": "app.bsky.embed.images", "images": []},
        },
    }
    row = _op(POST, record, "abc")
    assert isinstance(row, PostRow)
    assert row.uri == f"at://{ALICE}/app.bsky.feed.post/abc"
    assert row.cid == CID.for_cbor(record).bytes
    assert row.text == record["text"]
    assert row.langs == ("pt-br", "pt", "en")
    assert row.tags == ("python", "extra")
    assert row.mentions == ("did:plc:bob",)
    assert row.links == ("https://x.example",)
    assert (row.reply_root, row.reply_parent) == (
        "at://did:plc:r/app.bsky.feed.post/1",
        "at://did:plc:p/app.bsky.feed.post/2",
    )
    assert (row.embed_kind, row.embed_uri) == ("recordWithMedia", "at://did:plc:q/app.bsky.feed.post/3")
    assert row.created_at == 1_700_000_000_000
    assert row.indexed_at == NOW
    assert row.sort_at == row.created_at


def test_post_time_is_the_earlier_of_created_and_indexed() -> None:
    future = {"$type": POST, "text": "from the future", "createdAt": "2999-01-01T00:00:00Z"}
    row = _op(POST, future)
    assert row.created_at > NOW and row.sort_at == NOW
    undated = {"$type": POST, "text": "no date", "createdAt": "yesterday"}
    assert _op(POST, undated).sort_at == NOW


def test_external_and_quote_embeds() -> None:
    quote = {"$type": POST, "text": "", "createdAt": "2024-01-01T00:00:00Z",
             "embed": {"$type": "app.bsky.embed.record",
                       "record": {"uri": "at://did:plc:q/app.bsky.feed.post/9", "cid": "x"}}}
    assert (_op(POST, quote).embed_kind, _op(POST, quote).embed_uri) == (
        "record", "at://did:plc:q/app.bsky.feed.post/9")
    link = {"$type": POST, "text": "", "createdAt": "2024-01-01T00:00:00Z",
            "embed": {"$type": "app.bsky.embed.external",
                      "external": {"uri": "https://example.com/a", "title": "", "description": ""}}}
    assert _op(POST, link).embed_uri == "https://example.com/a"


def test_likes_reposts_follows_blocks() -> None:
    subject = {"uri": "at://did:plc:bob/app.bsky.feed.post/1", "cid": "bafy"}
    created = "2024-01-01T00:00:00Z"
    like = _op(LIKE, {"$type": LIKE, "subject": subject, "createdAt": created})
    assert like == LikeRow(f"at://{ALICE}/app.bsky.feed.like/3k", ALICE, subject["uri"],
                           parse_time_ms(created), NOW)
    record = {"$type": "app.bsky.feed.repost", "subject": subject, "createdAt": created}
    repost = _op("app.bsky.feed.repost", record)
    assert isinstance(repost, RepostRow) and repost.subject == subject["uri"]
    assert repost.cid == CID.for_cbor(record).bytes
    follow = _op("app.bsky.graph.follow",
                 {"$type": "app.bsky.graph.follow", "subject": "did:plc:bob", "createdAt": created})
    assert isinstance(follow, FollowRow) and follow.subject == "did:plc:bob"
    block = _op("app.bsky.graph.block",
                {"$type": "app.bsky.graph.block", "subject": "did:plc:bob", "createdAt": created})
    assert isinstance(block, BlockRow) and block.author == ALICE


def test_malformed_records_are_skipped() -> None:
    assert _op(POST, {"$type": "app.bsky.feed.like", "text": "x"}) is None  # wrong $type
    assert _op(POST, {"$type": POST, "text": 7}) is None
    assert _op(LIKE, {"$type": LIKE, "subject": {"uri": "https://nope"}}) is None
    assert _op("app.bsky.graph.follow", {"$type": "app.bsky.graph.follow", "subject": 3}) is None
    assert _op("app.bsky.actor.profile", {"$type": "app.bsky.actor.profile"}) is None
    assert index_op(ALICE, POST, "x", CID.for_cbor({}), None, NOW) is None


def test_deletes_of_indexed_collections_only() -> None:
    assert delete_op(ALICE, LIKE, "k") == Delete(LIKE, f"at://{ALICE}/{LIKE}/k")
    assert delete_op(ALICE, "app.bsky.actor.profile", "self") is None


def test_parse_time() -> None:
    assert parse_time_ms("1970-01-01T00:00:01.5Z") == 1500
    assert parse_time_ms("1970-01-01T01:00:00+01:00") == 0
    assert parse_time_ms("1970-01-01T00:00:02") == 2000
    assert parse_time_ms("soon") is None
    assert parse_time_ms(5) is None
