"""Configuration of a feed generator host (``roost feedgen serve``).

:class:`FeedgenConfig` is a frozen dataclass; :meth:`FeedgenConfig.from_env`
reads ``ROOST_<FIELD>`` environment variables (``ROOST_RELAY_URL``,
``ROOST_SERVICE_DID``, ``ROOST_PLUGINS`` comma-separated...), keyword
overrides (the command-line flags) win.

Which feeds are served comes from a feeds file (TOML; ``--feeds``, default
``<data-dir>/feeds.toml`` when it exists)::

    publisher = "did:plc:abc..."        # default publisher of every feed

    [[feed]]
    rkey = "cats"                       # at://<publisher>/app.bsky.feed.generator/cats
    algorithm = "hashtag"
    display_name = "Cats"
    description = "Posts tagged #cats"
    anonymous = true                    # answer without a service token
    options = { tags = ["cats", "kittens"] }

Without a feeds file every registered algorithm that needs no options is
served under its own name, published by ``publisher_did`` (default: the
service DID).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from roost import __version__
from roost import config as roost_config
from roost.syntax import is_valid_did

__all__ = ["FeedSpec", "FeedgenConfig", "load_feeds_file"]

#: Default port (``roost up``: base port 2582 + 3).
DEFAULT_PORT: Final = 2585
#: The values of ``role``.
ROLES: Final = ("all", "indexer", "server")
_SPEC_KEYS: Final = frozenset(
    {"rkey", "algorithm", "options", "anonymous", "display_name", "description", "publisher"}
)


@dataclass(frozen=True, slots=True)
class FeedgenConfig:
    """Everything a feed generator host needs to start."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("roost-data/feedgen")
    #: Public host name (``name[:port]``); default ``localhost:<port>``.
    hostname: str | None = None
    #: How the network reaches this service (default ``https://<hostname>``,
    #: or ``http://localhost:<port>`` for a local one).
    public_url: str | None = None
    #: The service's DID (default ``did:web:<hostname>``, ``:`` encoded).
    service_did: str | None = None
    #: Default publisher of the feeds (default: the service DID).
    publisher_did: str | None = None
    #: The firehose to index (a relay or a PDS); None indexes nothing.
    relay_url: str | None = None
    #: Where to start reading a firehose the index has no cursor for (None: live).
    start_cursor: int | None = None
    plc_url: str = "https://plc.directory"
    #: SQLite file (default ``<data-dir>/feedgen.sqlite``) or a ``postgresql://`` URL.
    database: str | None = None
    #: What this process does with the index: ``all`` (index and serve), ``indexer``
    #: (index, place authors' hosts, prune; no feeds served) or ``server`` (serve feeds
    #: only). Several servers and one indexer can share a PostgreSQL index.
    role: str = "all"
    feeds_file: Path | None = None
    #: Extra algorithms: ``package.module`` or ``package.module:name``.
    plugins: tuple[str, ...] = ()
    #: Load the ``roost.feeds`` entry points of installed distributions.
    entry_points: bool = True
    #: Keep a full-text index of post text (None: when a ``keyword`` feed is served).
    fulltext: bool | None = None
    #: Outbound requests may target loopback/private addresses (a local network).
    allow_local: bool = False
    algorithm_timeout_s: float = 2.0
    algorithm_threads: int = 4
    #: Seconds a shared feed's page is served again to other readers (0: off).
    page_cache_s: float = 1.0
    #: Refuse a service token whose ``jti`` was seen before.
    replay_protection: bool = True
    #: Check every commit's signature and MST inversion (the relay already does).
    verify_firehose: bool = False
    #: Forget posts, reposts and likes older than this many days (0: keep all).
    retention_days: float = 0.0
    #: Events per index transaction at most, and how long a batch may wait.
    batch_size: int = 2_000
    batch_delay_s: float = 0.1
    privacy_policy_url: str | None = None
    terms_of_service_url: str | None = None
    debug: bool = False
    version: str = field(default=__version__)

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.feeds_file is not None and not isinstance(self.feeds_file, Path):
            object.__setattr__(self, "feeds_file", Path(self.feeds_file))
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0-65535")
        if self.service_did is not None and not is_valid_did(self.service_did):
            raise ValueError(f"service_did {self.service_did!r} is not a DID")
        if self.publisher_did is not None and not is_valid_did(self.publisher_did):
            raise ValueError(f"publisher_did {self.publisher_did!r} is not a DID")
        if self.hostname is not None and (not self.hostname or "/" in self.hostname):
            raise ValueError(f"hostname {self.hostname!r} is not a host name")
        if self.algorithm_timeout_s <= 0 or self.algorithm_threads < 1:
            raise ValueError("algorithm_timeout_s must be positive, algorithm_threads at least 1")
        if self.page_cache_s < 0:
            raise ValueError("page_cache_s must not be negative")
        if self.start_cursor is not None and self.start_cursor < 0:
            raise ValueError("start_cursor must not be negative")
        if self.batch_size < 1 or self.batch_delay_s < 0 or self.retention_days < 0:
            raise ValueError("batch_size, batch_delay_s and retention_days must be positive")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if self.role == "indexer" and not self.relay_url:
            raise ValueError("an indexer needs a firehose to index: set relay_url (--relay-url)")
        for url in (self.public_url, self.relay_url):
            if url is not None and urlsplit(url).scheme not in ("http", "https", "ws", "wss"):
                raise ValueError(f"{url!r} is not an http(s) or ws(s) URL")

    # -- derived -----------------------------------------------------------

    @property
    def public_hostname(self) -> str:
        if self.hostname:
            return self.hostname.lower()
        if self.public_url:
            return urlsplit(self.public_url).netloc.lower()
        return f"localhost:{self.port}"

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        name = self.public_hostname
        if name.split(":")[0] in ("localhost", "127.0.0.1"):
            return f"http://{name}"
        return f"https://{name}"

    @property
    def web_did(self) -> str:
        """``did:web:<hostname>`` (``:`` before a port encoded as ``%3A``)."""
        return "did:web:" + quote(self.public_hostname, safe=".-")

    @property
    def did(self) -> str:
        """The service DID (``#bsky_fg`` is its feed generator service)."""
        return self.service_did or self.web_did

    @property
    def publisher(self) -> str:
        return self.publisher_did or self.did

    @property
    def indexes(self) -> bool:
        """This process writes the index (role ``all`` or ``indexer``)."""
        return self.role != "server"

    @property
    def serves(self) -> bool:
        """This process answers getFeedSkeleton (role ``all`` or ``server``)."""
        return self.role != "indexer"

    @property
    def database_location(self) -> str:
        return self.database or str(self.data_dir / "feedgen.sqlite")

    @property
    def feeds_path(self) -> Path | None:
        if self.feeds_file is not None:
            return self.feeds_file
        default = self.data_dir / "feeds.toml"
        return default if default.exists() else None

    # -- construction --------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> FeedgenConfig:
        """Build from ``ROOST_<FIELD>`` variables; non-None ``overrides`` win."""
        return roost_config.from_env(cls, env, _convert, overrides)  # type: ignore[no-any-return]


