"""Big batches go to SQLite as one JSON document per kind: the rows come out the same."""

from __future__ import annotations

from pathlib import Path

from feedgen.sqlite import BULK_ROWS, SqliteIndex
from feedgen.storage import BlockRow, IndexOp, PostRow
from tests.feedgen.helpers import follow, like, post, repost

TABLES = ("post", "post_tag", "post_lang", "post_mention", "post_like", "repost", "follow",
          "block", "actor")


def ops() -> list[IndexOp]:
    authors = [f"did:plc:author{n}" for n in range(7)]
    out: list[IndexOp] = []
    posts: list[PostRow] = []
    for n in range(3 * BULK_ROWS):
        author = authors[n % len(authors)]
        posts.append(post(author, f"p{n}", 1_000 + n // 3,
                          text=f"héllo \"{n}\" \\ \u2603 \U0001f600 {'x' * (n % 5)}"
                          + ("\x00nul" if n == 5 else ""),
                          tags=("roost", "t") if n % 4 == 0 else (),
                          langs=("en", "en-us") if n % 2 else ("ja",),
                          mentions=(authors[0],) if n % 3 == 0 else (),
                          reply_to=posts[0].uri if n % 5 == 1 else None))
    out += posts
    out += [like(authors[n % 7], f"l{n}", posts[n % 20].uri, 2_000 + n) for n in range(2 * BULK_ROWS)]
    out += [repost(authors[n % 7], f"r{n}", posts[n].uri, 3_000 + n) for n in range(BULK_ROWS)]
    out += [follow(authors[n % 7], f"did:plc:s{n}", f"f{n}") for n in range(BULK_ROWS)]
    out += [BlockRow(f"at://{authors[n % 7]}/app.bsky.graph.block/b{n}", authors[n % 7],
                     f"did:plc:s{n}", 5_000 + n) for n in range(BULK_ROWS)]
    return out


def dump(index: SqliteIndex) -> dict[str, list[tuple[object, ...]]]:
    db = index._db
    return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in TABLES}


def test_one_big_batch_indexes_what_single_rows_do(tmp_path: Path) -> None:
    bulk = SqliteIndex(tmp_path / "bulk.sqlite")
    single = SqliteIndex(tmp_path / "single.sqlite")
    try:
        batch = ops()
        bulk.apply(batch)
        texts = [t for (t,) in bulk._db.execute("SELECT text FROM post")]
        assert any(t.endswith("\x00nul") for t in texts)  # the whole text, NUL and all
        for op in batch:
            single.apply([op])
        got, want = dump(bulk), dump(single)
        assert len(got["post"]) == 3 * BULK_ROWS and got["post_tag"] and got["post_mention"]
        assert got == want
        bulk.apply(batch)  # applying it again changes nothing
        assert dump(bulk) == want
    finally:
        bulk.close()
        single.close()
