"""DID and handle resolution, bidirectional verification, and a cached directory.

Layers (each usable alone, stacked like indigo's ``Directory``)::

    DidDocument           parsed, validated DID document (value type, no I/O)
    DidResolver           did:plc via a directory URL, did:web via /.well-known/did.json
    HandleResolver        DNS TXT _atproto.<handle> and HTTPS /.well-known/atproto-did
    IdentityResolver      both of the above + bidirectional handle verification
    IdentityDirectory     TTL/LRU cache over an IdentityResolver: stale-while-revalidate,
                          negative caching, coalesced lookups, purge

All network access goes through :class:`roost.netguard.Fetcher` (SSRF guard,
deadline, size limit, redirect limit); DNS TXT lookups use dnspython's async
resolver. Errors: :class:`DidNotFound`, :class:`DidDeactivated`,
:class:`HandleNotFound` (definitive answers, cached as negatives),
:class:`ResolutionFailed` (network trouble or a malformed document; cached
briefly), :class:`UnsafeUrl` (the target is not allowed), plus
:class:`InvalidDid` / :class:`InvalidHandle` for bad syntax.

Choices where the spec leaves room (see ``spec/identity.md``):

- The handle in a DID document is the first ``alsoKnownAs`` entry that is
  ``at://`` + a syntactically valid handle (spec), not the first ``at://`` entry.
- Handle resolution runs DNS and HTTPS concurrently; a DID from DNS wins, HTTPS
  is used only if DNS gave none. TXT records carrying different DIDs count as
  "no DNS answer". The handle is :class:`HandleNotFound` if no method gave a DID
  and at least one answered definitively; :class:`ResolutionFailed` if every
  method failed transiently (timeouts, DNS errors, 5xx).
- The ``/.well-known/atproto-did`` body must be exactly one DID, surrounding
  whitespace trimmed. No redirects are followed for either well-known path or
  for the PLC directory.
- A tombstoned did:plc is :class:`DidDeactivated` both for 410 and for the
  reference server's 404 "DID not available".
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, NamedTuple, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from roost.crypto import PublicKey, public_key_from_verification_method
from roost.errors import (
    CryptoError,
    DidDeactivated,
    DidNotFound,
    HandleNotFound,
    IdentityError,
    ResolutionFailed,
    UnsafeUrl,
)
from roost.netguard import Fetcher, HostResolver
from roost.syntax import (
    ensure_did,
    ensure_handle,
    is_disallowed_handle_tld,
    is_valid_did,
    is_valid_handle,
)

__all__ = [
    "DEFAULT_CACHE_ENTRIES",
    "DID_STALE_SECONDS",
    "DID_TTL_SECONDS",
    "DNS_TIMEOUT_SECONDS",
    "ERROR_TTL_SECONDS",
    "FORCE_REFRESH_MIN_AGE_SECONDS",
    "HANDLE_MISMATCH_RECHECK_SECONDS",
    "HANDLE_STALE_SECONDS",
    "HANDLE_TTL_SECONDS",
    "INVALID_HANDLE",
    "MAX_ATPROTO_DID_BYTES",
    "MAX_DID_DOCUMENT_BYTES",
    "NOT_FOUND_TTL_SECONDS",
    "PLC_DIRECTORY_URL",
    "RESOLVE_TIMEOUT_SECONDS",
    "DidDocument",
    "DidResolver",
    "HandleResolver",
    "Identity",
    "IdentityDirectory",
    "IdentityResolver",
    "Service",
    "VerificationMethod",
]

log = logging.getLogger(__name__)

# -- limits -----------------------------------------------------------------------

#: Default did:plc directory.
PLC_DIRECTORY_URL: Final = "https://plc.directory"
#: Largest DID document we read (PLC renders ~1 KB; did:web documents are small too).
MAX_DID_DOCUMENT_BYTES: Final = 65_536
#: Largest ``/.well-known/atproto-did`` body (a DID is at most 2,048 characters).
MAX_ATPROTO_DID_BYTES: Final = 4_096
#: Deadline for one DID-document or well-known fetch, redirects included.
RESOLVE_TIMEOUT_SECONDS: Final = 5.0
#: Deadline for one DNS TXT lookup (all retries included).
DNS_TIMEOUT_SECONDS: Final = 3.0
#: Redirects followed: none for the directory or either well-known path.
PLC_MAX_REDIRECTS: Final = 0
DID_WEB_MAX_REDIRECTS: Final = 0
HANDLE_HTTPS_MAX_REDIRECTS: Final = 0
#: A cached DID document is fresh this long...
DID_TTL_SECONDS: Final = 3_600.0
#: ...then served stale (refreshed in the background) for this much longer (1 day total).
DID_STALE_SECONDS: Final = 82_800.0
#: Handle -> DID answers: fresh for an hour, then stale for another hour.
HANDLE_TTL_SECONDS: Final = 3_600.0
HANDLE_STALE_SECONDS: Final = 3_600.0
#: DidNotFound / DidDeactivated / HandleNotFound are remembered this long.
NOT_FOUND_TTL_SECONDS: Final = 120.0
#: Transient failures (network, timeouts, bad documents) are remembered this long,
#: and a failed background refresh is not retried sooner.
ERROR_TTL_SECONDS: Final = 10.0
#: ``force_refresh`` re-fetches only entries older than this (bounds how often a
#: stream of bad signatures can make us hit the directory for one DID).
FORCE_REFRESH_MIN_AGE_SECONDS: Final = 2.0
#: When a handle and a DID document disagree, cached entries older than this are
#: re-fetched once before the handle is declared invalid.
HANDLE_MISMATCH_RECHECK_SECONDS: Final = 300.0
#: Entries per cache (documents and handles each); least recently used go first.
DEFAULT_CACHE_ENTRIES: Final = 20_000

#: The handle shown when a DID's handle does not verify.
INVALID_HANDLE: Final = "handle.invalid"

_PLC_DID = re.compile(r"did:plc:[a-z2-7]{24}")
_WEB_IDENT = re.compile(r"(?P<host>[A-Za-z0-9.-]+)(?:%3[Aa](?P<port>[0-9]{1,5}))?")
_PDS_FRAGMENT: Final = "atproto_pds"
_PDS_TYPE: Final = "AtprotoPersonalDataServer"
_LABELER_FRAGMENT: Final = "atproto_labeler"
_LABELER_TYPE: Final = "AtprotoLabeler"
_MAX_ENDPOINT_LENGTH: Final = 512
_DID_ACCEPT: Final = "application/did+ld+json, application/json;q=0.9"


# -- DID documents ------------------------------------------------------------------


def _bad_document(message: str) -> ResolutionFailed:
    return ResolutionFailed(f"malformed DID document: {message}")


def _fragment_matches(entry_id: str, did: str, fragment: str) -> bool:
    """``#frag`` or ``<did>#frag`` (the two forms in use)."""
    frag = fragment.lstrip("#")
    return entry_id == "#" + frag or entry_id == f"{did}#{frag}"


