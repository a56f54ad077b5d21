"""``roost db migrate|check|restore-guard``: a service's database, outside the service.

Every service keeps its schema as numbered migrations and applies the
missing ones when it starts; these commands do the same on demand (before a
rolling upgrade, after a restore) and report what a database holds:

- ``migrate`` applies the service's pending migrations, with the service's
  own runner (the same code its start runs), on SQLite or PostgreSQL;
- ``check`` reports the schema version against this roost's, the pending
  migrations, and the firehose counters: the seq a service continues from
  must not be behind its own log, nor (with ``--min-seq``) behind the
  highest seq consumers may already have seen;
- ``restore-guard`` raises that counter to ``--seq`` when it is lower, so a
  PDS, relay or directory restored from an older backup continues after
  every seq it ever handed out instead of reusing them.

Which services have which engines: ``plc``, ``relay`` and ``feedgen`` run on
both; ``pds`` on SQLite only. Service modules are imported only when their
database is handled, so this module stays cheap to load.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from roost.database import (
    is_postgres_url,
    migrate_postgres,
    migrate_sqlite,
    postgres_schema_version,
    redact_url,
)
from roost.errors import RoostError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["SERVICES", "DatabaseStatus", "DbError", "add_commands", "check", "migrate", "restore_guard"]

SERVICES: Final = ("plc", "relay", "feedgen", "pds")

_T = TypeVar("_T")


class DbError(RoostError):
    """The database cannot be handled as asked (missing, wrong engine, unknown service)."""


@dataclass
class DatabaseStatus:
    """What ``roost db check`` found."""

    service: str
    engine: str
    location: str
    version: int
    latest: int
    pending: list[int]
    #: The seq the service continues after (None: this service hands out none).
    counter: int | None = None
    #: The highest seq in its log.
    log_max: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.pending

    def lines(self) -> list[str]:
        state = "up to date" if not self.pending else (
            "pending " + ", ".join(str(v) for v in self.pending)
        )
        out = [
            f"service  {self.service}",
            f"database {self.engine} {self.location}",
            f"schema   {self.version} of {self.latest} ({state})",
        ]
        if self.counter is not None:
            out.append(f"seq      continues after {self.counter} (log holds up to {self.log_max})")
        out += [f"PROBLEM  {p}" for p in self.problems]
        return out


# -- the services' schemas -------------------------------------------------------------------


@dataclass(frozen=True)
class _Counter:
    """Where a service keeps the seq it continues from, and its log."""

    read: str  # SQL: the counter (NULL when never set)
    log_max: str  # SQL: the highest seq in the log
    raise_to: str  # SQL: raise the counter to the one parameter when lower


_SQLITE_META_COUNTER: Final = _Counter(
    "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_seq'",
    "SELECT max(seq) FROM event",
    "INSERT INTO meta (key, value) VALUES ('last_seq', CAST(?1 AS TEXT))"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    " WHERE CAST(meta.value AS INTEGER) < ?1",
)
_SQLITE_COUNTERS: Final = {
    "pds": _SQLITE_META_COUNTER,
    "relay": _SQLITE_META_COUNTER,
    # AUTOINCREMENT keeps the highest seq ever used in sqlite_sequence
    "plc": _Counter(
        "SELECT seq FROM sqlite_sequence WHERE name = 'operations'",
        "SELECT max(seq) FROM operations",
        "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'operations' AND seq < ?1",
    ),
}
_POSTGRES_COUNTERS: Final = {
    "plc": _Counter(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('plc_operations', 'seq'))",
        "SELECT max(seq) FROM plc_operations",
        "SELECT setval(pg_get_serial_sequence('plc_operations', 'seq'), $1)"
        " WHERE coalesce(pg_sequence_last_value(pg_get_serial_sequence('plc_operations', 'seq')),"
        " 0) < $1",
    ),
    "relay": _Counter(
        "SELECT seq FROM relay_log_head WHERE id = 1",
        "SELECT max(seq) FROM relay_event",
        "UPDATE relay_log_head SET seq = $1 WHERE id = 1 AND seq < $1",
    ),
}
_POSTGRES_MODULES: Final = {"plc": "plc.postgres", "relay": "relay.postgres", "feedgen": "feedgen.postgres"}


def _sqlite_versions(service: str) -> list[int]:
    if service == "plc":
        from plc.sqlite import MIGRATIONS as PLC

        return [v for v, _ in PLC]
    module = importlib.import_module(f"{service}.sqlite")
    return list(range(1, len(module.MIGRATIONS) + 1))


def _sqlite_version(db: sqlite3.Connection, service: str) -> int:
    if service == "feedgen":
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone():
        return 0
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _postgres_migrations(service: str) -> tuple[str, Sequence[tuple[int, str]]]:
    """(component name, migrations) of a service's PostgreSQL back-end."""
    name = _POSTGRES_MODULES.get(service)
    if name is None:
        raise DbError(f"the {service} has no PostgreSQL back-end: its database is a SQLite file")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise DbError(f"this roost has no PostgreSQL back-end for the {service} ({name})") from None
    migrations = getattr(module, "MIGRATIONS", None)
    if migrations is None:
        raise DbError(f"{name} declares no MIGRATIONS")
    return getattr(module, "COMPONENT", service), migrations


