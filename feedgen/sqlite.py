"""All of the feed index's SQL: one SQLite database in WAL mode.

Write side (:class:`SqliteIndex`): one connection, one writer at a time (a
lock in this process, SQLite's own lock across processes, so ``roost feedgen
backfill`` can run next to the server). A batch is one transaction: its rows,
the stream cursor it covers and a bump of the ``version`` counter commit
together. To keep batches cheap the ops are cut into runs in which no record
URI repeats; within a run the order does not matter (creates ignore rows that
exist, counters are kept by triggers whatever the order), so each run is
applied as one statement per kind: ``executemany`` for a few rows, and for
many one ``INSERT ... SELECT`` over a JSON array of them (SQLite then does the
whole run, triggers included, without handing Python's GIL back and forth
once per row, so the indexer's writer thread runs beside the thread that
decodes the stream instead of taking turns with it).

Derived data lives in triggers, so any writer keeps it right:

- hashtags, languages and mentions of a post fill ``post_tag``,
  ``post_lang`` and ``post_mention``, keyed like the feed (``sort_at``,
  ``cid``, post id) so a topic feed is one index range;
- ``post_fts`` (FTS5, external content) indexes post text for keyword feeds,
  when asked for (``fulltext``): it costs a quarter of the indexing time;
- ``like_count``/``repost_count`` follow likes and reposts whichever arrives
  first, and ``hot`` (what's-hot score) is kept with them:
  ``log2(1 + likes) + sort_at / HOT_HALF_LIFE_MS``. Adding the post time in
  log space is the same as halving a post's likes every half-life, so the
  ranking decays with time although a score only changes when its likes do;
  ``post_by_hot`` (a partial index over liked posts) serves the ranking.

Read side (:class:`SqliteReader`): one read-only connection per thread
(plugins run in worker threads; WAL readers never wait for the writer). The
time and author indexes hold the post id and URI after the sort key, so a
page comes from an index, in order, without reading the table.

Feeds of a set of authors (following, a community) never read every
author's timeline. First, each author's newest item time before the cursor:
``actor.latest`` (the newest item ever indexed, kept by triggers) stands in
for it when it is older than the cursor, otherwise one probe of the author
index gives it. Keeping the ``n`` newest (and any tied with the last of
them): the page's items can only come from those authors, and none is older
than the last of those times, which bounds the second, ordinary range query.
The stand-in is an upper bound (deletes do not lower it), which can only
make a page short; a short page that left authors out is computed again
with exact times. For kept readers of the following feed (``reader``,
``reader_follow``, see :mod:`feedgen.readers`) the follow list itself holds
these times, indexed, so only the accounts that can be on the page are read.

Kept readers also have a materialised timeline (``timeline``): every post
and repost by the accounts they follow (and their own) whose key is at or
above the reader's *floor*, kept by triggers as posts, reposts, follows and
deletes are indexed. A page is then one range of that table; only a page
reaching below the floor is completed the way above. A timeline starts with
the newest :data:`TIMELINE_ITEMS` items and is cut back to that many (the
floor rising) once it has doubled.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from heapq import merge
from pathlib import Path
from typing import Any, Final

from roost.errors import RoostError

from feedgen.storage import (
    ActorHost,
    BlockRow,
    Delete,
    FeedItem,
    FollowRow,
    HotItem,
    IndexOp,
    LikeRow,
    PostRow,
    PurgeAccount,
    RepostRow,
    SortKey,
)

__all__ = ["HOT_HALF_LIFE_MS", "SCHEMA_VERSION", "FulltextOff", "SqliteIndex", "SqliteReader"]

#: A post's likes count half as much every this many ms (what's-hot decay).
HOT_HALF_LIFE_MS: Final = 6 * 3600 * 1000
#: How long a writer waits for another process's transaction, ms.
BUSY_TIMEOUT_MS: Final = 30_000
#: Memory-mapped reads (per connection; the OS shares the pages).
MMAP_BYTES: Final = 1 << 30
#: Page cache per connection, KiB.
CACHE_KIB: Final = 64 * 1024
#: Items a kept reader's timeline starts with (ten pages of 50); it grows with new items
#: and is cut back to this many when it has doubled (see ``forget_readers``).
TIMELINE_ITEMS: Final = 500



class FulltextOff(RoostError):
    """A keyword search on an index kept without its full-text part (503)."""

    error = "FullTextIndexOff"
    status = 503


_HOT = f"sort_at / {float(HOT_HALF_LIFE_MS)!r}"

MIGRATIONS: Final[tuple[str, ...]] = (
    f"""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
    INSERT INTO meta (key, value) VALUES ('version', 0);
    CREATE TABLE stream_cursor (service TEXT PRIMARY KEY, seq INTEGER NOT NULL) STRICT;

    CREATE TABLE post (
        id INTEGER PRIMARY KEY,
        uri TEXT NOT NULL UNIQUE,
        cid BLOB NOT NULL,
        author TEXT NOT NULL,
        text TEXT NOT NULL,
        langs TEXT,
        tags TEXT,
        mentions TEXT,
        links TEXT,
        reply_root TEXT,
        reply_parent TEXT,
        embed_kind TEXT,
        embed_uri TEXT,
        created_at INTEGER NOT NULL,
        indexed_at INTEGER NOT NULL,
        sort_at INTEGER NOT NULL,
        like_count INTEGER NOT NULL DEFAULT 0,
        repost_count INTEGER NOT NULL DEFAULT 0,
        hot REAL
    ) STRICT;
    CREATE INDEX post_by_time ON post (sort_at, cid, id, uri);
    CREATE INDEX post_by_author ON post (author, sort_at, cid, id, uri);
    CREATE INDEX post_by_hot ON post (hot, cid) WHERE hot IS NOT NULL;

    CREATE TABLE post_tag (
        tag TEXT NOT NULL, sort_at INTEGER NOT NULL, cid BLOB NOT NULL, post INTEGER NOT NULL,
        PRIMARY KEY (tag, sort_at, cid, post)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE post_lang (
        lang TEXT NOT NULL, sort_at INTEGER NOT NULL, cid BLOB NOT NULL, post INTEGER NOT NULL,
        PRIMARY KEY (lang, sort_at, cid, post)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE post_mention (
        did TEXT NOT NULL, sort_at INTEGER NOT NULL, cid BLOB NOT NULL, post INTEGER NOT NULL,
        PRIMARY KEY (did, sort_at, cid, post)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE post_like (
        uri TEXT PRIMARY KEY,
        author TEXT NOT NULL,
        subject TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        indexed_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX like_by_subject ON post_like (subject);
    CREATE INDEX like_by_time ON post_like (indexed_at);

    CREATE TABLE repost (
        id INTEGER PRIMARY KEY,
        uri TEXT NOT NULL UNIQUE,
        cid BLOB NOT NULL,
        author TEXT NOT NULL,
        subject TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        indexed_at INTEGER NOT NULL,
        sort_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX repost_by_author ON repost (author, sort_at, cid, id, subject, uri);
    CREATE INDEX repost_by_subject ON repost (subject);

    CREATE TABLE follow (
        uri TEXT PRIMARY KEY, author TEXT NOT NULL, subject TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX follow_by_author ON follow (author, subject);
    CREATE INDEX follow_by_subject ON follow (subject, author);

    CREATE TABLE block (
        uri TEXT PRIMARY KEY, author TEXT NOT NULL, subject TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX block_by_author ON block (author, subject);
    CREATE INDEX block_by_subject ON block (subject, author);

    -- readers of the following feed whose follows are kept with each followed account's
    -- newest-item time (an upper bound, like actor.latest), so that feed reads only
    -- the accounts that can be on the page
    CREATE TABLE reader (did TEXT PRIMARY KEY, seen INTEGER NOT NULL) STRICT, WITHOUT ROWID;
    CREATE TABLE reader_follow (
        reader TEXT NOT NULL, subject TEXT NOT NULL, latest INTEGER,
        PRIMARY KEY (reader, subject)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX reader_follow_by_latest ON reader_follow (reader, latest);
    CREATE INDEX reader_follow_by_subject ON reader_follow (subject);

    -- authors seen: the PDS host each lives on ('' = could not be resolved), and the
    -- time of their newest post or repost ever indexed (it never goes down)
    CREATE TABLE actor (did TEXT PRIMARY KEY, host TEXT, latest INTEGER) STRICT, WITHOUT ROWID;
    CREATE INDEX actor_by_host ON actor (host, did) WHERE host IS NOT NULL;
    CREATE INDEX actor_unknown ON actor (did) WHERE host IS NULL;

    CREATE TRIGGER post_added AFTER INSERT ON post BEGIN
        INSERT OR IGNORE INTO post_tag (tag, sort_at, cid, post)
            SELECT value, NEW.sort_at, NEW.cid, NEW.id FROM json_each(NEW.tags);
        INSERT OR IGNORE INTO post_lang (lang, sort_at, cid, post)
            SELECT value, NEW.sort_at, NEW.cid, NEW.id FROM json_each(NEW.langs);
        INSERT OR IGNORE INTO post_mention (did, sort_at, cid, post)
            SELECT value, NEW.sort_at, NEW.cid, NEW.id FROM json_each(NEW.mentions);
        INSERT INTO actor (did, latest) VALUES (NEW.author, NEW.sort_at)
            ON CONFLICT (did) DO UPDATE SET latest = excluded.latest
            WHERE latest IS NULL OR excluded.latest > latest;
        UPDATE reader_follow SET latest = NEW.sort_at
            WHERE subject = NEW.author AND (latest IS NULL OR latest < NEW.sort_at);
    END;
    CREATE TRIGGER post_added_counts AFTER INSERT ON post
    WHEN EXISTS (SELECT 1 FROM post_like WHERE subject = NEW.uri)
      OR EXISTS (SELECT 1 FROM repost WHERE subject = NEW.uri)
    BEGIN
        UPDATE post SET
            like_count = (SELECT count(*) FROM post_like WHERE subject = NEW.uri),
            repost_count = (SELECT count(*) FROM repost WHERE subject = NEW.uri)
        WHERE id = NEW.id;
        UPDATE post SET hot = CASE WHEN like_count > 0 THEN log2(1.0 + like_count) + {_HOT} END
        WHERE id = NEW.id;
    END;
    CREATE TRIGGER post_removed AFTER DELETE ON post BEGIN
        DELETE FROM post_tag WHERE tag IN (SELECT value FROM json_each(OLD.tags))
            AND sort_at = OLD.sort_at AND cid = OLD.cid AND post = OLD.id;
        DELETE FROM post_lang WHERE lang IN (SELECT value FROM json_each(OLD.langs))
            AND sort_at = OLD.sort_at AND cid = OLD.cid AND post = OLD.id;
        DELETE FROM post_mention WHERE did IN (SELECT value FROM json_each(OLD.mentions))
            AND sort_at = OLD.sort_at AND cid = OLD.cid AND post = OLD.id;
    END;
    CREATE TRIGGER like_added AFTER INSERT ON post_like BEGIN
        UPDATE post SET like_count = like_count + 1, hot = log2(2.0 + like_count) + {_HOT}
        WHERE uri = NEW.subject;
    END;
    CREATE TRIGGER like_removed AFTER DELETE ON post_like BEGIN
        UPDATE post SET like_count = like_count - 1,
            hot = CASE WHEN like_count > 1 THEN log2(like_count) + {_HOT} END
        WHERE uri = OLD.subject;
    END;
    CREATE TRIGGER repost_added AFTER INSERT ON repost BEGIN
        UPDATE post SET repost_count = repost_count + 1 WHERE uri = NEW.subject;
        INSERT INTO actor (did, latest) VALUES (NEW.author, NEW.sort_at)
            ON CONFLICT (did) DO UPDATE SET latest = excluded.latest
            WHERE latest IS NULL OR excluded.latest > latest;
        UPDATE reader_follow SET latest = NEW.sort_at
            WHERE subject = NEW.author AND (latest IS NULL OR latest < NEW.sort_at);
    END;
    CREATE TRIGGER follow_added AFTER INSERT ON follow
    WHEN EXISTS (SELECT 1 FROM reader WHERE did = NEW.author)
    BEGIN
        INSERT OR IGNORE INTO reader_follow (reader, subject, latest)
            VALUES (NEW.author, NEW.subject, (SELECT latest FROM actor WHERE did = NEW.subject));
    END;
    CREATE TRIGGER follow_removed AFTER DELETE ON follow
    WHEN OLD.subject != OLD.author
    BEGIN
        DELETE FROM reader_follow WHERE reader = OLD.author AND subject = OLD.subject
            AND NOT EXISTS (SELECT 1 FROM follow WHERE author = OLD.author AND subject = OLD.subject);
    END;
    CREATE TRIGGER repost_removed AFTER DELETE ON repost BEGIN
        UPDATE post SET repost_count = repost_count - 1 WHERE uri = OLD.subject;
    END;
    """,
    """
    -- kept readers' timelines: every post and repost by an account they follow (and by
    -- themselves) whose key is at or above the reader's floor; the readers of version 1
    -- are let go (they are kept again on their next read)
    DELETE FROM reader_follow;
    DELETE FROM reader;
    ALTER TABLE reader ADD COLUMN floor_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE reader ADD COLUMN floor_cid BLOB NOT NULL DEFAULT x'';
    ALTER TABLE reader ADD COLUMN floor_id INTEGER NOT NULL DEFAULT 0;
    -- uri: the post's, or the repost's (then subject is the post reposted): a page is
    -- read from this table alone
    CREATE TABLE timeline (
        reader TEXT NOT NULL, sort_at INTEGER NOT NULL, cid BLOB NOT NULL, id INTEGER NOT NULL,
        repost INTEGER NOT NULL, uri TEXT NOT NULL, subject TEXT,
        PRIMARY KEY (reader, sort_at, cid, id, repost)
    ) STRICT, WITHOUT ROWID;

    CREATE TRIGGER timeline_post_added AFTER INSERT ON post BEGIN
        INSERT OR IGNORE INTO timeline (reader, sort_at, cid, id, repost, uri)
            SELECT r.did, NEW.sort_at, NEW.cid, NEW.id, 0, NEW.uri
            FROM reader_follow f JOIN reader r ON r.did = f.reader
            WHERE f.subject = NEW.author
              AND (NEW.sort_at, NEW.cid, NEW.id) >= (r.floor_at, r.floor_cid, r.floor_id);
    END;
    CREATE TRIGGER timeline_post_removed AFTER DELETE ON post BEGIN
        DELETE FROM timeline WHERE reader IN (SELECT reader FROM reader_follow WHERE subject = OLD.author)
            AND sort_at = OLD.sort_at AND cid = OLD.cid AND id = OLD.id AND repost = 0;
    END;
    CREATE TRIGGER timeline_repost_added AFTER INSERT ON repost BEGIN
        INSERT OR IGNORE INTO timeline (reader, sort_at, cid, id, repost, uri, subject)
            SELECT r.did, NEW.sort_at, NEW.cid, NEW.id, 1, NEW.uri, NEW.subject
            FROM reader_follow f JOIN reader r ON r.did = f.reader
            WHERE f.subject = NEW.author
              AND (NEW.sort_at, NEW.cid, NEW.id) >= (r.floor_at, r.floor_cid, r.floor_id);
    END;
    CREATE TRIGGER timeline_repost_removed AFTER DELETE ON repost BEGIN
        DELETE FROM timeline WHERE reader IN (SELECT reader FROM reader_follow WHERE subject = OLD.author)
            AND sort_at = OLD.sort_at AND cid = OLD.cid AND id = OLD.id AND repost = 1;
    END;
    CREATE TRIGGER timeline_follow_added AFTER INSERT ON reader_follow BEGIN
        INSERT OR IGNORE INTO timeline (reader, sort_at, cid, id, repost, uri)
            SELECT r.did, p.sort_at, p.cid, p.id, 0, p.uri FROM reader r JOIN post p
            WHERE r.did = NEW.reader AND p.author = NEW.subject
              AND (p.sort_at, p.cid, p.id) >= (r.floor_at, r.floor_cid, r.floor_id);
        INSERT OR IGNORE INTO timeline (reader, sort_at, cid, id, repost, uri, subject)
            SELECT r.did, s.sort_at, s.cid, s.id, 1, s.uri, s.subject FROM reader r JOIN repost s
            WHERE r.did = NEW.reader AND s.author = NEW.subject
              AND (s.sort_at, s.cid, s.id) >= (r.floor_at, r.floor_cid, r.floor_id);
    END;
    CREATE TRIGGER timeline_follow_removed AFTER DELETE ON reader_follow BEGIN
        DELETE FROM timeline WHERE reader = OLD.reader
            AND uri >= 'at://' || OLD.subject || '/' AND uri < 'at://' || OLD.subject || '0';
    END;
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

#: The full-text index, kept only when asked for (it costs about a quarter of
#: the indexing time): created and filled from the posts on demand, dropped
#: when turned off.
FULLTEXT: Final = (
    """CREATE VIRTUAL TABLE post_fts USING fts5(
        text, content='post', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER post_fts_added AFTER INSERT ON post BEGIN
        INSERT INTO post_fts (rowid, text) VALUES (NEW.id, NEW.text);
    END""",
    """CREATE TRIGGER post_fts_removed AFTER DELETE ON post BEGIN
        INSERT INTO post_fts (post_fts, rowid, text) VALUES ('delete', OLD.id, OLD.text);
    END""",
    "INSERT INTO post_fts (post_fts) VALUES ('rebuild')",
)
NO_FULLTEXT: Final = (
    "DROP TRIGGER IF EXISTS post_fts_added",
    "DROP TRIGGER IF EXISTS post_fts_removed",
    "DROP TABLE IF EXISTS post_fts",
)

# A key above every real one (the first page starts "before" it), and one below.
_TOP: Final = SortKey(1 << 62, b"\xff" * 64, 1 << 62)
_BOTTOM: Final = SortKey(-(1 << 62), b"", 0)
_ORDER: Final = "ORDER BY sort_at DESC, cid DESC, id DESC"

_INSERT: Final[dict[type, str]] = {
    PostRow: "INSERT OR IGNORE INTO post (uri, cid, author, text, langs, tags, mentions, links,"
    " reply_root, reply_parent, embed_kind, embed_uri, created_at, indexed_at, sort_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    LikeRow: "INSERT OR IGNORE INTO post_like (uri, author, subject, created_at, indexed_at)"
    " VALUES (?, ?, ?, ?, ?)",
    RepostRow: "INSERT OR IGNORE INTO repost (uri, cid, author, subject, created_at, indexed_at,"
    " sort_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    FollowRow: "INSERT OR IGNORE INTO follow (uri, author, subject, created_at) VALUES (?, ?, ?, ?)",
    BlockRow: "INSERT OR IGNORE INTO block (uri, author, subject, created_at) VALUES (?, ?, ?, ?)",
    ActorHost: "INSERT INTO actor (did, host) VALUES (?, ?)"
    " ON CONFLICT (did) DO UPDATE SET host = excluded.host",
}
#: Rows of one kind in a run from which they are sent as one JSON document instead
#: of one statement each (see ``_apply_run``).
BULK_ROWS: Final = 32


def _bulk_insert(sql: str) -> str:
    """``sql`` (an ``INSERT ... VALUES (?, ...)``) reading its rows from a JSON array
    (parameter 1) of arrays; a BLOB column holds the (1-based offset, length) of its
    bytes in parameter 2."""
    head, _, values = sql.partition(" VALUES ")
    columns = head[head.index("(") + 1 : head.index(")")].split(", ")
    picks, slot = [], 0
    for column in columns:
        if column == "cid":
            picks.append(f"substr(?2, value ->> {slot}, value ->> {slot + 1})")
            slot += 2
        else:
            picks.append(f"value ->> {slot}")
            slot += 1
    tail = values.partition(")")[2]  # ON CONFLICT ...
    return f"{head} SELECT {', '.join(picks)} FROM json_each(?1) WHERE 1{tail}"


_BULK_INSERT: Final[dict[type, str]] = {
    kind: _bulk_insert(sql) for kind, sql in _INSERT.items() if kind is not ActorHost
}


def _bulk_params(rows: list[tuple[Any, ...]]) -> tuple[str, bytes]:
    """The two parameters of a ``_BULK_INSERT`` statement for ``rows``."""
    blobs: list[bytes] = []
    offset = 1
    out = []
    for row in rows:
        flat: list[Any] = []
        for value in row:
            if type(value) is bytes:
                blobs.append(value)
                flat += (offset, len(value))
                offset += len(value)
            else:
                flat.append(value)
        out.append(flat)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")), b"".join(blobs)


_DELETE: Final[dict[str, str]] = {
    "app.bsky.feed.post": "DELETE FROM post WHERE uri = ?",
    "app.bsky.feed.like": "DELETE FROM post_like WHERE uri = ?",
    "app.bsky.feed.repost": "DELETE FROM repost WHERE uri = ?",
    "app.bsky.graph.follow": "DELETE FROM follow WHERE uri = ?",
    "app.bsky.graph.block": "DELETE FROM block WHERE uri = ?",
}
_PURGE_TABLES: Final = ("post", "post_like", "repost", "follow", "block")


def _json_list(values: tuple[str, ...]) -> str | None:
    return json.dumps(values, ensure_ascii=False) if values else None


def _params(op: IndexOp) -> tuple[Any, ...]:
    kind = type(op)
    if kind is PostRow:
        p: PostRow = op  # type: ignore[assignment]
        return (
            p.uri, p.cid, p.author, p.text, _json_list(p.langs), _json_list(p.tags),
            _json_list(p.mentions), _json_list(p.links), p.reply_root, p.reply_parent,
            p.embed_kind, p.embed_uri, p.created_at, p.indexed_at, p.sort_at,
        )
    if kind is LikeRow:
        lk: LikeRow = op  # type: ignore[assignment]
        return (lk.uri, lk.author, lk.subject, lk.created_at, lk.indexed_at)
    if kind is RepostRow:
        r: RepostRow = op  # type: ignore[assignment]
        return (r.uri, r.cid, r.author, r.subject, r.created_at, r.indexed_at, r.sort_at)
    if kind is FollowRow or kind is BlockRow:
        g: FollowRow = op  # type: ignore[assignment]
        return (g.uri, g.author, g.subject, g.created_at)
    if kind is ActorHost:
        a: ActorHost = op  # type: ignore[assignment]
        return (a.did, a.host)
    raise TypeError(f"not an index op: {kind.__name__}")


def _uri_of(op: IndexOp) -> str | None:
    return getattr(op, "uri", None)


def _runs(ops: Sequence[IndexOp]) -> Iterator[list[IndexOp]]:
    """Cut ``ops`` into runs in which no URI repeats; a purge is a run of its own."""
    run: list[IndexOp] = []
    seen: set[str] = set()
    for op in ops:
        if type(op) is PurgeAccount:
            if run:
                yield run
            yield [op]
            run, seen = [], set()
            continue
        uri = _uri_of(op)
        if uri is not None:
            if uri in seen:
                yield run
                run, seen = [], set()
            seen.add(uri)
        run.append(op)
    if run:
        yield run


def _did_range(did: str) -> tuple[str, str]:
    """URIs of records in ``did``'s repo: ``at://did/`` <= uri < ``at://did0``."""
    return f"at://{did}/", f"at://{did}0"


class SqliteIndex:
    """The feed index in one SQLite file (see the module docstring)."""

    def __init__(
        self, path: Path, *, fulltext: bool | None = None, timeline_items: int = TIMELINE_ITEMS
    ) -> None:
        """Open (creating or migrating) the index at ``path``.

        ``fulltext``: keep the full-text index of post text (True), drop it
        (False), or leave it as it is (None: the choice of whoever set it).
        ``timeline_items``: items a newly kept reader's timeline starts with.
        """
        if timeline_items < 1:
            raise ValueError("timeline_items must be at least 1")
        self.timeline_items = timeline_items
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._migrate()
        if fulltext is not None:
            self._set_fulltext(fulltext)
        self._reader: SqliteReader | None = None

    @property
    def fulltext(self) -> bool:
        return _has_fulltext(self._db)

    def _set_fulltext(self, wanted: bool) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if wanted != _has_fulltext(db):
                    for statement in FULLTEXT if wanted else NO_FULLTEXT:
                        db.execute(statement)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                current = db.execute("PRAGMA user_version").fetchone()[0]
                if current > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path} has index schema {current}; this roost knows {SCHEMA_VERSION}"
                    )
                for number in range(current, SCHEMA_VERSION):
                    for statement in _statements(MIGRATIONS[number]):
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- writing ---------------------------------------------------------------------

    def apply(self, ops: Sequence[IndexOp], *, cursor: tuple[str, int] | None = None) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for run in _runs(ops):
                    self._apply_run(db, run)
                if cursor is not None:
                    db.execute(
                        "INSERT INTO stream_cursor (service, seq) VALUES (?, ?)"
                        " ON CONFLICT (service) DO UPDATE SET seq = excluded.seq",
                        cursor,
                    )
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _apply_run(self, db: sqlite3.Connection, run: list[IndexOp]) -> None:
        if type(run[0]) is PurgeAccount:
            low, high = _did_range(run[0].did)
            for table in _PURGE_TABLES:
                db.execute(f"DELETE FROM {table} WHERE uri >= ? AND uri < ?", (low, high))
            _drop_readers(db, [run[0].did])
            return
        inserts: dict[type, list[tuple[Any, ...]]] = {}
        deletes: dict[str, list[tuple[str]]] = {}
        for op in run:
            kind = type(op)
            if kind is Delete:
                sql = _DELETE.get(op.collection)  # type: ignore[union-attr]
                if sql is not None:
                    deletes.setdefault(sql, []).append((op.uri,))  # type: ignore[union-attr]
            else:
                inserts.setdefault(kind, []).append(_params(op))
        for sql, rows in deletes.items():
            db.executemany(sql, rows)
        for kind, rows in inserts.items():
            bulk = _BULK_INSERT.get(kind)
            if bulk is not None and len(rows) >= BULK_ROWS:
                # one statement for all: SQLite runs it (triggers and all) without
                # taking Python's GIL back once per row, so a writer thread really
                # runs next to the thread that reads the stream
                text, blobs = _bulk_params(rows)
                if "\\u0000" not in text:  # (SQLite's JSON would cut a text at a NUL)
                    db.execute(bulk, (text, blobs) if "?2" in bulk else (text,))
                    continue
            db.executemany(_INSERT[kind], rows)

    def cursor(self, service: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM stream_cursor WHERE service = ?", (service,)
            ).fetchone()
        return None if row is None else int(row[0])

    def prune(self, before_ms: int, *, batch: int = 10_000) -> int:
        removed = 0
        for sql in (
            "DELETE FROM post WHERE id IN (SELECT id FROM post WHERE sort_at < ? LIMIT ?)",
            "DELETE FROM repost WHERE id IN (SELECT id FROM repost WHERE sort_at < ? LIMIT ?)",
            "DELETE FROM post_like WHERE uri IN"
            " (SELECT uri FROM post_like WHERE indexed_at < ? LIMIT ?)",
        ):
            while True:
                with self._lock:
                    db = self._db
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        count = db.execute(sql, (before_ms, batch)).rowcount
                        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
                        db.execute("COMMIT")
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                removed += count
                if count < batch:
                    break
        return removed

    def counts(self) -> Mapping[str, int]:
        with self._lock:
            return {
                name: int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for name, table in (
                    ("posts", "post"),
                    ("likes", "post_like"),
                    ("reposts", "repost"),
                    ("follows", "follow"),
                    ("blocks", "block"),
                )
            }

    def register_readers(self, dids: Iterable[str], now_ms: int) -> int:
        """Keep these following-feed readers' follows with newest-item times; mark them seen.

        Returns how many were new. Readers already kept are only marked seen.
        """
        added = 0
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for did in dids:
                    if db.execute("SELECT 1 FROM reader WHERE did = ?", (did,)).fetchone():
                        db.execute("UPDATE reader SET seen = ? WHERE did = ?", (now_ms, did))
                        continue
                    # the timeline starts with the newest ``timeline_items`` items (the
                    # reader_follow rows fill it, by trigger, down to this floor)
                    floor = _timeline_floor(db, did, self.timeline_items)
                    db.execute(
                        "INSERT INTO reader (did, seen, floor_at, floor_cid, floor_id)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (did, now_ms, *floor),
                    )
                    db.execute(
                        "INSERT OR IGNORE INTO reader_follow (reader, subject, latest)"
                        " SELECT ?, s.a, x.latest FROM (SELECT subject AS a FROM follow"
                        " WHERE author = ? UNION SELECT ?) AS s LEFT JOIN actor x ON x.did = s.a",
                        (did, did, did),
                    )
                    added += 1
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return added

    def forget_readers(self, seen_before_ms: int) -> int:
        """Stop keeping readers not seen since ``seen_before_ms``; returns how many.

        Timelines grown past twice ``timeline_items`` are cut back to that many
        (their floor rises to the last item kept).
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                gone = [r[0] for r in db.execute(
                    "SELECT did FROM reader WHERE seen < ?", (seen_before_ms,)
                )]
                _drop_readers(db, gone)
                keep = self.timeline_items
                grown = db.execute(
                    "SELECT reader FROM timeline GROUP BY reader HAVING count(*) > ?", (2 * keep,)
                ).fetchall()
                for (did,) in grown:
                    floor = db.execute(
                        "SELECT sort_at, cid, id FROM timeline WHERE reader = ?"
                        " ORDER BY sort_at DESC, cid DESC, id DESC LIMIT 1 OFFSET ?",
                        (did, keep - 1),
                    ).fetchone()
                    db.execute(
                        "UPDATE reader SET floor_at = ?, floor_cid = ?, floor_id = ? WHERE did = ?",
                        (*floor, did),
                    )
                    db.execute(
                        "DELETE FROM timeline WHERE reader = ? AND (sort_at, cid, id) < (?, ?, ?)",
                        (did, *floor),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return len(gone)

    def unknown_authors(self, limit: int) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT did FROM actor WHERE host IS NULL LIMIT ?", (limit,)
            ).fetchall()
        return [r[0] for r in rows]

    def reader(self) -> SqliteReader:
        if self._reader is None:
            self._reader = SqliteReader(self.path)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        with self._lock:
            self._db.close()


#: The first time window looked at for a new timeline's floor, ms (it doubles until the
#: window holds enough items).
_FLOOR_WINDOW_MS: Final = 3_600_000
_FLOOR_QUERY: Final = (
    "WITH a AS (SELECT subject AS did FROM follow WHERE author = :did UNION SELECT :did)"
    " SELECT sort_at, cid, id FROM post WHERE author IN a AND sort_at >= :since"
    " UNION ALL SELECT sort_at, cid, id FROM repost WHERE author IN a AND sort_at >= :since"
    f" {_ORDER} LIMIT 1 OFFSET :skip"
)


def _timeline_floor(db: sqlite3.Connection, did: str, items: int) -> SortKey:
    """The key of the ``items``-th newest post or repost by ``did`` and the accounts it
    follows (:data:`_BOTTOM` if there are fewer): the floor of a new timeline.

    Looked for in a time window before the newest such item, doubled until it holds
    that many, so only about as many index entries are read as the timeline keeps.
    """
    row = db.execute(
        "SELECT max(x.latest) FROM actor x WHERE x.did IN"
        " (SELECT subject FROM follow WHERE author = :did UNION SELECT :did)",
        {"did": did},
    ).fetchone()
    if row is None or row[0] is None:
        return _BOTTOM
    newest: int = row[0]
    window = _FLOOR_WINDOW_MS
    while True:
        since = newest - window if window < 1 << 50 else _NO_FLOOR
        found = db.execute(_FLOOR_QUERY, {"did": did, "since": since, "skip": items - 1}).fetchone()
        if found is not None:
            return _tuple(SortKey, found)
        if since == _NO_FLOOR:
            return _BOTTOM
        window *= 2


def _drop_readers(db: sqlite3.Connection, dids: Iterable[str]) -> None:
    """Stop keeping these readers (the timeline goes first: its follow trigger is then idle)."""
    for did in dids:
        db.execute("DELETE FROM timeline WHERE reader = ?", (did,))
        db.execute("DELETE FROM reader_follow WHERE reader = ?", (did,))
        db.execute("DELETE FROM reader WHERE did = ?", (did,))


def _has_fulltext(db: sqlite3.Connection) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'post_fts'").fetchone()
    return row is not None


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (triggers hold ``;`` inside BEGIN...END)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer[:80]!r}")


# -- reading ---------------------------------------------------------------------------------------


def _key_params(before: SortKey | None) -> tuple[int, bytes, int]:
    key = before or _TOP
    return key.at, key.cid, key.id


_tuple = tuple.__new__


def _items(rows: Iterable[tuple[Any, ...]]) -> list[FeedItem]:
    """Rows ``(id, uri, cid, sort_at)`` -> items (tuples built directly: this is the hot path)."""
    return [
        _tuple(FeedItem, (uri, uri[5 : uri.index("/", 5)], _tuple(SortKey, (at, cid, id_)), None))
        for id_, uri, cid, at in rows
    ]


def _newest(streams: Iterable[list[FeedItem]], limit: int) -> list[FeedItem]:
    """Merge lists that are each newest first; drop repeats of the same key."""
    out: list[FeedItem] = []
    last: SortKey | None = None
    for item in merge(*streams, key=lambda i: i.key, reverse=True):
        if item.key == last:
            continue
        last = item.key
        out.append(item)
        if len(out) >= limit:
            break
    return out


_POST_COLUMNS: Final = "id, uri, cid, sort_at"

#: Candidate authors of an author-set feed, with the time of their newest item (an
#: upper bound: it ignores deletes, filters and the cursor).
_CANDIDATES: Final = {
    "list": "SELECT value AS a FROM json_each(?)",
    "follows": "SELECT subject AS a FROM follow WHERE author = ? UNION SELECT ?",
    "host": "SELECT did AS a FROM actor WHERE host = ?",
}
_ESTIMATES: Final = (
    "SELECT c.a, x.latest FROM ({candidates}) AS c JOIN actor x ON x.did = c.a"
    " WHERE x.latest IS NOT NULL"
)
#: The exact time of an author's newest item before the key (one index probe).
_PROBE: Final = (
    "(SELECT sort_at FROM {table} WHERE author = value AND (sort_at, cid, id) < (:at, :cid, :id)"
    " {extra} ORDER BY sort_at DESC, cid DESC, id DESC LIMIT 1)"
)
_GATHER: Final = {
    "post": f"SELECT {_POST_COLUMNS} FROM post",
    "repost": "SELECT id, subject, cid, sort_at, author, uri FROM repost",
}
_GATHER_WHERE: Final = (
    " WHERE author IN (SELECT value FROM json_each(:authors)) AND sort_at >= :floor"
    f" AND (sort_at, cid, id) < (:at, :cid, :id) {{extra}} {_ORDER} LIMIT :n"
)
_NO_FLOOR: Final = -(1 << 62)
#: A kept reader's page from their timeline (the post's URI, or the repost's row).
_TIMELINE: Final = (
    "SELECT sort_at, cid, id, uri, subject FROM timeline"
    " WHERE reader = ? AND (sort_at, cid, id) < (?, ?, ?) {extra}"
    " ORDER BY sort_at DESC, cid DESC, id DESC, repost DESC LIMIT ?"
)
_TIMELINE_ALL: Final = _TIMELINE.format(extra="")
_TIMELINE_POSTS: Final = _TIMELINE.format(extra="AND repost = 0")


class SqliteReader:
    """Read-only queries (the :class:`~feedgen.storage.IndexReader` of SQLite).

    Each thread gets its own read-only connection on first use.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        #: Called with (viewer, kept) on every following read (any thread): the server
        #: uses it to have new readers kept (see :mod:`feedgen.readers`).
        self.on_reader: Callable[[str, bool], None] | None = None
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise RuntimeError("the index is closed")
            db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            db.execute("PRAGMA query_only = 1")
            db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for db in self._all:
                db.close()
            self._all.clear()

    def version(self) -> int:
        return int(self._db().execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])

    # -- author timelines ------------------------------------------------------------------

    def latest(
        self,
        limit: int,
        before: SortKey | None = None,
        *,
        authors: Collection[str] | None = None,
        host: str | None = None,
        replies: bool = True,
    ) -> list[FeedItem]:
        extra = "" if replies else "AND reply_parent IS NULL"
        if authors is None and host is None:
            rows = self._db().execute(
                f"SELECT {_POST_COLUMNS} FROM post WHERE (sort_at, cid, id) < (?, ?, ?)"
                f" {extra} {_ORDER} LIMIT ?",
                (*_key_params(before), limit),
            )
            return _items(rows)
        if authors is not None:
            if host is not None:
                raise ValueError("give authors or host, not both")
            args: tuple[Any, ...] = (json.dumps(list(authors)),)
            return self._by_authors(("post",), "list", args, limit, before, extra)
        return self._by_authors(("post",), "host", (host,), limit, before, extra)

    def following(
        self, viewer: str, limit: int, before: SortKey | None = None, *, reposts: bool = True
    ) -> list[FeedItem]:
        tables = ("post", "repost") if reposts else ("post",)
        db = self._db()
        floor = db.execute(
            "SELECT floor_at, floor_cid, floor_id FROM reader WHERE did = ?", (viewer,)
        ).fetchone()
        hook = self.on_reader
        if hook is not None:
            hook(viewer, floor is not None)
        if floor is None:
            return self._by_authors(tables, "follows", (viewer, viewer), limit, before, "")
        items = self._by_timeline(db, viewer, reposts, limit, before)
        if len(items) < limit:
            # the timeline holds everything at or above its floor: the rest is below it
            floor_key = _tuple(SortKey, floor)
            below = floor_key if before is None or floor_key < before else before
            if below != _BOTTOM:
                items += self._by_reader(db, viewer, tables, limit - len(items), below)
        return items

    def _by_timeline(
        self,
        db: sqlite3.Connection,
        viewer: str,
        reposts: bool,
        limit: int,
        before: SortKey | None,
    ) -> list[FeedItem]:
        """A kept reader's items from their timeline (all of them at or above its floor)."""
        rows = db.execute(_TIMELINE_ALL if reposts else _TIMELINE_POSTS,
                          (viewer, *_key_params(before), limit))
        return [
            _tuple(FeedItem, (uri, uri[5 : uri.index("/", 5)], _tuple(SortKey, (at, cid, id_)), None))
            if subject is None
            else _tuple(FeedItem, (subject, uri[5 : uri.index("/", 5)],
                                   _tuple(SortKey, (at, cid, id_)), uri))
            for at, cid, id_, uri, subject in rows
        ]

    def _by_reader(
        self,
        db: sqlite3.Connection,
        viewer: str,
        tables: tuple[str, ...],
        limit: int,
        before: SortKey | None,
    ) -> list[FeedItem]:
        """``following`` for a kept reader: only the followed accounts whose kept newest-item
        time is among the ``limit`` newest, plus those active since the cursor, are read."""
        key = dict(zip(("at", "cid", "id"), _key_params(before)))
        params: dict[str, Any] = {"viewer": viewer, "n": limit + 1, "at": key["at"]}
        newest = "SELECT subject, latest FROM reader_follow WHERE reader = :viewer"
        if before is None:
            unsure: list[str] = []
            newest += " AND latest IS NOT NULL"
        else:
            unsure = [a for (a,) in db.execute(
                "SELECT subject FROM reader_follow WHERE reader = :viewer AND latest >= :at", params
            )]
            newest += " AND latest < :at"
        estimated = db.execute(newest + " ORDER BY latest DESC LIMIT :n", params).fetchall()
        ranked = estimated + self._newest_times(db, tables, unsure, key, "")
        truncated = len(estimated) > limit
        if truncated:
            # accounts not read have times <= the last one read: read those tied with the floor
            floor = sorted((m for _, m in ranked), reverse=True)[limit - 1]
            if floor == estimated[-1][1]:
                tied = db.execute(newest + " AND latest >= :floor", {**params, "floor": floor})
                ranked = tied.fetchall() + ranked[len(estimated):]
        items, everyone = self._gather(db, tables, ranked, limit, key, "", complete=not truncated)
        if len(items) < limit and not everyone:
            every = [a for (a,) in db.execute(
                "SELECT subject FROM reader_follow WHERE reader = :viewer", params
            )]
            exact = self._newest_times(db, tables, every, key, "")
            items, _ = self._gather(db, tables, exact, limit, key, "", complete=True)
        return items

    def _by_authors(
        self,
        tables: tuple[str, ...],
        candidates: str,
        args: tuple[Any, ...],
        limit: int,
        before: SortKey | None,
        extra: str,
    ) -> list[FeedItem]:
        """The newest ``limit`` items of ``tables`` by a set of authors (see the module docstring).

        Each candidate's newest-item time comes from ``actor.latest`` when that is
        older than the cursor (then it is an upper bound of the exact time), else
        from a probe of the author index. Upper bounds never lose an item: an author
        left out has nothing newer than the page's floor. They can only make the page
        short; a short page that left authors out is computed again with exact times.
        """
        db = self._db()
        key = dict(zip(("at", "cid", "id"), _key_params(before)))
        estimated: list[tuple[str, int]] = []
        unsure: list[str] = []
        sql = _ESTIMATES.format(candidates=_CANDIDATES[candidates])
        for author, latest in db.execute(sql, args):
            if before is None or latest < before.at:
                estimated.append((author, latest))
            else:
                unsure.append(author)
        exact = self._newest_times(db, tables, unsure, key, extra)
        items, everyone = self._gather(
            db, tables, estimated + exact, limit, key, extra, complete=True
        )
        if len(items) < limit and estimated and not everyone:
            exact += self._newest_times(db, tables, [a for a, _ in estimated], key, extra)
            items, _ = self._gather(db, tables, exact, limit, key, extra, complete=True)
        return items

    def _newest_times(
        self,
        db: sqlite3.Connection,
        tables: tuple[str, ...],
        authors: list[str],
        key: dict[str, Any],
        extra: str,
    ) -> list[tuple[str, int]]:
        """(author, exact time of their newest item before the key) for those that have one."""
        if not authors:
            return []
        probes = ", ".join(
            _PROBE.format(table=t, extra=extra if t == "post" else "") for t in tables
        )
        rows = db.execute(f"SELECT value, {probes} FROM json_each(:authors)",
                          {**key, "authors": json.dumps(authors)})
        out = []
        for author, *times in rows:
            known = [t for t in times if t is not None]
            if known:
                out.append((author, max(known)))
        return out

    def _gather(
        self,
        db: sqlite3.Connection,
        tables: tuple[str, ...],
        ranked: list[tuple[str, int]],
        limit: int,
        key: dict[str, Any],
        extra: str,
        *,
        complete: bool,
    ) -> tuple[list[FeedItem], bool]:
        """Items of the authors that can hold the page, and whether every candidate was read
        (``complete``: ``ranked`` holds every candidate author)."""
        if not ranked:
            return [], complete
        ranked.sort(key=lambda row: row[1], reverse=True)
        if len(ranked) > limit:
            # Only the ``limit`` authors with the newest items (and any tied with the last
            # of them) can hold the page, and nothing of it is older than that last time.
            floor = ranked[limit - 1][1]
            chosen = [a for a, m in ranked if m >= floor]
            everyone = False
        else:
            floor, chosen, everyone = _NO_FLOOR, [a for a, _ in ranked], complete
        params = {**key, "authors": json.dumps(chosen), "floor": floor, "n": limit}
        streams = []
        for table in tables:
            sql = _GATHER[table] + _GATHER_WHERE.format(extra=extra if table == "post" else "")
            rows = db.execute(sql, params)
            if table == "post":
                streams.append(_items(rows))
            else:
                streams.append([
                    _tuple(FeedItem, (subject, author, _tuple(SortKey, (at, cid, id_)), uri))
                    for id_, subject, cid, at, author, uri in rows
                ])
        items = streams[0] if len(streams) == 1 else _newest(streams, limit)
        return items, everyone

    # -- topics ---------------------------------------------------------------------------------

    def _keyed(
        self, table: str, column: str, keys: Iterable[str], limit: int, before: SortKey | None
    ) -> list[FeedItem]:
        db = self._db()
        key = _key_params(before)
        sql = (
            f"SELECT t.post, p.uri, t.cid, t.sort_at FROM {table} t"
            " JOIN post p ON p.id = t.post"
            f" WHERE t.{column} = ? AND (t.sort_at, t.cid, t.post) < (?, ?, ?)"
            " ORDER BY t.sort_at DESC, t.cid DESC, t.post DESC LIMIT ?"
        )
        streams = [_items(db.execute(sql, (k, *key, limit))) for k in dict.fromkeys(keys)]
        if len(streams) == 1:
            return streams[0]
        return _newest(streams, limit)

    def tagged(self, tags: Collection[str], limit: int, before: SortKey | None = None) -> list[FeedItem]:
        return self._keyed("post_tag", "tag", (t.lstrip("#").lower() for t in tags), limit, before)

    def in_languages(
        self, langs: Collection[str], limit: int, before: SortKey | None = None
    ) -> list[FeedItem]:
        return self._keyed("post_lang", "lang", (lang.lower() for lang in langs), limit, before)

    def mentioning(self, did: str, limit: int, before: SortKey | None = None) -> list[FeedItem]:
        return self._keyed("post_mention", "did", (did,), limit, before)

    def search(self, words: Sequence[str], limit: int, before: SortKey | None = None) -> list[FeedItem]:
        terms = [w for w in words if w.strip()]
        if not terms:
            return []
        if not _has_fulltext(self._db()):
            raise FulltextOff(
                "this feed generator keeps no full-text index: start it with --fulltext"
            )
        query = " OR ".join('"' + w.strip().replace('"', '""') + '"' for w in terms)
        rows = self._db().execute(
            f"SELECT {_POST_COLUMNS} FROM post"
            " WHERE id IN (SELECT rowid FROM post_fts WHERE post_fts MATCH ?)"
            f" AND (sort_at, cid, id) < (?, ?, ?) {_ORDER} LIMIT ?",
            (query, *_key_params(before), limit),
        )
        return _items(rows)

    def hot(self, limit: int) -> list[HotItem]:
        rows = self._db().execute(
            "SELECT id, uri, cid, sort_at, hot, like_count FROM post WHERE hot IS NOT NULL"
            " ORDER BY hot DESC, cid DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [
            _tuple(HotItem, (uri, score, likes, _tuple(SortKey, (at, cid, id_))))
            for id_, uri, cid, at, score, likes in rows
        ]

    # -- single rows and the graph ---------------------------------------------------------------

    def post(self, uri: str) -> PostRow | None:
        row = self._db().execute(
            "SELECT uri, cid, author, text, created_at, indexed_at, langs, tags, mentions, links,"
            " reply_root, reply_parent, embed_kind, embed_uri FROM post WHERE uri = ?",
            (uri,),
        ).fetchone()
        if row is None:
            return None
        lists = tuple(tuple(json.loads(v)) if v else () for v in row[6:10])
        return PostRow(*row[:6], *lists, *row[10:])

    def like_count(self, uri: str) -> int:
        row = self._db().execute("SELECT like_count FROM post WHERE uri = ?", (uri,)).fetchone()
        return 0 if row is None else int(row[0])

    def follows(self, did: str) -> list[str]:
        rows = self._db().execute("SELECT subject FROM follow WHERE author = ?", (did,))
        return [r[0] for r in rows]

    def followers(self, did: str, limit: int = 1000) -> list[str]:
        rows = self._db().execute(
            "SELECT author FROM follow WHERE subject = ? LIMIT ?", (did, limit)
        )
        return [r[0] for r in rows]

    def blocks(self, did: str) -> set[str]:
        db = self._db()
        out = {r[0] for r in db.execute("SELECT subject FROM block WHERE author = ?", (did,))}
        out.update(r[0] for r in db.execute("SELECT author FROM block WHERE subject = ?", (did,)))
        return out

    def host_of(self, did: str) -> str | None:
        row = self._db().execute("SELECT host FROM actor WHERE did = ?", (did,)).fetchone()
        return row[0] if row and row[0] else None