def _clean_endpoint(value: object) -> str | None:
    """``scheme://host[:port]`` if ``value`` is an http(s) origin URL, else None.

    A single trailing ``/`` is tolerated (and dropped); any other path, a query,
    a fragment or userinfo disqualifies the URL.
    """
    if not isinstance(value, str) or not value.isascii() or len(value) > _MAX_ENDPOINT_LENGTH:
        return None
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    host = parts.hostname or ""
    if not (host == "localhost" or is_valid_handle(host) or _is_ip_literal(host)):
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}"


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class VerificationMethod:
    """One ``verificationMethod`` entry (``id`` as written, relative or absolute)."""

    id: str
    type: str
    controller: str
    public_key_multibase: str | None = None

    def public_key(self) -> PublicKey:
        """The key; raises :class:`~roost.errors.CryptoError` if unusable."""
        vm: dict[str, Any] = {"type": self.type}
        if self.public_key_multibase is not None:
            vm["publicKeyMultibase"] = self.public_key_multibase
        return public_key_from_verification_method(vm)


@dataclass(frozen=True, slots=True)
class Service:
    """One ``service`` entry; ``endpoint`` is a string, or a map/list per DID core."""

    id: str
    type: str
    endpoint: Any


@dataclass(frozen=True, slots=True)
class DidDocument:
    """A DID document, validated, with the parts atproto reads.

    Build with :meth:`parse`. ``raw`` is the JSON object as received (treat it
    as read-only). ``handle``, ``signing_key`` and ``pds_endpoint`` are worked
    out once, at construction.
    """

    id: str
    also_known_as: tuple[str, ...] = ()
    verification_methods: tuple[VerificationMethod, ...] = ()
    services: tuple[Service, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    handle: str | None = field(init=False, compare=False)
    signing_key: PublicKey | None = field(init=False, compare=False, repr=False)
    pds_endpoint: str | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        ensure_did(self.id)
        object.__setattr__(self, "handle", self._claimed_handle())
        object.__setattr__(self, "signing_key", self.public_key("atproto"))
        object.__setattr__(self, "pds_endpoint", self.service_endpoint(_PDS_FRAGMENT, _PDS_TYPE))

    @classmethod
    def parse(cls, data: object, *, did: str | None = None) -> DidDocument:
        """Validate a decoded JSON document; ``did``, if given, must equal its ``id``.

        Raises :class:`ResolutionFailed` for anything that is not a usable DID
        document (wrong shapes, wrong ``id``). Unknown members are kept in ``raw``.
        """
        if not isinstance(data, dict):
            raise _bad_document("not a JSON object")
        doc_id = data.get("id")
        if not is_valid_did(doc_id):
            raise _bad_document("'id' is not a valid DID")
        if did is not None and doc_id != did:
            raise _bad_document(f"'id' is {doc_id!r}, expected {did!r}")
        aka = data.get("alsoKnownAs", [])
        if not isinstance(aka, list) or not all(isinstance(x, str) for x in aka):
            raise _bad_document("'alsoKnownAs' must be an array of strings")
        methods = []
        for i, vm in enumerate(_object_list(data, "verificationMethod")):
            vm_id, vm_type, controller = vm.get("id"), vm.get("type"), vm.get("controller")
            if not (
                isinstance(vm_id, str) and isinstance(vm_type, str) and isinstance(controller, str)
            ):
                raise _bad_document(f"verificationMethod[{i}] needs string id, type and controller")
            multibase = vm.get("publicKeyMultibase")
            if multibase is not None and not isinstance(multibase, str):
                raise _bad_document(f"verificationMethod[{i}].publicKeyMultibase must be a string")
            methods.append(VerificationMethod(vm_id, vm_type, controller, multibase))
        services = []
        for i, svc in enumerate(_object_list(data, "service")):
            svc_id, svc_type = svc.get("id"), svc.get("type")
            endpoint = svc.get("serviceEndpoint")
            if not (isinstance(svc_id, str) and isinstance(svc_type, str)):
                raise _bad_document(f"service[{i}] needs string id and type")
            if not isinstance(endpoint, (str, dict, list)):
                raise _bad_document(
                    f"service[{i}].serviceEndpoint must be a string, object or array"
                )
            services.append(Service(svc_id, svc_type, endpoint))
        return cls(doc_id, tuple(aka), tuple(methods), tuple(services), data)

    @classmethod
    def from_json(cls, body: bytes | str, *, did: str | None = None) -> DidDocument:
        """Parse JSON text; non-JSON raises :class:`ResolutionFailed`."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise _bad_document("not valid JSON") from None
        return cls.parse(data, did=did)

    # -- lookups ----------------------------------------------------------------

    def _claimed_handle(self) -> str | None:
        for uri in self.also_known_as:
            if uri.startswith("at://") and is_valid_handle(uri[5:]):
                return uri[5:].lower()
        return None

    def verification_method(self, fragment: str) -> VerificationMethod | None:
        """First method with id ``#fragment`` / ``<did>#fragment`` controlled by this DID."""
        for vm in self.verification_methods:
            if _fragment_matches(vm.id, self.id, fragment) and vm.controller == self.id:
                return vm
        return None

    def public_key(self, fragment: str) -> PublicKey | None:
        """Key of the first matching method that parses (Multikey or legacy), else None."""
        for vm in self.verification_methods:
            if _fragment_matches(vm.id, self.id, fragment) and vm.controller == self.id:
                try:
                    return vm.public_key()
                except CryptoError:
                    continue
        return None

    @property
    def labeler_key(self) -> PublicKey | None:
        """The ``#atproto_label`` key (labelers sign labels with it)."""
        return self.public_key("atproto_label")

    def service(self, fragment: str, service_type: str | None = None) -> Service | None:
        """First service with id ``#fragment`` / ``<did>#fragment`` (and ``service_type``)."""
        for svc in self.services:
            if _fragment_matches(svc.id, self.id, fragment) and (
                service_type is None or svc.type == service_type
            ):
                return svc
        return None

    def service_endpoint(self, fragment: str, service_type: str | None = None) -> str | None:
        """Origin URL (``scheme://host[:port]``) of a matching service with a valid endpoint."""
        for svc in self.services:
            if _fragment_matches(svc.id, self.id, fragment) and (
                service_type is None or svc.type == service_type
            ):
                endpoint = _clean_endpoint(svc.endpoint)
                if endpoint is not None:
                    return endpoint
        return None

    @property
    def labeler_endpoint(self) -> str | None:
        return self.service_endpoint(_LABELER_FRAGMENT, _LABELER_TYPE)


def _object_list(data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise _bad_document(f"'{key}' must be an array of objects")
    return value


@dataclass(frozen=True, slots=True)
class Identity:
    """A resolved DID with its document and its handle if (and only if) verified."""

    did: str
    doc: DidDocument
    handle: str | None

    @property
    def handle_or_invalid(self) -> str:
        return self.handle if self.handle is not None else INVALID_HANDLE

    @property
    def signing_key(self) -> PublicKey | None:
        return self.doc.signing_key

    @property
    def pds_endpoint(self) -> str | None:
        return self.doc.pds_endpoint


# -- DID resolution -------------------------------------------------------------------


class DidResolver:
    """did:plc through a directory, did:web through the host's well-known path.

    ``fetcher`` carries the outbound policy; when omitted one is made from
    ``allow_local`` / ``resolve_host`` and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        fetcher: Fetcher | None = None,
        *,
        plc_url: str = PLC_DIRECTORY_URL,
        allow_local: bool = False,
        resolve_host: HostResolver | None = None,
        timeout: float = RESOLVE_TIMEOUT_SECONDS,
    ) -> None:
        if not plc_url.startswith(("https://", "http://")):
            raise ValueError(f"plc_url must be an http(s) URL, got {plc_url!r}")
        self._owns_fetcher = fetcher is None
        self.fetcher = fetcher or Fetcher(allow_local=allow_local, resolve_host=resolve_host)
        self.plc_url = plc_url.rstrip("/")
        self.timeout = timeout

    async def aclose(self) -> None:
        if self._owns_fetcher:
            await self.fetcher.aclose()

    def check_supported(self, did: str) -> str:
        """Validate ``did`` for resolution: syntax, method (plc/web), did:web shape.

        Raises :class:`~roost.errors.InvalidDid` for bad syntax and
        :class:`DidNotFound` for DIDs atproto cannot resolve.
        """
        ensure_did(did)
        if did.startswith("did:plc:"):
            if not _PLC_DID.fullmatch(did):
                raise DidNotFound(f"malformed did:plc identifier: {did}")
        elif did.startswith("did:web:"):
            self.web_url(did)
        else:
            raise DidNotFound(f"unsupported DID method (only did:plc and did:web): {did}")
        return did

    def web_url(self, did: str) -> str:
        """The ``/.well-known/did.json`` URL of a hostname-level did:web."""
        ident = did[len("did:web:") :]
        if ":" in ident:
            raise DidNotFound(f"path-based did:web is not supported: {did}")
        m = _WEB_IDENT.fullmatch(ident)
        if m is None:
            raise DidNotFound(f"malformed did:web identifier: {did}")
        host, port = m["host"].lower(), m["port"]
        if host == "localhost":
            if not self.fetcher.allow_local:
                raise UnsafeUrl(f"{did} is only resolvable on a local network")
            if port is not None and not 0 < int(port) < 65536:
                raise DidNotFound(f"bad port in {did}")
            return f"http://localhost{':' + port if port else ''}/.well-known/did.json"
        if port is not None:
            raise DidNotFound(f"did:web may name a port only for localhost: {did}")
        if not is_valid_handle(host) or is_disallowed_handle_tld(host):
            raise DidNotFound(f"did:web host is not a usable domain name: {did}")
        return f"https://{host}/.well-known/did.json"

    async def resolve(self, did: str) -> DidDocument:
        """Fetch and validate the DID document of ``did``."""
        self.check_supported(did)
        if did.startswith("did:plc:"):
            return await self._resolve_plc(did)
        return await self._resolve_web(did)

    async def _resolve_plc(self, did: str) -> DidDocument:
        result = await self.fetcher.get(
            f"{self.plc_url}/{did}",
            max_bytes=MAX_DID_DOCUMENT_BYTES,
            max_redirects=PLC_MAX_REDIRECTS,
            accept=_DID_ACCEPT,
            timeout=self.timeout,
        )
        if result.status == 410:
            raise DidDeactivated(f"DID is deactivated: {did}")
        if result.status == 404:
            if "not available" in _error_message(result.body):
                raise DidDeactivated(f"DID is deactivated: {did}")
            raise DidNotFound(f"DID not registered: {did}")
        if not result.ok:
            raise ResolutionFailed(f"PLC directory answered {result.status} for {did}")
        return DidDocument.from_json(result.body, did=did)

    async def _resolve_web(self, did: str) -> DidDocument:
        result = await self.fetcher.get(
            self.web_url(did),
            max_bytes=MAX_DID_DOCUMENT_BYTES,
            max_redirects=DID_WEB_MAX_REDIRECTS,
            accept=_DID_ACCEPT,
            timeout=self.timeout,
        )
        if result.status in (404, 410):
            raise DidNotFound(f"no DID document at {result.url}")
        if not result.ok:
            raise ResolutionFailed(f"{result.url} answered {result.status}")
        return DidDocument.from_json(result.body, did=did)


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    message = data.get("message") if isinstance(data, dict) else None
    return message if isinstance(message, str) else ""


# -- handle resolution ------------------------------------------------------------------


class _Outcome(NamedTuple):
    """What one handle-resolution method found: a DID, a definite "none", or trouble."""

    did: str | None = None
    transient: str | None = None  # set when the method could not get an answer
    note: str | None = None  # why there is no DID (for messages)


def _default_handle_url(handle: str) -> str:
    return f"https://{handle}/.well-known/atproto-did"


def _did_from_txt(strings: Sequence[bytes]) -> str | None:
    try:
        text = b"".join(strings).decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.startswith("did="):
        return None
    value = text[4:].strip()
    return value if is_valid_did(value) else None


class HandleResolver:
    """Handle -> DID by DNS TXT ``_atproto.<handle>`` and HTTPS well-known, concurrently.

    ``nameservers`` / ``dns_port`` point the DNS lookups at given servers (tests,
    private resolvers); by default the system configuration is read. ``handle_url``
    maps a handle to its well-known URL for local development (for example
    ``http://<handle>:<port>/.well-known/atproto-did``); the fetcher's policy still
    decides whether such a URL may be fetched.
    """

    def __init__(
        self,
        fetcher: Fetcher | None = None,
        *,
        allow_local: bool = False,
        resolve_host: HostResolver | None = None,
        nameservers: Sequence[str] | None = None,
        dns_port: int = 53,
        dns_timeout: float = DNS_TIMEOUT_SECONDS,
        handle_url: Callable[[str], str] | None = None,
        timeout: float = RESOLVE_TIMEOUT_SECONDS,
        use_dns: bool = True,
        use_https: bool = True,
    ) -> None:
        if not (use_dns or use_https):
            raise ValueError("at least one handle resolution method is needed")
        self._owns_fetcher = fetcher is None
        self.fetcher = fetcher or Fetcher(allow_local=allow_local, resolve_host=resolve_host)
        self._nameservers = list(nameservers) if nameservers is not None else None
        self._dns_port = dns_port
        self._dns_timeout = dns_timeout
        self._dns: dns.asyncresolver.Resolver | None = None
        self._handle_url = handle_url or _default_handle_url
        self.timeout = timeout
        self.use_dns = use_dns
        self.use_https = use_https

    async def aclose(self) -> None:
        if self._owns_fetcher:
            await self.fetcher.aclose()

    def _dns_resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            if self._nameservers is None:
                resolver = dns.asyncresolver.Resolver()
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.port = self._dns_port
                resolver.nameservers = list(self._nameservers)
            resolver.timeout = self._dns_timeout
            resolver.lifetime = self._dns_timeout
            self._dns = resolver
        return self._dns

    async def resolve(self, handle: str) -> str:
        """The DID ``handle`` points at.

        Unverified: :meth:`IdentityResolver.resolve_handle_verified` also checks
        that the DID claims the handle back.
        """
        h = ensure_handle(handle)
        if is_disallowed_handle_tld(h):
            raise HandleNotFound(f"{h} uses a reserved top-level domain")
        tasks: list[asyncio.Task[_Outcome]] = []
        if self.use_dns:
            tasks.append(asyncio.create_task(self._dns_outcome(h)))
        if self.use_https:
            tasks.append(asyncio.create_task(self._https_outcome(h)))
        outcomes: list[_Outcome] = []
        try:
            for task in tasks:  # DNS first: its answer wins
                outcome = await task
                if outcome.did is not None:
                    return outcome.did
                outcomes.append(outcome)
        finally:
            pending = [t for t in tasks if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        details = "; ".join(o.transient or o.note or "no answer" for o in outcomes)
        if all(o.transient is not None for o in outcomes):
            raise ResolutionFailed(f"could not resolve handle {h}: {details}")
        raise HandleNotFound(f"handle {h} does not resolve to a DID: {details}")

    async def resolve_dns(self, handle: str) -> str | None:
        """DID from DNS TXT, None if none (or several); :class:`ResolutionFailed` on DNS trouble."""
        outcome = await self._dns_outcome(ensure_handle(handle))
        if outcome.transient is not None:
            raise ResolutionFailed(outcome.transient)
        return outcome.did

    async def resolve_https(self, handle: str) -> str | None:
        """DID from the well-known URL, None if it gives none; raises on network trouble."""
        outcome = await self._https_outcome(ensure_handle(handle))
        if outcome.transient is not None:
            raise ResolutionFailed(outcome.transient)
        return outcome.did

    async def _dns_outcome(self, handle: str) -> _Outcome:
        try:
            name = dns.name.from_text(f"_atproto.{handle}")
        except dns.exception.DNSException:
            return _Outcome(note="DNS: name too long")
        try:
            answer = await self._dns_resolver().resolve(
                name, "TXT", raise_on_no_answer=False, lifetime=self._dns_timeout
            )
        except dns.resolver.NXDOMAIN:
            return _Outcome(note="DNS: no such name")
        except dns.exception.Timeout:
            return _Outcome(transient="DNS: timed out")
        except dns.exception.DNSException as exc:
            return _Outcome(transient=f"DNS: {type(exc).__name__}")
        dids = set()
        for rdata in answer.rrset or ():
            did = _did_from_txt(rdata.strings)
            if did is not None:
                dids.add(did)
        if len(dids) == 1:
            return _Outcome(did=dids.pop())
        if dids:
            return _Outcome(note=f"DNS: {len(dids)} conflicting did= records")
        return _Outcome(note="DNS: no did= record")

    async def _https_outcome(self, handle: str) -> _Outcome:
        try:
            url = self._handle_url(handle)
            result = await self.fetcher.get(
                url,
                max_bytes=MAX_ATPROTO_DID_BYTES,
                max_redirects=HANDLE_HTTPS_MAX_REDIRECTS,
                accept="text/plain",
                timeout=self.timeout,
            )
        except UnsafeUrl as exc:
            return _Outcome(note=f"HTTPS: {exc.message}")
        except ResolutionFailed as exc:
            return _Outcome(transient=f"HTTPS: {exc.message}")
        if result.status >= 500:
            return _Outcome(transient=f"HTTPS: status {result.status}")
        if not result.ok:
            return _Outcome(note=f"HTTPS: status {result.status}")
        try:
            text = result.body.decode("utf-8").strip()
        except UnicodeDecodeError:
            return _Outcome(note="HTTPS: body is not UTF-8")
        if not is_valid_did(text):
            return _Outcome(note="HTTPS: body is not a DID")
        return _Outcome(did=text)


# -- both, verified -----------------------------------------------------------------------


class IdentityResolver:
    """DID and handle resolution plus bidirectional verification (uncached)."""

    def __init__(self, dids: DidResolver, handles: HandleResolver) -> None:
        self.dids = dids
        self.handles = handles
        self._fetcher: Fetcher | None = None  # owned when built by create()

    @classmethod
    def create(
        cls,
        *,
        plc_url: str = PLC_DIRECTORY_URL,
        allow_local: bool = False,
        resolve_host: HostResolver | None = None,
        nameservers: Sequence[str] | None = None,
        dns_port: int = 53,
        dns_timeout: float = DNS_TIMEOUT_SECONDS,
        handle_url: Callable[[str], str] | None = None,
        timeout: float = RESOLVE_TIMEOUT_SECONDS,
    ) -> IdentityResolver:
        """Both resolvers sharing one :class:`Fetcher` (closed by :meth:`aclose`)."""
        fetcher = Fetcher(allow_local=allow_local, resolve_host=resolve_host)
        resolver = cls(
            DidResolver(fetcher, plc_url=plc_url, timeout=timeout),
            HandleResolver(
                fetcher,
                nameservers=nameservers,
                dns_port=dns_port,
                dns_timeout=dns_timeout,
                handle_url=handle_url,
                timeout=timeout,
            ),
        )
        resolver._fetcher = fetcher
        return resolver

    async def aclose(self) -> None:
        await self.dids.aclose()
        await self.handles.aclose()
        if self._fetcher is not None:
            await self._fetcher.aclose()

    async def resolve_did(self, did: str) -> DidDocument:
        return await self.dids.resolve(did)

    async def resolve_handle(self, handle: str) -> str:
        return await self.handles.resolve(handle)

    async def resolve_handle_verified(self, handle: str) -> str:
        """The DID of ``handle``, only if that DID's document claims the handle back."""
        h = ensure_handle(handle)
        did = await self.resolve_handle(h)
        doc = await self.resolve_did(did)
        if doc.handle != h:
            raise HandleNotFound(f"{did} does not claim the handle {h}")
        return did

    async def resolve_did_verified(self, did: str) -> tuple[DidDocument, str | None]:
        """The document and the handle it claims, or None if that handle does not
        resolve back to ``did`` (shown as ``handle.invalid``)."""
        doc = await self.resolve_did(did)
        return doc, await self._verify(did, doc)

    async def resolve_identity(self, did: str) -> Identity:
        doc, handle = await self.resolve_did_verified(did)
        return Identity(did, doc, handle)

    async def _verify(self, did: str, doc: DidDocument) -> str | None:
        if doc.handle is None:
            return None
        try:
            resolved = await self.resolve_handle(doc.handle)
        except IdentityError:
            return None
        return doc.handle if resolved == did else None


# -- the cache ------------------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V | None  # None for a remembered error
    error: IdentityError | None
    fetched_at: float
    fresh_until: float
    stale_until: float
    retry_at: float = 0.0  # no background refresh before this

    def result(self) -> V:
        if self.error is not None:
            raise type(self.error)(self.error.message)
        assert self.value is not None
        return self.value


class _Cache(Generic[K, V]):
    """TTL + LRU cache with stale-while-revalidate, negative entries and coalescing.

    A key has at most one load in flight; every caller for that key awaits it
    (shielded, so one caller giving up does not cancel it for the others).
    ``purge`` forgets the entry and detaches any load in flight, whose result is
    then not stored.
    """

    def __init__(
        self,
        loader: Callable[[K], Awaitable[V]],
        *,
        clock: Callable[[], float],
        ttl: float,
        stale: float,
        not_found: tuple[type[IdentityError], ...],
        not_found_ttl: float,
        error_ttl: float,
        max_entries: int,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._loader = loader
        self._clock = clock
        self._ttl = ttl
        self._stale = stale
        self._not_found = not_found
        self._not_found_ttl = not_found_ttl
        self._error_ttl = error_ttl
        self._max = max_entries
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._inflight: dict[K, asyncio.Task[V]] = {}
        self.loads = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def peek(self, key: K) -> V | None:
        """The cached value (fresh or stale), without loading or touching LRU order."""
        entry = self._entries.get(key)
        return None if entry is None else entry.value

    async def get(self, key: K, *, max_age: float | None = None) -> V:
        """The value for ``key``; ``max_age`` forces a reload of older entries."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and (max_age is None or now - entry.fetched_at <= max_age):
            if now < entry.fresh_until:
                self._entries.move_to_end(key)
                return entry.result()
            if entry.value is not None and now < entry.stale_until:
                self._entries.move_to_end(key)
                if now >= entry.retry_at:
                    self._start(key)
                return entry.value
        return await asyncio.shield(self._start(key))

    def purge(self, key: K) -> None:
        self._entries.pop(key, None)
        self._inflight.pop(key, None)

    async def wait_idle(self) -> None:
        """Wait until no load (foreground or background) is in flight."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, key: K) -> asyncio.Task[V]:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key))
            task.add_done_callback(_consume_result)
            self._inflight[key] = task
        return task

    async def _load(self, key: K) -> V:
        task = asyncio.current_task()
        self.loads += 1
        try:
            value = await self._loader(key)
        except self._not_found as exc:
            if self._inflight.get(key) is task:
                now = self._clock()
                until = now + self._not_found_ttl
                self._store(key, _Entry[V](None, exc, now, until, until))
            raise
        except IdentityError as exc:
            if self._inflight.get(key) is task:
                now = self._clock()
                old = self._entries.get(key)
                if old is not None and old.value is not None and now < old.stale_until:
                    old.retry_at = now + self._error_ttl  # keep serving the stale value
                else:
                    until = now + self._error_ttl
                    self._store(key, _Entry[V](None, exc, now, until, until))
            raise
        else:
            if self._inflight.get(key) is task:
                now = self._clock()
                stale_until = now + self._ttl + self._stale
                self._store(key, _Entry(value, None, now, now + self._ttl, stale_until))
            return value
        finally:
            if self._inflight.get(key) is task:
                del self._inflight[key]

    def _store(self, key: K, entry: _Entry[V]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


def _consume_result(task: asyncio.Task[Any]) -> None:
    # A background refresh nobody awaits must not log "exception never retrieved".
    if not task.cancelled():
        exc = task.exception()
        if exc is not None and not isinstance(exc, IdentityError):
            log.warning("identity lookup failed unexpectedly: error=%r", exc)


class IdentityDirectory:
    """Cached identity lookups over an :class:`IdentityResolver` (indigo's cache Directory).

    Two caches, DID -> :class:`DidDocument` and handle -> DID, each with a TTL,
    a stale-while-revalidate window, negative entries for definitive "not found"
    answers, short-lived entries for transient failures, LRU eviction at
    ``max_entries``, and one in-flight load per key. ``clock`` (monotonic
    seconds) is injectable for tests.

    :meth:`resolve_key` has exactly the shape the XRPC layer's service-auth
    check wants: ``await resolve_key(did, force_refresh=...) -> PublicKey``.
    """

    def __init__(
        self,
        resolver: IdentityResolver,
        *,
        clock: Callable[[], float] = time.monotonic,
        did_ttl: float = DID_TTL_SECONDS,
        did_stale: float = DID_STALE_SECONDS,
        handle_ttl: float = HANDLE_TTL_SECONDS,
        handle_stale: float = HANDLE_STALE_SECONDS,
        not_found_ttl: float = NOT_FOUND_TTL_SECONDS,
        error_ttl: float = ERROR_TTL_SECONDS,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        self.resolver = resolver
        self._docs: _Cache[str, DidDocument] = _Cache(
            resolver.resolve_did,
            clock=clock,
            ttl=did_ttl,
            stale=did_stale,
            not_found=(DidNotFound, DidDeactivated),
            not_found_ttl=not_found_ttl,
            error_ttl=error_ttl,
            max_entries=max_entries,
        )
        self._handles: _Cache[str, str] = _Cache(
            resolver.resolve_handle,
            clock=clock,
            ttl=handle_ttl,
            stale=handle_stale,
            not_found=(HandleNotFound,),
            not_found_ttl=not_found_ttl,
            error_ttl=error_ttl,
            max_entries=max_entries,
        )

    async def aclose(self) -> None:
        """Cancel background refreshes (the resolver is the caller's to close)."""
        await self._docs.aclose()
        await self._handles.aclose()

    async def wait_idle(self) -> None:
        """Wait for in-flight lookups and background refreshes to finish."""
        await self._docs.wait_idle()
        await self._handles.wait_idle()

    @property
    def stats(self) -> dict[str, int]:
        return {
            "documents": len(self._docs),
            "handles": len(self._handles),
            "document_loads": self._docs.loads,
            "handle_loads": self._handles.loads,
        }

    async def lookup_did(self, did: str, *, force_refresh: bool = False) -> DidDocument:
        """The DID document (cached). ``force_refresh`` bypasses entries older than
        :data:`FORCE_REFRESH_MIN_AGE_SECONDS`."""
        self.resolver.dids.check_supported(did)
        return await self._docs.get(
            did, max_age=FORCE_REFRESH_MIN_AGE_SECONDS if force_refresh else None
        )

    async def lookup_handle(self, handle: str, *, force_refresh: bool = False) -> str:
        """The DID of ``handle``, bidirectionally verified (cached).

        A mismatch between the handle's DID and that DID's document re-fetches
        both once (if older than :data:`HANDLE_MISMATCH_RECHECK_SECONDS`) before
        raising :class:`HandleNotFound`. Errors resolving the DID propagate.
        """
        h = ensure_handle(handle)
        if is_disallowed_handle_tld(h):
            raise HandleNotFound(f"{h} uses a reserved top-level domain")
        age = FORCE_REFRESH_MIN_AGE_SECONDS if force_refresh else None
        did = await self._handles.get(h, max_age=age)
        doc = await self.lookup_did(did, force_refresh=force_refresh)
        if doc.handle == h:
            return did
        did = await self._handles.get(h, max_age=HANDLE_MISMATCH_RECHECK_SECONDS)
        doc = await self._docs.get(did, max_age=HANDLE_MISMATCH_RECHECK_SECONDS)
        if doc.handle == h:
            return did
        raise HandleNotFound(f"{did} does not claim the handle {h}")

    async def lookup_identity(self, did: str, *, force_refresh: bool = False) -> Identity:
        """Document plus the verified handle (None, i.e. ``handle.invalid``, otherwise)."""
        doc = await self.lookup_did(did, force_refresh=force_refresh)
        handle = doc.handle
        if handle is None:
            return Identity(did, doc, None)
        if await self._handle_points_at(handle, did, None):
            return Identity(did, doc, handle)
        # Disagreement: one of the two entries may be out of date; re-check once.
        doc = await self._docs.get(did, max_age=HANDLE_MISMATCH_RECHECK_SECONDS)
        handle = doc.handle
        if handle is not None and await self._handle_points_at(
            handle, did, HANDLE_MISMATCH_RECHECK_SECONDS
        ):
            return Identity(did, doc, handle)
        return Identity(did, doc, None)

    async def _handle_points_at(self, handle: str, did: str, max_age: float | None) -> bool:
        if is_disallowed_handle_tld(handle):
            return False
        try:
            return await self._handles.get(handle, max_age=max_age) == did
        except IdentityError:
            return False

    async def signing_key(self, did: str, *, force_refresh: bool = False) -> PublicKey:
        """The DID's ``#atproto`` key; :class:`ResolutionFailed` if it has none."""
        doc = await self.lookup_did(did, force_refresh=force_refresh)
        if doc.signing_key is None:
            raise ResolutionFailed(f"{did} has no usable #atproto signing key")
        return doc.signing_key

    async def resolve_key(self, did: str, *, force_refresh: bool = False) -> PublicKey:
        """Service-auth key resolver: same as :meth:`signing_key`."""
        return await self.signing_key(did, force_refresh=force_refresh)

    async def labeler_key(self, did: str, *, force_refresh: bool = False) -> PublicKey:
        """The DID's ``#atproto_label`` key; :class:`ResolutionFailed` if it has none."""
        doc = await self.lookup_did(did, force_refresh=force_refresh)
        if doc.labeler_key is None:
            raise ResolutionFailed(f"{did} has no usable #atproto_label key")
        return doc.labeler_key

    def purge(self, did_or_handle: str) -> None:
        """Forget a DID (and the handle its cached document claims) or a handle.

        Call on ``#identity`` events; lookups in flight for it are detached.
        """
        if did_or_handle.startswith("did:"):
            doc = self._docs.peek(did_or_handle)
            self._docs.purge(did_or_handle)
            if doc is not None and doc.handle is not None:
                self._handles.purge(doc.handle)
        else:
            self._handles.purge(did_or_handle.lower())
