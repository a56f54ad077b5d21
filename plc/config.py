"""Configuration of the did:plc directory (``roost plc serve``).

:class:`PlcConfig` is a frozen dataclass; :meth:`PlcConfig.from_env` reads
``ROOST_*`` environment variables, and keyword overrides (CLI flags) win.

===========================  =============================================
variable                     meaning (default)
===========================  =============================================
``ROOST_HOST``               listen address (127.0.0.1)
``ROOST_PORT``               listen port (2582)
``ROOST_DATA_DIR``           data directory (./roost-data/plc)
``ROOST_DATABASE``           SQLite file (<data dir>/plc.sqlite)
``ROOST_UPSTREAM``           mirror this directory instead of accepting ops
``ROOST_POLL_INTERVAL``      mirror: seconds between export polls (5)
``ROOST_MAX_BODY_BYTES``     largest POST body (16384)
``ROOST_IP_RATE_LIMIT``      submissions per client IP per window (600; 0 = off)
``ROOST_IP_RATE_WINDOW``     that window, seconds (60)
``ROOST_DID_OPS_PER_HOUR``   ops per DID per hour (10)
``ROOST_DID_OPS_PER_DAY``    ops per DID per day (30)
``ROOST_DID_OPS_PER_WEEK``   ops per DID per week (100)
===========================  =============================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roost import __version__
from roost import config as roost_config
from roost.database import is_postgres_url
from roost.plc import OpRateLimits

if TYPE_CHECKING:
    from plc.storage import PlcStore

__all__ = ["PlcConfig"]



@dataclass(frozen=True, slots=True)
class PlcConfig:
    """Everything the directory needs to start."""

    host: str = "127.0.0.1"
    port: int = 2582
    data_dir: Path = Path("roost-data/plc")
    #: SQLite file (default ``<data_dir>/plc.sqlite``) or a ``postgresql://`` URL.
    database: Path | str | None = None
    upstream: str | None = None
    poll_interval: float = 5.0
    max_body_bytes: int = 16_384
    ip_rate_limit: int = 600
    ip_rate_window: float = 60.0
    did_ops_per_hour: int = 10
    did_ops_per_day: int = 30
    did_ops_per_week: int = 100
    version: str = field(default=__version__)

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.database is not None and not (
            isinstance(self.database, Path) or is_postgres_url(self.database)
        ):
            object.__setattr__(self, "database", Path(self.database))
        if self.upstream is not None:
            object.__setattr__(self, "upstream", self.upstream.rstrip("/") or None)
        for name in ("port", "max_body_bytes", "ip_rate_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.poll_interval <= 0 or self.ip_rate_window <= 0:
            raise ValueError("poll_interval and ip_rate_window must be positive")

    @property
    def database_path(self) -> Path:
        """The SQLite file: ``database`` or ``<data_dir>/plc.sqlite``."""
        if is_postgres_url(self.database):
            raise ValueError("the directory is configured for PostgreSQL, not a SQLite file")
        return self.database if isinstance(self.database, Path) else self.data_dir / "plc.sqlite"

    def open_store(self) -> PlcStore:
        """The configured storage back-end (not opened yet)."""
        if is_postgres_url(self.database):
            from plc.postgres import PostgresPlcStore

            return PostgresPlcStore(str(self.database))
        from plc.sqlite import SqlitePlcStore

        return SqlitePlcStore(self.database_path)

    @property
    def op_rate_limits(self) -> OpRateLimits:
        return OpRateLimits(self.did_ops_per_hour, self.did_ops_per_day, self.did_ops_per_week)

    @property
    def is_mirror(self) -> bool:
        return self.upstream is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> PlcConfig:
        """Build from ``ROOST_<FIELD>`` variables; non-None ``overrides`` win."""
        return roost_config.from_env(cls, env, _convert, overrides)  # type: ignore[no-any-return]

    def with_overrides(self, **overrides: Any) -> PlcConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _convert(name: str, raw: str) -> Any:
    try:
        if name in ("port", "max_body_bytes", "ip_rate_limit") or name.startswith("did_ops_"):
            return int(raw)
        if name in ("poll_interval", "ip_rate_window"):
            return float(raw)
    except ValueError:
        raise ValueError(f"{roost_config.ENV_PREFIX}{name.upper()} must be a number, got {raw!r}") from None
    if name == "database" and is_postgres_url(raw):
        return raw
    if name in ("data_dir", "database"):
        return Path(raw)
    return raw
