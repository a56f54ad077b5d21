"""Records to index rows: what a feed generator keeps of posts, likes, reposts, follows, blocks.

Used for firehose commits and for backfilled repos alike: :func:`index_op`
turns one record into one :data:`~feedgen.storage.IndexOp`, :func:`delete_op`
a deleted path into a :class:`~feedgen.storage.Delete`.

Records are checked for the fields the index uses (types, URI and DID
shapes), not validated against their whole lexicon: a record whose
``$type`` is not its collection, or whose indexed fields are malformed, is
skipped (``None``). What is kept of a post:

- text; languages (lower-cased, each followed by its primary subtag, so a
  feed for ``pt`` finds ``pt-BR``);
- hashtags from ``#tag`` facets and the ``tags`` field (lower-cased, without
  ``#``), mentioned DIDs and link URIs from facets;
- reply root and parent; the embed's kind and the quoted record or external
  link it points at;
- ``createdAt`` (the author's claim) and the time it was indexed; feeds sort
  by the earlier of the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Final

from roost.cid import CID

from feedgen.storage import (
    BlockRow,
    Delete,
    FollowRow,
    IndexOp,
    LikeRow,
    PostRow,
    RepostRow,
)

__all__ = [
    "BLOCK",
    "FOLLOW",
    "INDEXED_COLLECTIONS",
    "LIKE",
    "POST",
    "REPOST",
    "delete_op",
    "index_op",
    "parse_time_ms",
]

POST: Final = "app.bsky.feed.post"
LIKE: Final = "app.bsky.feed.like"
REPOST: Final = "app.bsky.feed.repost"
FOLLOW: Final = "app.bsky.graph.follow"
BLOCK: Final = "app.bsky.graph.block"
#: The collections the index keeps (the firehose filter).
INDEXED_COLLECTIONS: Final = (POST, LIKE, REPOST, FOLLOW, BLOCK)

#: Kept per post at most (the lexicons allow 3 langs and 8 tags; facets are unbounded).
MAX_LANGS: Final = 8
MAX_TAGS: Final = 16
MAX_MENTIONS: Final = 32
MAX_LINKS: Final = 16
#: Longest hashtag kept, characters (the facet lexicon allows 640 bytes).
MAX_TAG_LENGTH: Final = 640
#: Longest URI or DID kept in any field.
MAX_REF_LENGTH: Final = 8_192

_EMBED_PREFIX: Final = "app.bsky.embed."
_MENTION: Final = "app.bsky.richtext.facet#mention"
_LINK: Final = "app.bsky.richtext.facet#link"
_TAG: Final = "app.bsky.richtext.facet#tag"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_time_ms(value: object) -> int | None:
    """ms since the epoch of an atproto datetime (UTC when it has no zone); None if bad."""
    if type(value) is not str or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        return (when - _EPOCH) // _MS
    except OverflowError:  # pragma: no cover - years near 1 or 9999 with offsets
        return None


_MS: Final = datetime.resolution * 1000


def _uri(value: object) -> str | None:
    if type(value) is str and value.startswith("at://") and len(value) <= MAX_REF_LENGTH:
        return value
    return None


def _did(value: object) -> str | None:
    if type(value) is str and value.startswith("did:") and len(value) <= MAX_REF_LENGTH:
        return value
    return None


def _strong_ref_uri(value: object) -> str | None:
    """The ``uri`` of a ``com.atproto.repo.strongRef`` ``{uri, cid}``."""
    if type(value) is not dict:
        return None
    return _uri(value.get("uri"))


def _langs(value: object) -> tuple[str, ...]:
    if type(value) is not list:
        return ()
    out: dict[str, None] = {}
    for lang in value[:MAX_LANGS]:
        if type(lang) is str and 0 < len(lang) <= 64:
            lang = lang.lower()
            out[lang] = None
            out[lang.partition("-")[0]] = None
    return tuple(out)


def _tag(value: object) -> str | None:
    if type(value) is not str:
        return None
    tag = value.lstrip("#").strip().lower()
    return tag if 0 < len(tag) <= MAX_TAG_LENGTH else None


def _facets(value: object) -> tuple[dict[str, None], dict[str, None], dict[str, None]]:
    """(tags, mention DIDs, link URIs) of a post's facets, in order, unique."""
    tags: dict[str, None] = {}
    mentions: dict[str, None] = {}
    links: dict[str, None] = {}
    if type(value) is not list:
        return tags, mentions, links
    for facet in value:
        features = facet.get("features") if type(facet) is dict else None
        if type(features) is not list:
            continue
        for feature in features:
            if type(feature) is not dict:
                continue
            kind = feature.get("$type")
            if kind == _TAG:
                tag = _tag(feature.get("tag"))
                if tag is not None and len(tags) < MAX_TAGS:
                    tags[tag] = None
            elif kind == _MENTION:
                did = _did(feature.get("did"))
                if did is not None and len(mentions) < MAX_MENTIONS:
                    mentions[did] = None
            elif kind == _LINK:
                uri = feature.get("uri")
                if type(uri) is str and len(uri) <= MAX_REF_LENGTH and len(links) < MAX_LINKS:
                    links[uri] = None
    return tags, mentions, links


