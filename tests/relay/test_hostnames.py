"""Host names: what requestCrawl accepts, and matching a DID document's PDS to a host."""

from __future__ import annotations

import pytest

from relay.hostnames import (
    HostName,
    InvalidHostname,
    domain_banned,
    endpoint_host,
    is_trusted,
    parse_hostname,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pds.example.com", HostName("pds.example.com", False)),
        ("PDS.Example.COM", HostName("pds.example.com", False)),
        ("https://pds.example.com/", HostName("pds.example.com", False)),
        ("wss://pds.example.com:443", HostName("pds.example.com", False)),
    ],
)
def test_public_hosts(text: str, expected: HostName) -> None:
    assert parse_hostname(text, allow_local=False) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        "127.0.0.1",
        "http://pds.example.com",  # no TLS
        "pds.example.com:8443",  # a port
        "single-label",
        "https://pds.example.com/xrpc",
        "ftp://pds.example.com",
        "user@pds.example.com",
        "x" * 600,
    ],
)
def test_refused_on_the_public_network(text: str) -> None:
    with pytest.raises(InvalidHostname):
        parse_hostname(text, allow_local=False)


def test_local_network() -> None:
    assert parse_hostname("http://127.0.0.1:2583", allow_local=True) == HostName("127.0.0.1:2583", True)
    assert parse_hostname("localhost:2583", allow_local=True) == HostName("localhost:2583", True)
    local = parse_hostname("https://localhost:8443", allow_local=True)
    assert (local.no_ssl, local.host, local.port, local.ws_url) == (
        False, "localhost", 8443, "wss://localhost:8443")
    with pytest.raises(InvalidHostname):
        parse_hostname("http://127.0.0.1:99999", allow_local=True)


def test_endpoint_host_matches_the_host_form() -> None:
    assert endpoint_host("https://pds.example.com") == "pds.example.com"
    assert endpoint_host("https://PDS.example.com:443") == "pds.example.com"
    assert endpoint_host("http://127.0.0.1:2583") == "127.0.0.1:2583"
    assert endpoint_host("https://pds.example.com:8443") == "pds.example.com:8443"
    assert endpoint_host(None) is None
    assert endpoint_host("mailto:someone") is None


def test_bans_and_trust() -> None:
    assert domain_banned("evil.example", ["evil.example"])
    assert domain_banned("pds.evil.example", ["evil.example"])
    assert not domain_banned("notevil.example", ["evil.example"])
    assert is_trusted("abc.host.bsky.network", ["*.host.bsky.network"])
    assert not is_trusted("host.bsky.network.evil", ["*.host.bsky.network"])
