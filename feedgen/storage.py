"""The feed index as the rest of feedgen sees it: row types and two interfaces.

:class:`IndexStore` is the write side, used by one writer at a time (the
indexer, or ``roost feedgen backfill``): :meth:`IndexStore.apply` applies a
batch of :data:`IndexOp` values and, in the same transaction, the stream
cursor the batch brings the index up to, so a crash never separates rows from
the cursor that covers them. Applying a batch again changes nothing (creates
of rows that exist are ignored, deletes of missing rows are no-ops): the
indexer may replay events after a restart (at-least-once delivery).

:class:`IndexReader` is the read side handed to feed algorithms: queries
only, each returning at most ``limit`` items newest first, strictly after an
optional :class:`SortKey` (the position of the last item of the previous page).

Ordering. Every feed item has a sort key ``(at, cid, id)``: ``at`` is the
item's time in ms (``min(createdAt, indexedAt)``: a backdated record sinks, a
record dated in the future is placed when it was seen), ``cid`` the record's
CID bytes, and ``id`` a number the store assigns, which only breaks ties
between byte-identical records of different accounts. Keys are unique and
never change, so a cursor holding the last key can neither skip nor repeat.

The embedded store is :mod:`feedgen.sqlite`, the shared one
:mod:`feedgen.postgres`; :func:`open_store` picks the implementation from the
database location.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, Protocol

from roost.cid import CID
from roost.errors import RoostError

__all__ = [
    "BlockRow",
    "Delete",
    "FeedItem",
    "FollowRow",
    "HotItem",
    "IndexOp",
    "IndexReader",
    "IndexStore",
    "InvalidCursor",
    "LikeRow",
    "PostRow",
    "PurgeAccount",
    "RepostRow",
    "ActorHost",
    "SortKey",
    "open_store",
]

#: Longest cursor string we parse.
MAX_CURSOR_LENGTH: Final = 512


class InvalidCursor(RoostError):
    """A cursor that this feed did not produce (400 InvalidRequest)."""


# -- what the indexer writes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostRow:
    """An ``app.bsky.feed.post`` as indexed. Times are ms since the epoch.

    ``tags`` are lower-cased hashtags (facets and the ``tags`` field);
    ``langs`` lower-cased language tags, each followed by its primary subtag;
    ``mentions`` the DIDs of mention facets; ``links`` the URIs of link
    facets. ``embed_kind`` is the embed's type without the
    ``app.bsky.embed.`` prefix (``images``, ``video``, ``external``,
    ``record``, ``recordWithMedia``); ``embed_uri`` the quoted record's
    AT-URI or the external link.
    """

    uri: str
    cid: bytes
    author: str
    text: str
    created_at: int
    indexed_at: int
    langs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    mentions: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    reply_root: str | None = None
    reply_parent: str | None = None
    embed_kind: str | None = None
    embed_uri: str | None = None

    @property
    def sort_at(self) -> int:
        return min(self.created_at, self.indexed_at)


@dataclass(frozen=True, slots=True)
class LikeRow:
    uri: str
    author: str
    subject: str
    created_at: int
    indexed_at: int


@dataclass(frozen=True, slots=True)
class RepostRow:
    uri: str
    cid: bytes
    author: str
    subject: str
    created_at: int
    indexed_at: int

    @property
    def sort_at(self) -> int:
        return min(self.created_at, self.indexed_at)


@dataclass(frozen=True, slots=True)
class FollowRow:
    uri: str
    author: str
    subject: str
    created_at: int


@dataclass(frozen=True, slots=True)
class BlockRow:
    uri: str
    author: str
    subject: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove the record ``uri`` of ``collection`` (a no-op if it is not indexed)."""

    collection: str
    uri: str


@dataclass(frozen=True, slots=True)
class PurgeAccount:
    """Remove everything ``did`` wrote (its account is gone or taken down)."""

    did: str


@dataclass(frozen=True, slots=True)
class ActorHost:
    """``did``'s repository lives on ``host`` (``name[:port]`` of its PDS)."""

    did: str
    host: str


IndexOp = PostRow | LikeRow | RepostRow | FollowRow | BlockRow | Delete | PurgeAccount | ActorHost


# -- what algorithms read -----------------------------------------------------------------------


class SortKey(NamedTuple):
    """The position of a feed item: ``(at, cid, id)``, compared in that order.

    (Tuples, not dataclasses: a page builds fifty of them, and tuples are
    several times cheaper to make.)
    """

    at: int
    cid: bytes
    id: int = 0

    def encode(self) -> str:
        """``<at>::<cid>::<id>`` (the template's ``<ms>::<cid>`` plus the tie-breaker)."""
        return f"{self.at}::{CID.from_bytes(self.cid)}::{self.id}"

    @classmethod
    def parse(cls, text: str) -> SortKey:
        """The key of a cursor made by :meth:`encode`; :class:`InvalidCursor` otherwise."""
        if not isinstance(text, str) or len(text) > MAX_CURSOR_LENGTH:
            raise InvalidCursor("malformed cursor")
        parts = text.split("::")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            raise InvalidCursor("malformed cursor")
        try:
            cid = CID.from_str(parts[1]).bytes
        except RoostError:
            raise InvalidCursor("malformed cursor") from None
        return cls(int(parts[0]), cid, int(parts[2]))


