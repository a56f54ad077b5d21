"""Configuration of a relay (``roost relay serve``).

:class:`RelayConfig` is a frozen dataclass; :meth:`RelayConfig.from_env`
reads ``ROOST_<FIELD>`` environment variables (``ROOST_PLC_URL``,
``ROOST_CRAWL`` comma-separated, ``ROOST_ALLOW_LOCAL``...) and keyword
overrides (the CLI flags) win. Defaults follow indigo's ``relay serve``
(``spec/relay.md`` section 11) unless noted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from roost import __version__
from roost import config as roost_config
from roost.database import is_postgres_url, redact_url

__all__ = ["ROLES", "RelayConfig", "SQLITE_FILE"]

#: What a relay process does (``--role``).
ROLES: Final = ("all", "ingest", "frontend")

#: The database file in the data directory when ``database`` is not set.
SQLITE_FILE: Final = "relay.sqlite"
_SQLITE_SCHEME: Final = "sqlite:///"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything a relay needs to start."""

    host: str = "127.0.0.1"
    port: int = 2584
    data_dir: Path = Path("roost-data/relay")
    #: SQLite file (a path or ``sqlite:///path``; default ``<data_dir>/relay.sqlite``)
    #: or a ``postgresql://`` URL (a log several relay processes share).
    database: str | None = None
    #: ``all`` (crawl, verify, append and serve), ``ingest`` (the same; the one
    #: writer of a shared log) or ``frontend`` (serve a shared PostgreSQL log
    #: that an ingest process writes; see :mod:`relay.frontend`).
    role: str = "all"
    plc_url: str = "https://plc.directory"
    #: Hosts subscribed to at start (operator's list: no daily quota, no describeServer check).
    crawl: tuple[str, ...] = ()
    #: Basic-auth password of the ``/admin/`` API (user ``admin``); unset disables it.
    admin_password: str | None = None
    #: Outbound connections may go to loopback/private addresses, and such hosts
    #: may ask to be crawled without TLS (a local network such as ``roost up``).
    allow_local: bool = False
    #: How far back a cursor replays (by event time), and the log's size cap.
    replay_window_s: float = 72 * 3600.0
    max_log_bytes: int = 20_000_000_000
    #: Live events queued per consumer before it is sent back to replay or, if it
    #: has stopped reading for ``consumer_stall_s``, dropped with ConsumerTooSlow.
    consumer_buffer: int = 16_384
    consumer_stall_s: float = 10.0
    #: Accounts a new host may bring before further ones are throttled.
    default_account_limit: int = 100
    trusted_account_limit: int = 10_000_000
    #: Hostname patterns (``fnmatch``; ``*`` matches dots too) of trusted hosts.
    trusted_hosts: tuple[str, ...] = ("*.host.bsky.network",)
    #: Public requestCrawl: on or off, the hosts it may add (patterns; empty: any),
    #: and how many new hosts per 24 hours.
    crawl_enabled: bool = True
    allowed_hosts: tuple[str, ...] = ()
    new_hosts_per_day: int = 50
    #: Hostname suffixes refused at start (besides bans stored by the admin API).
    banned_domains: tuple[str, ...] = ()
    #: Verification worker processes; ``None`` = one per CPU (0 = verify in the server process).
    verify_workers: int | None = None
    #: The first seq of a new log (Bluesky's relays started at 20,000,000,000).
    initial_seq: int = 1
    #: Accounts whose state is kept in memory (least recently used go first).
    account_cache: int = 500_000
    #: Largest repo CAR fetched to resync a desynchronized account.
    max_resync_bytes: int = 200_000_000
    debug: bool = False
    version: str = field(default=__version__)

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not self.plc_url.startswith(("https://", "http://")):
            raise ValueError(f"plc_url must be an http(s) URL, got {self.plc_url!r}")
        if self.port < 0:
            raise ValueError("port must not be negative")
        positive = (
            "replay_window_s",
            "max_log_bytes",
            "consumer_buffer",
            "consumer_stall_s",
            "initial_seq",
            "account_cache",
            "max_resync_bytes",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.default_account_limit < 0 or self.trusted_account_limit < 0:
            raise ValueError("account limits must not be negative")
        if self.new_hosts_per_day < 0:
            raise ValueError("new_hosts_per_day must not be negative")
        if self.verify_workers is not None and self.verify_workers < 0:
            raise ValueError("verify_workers must not be negative")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.postgres_url is None:
            self.database_path  # noqa: B018 - checks the database setting
            if self.role == "frontend":
                raise ValueError(
                    "the frontend role serves the event log an ingest process writes to a shared"
                    " database: --database must be a postgresql:// URL"
                )

    # -- derived -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def database_path(self) -> Path:
        """The SQLite file; ``ValueError`` for a database this version cannot use."""
        db = self.database
        if not db:
            return self.data_dir / SQLITE_FILE
        if db.startswith(_SQLITE_SCHEME):
            # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db
            return Path(db[len(_SQLITE_SCHEME) :])
        if is_postgres_url(db):
            raise ValueError(f"{redact_url(db)} is a PostgreSQL database, not a SQLite file")
        if "://" in db:
            raise ValueError(f"unsupported database URL {db!r}")
        return Path(db)

    @property
    def postgres_url(self) -> str | None:
        """The ``postgresql://`` URL of the database, or None for SQLite."""
        return self.database if is_postgres_url(self.database) else None

    @property
    def workers(self) -> int:
        """Verification processes to start (``verify_workers`` resolved)."""
        if self.verify_workers is not None:
            return self.verify_workers
        cpus = os.cpu_count() or 1
        return cpus if cpus > 1 else 0

    # -- construction --------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> RelayConfig:
        """Build from ``ROOST_<FIELD>`` variables; non-None ``overrides`` win."""
        return roost_config.from_env(cls, env, _convert, overrides)  # type: ignore[no-any-return]

    def __repr__(self) -> str:  # secrets masked
        shown = {
            f.name: ("***" if f.name in _SECRETS and getattr(self, f.name) else getattr(self, f.name))
            for f in fields(self)
        }
        if self.database:
            shown["database"] = redact_url(self.database)
        return "RelayConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


_SECRETS = {"admin_password"}
_INTS = {
    "port",
    "max_log_bytes",
    "consumer_buffer",
    "default_account_limit",
    "trusted_account_limit",
    "new_hosts_per_day",
    "verify_workers",
    "initial_seq",
    "account_cache",
    "max_resync_bytes",
}
_FLOATS = {"replay_window_s", "consumer_stall_s"}
_BOOLS = {"allow_local", "crawl_enabled", "debug"}
_TUPLES = {"crawl", "trusted_hosts", "allowed_hosts", "banned_domains"}


_convert = roost_config.typed_converter(
    ints=_INTS, floats=_FLOATS, bools=_BOOLS, tuples=_TUPLES
)
