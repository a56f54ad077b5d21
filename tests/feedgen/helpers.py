"""Building index rows and stores for feedgen tests."""

from __future__ import annotations

from pathlib import Path

from feedgen.records import index_op
from feedgen.sqlite import SqliteIndex
from feedgen.storage import FollowRow, LikeRow, PostRow, RepostRow
from roost.cid import CID

POST = "app.bsky.feed.post"


def post(
    author: str, rkey: str, at: int, *, text: str = "", tags: tuple[str, ...] = (),
    langs: tuple[str, ...] = (), mentions: tuple[str, ...] = (), same_cid_as: str | None = None,
    reply_to: str | None = None,
) -> PostRow:
    """A post at time ``at`` (ms); ``same_cid_as`` makes its CID equal another text's."""
    cid = CID.for_cbor({"text": same_cid_as if same_cid_as is not None else f"{author}/{rkey}/{text}"})
    return PostRow(
        uri=f"at://{author}/{POST}/{rkey}", cid=cid.bytes, author=author, text=text,
        created_at=at, indexed_at=at, langs=langs, tags=tags, mentions=mentions,
        reply_root=reply_to, reply_parent=reply_to,
    )


def like(author: str, rkey: str, subject: str, at: int = 0) -> LikeRow:
    return LikeRow(f"at://{author}/app.bsky.feed.like/{rkey}", author, subject, at, at)


def repost(author: str, rkey: str, subject: str, at: int) -> RepostRow:
    cid = CID.for_cbor({"repost": f"{author}/{rkey}"})
    return RepostRow(f"at://{author}/app.bsky.feed.repost/{rkey}", cid.bytes, author, subject, at, at)


def follow(author: str, subject: str, rkey: str | None = None) -> FollowRow:
    rkey = rkey or subject.rsplit(":", 1)[-1]
    return FollowRow(f"at://{author}/app.bsky.graph.follow/{rkey}", author, subject, 0)


def store(tmp: Path, *, fulltext: bool | None = None) -> SqliteIndex:
    return SqliteIndex(tmp / "index.sqlite", fulltext=fulltext)


__all__ = ["follow", "index_op", "like", "post", "repost", "store"]
