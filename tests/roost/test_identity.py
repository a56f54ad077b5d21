"""roost.identity: DID documents, DID and handle resolution, verification, the cache.

Everything runs against real sockets on 127.0.0.1: a Starlette "world" app plays
the PLC directory, a did:web host and handle well-known hosts (the handle is read
from the Host header), and a tiny UDP DNS server answers ``_atproto`` TXT queries.
Hostnames go through a fake resolver that knows only ``*.test`` and
``localhost``, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from roost.crypto import K256, P256, PrivateKey, PublicKey, parse_multikey
from roost.errors import (
    DidDeactivated,
    DidNotFound,
    HandleNotFound,
    IdentityError,
    InvalidDid,
    InvalidHandle,
    ResolutionFailed,
    UnsafeUrl,
)
from roost.identity import (
    DID_STALE_SECONDS,
    DID_TTL_SECONDS,
    ERROR_TTL_SECONDS,
    FORCE_REFRESH_MIN_AGE_SECONDS,
    HANDLE_MISMATCH_RECHECK_SECONDS,
    INVALID_HANDLE,
    MAX_DID_DOCUMENT_BYTES,
    NOT_FOUND_TTL_SECONDS,
    DidDocument,
    DidResolver,
    HandleResolver,
    Identity,
    IdentityDirectory,
    IdentityResolver,
    Service,
    VerificationMethod,
)
from tests.servers import serve

# -- helpers ------------------------------------------------------------------------


def plc_did(name: str) -> str:
    digest = hashlib.sha256(name.encode()).digest()
    return "did:plc:" + base64.b32encode(digest).decode().lower()[:24]


KEYS = {
    name: PrivateKey.from_bytes(hashlib.sha256(name.encode()).digest(), K256) for name in "abcdef"
}


def key(name: str = "a") -> PublicKey:
    return KEYS[name].public_key


def make_doc(
    did: str,
    handle: str | None = None,
    *,
    signing: PublicKey | None = None,
    pds: str | None = "https://pds.example.com",
    key_id: str | None = None,
) -> dict[str, Any]:
    signing = signing or key()
    doc: dict[str, Any] = {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "alsoKnownAs": [f"at://{handle}"] if handle else [],
        "verificationMethod": [
            {
                "id": key_id or f"{did}#atproto",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": signing.multikey(),
            }
        ],
        "service": [],
    }
    if pds is not None:
        doc["service"].append(
            {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}
        )
    return doc


ALICE = plc_did("alice")
BOB = plc_did("bob")
CAROL = plc_did("carol")


# -- the world: PLC directory, did:web host, handle well-knowns ----------------------------


Behaviour = dict[str, Any] | str | Callable[[Request], Any]


@dataclass
class World:
    """Shared state of the test server (it runs in another thread)."""

    plc: dict[str, Behaviour] = field(default_factory=dict)
    web: dict[str, Any] | None = None
    well_known: dict[str, Behaviour] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def reset(self) -> None:
        self.plc.clear()
        self.web = None
        self.well_known.clear()
        self.hits.clear()
        self.delay = 0.0

    def hit(self, what: str) -> None:
        with self.lock:
            self.hits[what] += 1


WORLD = World()


async def _behave(value: Behaviour | None, request: Request, missing: Response) -> Response:
    if value is None:
        return missing
    if callable(value):
        result = value(request)
        return await result if asyncio.iscoroutine(result) else result  # type: ignore[no-any-return]
    if isinstance(value, dict):
        return JSONResponse(value, media_type="application/did+ld+json")
    return PlainTextResponse(value)


async def plc_route(request: Request) -> Response:
    did = request.path_params["did"]
    WORLD.hit(f"plc:{did}")
    value = WORLD.plc.get(did)  # read before the delay: the answer is as of arrival
    if WORLD.delay:
        await asyncio.sleep(WORLD.delay)
    missing = JSONResponse({"message": f"DID not registered: {did}"}, status_code=404)
    return await _behave(value, request, missing)


async def did_json_route(request: Request) -> Response:
    WORLD.hit("web")
    return await _behave(WORLD.web, request, PlainTextResponse("not found", status_code=404))


async def atproto_did_route(request: Request) -> Response:
    host = request.headers["host"].rsplit(":", 1)[0]
    WORLD.hit(f"wk:{host}")
    if WORLD.delay:
        await asyncio.sleep(WORLD.delay)
    return await _behave(
        WORLD.well_known.get(host), request, PlainTextResponse("no", status_code=404)
    )


APP = Starlette(
    routes=[
        Route("/plc/{did}", plc_route),
        Route("/.well-known/did.json", did_json_route),
        Route("/.well-known/atproto-did", atproto_did_route),
    ]
)


@pytest.fixture(scope="module")
def world_server() -> Iterator[World]:
    with serve(APP) as url:
        WORLD.url = url
        yield WORLD


@pytest.fixture
def world(world_server: World) -> Iterator[World]:
    world_server.reset()
    yield world_server
    world_server.reset()


# -- a UDP DNS server -------------------------------------------------------------------


class FakeDns(asyncio.DatagramProtocol):
    """Answers TXT queries from ``records`` (name -> TXT texts, "servfail" or "drop")."""

    def __init__(self) -> None:
        self.records: dict[str, list[str] | str] = {}
        self.queries: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def txt(self, handle: str, *values: str) -> None:
        self.records[f"_atproto.{handle}."] = [f'"{v}"' for v in values]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text().lower()
        self.queries.append(name)
        entry = self.records.get(name)
        if entry == "drop":
            return
        response = dns.message.make_response(query)
        if entry == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif entry is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            assert isinstance(entry, list)
            if entry:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 60, "IN", "TXT", entry)
                )
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[FakeDns]:
    loop = asyncio.get_running_loop()
    proto = FakeDns()
    transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
    proto.port = transport.get_extra_info("sockname")[1]
    yield proto
    transport.close()


async def fake_resolve_host(host: str) -> list[str]:
    if host == "localhost" or host.endswith(".test"):
        return ["127.0.0.1"]
    raise OSError(f"unknown host {host}")


def make_resolver(
    world: World, dns_server: FakeDns, *, allow_local: bool = True, timeout: float = 2.0
) -> IdentityResolver:
    return IdentityResolver.create(
        plc_url=world.url + "/plc",
        allow_local=allow_local,
        resolve_host=fake_resolve_host,
        nameservers=["127.0.0.1"],
        dns_port=dns_server.port,
        handle_url=lambda h: f"http://{h}:{world.port}/.well-known/atproto-did",
        timeout=timeout,
    )


@pytest.fixture
async def resolver(world: World, dns_server: FakeDns) -> AsyncIterator[IdentityResolver]:
    r = make_resolver(world, dns_server)
    yield r
    await r.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def directory(
    resolver: IdentityResolver,
) -> AsyncIterator[tuple[IdentityDirectory, FakeClock]]:
    clock = FakeClock()
    d = IdentityDirectory(resolver, clock=clock)
    yield d, clock
    await d.aclose()


# -- DidDocument -----------------------------------------------------------------------


def test_parse_plc_document() -> None:
    raw = make_doc(ALICE, "Alice.Example.COM")
    doc = DidDocument.parse(raw, did=ALICE)
    assert doc.id == ALICE
    assert doc.handle == "alice.example.com"
    assert doc.signing_key == key()
    assert doc.pds_endpoint == "https://pds.example.com"
    assert doc.raw is raw
    assert doc.also_known_as == ("at://Alice.Example.COM",)
    assert doc.verification_methods[0] == VerificationMethod(
        f"{ALICE}#atproto", "Multikey", ALICE, key().multikey()
    )
    assert doc.services[0] == Service(
        "#atproto_pds", "AtprotoPersonalDataServer", "https://pds.example.com"
    )
    with pytest.raises(FrozenInstanceError):
        doc.id = BOB  # type: ignore[misc]


def test_parse_spec_example_with_p256_and_relative_ids() -> None:
    p256 = PrivateKey.from_bytes(hashlib.sha256(b"p").digest(), P256).public_key
    raw = make_doc("did:web:example.com", "example.com", signing=p256, key_id="#atproto")
    raw["service"][0]["id"] = "did:web:example.com#atproto_pds"
    doc = DidDocument.parse(raw, did="did:web:example.com")
    assert doc.signing_key == p256
    assert doc.pds_endpoint == "https://pds.example.com"


def test_signing_key_rules() -> None:
    raw = make_doc(ALICE, key_id=f"{BOB}#atproto")  # someone else's fragment
    assert DidDocument.parse(raw).signing_key is None
    raw = make_doc(ALICE)
    raw["verificationMethod"][0]["controller"] = BOB
    assert DidDocument.parse(raw).signing_key is None
    raw = make_doc(ALICE)
    raw["verificationMethod"][0]["type"] = "JsonWebKey2020"
    assert DidDocument.parse(raw).signing_key is None
    raw = make_doc(ALICE)
    raw["verificationMethod"][0]["publicKeyMultibase"] = "zNotAKey"
    assert DidDocument.parse(raw).signing_key is None
    raw["verificationMethod"].append(make_doc(ALICE, signing=key("c"))["verificationMethod"][0])
    assert DidDocument.parse(raw).signing_key == key("c")  # first usable one
    raw = make_doc(ALICE)
    raw["verificationMethod"] = []
    assert DidDocument.parse(raw).signing_key is None


def test_legacy_verification_method() -> None:
    legacy = (
        "zQYEBzXeuTM9UR3rfvNag6L3RNAs5pQZyYPsomTsgQhsxLdEgCrPTLgFna8yqCnxPpNT7DBk6Ym3dgPKNu86vt9GR"
    )
    raw = make_doc(ALICE)
    raw["verificationMethod"][0].update(
        type="EcdsaSecp256k1VerificationKey2019", publicKeyMultibase=legacy
    )
    doc = DidDocument.parse(raw)
    assert doc.signing_key == parse_multikey("zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF")


def test_handle_is_first_valid_at_uri() -> None:
    raw = make_doc(ALICE)
    raw["alsoKnownAs"] = [
        "https://alice.example.com",
        "at://not_valid.example.com",
        "at://alice.example.com/app.bsky.feed.post/1",
        "at://Second.Example.com",
        "at://third.example.com",
    ]
    assert DidDocument.parse(raw).handle == "second.example.com"
    raw["alsoKnownAs"] = ["https://x.example.com"]
    assert DidDocument.parse(raw).handle is None


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://pds.example.com", "https://pds.example.com"),
        ("https://pds.example.com/", "https://pds.example.com"),
        ("https://PDS.example.com:8443", "https://pds.example.com:8443"),
        ("http://localhost:2583", "http://localhost:2583"),
        ("http://127.0.0.1:2583", "http://127.0.0.1:2583"),
        ("https://pds.example.com/xrpc", None),
        ("https://pds.example.com?x=1", None),
        ("https://pds.example.com#frag", None),
        ("https://user@pds.example.com", None),
        ("ftp://pds.example.com", None),
        ("pds.example.com", None),
        ("https://pds.example.com:99999", None),
        ("https://bad_host.example.com", None),
        (42, None),
        ({"uri": "https://pds.example.com"}, None),
    ],
)
def test_pds_endpoint(endpoint: Any, expected: str | None) -> None:
    raw = make_doc(ALICE)
    raw["service"][0]["serviceEndpoint"] = endpoint
    if not isinstance(endpoint, (str, dict, list)):
        with pytest.raises(ResolutionFailed):
            DidDocument.parse(raw)
        return
    assert DidDocument.parse(raw).pds_endpoint == expected


def test_pds_endpoint_needs_right_type_and_id() -> None:
    raw = make_doc(ALICE)
    raw["service"][0]["type"] = "SomethingElse"
    assert DidDocument.parse(raw).pds_endpoint is None
    raw = make_doc(ALICE)
    raw["service"][0]["id"] = f"{BOB}#atproto_pds"
    assert DidDocument.parse(raw).pds_endpoint is None
    assert DidDocument.parse(make_doc(ALICE, pds=None)).pds_endpoint is None


def test_labeler_and_generic_services() -> None:
    raw = make_doc(ALICE)
    raw["verificationMethod"].append(
        {
            "id": "#atproto_label",
            "type": "Multikey",
            "controller": ALICE,
            "publicKeyMultibase": key("d").multikey(),
        }
    )
    raw["service"] += [
        {
            "id": "#atproto_labeler",
            "type": "AtprotoLabeler",
            "serviceEndpoint": "https://mod.example.com",
        },
        {
            "id": f"{ALICE}#bsky_fg",
            "type": "BskyFeedGenerator",
            "serviceEndpoint": "https://fg.example.com",
        },
    ]
    doc = DidDocument.parse(raw)
    assert doc.labeler_key == key("d")
    assert doc.public_key("#atproto_label") == key("d")
    assert doc.labeler_endpoint == "https://mod.example.com"
    assert doc.service("bsky_fg") == Service(
        f"{ALICE}#bsky_fg", "BskyFeedGenerator", "https://fg.example.com"
    )
    assert doc.service("bsky_fg", "Other") is None
    assert doc.service_endpoint("#bsky_fg", "BskyFeedGenerator") == "https://fg.example.com"
    assert doc.verification_method("atproto_label") is not None
    assert doc.service("missing") is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: "not an object",
        lambda d: [d],
        lambda d: {k: v for k, v in d.items() if k != "id"},
        lambda d: {**d, "id": "not-a-did"},
        lambda d: {**d, "id": BOB},  # wrong id
        lambda d: {**d, "alsoKnownAs": "at://alice.test"},
        lambda d: {**d, "alsoKnownAs": [1]},
        lambda d: {**d, "verificationMethod": {"id": "#atproto"}},
        lambda d: {**d, "verificationMethod": ["#atproto"]},
        lambda d: {**d, "verificationMethod": [{"id": "#atproto", "type": "Multikey"}]},
        lambda d: {
            **d,
            "verificationMethod": [
                {"id": "#a", "type": "Multikey", "controller": ALICE, "publicKeyMultibase": 5}
            ],
        },
        lambda d: {**d, "service": [{"id": "#atproto_pds", "serviceEndpoint": "https://x.com"}]},
        lambda d: {**d, "service": [{"id": "#x", "type": "T", "serviceEndpoint": None}]},
        lambda d: {**d, "service": {}},
    ],
)
def test_malformed_documents(mutate: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(ResolutionFailed, match="malformed DID document"):
        DidDocument.parse(mutate(make_doc(ALICE, "alice.test")), did=ALICE)


def test_from_json() -> None:
    import json

    assert DidDocument.from_json(json.dumps(make_doc(ALICE)), did=ALICE).id == ALICE
    for body in (b"", b"{", b"\xff\xfe\x00", b"[" * 100_000):
        with pytest.raises(ResolutionFailed):
            DidDocument.from_json(body)


def test_identity_value() -> None:
    doc = DidDocument.parse(make_doc(ALICE, "alice.test"))
    assert Identity(ALICE, doc, None).handle_or_invalid == INVALID_HANDLE == "handle.invalid"
    ident = Identity(ALICE, doc, "alice.test")
    assert ident.handle_or_invalid == "alice.test"
    assert ident.signing_key == key() and ident.pds_endpoint == "https://pds.example.com"


# -- DID resolution --------------------------------------------------------------------


async def test_resolve_plc(world: World, resolver: IdentityResolver) -> None:
    world.plc[ALICE] = make_doc(ALICE, "alice.test")
    doc = await resolver.resolve_did(ALICE)
    assert doc.handle == "alice.test" and doc.signing_key == key()
    assert world.hits[f"plc:{ALICE}"] == 1


async def test_plc_errors(world: World, resolver: IdentityResolver) -> None:
    with pytest.raises(DidNotFound):
        await resolver.resolve_did(ALICE)
    world.plc[ALICE] = lambda r: JSONResponse(
        {"message": f"DID not available: {ALICE}"}, status_code=410
    )
    with pytest.raises(DidDeactivated):
        await resolver.resolve_did(ALICE)
    world.plc[ALICE] = lambda r: JSONResponse(
        {"message": f"DID not available: {ALICE}"}, status_code=404
    )
    with pytest.raises(DidDeactivated):  # the reference server's way of saying "tombstoned"
        await resolver.resolve_did(ALICE)
    world.plc[ALICE] = lambda r: PlainTextResponse("oops", status_code=500)
    with pytest.raises(ResolutionFailed, match="500"):
        await resolver.resolve_did(ALICE)


@pytest.mark.parametrize(
    "behaviour",
    [
        make_doc(BOB),  # wrong id
        "this is not json",
        lambda r: Response(
            b"{" + b" " * (MAX_DID_DOCUMENT_BYTES + 10) + b"}", media_type="application/json"
        ),
        lambda r: StreamingResponse(_endless_json()),
        lambda r: RedirectResponse(f"{WORLD.url}/plc/{BOB}"),
    ],
)
async def test_plc_bad_responses(
    world: World, resolver: IdentityResolver, behaviour: Behaviour
) -> None:
    world.plc[ALICE] = behaviour
    world.plc[BOB] = make_doc(ALICE)
    with pytest.raises(ResolutionFailed):
        await resolver.resolve_did(ALICE)
    assert world.hits[f"plc:{BOB}"] == 0  # redirects are not followed


async def _endless_json() -> AsyncIterator[bytes]:
    yield b'{"id": "'
    while True:
        yield b"a" * 65_536
        await asyncio.sleep(0)


async def test_plc_timeout(world: World, dns_server: FakeDns) -> None:
    world.plc[ALICE] = make_doc(ALICE)
    world.delay = 1.0
    r = make_resolver(world, dns_server, timeout=0.2)
    try:
        start = time.monotonic()
        with pytest.raises(ResolutionFailed, match="timed out"):
            await r.resolve_did(ALICE)
        assert time.monotonic() - start < 0.9
    finally:
        await r.aclose()


async def test_plc_on_loopback_refused_without_allow_local(
    world: World, dns_server: FakeDns
) -> None:
    world.plc[ALICE] = make_doc(ALICE)
    r = make_resolver(world, dns_server, allow_local=False)
    try:
        with pytest.raises(UnsafeUrl):
            await r.resolve_did(ALICE)
    finally:
        await r.aclose()
    assert world.hits[f"plc:{ALICE}"] == 0


async def test_did_web_localhost(world: World, resolver: IdentityResolver) -> None:
    did = f"did:web:localhost%3A{world.port}"
    world.web = make_doc(did, "web.test", key_id="#atproto")
    doc = await resolver.resolve_did(did)
    assert doc.id == did and doc.signing_key == key() and doc.handle == "web.test"
    world.web = make_doc("did:web:localhost", "web.test")
    with pytest.raises(ResolutionFailed, match="expected"):
        await resolver.resolve_did(did)
    world.web = None
    with pytest.raises(DidNotFound):
        await resolver.resolve_did(did)


async def test_did_web_localhost_refused_without_allow_local(
    world: World, dns_server: FakeDns
) -> None:
    did = f"did:web:localhost%3A{world.port}"
    world.web = make_doc(did)
    r = make_resolver(world, dns_server, allow_local=False)
    try:
        with pytest.raises(UnsafeUrl):
            await r.resolve_did(did)
    finally:
        await r.aclose()
    assert world.hits["web"] == 0


def test_did_web_urls_and_unsupported_dids() -> None:
    strict = DidResolver()
    assert strict.web_url("did:web:example.com") == "https://example.com/.well-known/did.json"
    assert strict.web_url("did:web:Example.COM") == "https://example.com/.well-known/did.json"
    local = DidResolver(allow_local=True)
    assert local.web_url("did:web:localhost%3A2583") == "http://localhost:2583/.well-known/did.json"
    assert local.web_url("did:web:localhost") == "http://localhost/.well-known/did.json"
    with pytest.raises(UnsafeUrl):
        strict.web_url("did:web:localhost%3A2583")
    for did, match in [
        ("did:web:example.com:u:alice", "path-based"),
        ("did:web:example.com%3A8443", "only for localhost"),
        ("did:web:example.local", "usable domain"),
        ("did:web:10.0.0.1", "usable domain"),
        ("did:web:exa%20mple.com", "malformed"),
        ("did:key:zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF", "unsupported DID method"),
        ("did:plc:tooshort", "malformed did:plc"),
        ("did:plc:" + "A" * 24, "malformed did:plc"),
    ]:
        with pytest.raises(DidNotFound, match=match):
            local.check_supported(did)
    with pytest.raises(InvalidDid):
        local.check_supported("did:PLC:abc")
    with pytest.raises(ValueError):
        DidResolver(plc_url="ftp://plc.example.com")


# -- handle resolution ----------------------------------------------------------------


async def test_dns_txt(resolver: IdentityResolver, dns_server: FakeDns) -> None:
    dns_server.txt("alice.test", f"did={ALICE}")
    assert await resolver.handles.resolve_dns("alice.test") == ALICE
    assert await resolver.resolve_handle("ALICE.test") == ALICE
    assert dns_server.queries[-1] == "_atproto.alice.test."


async def test_dns_txt_record_forms(resolver: IdentityResolver, dns_server: FakeDns) -> None:
    handles = resolver.handles
    dns_server.records["_atproto.split.test."] = [f'"did=did:plc:" "{ALICE[8:]}"']
    assert await handles.resolve_dns("split.test") == ALICE
    dns_server.txt("dup.test", f"did={ALICE}", f"did={ALICE}")
    assert await handles.resolve_dns("dup.test") == ALICE
    dns_server.txt("noise.test", "v=spf1 -all", f"did={ALICE}", "did=not a did")
    assert await handles.resolve_dns("noise.test") == ALICE
    dns_server.txt("conflict.test", f"did={ALICE}", f"did={BOB}")
    assert await handles.resolve_dns("conflict.test") is None
    dns_server.txt("empty.test")
    assert await handles.resolve_dns("empty.test") is None
    assert await handles.resolve_dns("nxdomain.test") is None
    dns_server.records["_atproto.broken.test."] = "servfail"
    with pytest.raises(ResolutionFailed):
        await handles.resolve_dns("broken.test")


async def test_https_well_known(world: World, resolver: IdentityResolver) -> None:
    world.well_known["web.test"] = f"  {BOB}\n"
    assert await resolver.handles.resolve_https("web.test") == BOB
    assert await resolver.resolve_handle("web.test") == BOB  # DNS says NXDOMAIN
    for body in (f"{BOB}\n{ALICE}", "hello", "did:plc:", ""):
        world.well_known["bad.test"] = body
        assert await resolver.handles.resolve_https("bad.test") is None
    world.well_known["moved.test"] = lambda r: RedirectResponse(
        f"http://web.test:{world.port}/.well-known/atproto-did"
    )
    assert await resolver.handles.resolve_https("moved.test") is None
    assert world.hits["wk:web.test"] == 2


async def test_dns_wins_over_https(
    world: World, resolver: IdentityResolver, dns_server: FakeDns
) -> None:
    dns_server.txt("both.test", f"did={ALICE}")
    world.well_known["both.test"] = BOB
    assert await resolver.resolve_handle("both.test") == ALICE


async def test_conflicting_dns_falls_back_to_https(
    world: World, resolver: IdentityResolver, dns_server: FakeDns
) -> None:
    dns_server.txt("conflict.test", f"did={ALICE}", f"did={BOB}")
    with pytest.raises(HandleNotFound, match="conflicting"):
        await resolver.resolve_handle("conflict.test")
    world.well_known["conflict.test"] = CAROL
    assert await resolver.resolve_handle("conflict.test") == CAROL


async def test_handle_not_found_versus_failed(
    world: World, resolver: IdentityResolver, dns_server: FakeDns
) -> None:
    with pytest.raises(HandleNotFound):
        await resolver.resolve_handle("nobody.test")
    dns_server.records["_atproto.flaky.test."] = "servfail"
    world.well_known["flaky.test"] = lambda r: PlainTextResponse("down", status_code=503)
    with pytest.raises(ResolutionFailed):
        await resolver.resolve_handle("flaky.test")
    world.well_known["flaky.test"] = ALICE  # HTTPS still works while DNS is down
    assert await resolver.resolve_handle("flaky.test") == ALICE


async def test_dns_timeout_does_not_block_https(world: World, dns_server: FakeDns) -> None:
    dns_server.records["_atproto.slowdns.test."] = "drop"
    world.well_known["slowdns.test"] = BOB
    r = IdentityResolver.create(
        plc_url=world.url + "/plc",
        allow_local=True,
        resolve_host=fake_resolve_host,
        nameservers=["127.0.0.1"],
        dns_port=dns_server.port,
        dns_timeout=0.3,
        handle_url=lambda h: f"http://{h}:{world.port}/.well-known/atproto-did",
    )
    try:
        start = time.monotonic()
        assert await r.resolve_handle("slowdns.test") == BOB
        assert time.monotonic() - start < 2
    finally:
        await r.aclose()


async def test_handle_syntax_and_reserved_tlds(
    resolver: IdentityResolver, dns_server: FakeDns
) -> None:
    with pytest.raises(InvalidHandle):
        await resolver.resolve_handle("not a handle")
    for handle in ("alice.local", "alice.onion", "x.invalid", "a.localhost"):
        with pytest.raises(HandleNotFound, match="reserved"):
            await resolver.resolve_handle(handle)
    assert dns_server.queries == []


async def test_https_well_known_http_needs_allow_local(world: World, dns_server: FakeDns) -> None:
    world.well_known["web.test"] = BOB
    dns_server.txt("dns.test", f"did={ALICE}")
    r = make_resolver(world, dns_server, allow_local=False)
    try:
        with pytest.raises(HandleNotFound, match="plain http"):
            await r.resolve_handle("web.test")
        assert await r.resolve_handle("dns.test") == ALICE
    finally:
        await r.aclose()
    assert world.hits["wk:web.test"] == 0


async def test_https_well_known_timeout(world: World, dns_server: FakeDns) -> None:
    world.well_known["slow.test"] = BOB
    world.delay = 1.0
    r = make_resolver(world, dns_server, timeout=0.2)
    try:
        with pytest.raises(ResolutionFailed, match="timed out"):
            await r.handles.resolve_https("slow.test")
    finally:
        await r.aclose()


def test_handle_resolver_needs_a_method() -> None:
    with pytest.raises(ValueError):
        HandleResolver(use_dns=False, use_https=False)


# -- bidirectional verification ---------------------------------------------------------


async def test_verified_both_ways(
    world: World, resolver: IdentityResolver, dns_server: FakeDns
) -> None:
    world.plc[ALICE] = make_doc(ALICE, "Alice.test")
    dns_server.txt("alice.test", f"did={ALICE}")
    assert await resolver.resolve_handle_verified("alice.TEST") == ALICE
    doc, handle = await resolver.resolve_did_verified(ALICE)
    assert doc.id == ALICE and handle == "alice.test"
    ident = await resolver.resolve_identity(ALICE)
    assert ident.handle == "alice.test"


async def test_verification_failures(
    world: World, resolver: IdentityResolver, dns_server: FakeDns
) -> None:
    # alice.test points at ALICE, but ALICE's document claims another handle.
    world.plc[ALICE] = make_doc(ALICE, "someone-else.test")
    dns_server.txt("alice.test", f"did={ALICE}")
    with pytest.raises(HandleNotFound, match="does not claim"):
        await resolver.resolve_handle_verified("alice.test")
    # ALICE claims bob.test, which points at BOB.
    world.plc[ALICE] = make_doc(ALICE, "bob.test")
    dns_server.txt("bob.test", f"did={BOB}")
    doc, handle = await resolver.resolve_did_verified(ALICE)
    assert doc.handle == "bob.test" and handle is None
    # ALICE claims a handle that does not resolve at all, or none.
    world.plc[ALICE] = make_doc(ALICE, "ghost.test")
    assert (await resolver.resolve_did_verified(ALICE))[1] is None
    world.plc[ALICE] = make_doc(ALICE, None)
    assert (await resolver.resolve_identity(ALICE)).handle_or_invalid == "handle.invalid"
    # The handle's DID does not resolve.
    dns_server.txt("orphan.test", f"did={CAROL}")
    with pytest.raises(DidNotFound):
        await resolver.resolve_handle_verified("orphan.test")


# -- IdentityDirectory --------------------------------------------------------------------


async def test_cache_hit_and_ttl(
    world: World, directory: tuple[IdentityDirectory, FakeClock]
) -> None:
    d, clock = directory
    world.plc[ALICE] = make_doc(ALICE, "alice.test")
    doc1 = await d.lookup_did(ALICE)
    doc2 = await d.lookup_did(ALICE)
    assert doc1 is doc2 and world.hits[f"plc:{ALICE}"] == 1
    clock.advance(DID_TTL_SECONDS - 1)
    await d.lookup_did(ALICE)
    assert world.hits[f"plc:{ALICE}"] == 1
    # Past the TTL but inside the stale window: old value now, refresh in the background.
    world.plc[ALICE] = make_doc(ALICE, "alice2.test")
    clock.advance(2)
    stale = await d.lookup_did(ALICE)
    assert stale.handle == "alice.test"
    await d.wait_idle()
    assert world.hits[f"plc:{ALICE}"] == 2
    assert (await d.lookup_did(ALICE)).handle == "alice2.test"
    assert world.hits[f"plc:{ALICE}"] == 2
    # Past the stale window: fetched before answering.
    world.plc[ALICE] = make_doc(ALICE, "alice3.test")
    clock.advance(DID_TTL_SECONDS + DID_STALE_SECONDS + 1)
    assert (await d.lookup_did(ALICE)).handle == "alice3.test"
    assert world.hits[f"plc:{ALICE}"] == 3


async def test_stale_entry_survives_failed_refresh(
    world: World, directory: tuple[IdentityDirectory, FakeClock]
) -> None:
    d, clock = directory
    world.plc[ALICE] = make_doc(ALICE)
    await d.lookup_did(ALICE)
    world.plc[ALICE] = lambda r: PlainTextResponse("down", status_code=502)
    clock.advance(DID_TTL_SECONDS + 1)
    assert (await d.lookup_did(ALICE)).id == ALICE
    await d.wait_idle()
    assert world.hits[f"plc:{ALICE}"] == 2
    assert (await d.lookup_did(ALICE)).id == ALICE  # still stale, no retry yet
    await d.wait_idle()
    assert world.hits[f"plc:{ALICE}"] == 2
    clock.advance(ERROR_TTL_SECONDS + 1)
    await d.lookup_did(ALICE)
    await d.wait_idle()
    assert world.hits[f"plc:{ALICE}"] == 3


async def test_background_refresh_sees_tombstone(
    world: World, directory: tuple[IdentityDirectory, FakeClock]
) -> None:
    d, clock = directory
    world.plc[ALICE] = make_doc(ALICE)
    await d.lookup_did(ALICE)
    world.plc[ALICE] = lambda r: JSONResponse({"message": "DID not available"}, status_code=410)
    clock.advance(DID_TTL_SECONDS + 1)
    await d.lookup_did(ALICE)
    await d.wait_idle()
    with pytest.raises(DidDeactivated):
        await d.lookup_did(ALICE)
    assert world.hits[f"plc:{ALICE}"] == 2


async def test_negative_caching(
    world: World, directory: tuple[IdentityDirectory, FakeClock]
) -> None:
    d, clock = directory
    for _ in range(3):
        with pytest.raises(DidNotFound):
            await d.lookup_did(ALICE)
    assert world.hits[f"plc:{ALICE}"] == 1
    world.plc[ALICE] = make_doc(ALICE)
    clock.advance(NOT_FOUND_TTL_SECONDS - 1)
    with pytest.raises(DidNotFound):
        await d.lookup_did(ALICE)
    clock.advance(2)
    assert (await d.lookup_did(ALICE)).id == ALICE
    assert world.hits[f"plc:{ALICE}"] == 2
    with pytest.raises(HandleNotFound):
        await d.lookup_handle("nobody.test")
    with pytest.raises(HandleNotFound):
        await d.lookup_handle("nobody.test")
    assert world.hits["wk:nobody.test"] == 1


async def test_transient_errors_cached_briefly(
    world: World, directory: tuple[IdentityDirectory, FakeClock]
) -> None:
    d, clock = directory
    world.plc[ALICE] = lambda r: PlainTextResponse("down", status_code=500)
    with pytest.raises(ResolutionFailed):
        await d.lookup_did(ALICE)
    with pytest.raises(ResolutionFailed):
        await d.lookup_did(ALICE)
    assert world.hits[f"plc:{ALICE}"] == 1
    world.plc[ALICE] = make_doc(ALICE)
    clock.advance(ERROR_TTL_SECONDS + 0.1)
    assert (await d.lookup_did(ALICE)).id == ALICE


async def test_concurrent_lookups_coalesce(
    world: World, directory: tuple[IdentityDirectory, FakeClock], dns_server: FakeDns
) -> None:
    d, _ = directory
    world.plc[ALICE] = make_doc(ALICE, "alice.test")
    world.well_known["alice.test"] = ALICE
    world.delay = 0.2
    docs = await asyncio.gather(*(d.lookup_did(ALICE) for _ in range(20)))
    assert all(doc is docs[0] for doc in docs)
    assert world.hits[f"plc:{ALICE}"] == 1
    dids = await asyncio.gather(*(d.lookup_handle("alice.test") for _ in range(20)))
    assert dids == [ALICE] * 20
    assert world.hits["wk:alice.test"] == 1
    assert dns_server.queries.count("_atproto.alice.test.") == 1
    assert d.stats["document_loads"] == 1 and d.stats["handle_loads"] == 1


async def test_cancelled_waiter_does_not_cancel_shared_lookup(
    world: World, directory: tuple[IdentityDirectory, FakeClock]
) -> None:
    d, _ = directory
    world.plc[ALICE] = make_doc(ALICE)
    world.delay = 0.2
    first = asyncio.create_task(d.lookup_did(ALICE))
    second = asyncio.create_task(d.lookup_did(ALICE))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await second).id == ALICE
    with pytest.raises(asyncio.CancelledError):
        await first
    assert world.hits[f"plc:{ALICE}"] == 1


async def test_purge(
    world: World, directory: tuple[IdentityDirectory, FakeClock], dns_server: FakeDns
) -> None:
    d, _ = directory
    world.plc[ALICE] = make_doc(ALICE, "alice.test")
    dns_server.txt("alice.test", f"did={ALICE}")
    assert await d.lookup_handle("alice.test") == ALICE
    assert world.hits[f"plc:{ALICE}"] == 1
    # An #identity event: the handle moved.
    world.plc[ALICE] = make_doc(ALICE, "alice-new.test")
    dns_server.txt("alice-new.test", f"did={ALICE}")
    d.purge(ALICE)  # also forgets alice.test, the handle the old document claimed
    ident = await d.lookup_identity(ALICE)
    assert ident.handle == "alice-new.test"
    assert world.hits[f"plc:{ALICE}"] == 2
    with pytest.raises(HandleNotFound):
        await d.lookup_handle("alice.test")
    d.purge("ALICE-NEW.test")
    await d.lookup_handle("alice-new.test")
    assert dns_server.queries.count("_atproto.alice-new.test.") == 2


async def test_purge_detaches_lookup_in_flight(
    world: World, directory: tuple[IdentityDirectory, FakeClock]
) -> None:
    d, _ = directory
    world.plc[ALICE] = make_doc(ALICE, "old.test")
    world.delay = 0.2
    pending = asyncio.create_task(d.lookup_did(ALICE))
    await asyncio.sleep(0.05)
    world.plc[ALICE] = make_doc(ALICE, "new.test")
    d.purge(ALICE)
    assert (await pending).handle == "old.test"  # its caller still gets an answer...
    world.delay = 0
    assert (await d.lookup_did(ALICE)).handle == "new.test"  # ...but it was not cached
    assert world.hits[f"plc:{ALICE}"] == 2


async def test_lru_bound(world: World, resolver: IdentityResolver) -> None:
    clock = FakeClock()
    d = IdentityDirectory(resolver, clock=clock, max_entries=3)
    dids = [plc_did(f"user{i}") for i in range(4)]
    for did in dids:
        world.plc[did] = make_doc(did)
    try:
        for did in dids[:3]:
            await d.lookup_did(did)
        await d.lookup_did(dids[0])  # most recently used now
        await d.lookup_did(dids[3])  # evicts dids[1]
        assert d.stats["documents"] == 3
        await d.lookup_did(dids[0])
        await d.lookup_did(dids[2])
        assert [world.hits[f"plc:{did}"] for did in dids] == [1, 1, 1, 1]
        await d.lookup_did(dids[1])
        assert world.hits[f"plc:{dids[1]}"] == 2
    finally:
        await d.aclose()
    with pytest.raises(ValueError):
        IdentityDirectory(resolver, max_entries=0)


async def test_signing_key_and_force_refresh(
    world: World, directory: tuple[IdentityDirectory, FakeClock]
) -> None:
    d, clock = directory
    world.plc[ALICE] = make_doc(ALICE)
    assert await d.resolve_key(ALICE, force_refresh=False) == key("a")
    world.plc[ALICE] = make_doc(ALICE, signing=key("b"))  # key rotation
    assert await d.signing_key(ALICE) == key("a")
    # force_refresh right after a fetch is ignored (rate limit)...
    assert await d.resolve_key(ALICE, force_refresh=True) == key("a")
    assert world.hits[f"plc:{ALICE}"] == 1
    # ...and honoured once the entry is a little older.
    clock.advance(FORCE_REFRESH_MIN_AGE_SECONDS + 0.1)
    assert await d.resolve_key(ALICE, force_refresh=True) == key("b")
    assert world.hits[f"plc:{ALICE}"] == 2
    keyless = make_doc(BOB)
    keyless["verificationMethod"] = []
    world.plc[BOB] = keyless
    with pytest.raises(ResolutionFailed, match="no usable #atproto"):
        await d.signing_key(BOB)
    with pytest.raises(ResolutionFailed, match="#atproto_label"):
        await d.labeler_key(BOB)


async def test_lookup_handle_verification(
    world: World, directory: tuple[IdentityDirectory, FakeClock], dns_server: FakeDns
) -> None:
    d, clock = directory
    world.plc[ALICE] = make_doc(ALICE, "alice.test")
    dns_server.txt("alice.test", f"did={ALICE}")
    dns_server.txt("liar.test", f"did={ALICE}")  # claims ALICE, ALICE does not claim it
    assert await d.lookup_handle("Alice.Test") == ALICE
    with pytest.raises(HandleNotFound, match="does not claim"):
        await d.lookup_handle("liar.test")
    with pytest.raises(HandleNotFound, match="reserved"):
        await d.lookup_handle("alice.local")
    with pytest.raises(InvalidHandle):
        await d.lookup_handle("nope")
    # A handle change seen before any #identity purge: the cached document is
    # re-checked once it is older than the recheck interval.
    world.plc[ALICE] = make_doc(ALICE, "liar.test")
    with pytest.raises(HandleNotFound):
        await d.lookup_handle("liar.test")
    clock.advance(HANDLE_MISMATCH_RECHECK_SECONDS + 1)
    assert await d.lookup_handle("liar.test") == ALICE


async def test_lookup_identity(
    world: World, directory: tuple[IdentityDirectory, FakeClock], dns_server: FakeDns
) -> None:
    d, clock = directory
    world.plc[ALICE] = make_doc(ALICE, "alice.test")
    world.plc[BOB] = make_doc(BOB, "alice.test")  # BOB claims ALICE's handle
    world.plc[CAROL] = make_doc(CAROL, None)
    dns_server.txt("alice.test", f"did={ALICE}")
    assert (await d.lookup_identity(ALICE)).handle == "alice.test"
    bob = await d.lookup_identity(BOB)
    assert bob.handle is None and bob.handle_or_invalid == "handle.invalid"
    assert (await d.lookup_identity(CAROL)).handle is None
    # The handle moves to BOB (DNS updated, no purge): seen after the recheck interval.
    dns_server.txt("alice.test", f"did={BOB}")
    assert (await d.lookup_identity(BOB)).handle is None
    clock.advance(HANDLE_MISMATCH_RECHECK_SECONDS + 1)
    assert (await d.lookup_identity(BOB)).handle == "alice.test"
    with pytest.raises(IdentityError):
        await d.lookup_identity("did:web:example.com:path:based")


async def test_unsupported_dids_not_cached(directory: tuple[IdentityDirectory, FakeClock]) -> None:
    d, _ = directory
    with pytest.raises(DidNotFound):
        await d.lookup_did("did:key:zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF")
    with pytest.raises(InvalidDid):
        await d.lookup_did("not-a-did")
    assert d.stats["documents"] == 0 and d.stats["document_loads"] == 0
