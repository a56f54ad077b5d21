"""``roost db``: migrations and checks on both engines, and the restore guard on seq counters."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from pds.sqlite import MIGRATIONS as PDS_MIGRATIONS
from pds.sqlite import PdsDatabase
from relay.sqlite import SqliteStore
from roost.cli import main
from roost.database import migrate_sqlite
from roost.db import DbError, check, migrate, restore_guard

ON_SQLITE = ["plc", "relay", "feedgen", "pds"]
ON_POSTGRES = ["plc", "relay", "feedgen"]


def _location(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if engine == "postgres":
        return str(request.getfixturevalue("postgres_dsn"))
    return str(tmp_path / "service.sqlite")


@pytest.mark.parametrize(
    ("engine", "service"),
    [("sqlite", s) for s in ON_SQLITE] + [("postgres", s) for s in ON_POSTGRES],
)
def test_migrate_brings_an_empty_database_up_to_date_once(
    engine: str, service: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = _location(engine, tmp_path, request)
    before, after = migrate(service, where)
    assert before == 0 and after >= 1
    status = check(service, where)
    assert status.ok, status.lines()
    assert (status.version, status.latest, status.pending) == (after, after, [])
    assert status.engine == ("postgresql" if engine == "postgres" else "sqlite")
    assert migrate(service, where) == (after, after)
    if service in ("plc", "relay", "pds"):
        assert (status.counter, status.log_max) == (0, 0)
    else:
        assert status.counter is None  # a feed index hands out no seqs


def test_the_pds_has_no_postgres_back_end_and_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DbError, match="no PostgreSQL back-end"):
        check("pds", "postgresql://nobody@127.0.0.1:1/x")
    with pytest.raises(DbError, match="no database at"):
        check("relay", str(tmp_path / "missing.sqlite"))
    with pytest.raises(DbError, match="unknown service"):
        check("appview", str(tmp_path / "x.sqlite"))


def test_check_reports_pending_migrations_and_a_newer_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pds.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    migrate_sqlite(db, PDS_MIGRATIONS[:1])  # an older roost's database
    db.close()
    status = check("pds", str(path))
    assert status.version == 1 and status.pending == list(range(2, len(PDS_MIGRATIONS) + 1))
    assert main(["db", "check", "--service", "pds", "--database", str(path)]) == 1
    assert "pending 2" in capsys.readouterr().out
    assert main(["db", "migrate", "--service", "pds", "--database", str(path)]) == 0
    assert f"schema 1 -> {len(PDS_MIGRATIONS)}" in capsys.readouterr().out
    assert main(["db", "check", "--service", "pds", "--database", str(path)]) == 0

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE schema_version SET version = 99")
    db.close()
    status = check("pds", str(path))
    assert not status.ok and "newer than this roost" in status.problems[0]


def _pds_with_events(path: Path, seqs: range, counter: int) -> None:
    migrate("pds", str(path))
    db = sqlite3.connect(path, isolation_level=None)
    db.executemany("INSERT INTO event (seq, did, time_ms, frame) VALUES (?, 'did:plc:x', 0, x'00')",
                   [(s,) for s in seqs])
    db.execute("INSERT INTO meta (key, value) VALUES ('last_seq', ?)", (str(counter),))
    db.close()


def test_a_counter_behind_its_log_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "pds.sqlite"
    _pds_with_events(path, range(1, 8), counter=5)
    status = check("pds", str(path))
    assert (status.counter, status.log_max) == (5, 7)
    assert any("behind the log" in p for p in status.problems)


def test_a_restored_pds_continues_after_the_guarded_seq(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older backup (seqs up to 5) of a PDS that had reached seq 9."""
    path = tmp_path / "pds.sqlite"
    _pds_with_events(path, range(1, 6), counter=5)
    assert check("pds", str(path), min_seq=5).ok
    status = check("pds", str(path), min_seq=9)
    assert any("restore-guard --service pds --seq 9" in p for p in status.problems)
    args = ["db", "restore-guard", "--service", "pds", "--database", str(path), "--seq", "9"]
    assert main(args) == 0
    assert "raised from 5 to 9; the next event gets seq 10" in capsys.readouterr().out
    assert check("pds", str(path), min_seq=9).ok
    pds = PdsDatabase(path)
    try:
        assert pds.last_seq() == 9  # what the PDS's sequencer continues from
    finally:
        pds.close()
    assert restore_guard("pds", str(path), 7) == (9, 9)  # never lowered


def test_a_restored_relay_continues_after_the_guarded_seq(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite"
    migrate("relay", str(path))
    assert restore_guard("relay", str(path), 40) == (0, 40)
    store = SqliteStore(path)
    try:
        assert store.last_seq() == 40
    finally:
        store.close()


def test_a_restored_plc_directory_never_reuses_a_seq(tmp_path: Path) -> None:
    path = tmp_path / "plc.sqlite"
    migrate("plc", str(path))
    assert restore_guard("plc", str(path), 12) == (0, 12)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO operations (did, cid, operation, created_at) VALUES ('d', 'c', '{}', 't')")
    assert db.execute("SELECT seq FROM operations").fetchone()[0] == 13
    db.close()


@pytest.mark.parametrize("service", ["plc", "relay"])
def test_restore_guard_on_postgres(service: str, postgres_dsn: str) -> None:
    migrate(service, postgres_dsn)
    assert restore_guard(service, postgres_dsn, 30) == (0, 30)
    assert restore_guard(service, postgres_dsn, 20) == (30, 30)
    status = check(service, postgres_dsn, min_seq=30)
    assert status.ok and status.counter == 30

    async def next_seq() -> int:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            if service == "plc":
                return int(await conn.fetchval(
                    "SELECT nextval(pg_get_serial_sequence('plc_operations', 'seq'))"
                ))
            return int(await conn.fetchval("SELECT seq + 1 FROM relay_log_head WHERE id = 1"))
        finally:
            await conn.close()

    assert asyncio.run(next_seq()) == 31


def test_the_feed_index_has_no_seq_to_guard(tmp_path: Path) -> None:
    path = tmp_path / "feedgen.sqlite"
    migrate("feedgen", str(path))
    with pytest.raises(DbError, match="nothing to guard"):
        restore_guard("feedgen", str(path), 5)
