"""roost.netguard: the outbound address policy and bounded fetches, over real sockets.

No test sends a packet to a non-loopback address: forbidden targets are refused
before any connection, and every hostname goes through a fake resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Iterator
from typing import Self

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from roost.errors import ResolutionFailed, UnsafeUrl
from roost.netguard import (
    Fetcher,
    FetchResult,
    OutboundPolicy,
    address_problem,
    check_url,
)
from tests.servers import serve

# -- the address policy ----------------------------------------------------------

PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2a00:1450::1"]
LOCAL = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "100.64.0.1",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:7f00:1",
    "::127.0.0.1",  # deprecated IPv4-compatible form
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
]
NEVER = [
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "fe80::1",
    "fe80::1%1",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "0.0.0.0",
    "0.1.2.3",
    "::",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "2001:db8::1",  # documentation
    "fec0::1",  # deprecated site-local
    "::ffff:169.254.169.254",
    "::ffff:0.0.0.0",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "100::1",  # discard-only
]


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_allowed(ip: str) -> None:
    assert address_problem(ip, allow_local=False) is None
    assert address_problem(ip, allow_local=True) is None


@pytest.mark.parametrize("ip", LOCAL)
def test_local_addresses_only_with_allow_local(ip: str) -> None:
    assert address_problem(ip, allow_local=False) is not None
    assert address_problem(ip, allow_local=True) is None


@pytest.mark.parametrize("ip", NEVER)
def test_special_addresses_never_allowed(ip: str) -> None:
    assert address_problem(ip, allow_local=False) is not None
    assert address_problem(ip, allow_local=True) is not None


@given(st.ip_addresses(v=4), st.booleans())
def test_ipv4_mapped_forms_judged_like_ipv4(ip: ipaddress.IPv4Address, allow_local: bool) -> None:
    plain = address_problem(ip, allow_local=allow_local) is None
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    nat64 = ipaddress.IPv6Address(f"64:ff9b::{ip}")
    assert (address_problem(mapped, allow_local=allow_local) is None) == plain
    assert (address_problem(str(nat64), allow_local=allow_local) is None) == plain


@given(st.ip_addresses(v=4))
def test_allow_local_only_widens(ip: ipaddress.IPv4Address) -> None:
    if address_problem(ip, allow_local=False) is None:
        assert address_problem(ip, allow_local=True) is None
    if ip in ipaddress.ip_network("127.0.0.0/8") or ip in ipaddress.ip_network("10.0.0.0/8"):
        assert address_problem(ip, allow_local=False) is not None
        assert address_problem(ip, allow_local=True) is None


def test_address_problem_names_the_reason() -> None:
    assert "link-local" in (address_problem("169.254.169.254", allow_local=True) or "")
    assert "loopback" in (address_problem("::ffff:127.0.0.1", allow_local=False) or "")
    assert "not an IP" in (address_problem("example.com", allow_local=True) or "")


STRICT = OutboundPolicy(allow_local=False)
LOCAL_NET = OutboundPolicy(allow_local=True)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http://example.com/",  # plain http off the local network
        "https://user:pw@example.com/",
        "https://example.com:8443/",
        "https:///nohost",
        "https://example.com/" + "a" * 3000,
    ],
)
def test_check_url_refuses(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url(url, STRICT)


def test_check_url_accepts() -> None:
    assert check_url("https://example.com/x", STRICT).host == "example.com"
    assert check_url("https://example.com:443/x", STRICT).port is None  # default port
    assert check_url("http://localhost:2583/x", LOCAL_NET).port == 2583
    assert check_url("https://example.com:8443/", OutboundPolicy(allowed_ports=None)).port == 8443
    with pytest.raises(UnsafeUrl):
        check_url("ftp://localhost/", LOCAL_NET)


# -- real sockets -------------------------------------------------------------------


class Counter:
    """A raw TCP listener on 127.0.0.1 that only counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def fake_resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str) -> list[str]:
        if host in table:
            return table[host]
        raise OSError(f"unknown host {host}")  # never reach real DNS

    return resolve