# -- engines -----------------------------------------------------------------------------------


def _check_service(service: str) -> None:
    if service not in SERVICES:
        raise DbError(f"unknown service {service!r}: one of {', '.join(SERVICES)}")


def _sqlite_path(location: str) -> Path:
    return Path(location.removeprefix("sqlite://"))


def _open_sqlite(location: str, *, write: bool) -> sqlite3.Connection:
    path = _sqlite_path(location)
    if not path.exists():
        raise DbError(f"no database at {path}")
    mode = "rw" if write else "ro"
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None)


def _run_postgres(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
    import asyncpg

    async def go() -> _T:
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            raise DbError(f"cannot connect to {redact_url(dsn)}: {exc}") from None
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def _problems(status: DatabaseStatus, min_seq: int | None) -> None:
    if status.version > status.latest:
        status.problems.append(
            f"schema {status.version} is newer than this roost knows ({status.latest}): upgrade roost"
        )
    if status.counter is None:
        return
    if status.log_max is not None and status.counter < status.log_max:
        status.problems.append(
            f"the seq counter ({status.counter}) is behind the log ({status.log_max})"
        )
    if min_seq is not None and max(status.counter, status.log_max or 0) < min_seq:
        status.problems.append(
            f"seqs up to {min_seq} were handed out before, but this database continues after "
            f"{max(status.counter, status.log_max or 0)} (an older backup?): run "
            f"`roost db restore-guard --service {status.service} --seq {min_seq}` before starting"
        )


def check(service: str, location: str, *, min_seq: int | None = None) -> DatabaseStatus:
    """The state of ``service``'s database at ``location`` (nothing is changed)."""
    _check_service(service)
    if is_postgres_url(location):
        component, migrations = _postgres_migrations(service)
        versions = [v for v, _ in migrations]
        counter = _POSTGRES_COUNTERS.get(service)

        async def read(conn: asyncpg.Connection) -> DatabaseStatus:
            version = await postgres_schema_version(conn, component)
            applied: set[int] = set()
            if version:
                rows = await conn.fetch(
                    "SELECT version FROM roost_schema_version WHERE component = $1", component
                )
                applied = {r[0] for r in rows}
            status = DatabaseStatus(
                service, "postgresql", redact_url(location), version, max(versions, default=0),
                [v for v in versions if v not in applied],
            )
            if counter is not None and version:
                status.counter = int(await conn.fetchval(counter.read) or 0)
                status.log_max = int(await conn.fetchval(counter.log_max) or 0)
            return status

        status = _run_postgres(location, read)
    else:
        versions = _sqlite_versions(service)
        db = _open_sqlite(location, write=False)
        try:
            version = _sqlite_version(db, service)
            status = DatabaseStatus(
                service, "sqlite", str(_sqlite_path(location)), version, max(versions, default=0),
                [v for v in versions if v > version],
            )
            counter = _SQLITE_COUNTERS.get(service)
            if counter is not None and version:
                status.counter = int((db.execute(counter.read).fetchone() or (0,))[0] or 0)
                status.log_max = int(db.execute(counter.log_max).fetchone()[0] or 0)
        finally:
            db.close()
    _problems(status, min_seq)
    return status


def migrate(service: str, location: str) -> tuple[int, int]:
    """Apply ``service``'s pending migrations at ``location``; (version before, after).

    A SQLite database is created when the file does not exist yet.
    """
    _check_service(service)
    if is_postgres_url(location):
        component, migrations = _postgres_migrations(service)

        async def apply(conn: asyncpg.Connection) -> tuple[int, int]:
            before = await postgres_schema_version(conn, component)
            after = await migrate_postgres(conn, component, migrations)
            return before, after

        return _run_postgres(location, apply)
    path = _sqlite_path(location)
    before = 0
    if path.exists():
        db = _open_sqlite(location, write=False)
        try:
            before = _sqlite_version(db, service)
        finally:
            db.close()
    if service == "feedgen":  # the index keeps its version in user_version
        from feedgen.sqlite import SqliteIndex

        SqliteIndex(path).close()
    elif service == "plc":
        from plc.sqlite import SqlitePlcStore

        async def open_close() -> None:
            store = SqlitePlcStore(path)
            await store.open()
            await store.close()

        asyncio.run(open_close())
    else:
        module = importlib.import_module(f"{service}.sqlite")
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            migrate_sqlite(db, module.MIGRATIONS, f"{service} database")
        finally:
            db.close()
    db = _open_sqlite(location, write=False)
    try:
        return before, _sqlite_version(db, service)
    finally:
        db.close()


def restore_guard(service: str, location: str, seq: int) -> tuple[int, int]:
    """Raise ``service``'s seq counter to ``seq`` if it is lower; (counter before, after).

    Run it on a restored database before the service starts, with the
    highest seq that consumers may have seen from the service before the
    restore.
    """
    _check_service(service)
    if seq < 0:
        raise DbError("--seq must not be negative")
    status = check(service, location)
    if status.counter is None:
        raise DbError(f"the {service} hands out no firehose seqs: nothing to guard")
    if status.pending:
        raise DbError("the schema has pending migrations: run `roost db migrate` first")
    before = max(status.counter, status.log_max or 0)
    if is_postgres_url(location):
        counter = _POSTGRES_COUNTERS[service]

        async def raise_it(conn: asyncpg.Connection) -> None:
            await conn.execute(counter.raise_to, seq)

        _run_postgres(location, raise_it)
    else:
        counter = _SQLITE_COUNTERS[service]
        db = _open_sqlite(location, write=True)
        try:
            if service == "plc" and not db.execute(counter.read).fetchone():
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('operations', 0)")
            db.execute(counter.raise_to, (seq,))
        finally:
            db.close()
    after = check(service, location)
    return before, max(after.counter or 0, after.log_max or 0)


# -- the command line ---------------------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``db`` and its actions to the ``roost`` subcommands."""
    group = commands.add_parser("db", help="migrate, check and guard a service's database")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    def target(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--service", required=True, choices=SERVICES)
        parser.add_argument("--database", required=True, metavar="PATH_OR_URL",
                            help="a SQLite file or a postgresql:// URL")

    p = sub.add_parser("migrate", help="apply the service's pending schema migrations")
    target(p)
    p.set_defaults(handler=_migrate)
    p = sub.add_parser("check", help="schema version, pending migrations and seq counters")
    target(p)
    p.add_argument("--min-seq", type=int,
                   help="the highest seq consumers may have seen (e.g. after a restore)")
    p.set_defaults(handler=_check)
    p = sub.add_parser("restore-guard",
                       help="after a restore: continue the firehose after SEQ, never below it")
    target(p)
    p.add_argument("--seq", type=int, required=True,
                   help="the highest seq the service handed out before the restore")
    p.set_defaults(handler=_restore_guard)


def _fail(action: str, exc: Exception) -> int:
    print(f"roost db {action}: {exc}", file=sys.stderr)
    return 2


def _migrate(args: argparse.Namespace) -> int:
    try:
        before, after = migrate(args.service, args.database)
    except (DbError, RuntimeError, ValueError, OSError) as exc:
        return _fail("migrate", exc)
    if before == after:
        print(f"{args.service}: schema {after}, nothing to migrate")
    else:
        print(f"{args.service}: schema {before} -> {after}")
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        status = check(args.service, args.database, min_seq=args.min_seq)
    except (DbError, sqlite3.Error, OSError) as exc:
        return _fail("check", exc)
    for line in status.lines():
        print(line)
    return 0 if status.ok else 1


def _restore_guard(args: argparse.Namespace) -> int:
    try:
        before, after = restore_guard(args.service, args.database, args.seq)
    except (DbError, sqlite3.Error, OSError) as exc:
        return _fail("restore-guard", exc)
    if after > before:
        print(f"{args.service}: seq counter raised from {before} to {after}; "
              f"the next event gets seq {after + 1}")
    else:
        print(f"{args.service}: seq counter already at {before}; nothing changed")
    return 0
