"""Configuration of a personal data server (``roost pds serve``).

:class:`PdsConfig` is a frozen dataclass. :meth:`PdsConfig.from_env` reads
``ROOST_<FIELD>`` environment variables (``ROOST_HOSTNAME``, ``ROOST_PLC_URL``,
``ROOST_RELAY_URLS`` comma-separated...); keyword overrides (CLI flags) win.

Secrets the operator does not set (the JWT signing secret, the PLC rotation
key) are generated once and kept in ``<data_dir>/secrets.json`` (mode 0600),
so tokens and DIDs stay valid across restarts.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

from roost import __version__
from roost import config as roost_config
from roost.crypto import PrivateKey
from roost.syntax import is_valid_handle

__all__ = ["PdsConfig", "SIGNUP_MODES"]

#: How people may join: anyone, with an invite code, or by an application an admin approves.
SIGNUP_MODES = ("open", "invite", "application")


@dataclass(frozen=True, slots=True)
class PdsConfig:
    """Everything a PDS needs to start."""

    host: str = "127.0.0.1"
    port: int = 2583
    data_dir: Path = Path("roost-data/pds")
    #: Public host name; handles are ``<name>.<hostname>``, the service DID ``did:web:<hostname>``.
    hostname: str = "pds.test"
    #: How clients and other services reach this server (default ``http://host:port``).
    public_url: str | None = None
    plc_url: str = "http://127.0.0.1:2582"
    relay_urls: tuple[str, ...] = ()
    admin_password: str | None = None
    jwt_secret: str | None = None
    #: k256 PLC rotation key of the server, hex (generated when absent).
    rotation_key_hex: str | None = None
    signup_mode: str = "open"
    #: Shown on the public page: the community's name (default: the hostname) and what it is.
    server_name: str | None = None
    server_description: str | None = None
    #: The server's rules, one per entry, shown at sign-up (``ROOST_RULES`` separates them by "|").
    rules: tuple[str, ...] = ()
    #: Questions applicants answer in "application" mode.
    application_questions: tuple[str, ...] = ()
    rules_url: str | None = None
    terms_url: str | None = None
    privacy_url: str | None = None
    contact_email: str | None = None
    #: Outbound requests may target loopback/private addresses (a local network).
    allow_local: bool = False
    #: Default AppView for ``app.bsky.*`` / ``chat.bsky.*`` calls the PDS proxies.
    appview_url: str | None = None
    appview_did: str | None = None
    max_blob_bytes: int = 50 * 1024 * 1024
    #: Client addresses exempt from rate limits (load tests, a trusted proxy).
    rate_limit_bypass_ips: tuple[str, ...] = ()
    #: How long the firehose can be replayed from a cursor.
    replay_window_s: float = 72 * 3600
    debug: bool = False
    version: str = field(default=__version__)

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.signup_mode not in SIGNUP_MODES:
            raise ValueError(f"signup_mode must be one of {', '.join(SIGNUP_MODES)}")
        if not is_valid_handle(self.hostname) and self.hostname != "localhost":
            raise ValueError(f"hostname {self.hostname!r} is not a valid host name")
        if (self.appview_url is None) != (self.appview_did is None):
            raise ValueError("appview_url and appview_did must be set together")
        if self.port < 0 or self.max_blob_bytes <= 0:
            raise ValueError("port and max_blob_bytes must be positive")

    # -- derived -----------------------------------------------------------

    @property
    def url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def crawl_hostname(self) -> str:
        """What ``requestCrawl`` names: the bare ``hostname`` when the server is
        reached at ``https://<hostname>``, else the URL it is reached at (a local
        network on loopback ports), so a relay subscribes where clients connect."""
        parts = urlsplit(self.url)
        if parts.scheme == "https" and parts.port is None and parts.hostname == self.hostname:
            return self.hostname
        return self.url

    @property
    def service_did(self) -> str:
        return f"did:web:{self.hostname}"

    @property
    def handle_domain(self) -> str:
        """Handles here end with this suffix (with the leading dot)."""
        return "." + self.hostname

    @property
    def database_path(self) -> Path:
        return self.data_dir / "pds.sqlite"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    # -- construction --------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> PdsConfig:
        """Build from ``ROOST_<FIELD>`` variables; non-None ``overrides`` win."""
        return roost_config.from_env(cls, env, _convert, overrides)  # type: ignore[no-any-return]

    def with_secrets(self) -> PdsConfig:
        """Fill the JWT secret and rotation key from ``secrets.json``, creating it once."""
        path = self.data_dir / "secrets.json"
        stored: dict[str, str] = {}
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
        changed = False
        if "jwt_secret" not in stored:
            stored["jwt_secret"] = secrets.token_hex(32)
            changed = True
        if "rotation_key_hex" not in stored:
            stored["rotation_key_hex"] = PrivateKey.generate("k256").to_hex()
            changed = True
        if changed:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(stored, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return replace(
            self,
            jwt_secret=self.jwt_secret or stored["jwt_secret"],
            rotation_key_hex=self.rotation_key_hex or stored["rotation_key_hex"],
        )

    @property
    def rotation_key(self) -> PrivateKey:
        if not self.rotation_key_hex:
            raise ValueError("no rotation key: call with_secrets() first")
        return PrivateKey.from_hex(self.rotation_key_hex, "k256")

    def __repr__(self) -> str:  # secrets masked
        shown = {
            f.name: ("***" if f.name in _SECRETS and getattr(self, f.name) else getattr(self, f.name))
            for f in fields(self)
        }
        return "PdsConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


_SECRETS = {"admin_password", "jwt_secret", "rotation_key_hex"}
_INTS = {"port", "max_blob_bytes"}
_FLOATS = {"replay_window_s"}
_BOOLS = {"allow_local", "debug"}
_TUPLES = {"relay_urls", "application_questions", "rate_limit_bypass_ips", "rules"}


_convert = roost_config.typed_converter(
    ints=_INTS, floats=_FLOATS, bools=_BOOLS,
    tuples={name: "|" if name in ("application_questions", "rules") else "," for name in _TUPLES},
)