@pytest.mark.parametrize(
    "url_template",
    [
        "https://127.0.0.1:{port}/",
        "http://127.0.0.1:{port}/",
        "https://[::1]:{port}/",
        "https://[::ffff:127.0.0.1]:{port}/",
        "https://[::ffff:7f00:1]:{port}/",
        "https://10.0.0.1:{port}/",
        "https://169.254.169.254:{port}/",
        "https://loopback.test:{port}/",
        "https://mixed.test:{port}/",
        "https://localhost:{port}/",
    ],
)
async def test_forbidden_targets_refused_before_connecting(url_template: str) -> None:
    resolve = fake_resolver(
        {
            "loopback.test": ["127.0.0.1"],
            "mixed.test": ["8.8.8.8", "127.0.0.1"],  # one bad address taints the host
            "localhost": ["127.0.0.1", "::1"],
        }
    )
    async with Counter() as counter:
        fetcher = Fetcher(
            OutboundPolicy(allow_local=False, allowed_ports=None), resolve_host=resolve
        )
        async with fetcher:
            with pytest.raises(UnsafeUrl):
                await fetcher.get(url_template.format(port=counter.port))
        await asyncio.sleep(0.05)
        assert counter.connections == 0


async def test_allow_local_reaches_loopback_but_not_link_local() -> None:
    async with Counter() as counter:
        async with Fetcher(allow_local=True) as fetcher:
            with pytest.raises(ResolutionFailed):  # the counter hangs up: no HTTP answer
                await fetcher.get(f"http://127.0.0.1:{counter.port}/")
            with pytest.raises(UnsafeUrl):
                await fetcher.get("http://169.254.169.254/latest/meta-data/")
            with pytest.raises(UnsafeUrl):
                await fetcher.get(f"http://[fe80::1]:{counter.port}/")
        await asyncio.sleep(0.05)
        assert counter.connections == 1


async def test_plain_http_only_to_local_addresses() -> None:
    resolve = fake_resolver({"public.test": ["8.8.8.8"]})
    async with Fetcher(allow_local=True, resolve_host=resolve) as fetcher:
        with pytest.raises(UnsafeUrl, match="plain http"):
            await fetcher.get("http://public.test/")


async def test_unresolvable_host_is_resolution_failed() -> None:
    async with Fetcher(resolve_host=fake_resolver({})) as fetcher:
        with pytest.raises(ResolutionFailed, match="cannot resolve"):
            await fetcher.get("https://nowhere.test/")


async def test_slow_dns_is_a_timeout() -> None:
    async def slow(host: str) -> list[str]:
        await asyncio.sleep(5)
        return ["8.8.8.8"]

    async with Fetcher(resolve_host=slow, timeout=0.2) as fetcher:
        start = time.monotonic()
        with pytest.raises(ResolutionFailed):
            await fetcher.get("https://slow.test/")
        assert time.monotonic() - start < 2


# -- an HTTP server for limits ------------------------------------------------------------


async def echo_host(request: Request) -> Response:
    return PlainTextResponse(request.headers["host"])


async def small(request: Request) -> Response:
    return PlainTextResponse("x" * 100)


async def declared_huge(request: Request) -> Response:
    return Response(b"x" * 200_000, media_type="application/octet-stream")


