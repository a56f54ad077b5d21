"""Host names as the relay keys them, and the rules for accepting one.

A host is stored as ``name[:port]`` in lower case, without a scheme, plus
whether it is reached without TLS. On the public network a host is a DNS
name shaped like a handle (at least two labels, no IP address) on the
default port; ``requestCrawl`` may send it bare or as a URL
(``https://``/``wss://`` mean TLS, ``http://``/``ws://`` mean none).

On a local network (``allow_local``) ``localhost`` and IP literals are
allowed too, with a port, and a bare local name means no TLS: that is how a
development network of roost services on loopback ports names its PDSes.

:func:`endpoint_host` turns a DID document's ``#atproto_pds`` URL into the
same form, so "is this host the account's current PDS" is a string compare.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from roost.errors import RoostError
from roost.syntax import is_valid_handle

__all__ = [
    "HostName",
    "InvalidHostname",
    "domain_banned",
    "endpoint_host",
    "is_trusted",
    "parse_hostname",
]

_SCHEMES: Final = {"https": False, "wss": False, "http": True, "ws": True}
_DEFAULT_PORTS: Final = {"https": 443, "wss": 443, "http": 80, "ws": 80}
#: Longest hostname argument we look at.
MAX_HOSTNAME_INPUT: Final = 512


class InvalidHostname(RoostError):
    """Not a host name the relay can subscribe to."""


@dataclass(frozen=True, slots=True)
class HostName:
    """A normalised host: ``name`` (``host`` or ``host:port``) and ``no_ssl``."""

    name: str
    no_ssl: bool

    @property
    def host(self) -> str:
        """The name without its port."""
        return self.name.rpartition(":")[0] if ":" in self.name else self.name

    @property
    def port(self) -> int:
        if ":" in self.name:
            return int(self.name.rpartition(":")[2])
        return 80 if self.no_ssl else 443

    @property
    def is_local(self) -> bool:
        return _is_local_name(self.host)

    @property
    def http_url(self) -> str:
        return f"{'http' if self.no_ssl else 'https'}://{self.name}"

    @property
    def ws_url(self) -> str:
        return f"{'ws' if self.no_ssl else 'wss'}://{self.name}"


def _is_local_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_hostname(text: object, *, allow_local: bool) -> HostName:
    """Normalise a ``requestCrawl``/admin hostname; :class:`InvalidHostname` if unusable."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidHostname("hostname is required")
    raw = text.strip()
    if len(raw) > MAX_HOSTNAME_INPUT:
        raise InvalidHostname("hostname is too long")
    scheme: str | None = None
    if "://" in raw:
        scheme, _, raw = raw.partition("://")
        scheme = scheme.lower()
        if scheme not in _SCHEMES:
            raise InvalidHostname(f"unsupported scheme {scheme!r}")
        raw = raw.rstrip("/")
    if "/" in raw or "?" in raw or "#" in raw or "@" in raw:
        raise InvalidHostname("hostname must not carry a path, query or user")
    host, sep, port_text = raw.lower().rpartition(":")
    if not sep:
        host, port_text = raw.lower(), ""
    port: int | None = None
    if sep:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidHostname(f"bad port in {text!r}")
        port = int(port_text)
    local = _is_local_name(host)
    if local:
        if not allow_local:
            raise InvalidHostname(f"{host} is only allowed on a local network")
    elif not is_valid_handle(host):
        raise InvalidHostname(f"{host!r} is not a DNS host name")
    no_ssl = _SCHEMES[scheme] if scheme is not None else local
    if scheme is not None and port == _DEFAULT_PORTS[scheme]:
        port = None
    if port is not None and not allow_local:
        raise InvalidHostname("a port is only allowed on a local network")
    if no_ssl and not allow_local:
        raise InvalidHostname("hosts without TLS are only allowed on a local network")
    return HostName(f"{host}:{port}" if port is not None else host, no_ssl)


@functools.lru_cache(maxsize=4096)
def endpoint_host(url: str | None) -> str | None:
    """``scheme://host[:port]`` -> ``host[:port]`` (default port dropped), or None.

    Memoised: it runs for every event, over a small set of PDS endpoints.
    """
    if not url:
        return None
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
    except ValueError:
        return None
    host = (parsed.hostname or "").lower()
    scheme = parsed.scheme.lower()
    if not host or scheme not in _DEFAULT_PORTS:
        return None
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return host
    return f"{host}:{port}"


def domain_banned(host: str, bans: Iterable[str]) -> bool:
    """True if ``host`` (no port) is a banned domain or inside one."""
    for domain in bans:
        if host == domain or host.endswith("." + domain):
            return True
    return False


def is_trusted(name: str, patterns: Iterable[str]) -> bool:
    """True if the host name matches one of the trusted patterns."""
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in patterns)