class FeedItem(NamedTuple):
    """One skeleton entry: a post, or a repost of it (``repost`` is the repost's URI).

    ``author`` wrote the item (the reposter for a repost); ``key`` is the
    position of the item itself (the repost's for a repost).
    """

    post: str
    author: str
    key: SortKey
    repost: str | None = None


class HotItem(NamedTuple):
    """A post ranked by its what's-hot score (higher is hotter)."""

    post: str
    score: float
    like_count: int
    key: SortKey


class IndexReader(Protocol):
    """Read-only queries over the index, safe to call from any thread.

    ``before`` is the key of the last item already shown; results start
    strictly after it. Every list is newest first (by :class:`SortKey`).
    """

    def version(self) -> int:
        """A number that changes whenever a batch is applied (by any process)."""
        ...

    def latest(
        self,
        limit: int,
        before: SortKey | None = None,
        *,
        authors: Collection[str] | None = None,
        host: str | None = None,
        replies: bool = True,
    ) -> list[FeedItem]:
        """Posts, all of them or only by ``authors`` / by accounts on ``host``."""
        ...

    def following(
        self, viewer: str, limit: int, before: SortKey | None = None, *, reposts: bool = True
    ) -> list[FeedItem]:
        """Posts (and reposts) by the accounts ``viewer`` follows, and by ``viewer``."""
        ...

    def tagged(self, tags: Collection[str], limit: int, before: SortKey | None = None) -> list[FeedItem]:
        """Posts carrying any of ``tags`` (hashtags without ``#``, any case)."""
        ...

    def in_languages(
        self, langs: Collection[str], limit: int, before: SortKey | None = None
    ) -> list[FeedItem]:
        """Posts declaring any of ``langs`` (``en`` matches ``en-US`` too)."""
        ...

    def mentioning(self, did: str, limit: int, before: SortKey | None = None) -> list[FeedItem]:
        """Posts that mention ``did`` in a facet."""
        ...

    def search(self, words: Sequence[str], limit: int, before: SortKey | None = None) -> list[FeedItem]:
        """Posts whose text contains any of ``words`` (whole words, any case)."""
        ...

    def hot(self, limit: int) -> list[HotItem]:
        """The ``limit`` hottest posts (likes with time decay), hottest first."""
        ...

    def post(self, uri: str) -> PostRow | None:
        """The indexed post ``uri``."""
        ...

    def like_count(self, uri: str) -> int:
        ...

    def follows(self, did: str) -> list[str]:
        """DIDs ``did`` follows."""
        ...

    def followers(self, did: str, limit: int = 1000) -> list[str]:
        ...

    def blocks(self, did: str) -> set[str]:
        """DIDs ``did`` blocks or is blocked by."""
        ...

    def host_of(self, did: str) -> str | None:
        """The PDS host of ``did`` if known."""
        ...


class IndexStore(Protocol):
    """The write side; one writer at a time (the storage serialises writers)."""

    def apply(self, ops: Sequence[IndexOp], *, cursor: tuple[str, int] | None = None) -> None:
        """Apply ``ops`` in order, and save ``cursor`` (service, seq), in one transaction."""
        ...

    def cursor(self, service: str) -> int | None:
        """The last saved cursor for ``service``."""
        ...

    def reader(self) -> IndexReader:
        ...

    def prune(self, before_ms: int, *, batch: int = 10_000) -> int:
        """Forget posts, reposts and likes older than ``before_ms``; returns rows removed."""
        ...

    def counts(self) -> Mapping[str, int]:
        """Rows per kind (posts, likes, reposts, follows, blocks)."""
        ...

    def unknown_authors(self, limit: int) -> list[str]:
        """Authors of indexed posts whose host is not known yet."""
        ...

    def register_readers(self, dids: Iterable[str], now_ms: int) -> int:
        """Keep these following-feed readers ready (see :mod:`feedgen.readers`); new ones."""
        ...

    def forget_readers(self, seen_before_ms: int) -> int:
        """Stop keeping readers not seen since ``seen_before_ms``."""
        ...

    def close(self) -> None:
        ...


def open_store(location: str | Path, *, fulltext: bool | None = None) -> IndexStore:
    """The store at ``location``: a SQLite file path, or a ``postgresql://`` URL
    (:mod:`feedgen.postgres`, imported only then).

    ``fulltext``: keep a full-text index of post text (for keyword feeds),
    drop it, or (None) leave it as it is.
    """
    text = str(location)
    if text.startswith(("postgres://", "postgresql://")):
        from feedgen.postgres import PostgresIndex

        return PostgresIndex(text, fulltext=fulltext)
    from feedgen.sqlite import SqliteIndex

    return SqliteIndex(Path(text), fulltext=fulltext)
