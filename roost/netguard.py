"""Outbound HTTP that cannot be pointed at internal addresses (SSRF guard).

Every fetch roost makes on behalf of someone else's data (a DID document, a
handle's ``/.well-known/atproto-did``, a PLC directory) goes through a
:class:`Fetcher`. It enforces, on every request and every redirect hop:

- scheme ``https``; plain ``http`` only when the policy allows the local
  network, and then only to loopback or private addresses;
- no userinfo in the URL; only ports 80 and 443 unless ``allow_local``;
- the host's addresses: all of them must be public unicast (checked after DNS
  resolution, IPv4 and IPv6, including IPv4 addresses embedded in IPv6 forms
  such as ``::ffff:127.0.0.1``, NAT64 and 6to4). With ``allow_local`` loopback
  and private networks are also allowed; link-local (``169.254.0.0/16``, cloud
  metadata), multicast, reserved and unspecified addresses never are;
- a total deadline, a byte limit on the body (streamed and cut off; no
  content-encoding, so no decompression bombs) and a bounded number of redirects.

How the address check avoids DNS rebinding
------------------------------------------
Checking a hostname's addresses and then letting the HTTP library resolve it
again would leave a window in which the name can change to ``127.0.0.1``. So the
check lives *inside the connection step*: :class:`GuardedBackend` is an httpcore
network backend whose ``connect_tcp`` resolves the host once, vets every address
and opens the TCP connection to one of those vetted IP literals. httpcore still
knows the original hostname, so the ``Host`` header, TLS SNI and certificate
verification all use the name, not the IP. No connection is ever opened to an
address that was not checked, and pooled connections were vetted when made.
The backend sits under a small httpx transport (:class:`GuardedTransport`) so the
rest of roost uses ordinary ``httpx`` clients. Plain ``http`` requests use a
second pool whose backend only accepts local addresses.

Environment proxies and ``.netrc`` are ignored (``trust_env=False``): a proxy
would make the address check meaningless.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Self

import httpcore
import httpx

from roost.errors import ResolutionFailed, UnsafeUrl

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "DEFAULT_MAX_BYTES",
    "FETCH_TIMEOUT_SECONDS",
    "LOCAL_NETWORKS",
    "MAX_CONNECTIONS",
    "MAX_URL_LENGTH",
    "PUBLIC_PORTS",
    "USER_AGENT",
    "FetchResult",
    "Fetcher",
    "GuardedBackend",
    "GuardedTransport",
    "HostResolver",
    "OutboundPolicy",
    "address_problem",
    "check_url",
    "system_resolve_host",
]

#: Whole-request deadline (DNS, connect, TLS, headers and body, every redirect).
FETCH_TIMEOUT_SECONDS: Final = 10.0
#: Deadline for resolving a host and opening one TCP (+TLS) connection.
CONNECT_TIMEOUT_SECONDS: Final = 5.0
#: Body limit when the caller names none.
DEFAULT_MAX_BYTES: Final = 1_048_576
#: Longest URL we request.
MAX_URL_LENGTH: Final = 2_048
#: Ports allowed for public destinations (no limit when ``allow_local``).
PUBLIC_PORTS: Final = frozenset({80, 443})
#: Connection-pool bound per fetcher (per scheme).
MAX_CONNECTIONS: Final = 100
#: Idle pooled connections are closed after this many seconds.
KEEPALIVE_EXPIRY_SECONDS: Final = 30.0
USER_AGENT: Final = "roost (atproto; +https://atproto.com)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``async resolve(host) -> IP address strings``; injectable for tests.
HostResolver = Callable[[str], Awaitable[Sequence[str]]]

#: Private networks reachable with ``allow_local`` (besides loopback):
#: RFC 1918, shared address space (RFC 6598, e.g. VPN overlays) and IPv6 ULA.
LOCAL_NETWORKS: Final = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fc00::/7"),
)
_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")
_IPV6_GLOBAL_UNICAST: Final = ipaddress.ip_network("2000::/3")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE: Final = ipaddress.ip_network("::/96")
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})


# -- the address policy ------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it embeds one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # deprecated ::a.b.c.d (not :: or ::1)
        return ipaddress.IPv4Address(int(ip))
    return None


def address_problem(ip: IPAddress | str, *, allow_local: bool) -> str | None:
    """Why ``ip`` may not be contacted, or None if it may.

    Public unicast addresses are always fine. Loopback and :data:`LOCAL_NETWORKS`
    only with ``allow_local``. Link-local, multicast, unspecified, reserved and
    other special-purpose addresses never.
    """
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return f"{ip!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            ip = ipaddress.IPv6Address(ip.compressed.partition("%")[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            problem = address_problem(embedded, allow_local=allow_local)
            return None if problem is None else f"{ip} embeds {embedded}: {problem}"
    if ip.is_loopback:
        return None if allow_local else f"{ip} is a loopback address"
    if any(ip in net for net in LOCAL_NETWORKS):
        return None if allow_local else f"{ip} is a private address"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return f"{ip} is an unspecified address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_reserved:
        return f"{ip} is a reserved address"
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _IPV6_GLOBAL_UNICAST:
        return f"{ip} is not a global unicast address"
    if not ip.is_global:
        return f"{ip} is a special-purpose address"
    return None


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Where outbound requests may go.

    ``allow_local`` opens loopback and private networks (and plain ``http`` to
    them) for a local development network such as ``roost up``.
    ``allowed_ports`` limits the port of every URL unless ``allow_local``;
    ``None`` lifts that limit.
    """

    allow_local: bool = False
    allowed_ports: frozenset[int] | None = PUBLIC_PORTS