def _embed(value: object) -> tuple[str | None, str | None]:
    """(kind, referenced URI) of a post embed."""
    if type(value) is not dict:
        return None, None
    kind = value.get("$type")
    if type(kind) is not str or not kind.startswith(_EMBED_PREFIX):
        return None, None
    kind = kind[len(_EMBED_PREFIX) :]
    if kind == "record":
        return kind, _strong_ref_uri(value.get("record"))
    if kind == "recordWithMedia":
        inner = value.get("record")
        return kind, _strong_ref_uri(inner.get("record")) if type(inner) is dict else None
    if kind == "external":
        external = value.get("external")
        uri = external.get("uri") if type(external) is dict else None
        return kind, uri if type(uri) is str and len(uri) <= MAX_REF_LENGTH else None
    return kind, None


def _post(uri: str, did: str, cid: bytes, record: Mapping[str, Any], indexed_at: int) -> PostRow | None:
    text = record.get("text")
    if type(text) is not str:
        return None
    created = parse_time_ms(record.get("createdAt"))
    tags, mentions, links = _facets(record.get("facets"))
    extra_tags = record.get("tags")
    if type(extra_tags) is list:
        for value in extra_tags:
            tag = _tag(value)
            if tag is not None and len(tags) < MAX_TAGS:
                tags[tag] = None
    root = parent = None
    reply = record.get("reply")
    if type(reply) is dict:
        root = _strong_ref_uri(reply.get("root"))
        parent = _strong_ref_uri(reply.get("parent"))
    embed_kind, embed_uri = _embed(record.get("embed"))
    return PostRow(
        uri=uri,
        cid=cid,
        author=did,
        text=text,
        created_at=created if created is not None else indexed_at,
        indexed_at=indexed_at,
        langs=_langs(record.get("langs")),
        tags=tuple(tags),
        mentions=tuple(mentions),
        links=tuple(links),
        reply_root=root,
        reply_parent=parent,
        embed_kind=embed_kind,
        embed_uri=embed_uri,
    )


def index_op(
    did: str,
    collection: str,
    rkey: str,
    cid: CID | bytes,
    record: Mapping[str, Any] | None,
    indexed_at: int,
) -> IndexOp | None:
    """The row for the record at ``did/collection/rkey``; None to skip it.

    ``indexed_at`` (ms) is when the network saw the record (the event's time,
    or now for a backfill).
    """
    if type(record) is not dict or record.get("$type") != collection:
        return None
    uri = f"at://{did}/{collection}/{rkey}"
    cid_bytes = cid.bytes if isinstance(cid, CID) else bytes(cid)
    if collection == POST:
        return _post(uri, did, cid_bytes, record, indexed_at)
    created = parse_time_ms(record.get("createdAt"))
    if created is None:
        created = indexed_at
    if collection == LIKE or collection == REPOST:
        subject = _strong_ref_uri(record.get("subject"))
        if subject is None:
            return None
        if collection == LIKE:
            return LikeRow(uri, did, subject, created, indexed_at)
        return RepostRow(uri, cid_bytes, did, subject, created, indexed_at)
    if collection == FOLLOW or collection == BLOCK:
        target = _did(record.get("subject"))
        if target is None:
            return None
        row = FollowRow if collection == FOLLOW else BlockRow
        return row(uri, did, target, created)
    return None


def delete_op(did: str, collection: str, rkey: str) -> Delete | None:
    """The removal of a deleted record, for indexed collections."""
    if collection not in INDEXED_COLLECTIONS:
        return None
    return Delete(collection, f"at://{did}/{collection}/{rkey}")