async def endless(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield b"y" * 65_536
            await asyncio.sleep(0)

    return StreamingResponse(chunks())


async def drip(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"z"
            await asyncio.sleep(0.05)

    return StreamingResponse(chunks())


async def slow(request: Request) -> Response:
    await asyncio.sleep(1.0)
    return PlainTextResponse("late")


async def gzipped(request: Request) -> Response:
    return Response(b"\x1f\x8b...", headers={"content-encoding": "gzip"})


async def redirect_local(request: Request) -> Response:
    return RedirectResponse("/small", status_code=302)


async def redirect_metadata(request: Request) -> Response:
    return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=302)


async def redirect_garbage(request: Request) -> Response:
    return Response(status_code=302, headers={"location": "http://[::1"})


async def redirect_loop(request: Request) -> Response:
    return RedirectResponse("/redirect-loop", status_code=307)


async def not_found(request: Request) -> Response:
    return PlainTextResponse("nope", status_code=404)


APP = Starlette(
    routes=[
        Route("/echo-host", echo_host),
        Route("/small", small),
        Route("/declared-huge", declared_huge),
        Route("/endless", endless),
        Route("/drip", drip),
        Route("/slow", slow),
        Route("/gzip", gzipped),
        Route("/redirect-local", redirect_local),
        Route("/redirect-metadata", redirect_metadata),
        Route("/redirect-loop", redirect_loop),
        Route("/redirect-garbage", redirect_garbage),
        Route("/missing", not_found),
    ]
)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with serve(APP) as url:
        yield url


@pytest.fixture
async def local_fetcher() -> AsyncIterator[Fetcher]:
    resolve = fake_resolver({"alice.test": ["127.0.0.1"]})
    async with Fetcher(allow_local=True, resolve_host=resolve, timeout=2.0) as fetcher:
        yield fetcher


async def test_fetch_returns_body_and_status(base: str, local_fetcher: Fetcher) -> None:
    result = await local_fetcher.get(base + "/small", max_bytes=100)
    assert isinstance(result, FetchResult)
    assert result.ok and result.status == 200 and result.body == b"x" * 100
    missing = await local_fetcher.get(base + "/missing")
    assert missing.status == 404 and not missing.ok and missing.body == b"nope"


async def test_hostname_kept_in_host_header_while_connecting_to_vetted_ip(
    base: str, local_fetcher: Fetcher
) -> None:
    port = base.rsplit(":", 1)[1]
    result = await local_fetcher.get(f"http://alice.test:{port}/echo-host")
    assert result.body.decode() == f"alice.test:{port}"


async def test_body_limit_cuts_off_streams(base: str, local_fetcher: Fetcher) -> None:
    with pytest.raises(ResolutionFailed, match="larger than 99 bytes"):
        await local_fetcher.get(base + "/small", max_bytes=99)
    with pytest.raises(ResolutionFailed, match="larger than"):
        await local_fetcher.get(base + "/declared-huge", max_bytes=1000)
    start = time.monotonic()
    with pytest.raises(ResolutionFailed, match="larger than"):
        await local_fetcher.get(base + "/endless", max_bytes=100_000)
    assert time.monotonic() - start < 2


async def test_content_encoding_refused(base: str, local_fetcher: Fetcher) -> None:
    with pytest.raises(ResolutionFailed, match="Content-Encoding"):
        await local_fetcher.get(base + "/gzip")


async def test_timeouts(base: str, local_fetcher: Fetcher) -> None:
    start = time.monotonic()
    with pytest.raises(ResolutionFailed, match="timed out"):
        await local_fetcher.get(base + "/slow", timeout=0.2)
    with pytest.raises(ResolutionFailed, match="timed out"):  # total deadline, not per read
        await local_fetcher.get(base + "/drip", timeout=0.3)
    assert time.monotonic() - start < 1.5


async def test_redirects_are_limited_and_rechecked(base: str, local_fetcher: Fetcher) -> None:
    unfollowed = await local_fetcher.get(base + "/redirect-local")
    assert unfollowed.status == 302 and not unfollowed.ok
    assert unfollowed.headers["location"] == "/small"
    result = await local_fetcher.get(base + "/redirect-local", max_redirects=1)
    assert result.body == b"x" * 100 and result.url.endswith("/small")
    with pytest.raises(UnsafeUrl):
        await local_fetcher.get(base + "/redirect-metadata", max_redirects=3)
    with pytest.raises(ResolutionFailed, match="location"):
        await local_fetcher.get(base + "/redirect-garbage", max_redirects=1)
    looping = await local_fetcher.get(base + "/redirect-loop", max_redirects=3)
    assert looping.status == 307


async def test_strict_fetcher_refuses_the_test_server(base: str) -> None:
    async with Fetcher() as fetcher:
        with pytest.raises(UnsafeUrl):
            await fetcher.get(base + "/small")