def check_url(url: str | httpx.URL, policy: OutboundPolicy) -> httpx.URL:
    """Parse ``url`` and check the parts that do not need DNS; raise :class:`UnsafeUrl`."""
    text = str(url)
    if len(text) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(text) if isinstance(url, str) else url
    except (httpx.InvalidURL, ValueError) as exc:
        raise UnsafeUrl(f"malformed URL {text!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeUrl(f"URL scheme must be https: {text!r}")
    if parsed.scheme == "http" and not policy.allow_local:
        raise UnsafeUrl(f"plain http is only allowed on a local network: {text!r}")
    if not parsed.host:
        raise UnsafeUrl(f"URL has no host: {text!r}")
    if parsed.userinfo:
        raise UnsafeUrl("URL must not carry a user name or password")
    port = parsed.port if parsed.port is not None else (443 if parsed.scheme == "https" else 80)
    restricted = not policy.allow_local and policy.allowed_ports is not None
    if restricted and port not in (policy.allowed_ports or ()):
        raise UnsafeUrl(f"port {port} is not allowed for outbound requests")
    return parsed


async def system_resolve_host(host: str) -> list[str]:
    """Addresses of ``host`` from the system resolver (``getaddrinfo``), in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    out: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            addr = str(sockaddr[0])
            if addr not in out:
                out.append(addr)
    return out


# -- httpcore backend and httpx transport ---------------------------------------------


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, vets, then connects to the vetted IP literal.

    ``local_only`` (used for plain http) refuses public addresses as well.
    """

    def __init__(
        self,
        *,
        allow_local: bool,
        local_only: bool = False,
        resolve_host: HostResolver | None = None,
    ) -> None:
        self._allow_local = allow_local
        self._local_only = local_only
        self._resolve_host = resolve_host or system_resolve_host
        self._inner = httpcore.AnyIOBackend()

    async def vetted_addresses(self, host: str, timeout: float | None) -> list[str]:
        """Every address of ``host``, all checked; raise :class:`UnsafeUrl` if any is bad."""
        host = host.strip("[]")
        try:
            addresses: Sequence[str] = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                async with asyncio.timeout(timeout or CONNECT_TIMEOUT_SECONDS):
                    addresses = await self._resolve_host(host)
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from None
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} has no addresses")
        for addr in addresses:
            problem = address_problem(addr, allow_local=self._allow_local)
            if (
                problem is None
                and self._local_only
                and address_problem(addr, allow_local=False) is None
            ):
                problem = f"{addr} is public: plain http is only allowed to local addresses"
            if problem is not None:
                raise UnsafeUrl(f"refusing to connect to {host}: {problem}")
        return list(addresses)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.vetted_addresses(host, timeout)
        last: Exception | None = None
        for addr in addresses:
            try:
                return await self._inner.connect_tcp(
                    addr, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeUrl("unix sockets are not allowed for outbound requests")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# Most specific first: the first match wins.
_ERROR_MAP: Final[tuple[tuple[type[Exception], type[httpx.RequestError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_type, httpx_type in _ERROR_MAP:
            if isinstance(exc, core_type):
                raise httpx_type(str(exc) or core_type.__name__, request=request) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for part in self._inner:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            with _httpx_errors(self._request):
                await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over two guarded httpcore pools (https, and local http)."""

    def __init__(
        self,
        policy: OutboundPolicy = OutboundPolicy(),
        *,
        resolve_host: HostResolver | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.policy = policy
        self._resolve_host = resolve_host
        self._pool_options: dict[str, Any] = {
            "max_connections": max_connections,
            "keepalive_expiry": KEEPALIVE_EXPIRY_SECONDS,
            "http1": True,
            "http2": False,
            "retries": 0,
        }
        # The https pool (and its certificate store) is built on first use.
        self._https: httpcore.AsyncConnectionPool | None = None
        self._http = httpcore.AsyncConnectionPool(
            network_backend=GuardedBackend(
                allow_local=policy.allow_local, local_only=True, resolve_host=resolve_host
            ),
            **self._pool_options,
        )

    def _https_pool(self) -> httpcore.AsyncConnectionPool:
        if self._https is None:
            self._https = httpcore.AsyncConnectionPool(
                ssl_context=httpx.create_ssl_context(trust_env=False),
                network_backend=GuardedBackend(
                    allow_local=self.policy.allow_local, resolve_host=self._resolve_host
                ),
                **self._pool_options,
            )
        return self._https

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = check_url(request.url, self.policy)
        pool = self._https_pool() if url.scheme == "https" else self._http
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme,
                host=url.raw_host,
                port=url.port,
                target=url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            response = await pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        if self._https is not None:
            await self._https.aclose()
        await self._http.aclose()


# -- bounded fetches ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A finished response: final URL, status, headers and the whole (bounded) body."""

    url: str
    status: int
    headers: httpx.Headers = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Fetcher:
    """Bounded, SSRF-guarded GETs; one per service, closed with :meth:`aclose`.

    ``transport`` replaces the guarded transport (tests only: it bypasses the
    address check, though URL checks and limits still apply).
    """

    def __init__(
        self,
        policy: OutboundPolicy | None = None,
        *,
        allow_local: bool = False,
        resolve_host: HostResolver | None = None,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.policy = policy if policy is not None else OutboundPolicy(allow_local=allow_local)
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            transport=transport or GuardedTransport(self.policy, resolve_host=resolve_host),
            timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    @property
    def allow_local(self) -> bool:
        return self.policy.allow_local

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def get(
        self,
        url: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_redirects: int = 0,
        accept: str | None = None,
        timeout: float | None = None,
    ) -> FetchResult:
        """GET ``url`` and read at most ``max_bytes`` of body, within one deadline.

        Any status is returned (callers decide what 404 means); redirects are
        followed up to ``max_redirects`` times (each hop checked like the first),
        and a redirect beyond that is returned as it is (a 3xx result). Raises :class:`UnsafeUrl` for a
        forbidden target and :class:`ResolutionFailed` for network errors,
        timeouts, oversized or content-encoded bodies.
        """
        deadline = self.timeout if timeout is None else timeout
        current = check_url(url, self.policy)
        headers = {"Accept": accept} if accept else {}
        try:
            async with asyncio.timeout(deadline):
                result = await self._get_once(current, headers, max_bytes)
                for _hop in range(max_redirects):
                    location = result.headers.get("location")
                    if result.status not in _REDIRECT_STATUSES or not location:
                        break
                    try:
                        target = current.join(location)
                    except (httpx.InvalidURL, ValueError) as exc:
                        raise UnsafeUrl(f"bad redirect target {location!r}: {exc}") from None
                    current = check_url(target, self.policy)
                    result = await self._get_once(current, headers, max_bytes)
                return result
        except TimeoutError:
            raise ResolutionFailed(f"timed out after {deadline:g}s fetching {url}") from None
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
            raise ResolutionFailed(f"{kind} fetching {url}: {exc}") from None

    async def _get_once(
        self, url: httpx.URL, headers: dict[str, str], max_bytes: int
    ) -> FetchResult:
        async with self._client.stream("GET", url, headers=headers) as response:
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ResolutionFailed(f"unexpected Content-Encoding {encoding!r} from {url}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ResolutionFailed(f"response from {url} is larger than {max_bytes} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > max_bytes:
                    raise ResolutionFailed(f"response from {url} is larger than {max_bytes} bytes")
                chunks.append(chunk)
            return FetchResult(str(url), response.status_code, response.headers, b"".join(chunks))