_INTS = {"port", "algorithm_threads", "batch_size", "start_cursor"}
_FLOATS = {"algorithm_timeout_s", "retention_days", "batch_delay_s", "page_cache_s"}
_BOOLS = {
    "allow_local", "debug", "replay_protection", "verify_firehose", "entry_points", "fulltext"
}
_TUPLES = {"plugins"}
_PATHS = {"data_dir", "feeds_file"}


_convert = roost_config.typed_converter(
    ints=_INTS, floats=_FLOATS, bools=_BOOLS, tuples=_TUPLES, paths=_PATHS
)


# -- the feeds file ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedSpec:
    """One ``[[feed]]`` of a feeds file."""

    rkey: str
    algorithm: str
    options: Mapping[str, Any] = field(default_factory=dict)
    anonymous: bool | None = None
    display_name: str | None = None
    description: str | None = None
    publisher: str | None = None


def load_feeds_file(path: Path) -> tuple[str | None, list[FeedSpec]]:
    """(default publisher, feeds) of a feeds file; ``ValueError`` explains mistakes."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read feeds file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"feeds file {path} is not valid TOML: {exc}") from None
    publisher = data.get("publisher")
    if publisher is not None and not is_valid_did(publisher):
        raise ValueError(f"{path}: publisher {publisher!r} is not a DID")
    specs = []
    entries = data.get("feed", [])
    if not isinstance(entries, list):
        raise ValueError(f"{path}: write each feed as a [[feed]] table")
    for number, entry in enumerate(entries, 1):
        where = f"{path}: feed #{number}"
        unknown = set(entry) - _SPEC_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        if not isinstance(entry.get("rkey"), str) or not isinstance(entry.get("algorithm"), str):
            raise ValueError(f"{where}: rkey and algorithm are required strings")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise ValueError(f"{where}: options must be a table")
        anonymous = entry.get("anonymous")
        if anonymous is not None and not isinstance(anonymous, bool):
            raise ValueError(f"{where}: anonymous must be true or false")
        for key in ("display_name", "description", "publisher"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise ValueError(f"{where}: {key} must be a string")
        specs.append(
            FeedSpec(
                rkey=entry["rkey"],
                algorithm=entry["algorithm"],
                options=options,
                anonymous=anonymous,
                display_name=entry.get("display_name"),
                description=entry.get("description"),
                publisher=entry.get("publisher"),
            )
        )
    return publisher, specs
