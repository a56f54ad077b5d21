"""roost.auth through a real XRPC server: session, admin and service auth, composition."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from websockets.sync.client import connect

from roost.auth import (
    SCOPE_ACCESS,
    SCOPE_APP_PASS,
    SCOPE_REFRESH,
    SCOPE_TAKENDOWN,
    AdminAuth,
    AdminCredentials,
    ReplayCache,
    ServiceAuth,
    ServiceCredentials,
    SessionAuth,
    SessionCredentials,
    Unauthenticated,
    any_of,
    mint_service_token,
    optional,
    service_auth_headers,
)
from roost.crypto import P256, PrivateKey, PublicKey
from roost.errors import AuthRequired, DidNotFound
from roost.jwt import (
    REFRESH_TOKEN_TYP,
    create_hs256_jwt,
    create_service_jwt,
    parse_jwt,
    verify_service_jwt,
)
from roost.ratelimit import RateLimit, RateLimiter
from roost.xrpc import XrpcContext, XrpcRouter
from tests.roost.test_xrpc import (
    LEXICONS,
    OBJ_OUT,
    FakeCatalog,
    _doc,
    assert_error,
    read_frames,
    ws_url,
    xrpc,
)
from tests.servers import serve

SECRET = b"server-secret-for-tests"
SERVICE_DID = "did:web:pds.example.com"
ALICE = "did:plc:alicealicealicealice"
BOB = "did:plc:bobbobbobbobbobbobbob"
TAKEN = "did:plc:takendowntakendown00"
ALICE_KEY = PrivateKey.from_hex(
    "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c", "k256"
)
BOB_KEY = PrivateKey.from_hex(
    "82ebbd63ebbd9ff60141a69bd4c9be282f2415e8eafa9d42c0ed396daccca979", P256
)
OTHER_KEY = PrivateKey.from_hex(
    "1111111111111111111111111111111111111111111111111111111111111111", "k256"
)
ADMIN_PASSWORD = "hunter2"

AUTH_LEXICONS = [
    _doc("io.roost.test.refresh", {"type": "procedure", "output": OBJ_OUT}),
    _doc("io.roost.test.service", {"type": "query", "output": OBJ_OUT}),
    _doc("io.roost.test.either", {"type": "query", "output": OBJ_OUT}),
    _doc("io.roost.test.maybe", {"type": "query", "output": OBJ_OUT}),
    _doc("io.roost.test.fullAccess", {"type": "query", "output": OBJ_OUT}),
]

WRITE_LIMIT = RateLimit("writes", 5, 3600, per="account")
LOGIN_LIMIT = RateLimit("login-ip", 3, 300, per="ip")


class AccountTakedown(AuthRequired):
    error = "AccountTakedown"


class FakeResolver:
    """DID -> key; ``stale`` keys are served until a forced refresh (key rotation)."""

    def __init__(self) -> None:
        self.keys: dict[str, PublicKey] = {ALICE: ALICE_KEY.public_key, BOB: BOB_KEY.public_key}
        self.stale: dict[str, PublicKey] = {}
        self.calls: list[tuple[str, bool]] = []

    async def __call__(self, did: str, *, force_refresh: bool) -> PublicKey:
        self.calls.append((did, force_refresh))
        if not force_refresh and did in self.stale:
            return self.stale[did]
        if did not in self.keys:
            raise DidNotFound(f"no DID document for {did}")
        return self.keys[did]


def describe(ctx: XrpcContext) -> dict[str, Any]:
    auth = ctx.auth
    out: dict[str, Any] = {"kind": type(auth).__name__, "did": auth.did}
    if isinstance(auth, SessionCredentials):
        out["scope"] = auth.scope
        out["type"] = auth.token_type
    if isinstance(auth, ServiceCredentials):
        out["lxm"] = auth.lxm
    return out


@pytest.fixture(scope="module")
def resolver() -> FakeResolver:
    return FakeResolver()


@pytest.fixture(scope="module")
def base(resolver: FakeResolver) -> Iterator[str]:
    catalog = FakeCatalog.with_docs(LEXICONS + AUTH_LEXICONS)

    async def check(creds: SessionCredentials) -> None:
        if creds.did == TAKEN:
            raise AccountTakedown("Account has been taken down")

    session = SessionAuth(SECRET, SERVICE_DID, check=check)
    refresh = SessionAuth(SECRET, SERVICE_DID, token_type="refresh")
    full = SessionAuth(SECRET, SERVICE_DID, scopes=[SCOPE_ACCESS])
    admin = AdminAuth(ADMIN_PASSWORD)
    service = ServiceAuth(SERVICE_DID + "#atproto_pds", resolver)
    router = XrpcRouter(catalog, global_rate_limit=None, rate_limiter=RateLimiter())

    @router.query("io.roost.test.whoami", auth=session)
    async def whoami(ctx: XrpcContext) -> dict[str, Any]:
        return describe(ctx)

    @router.procedure("io.roost.test.refresh", auth=refresh)
    async def do_refresh(ctx: XrpcContext) -> dict[str, Any]:
        return describe(ctx)

    @router.query("io.roost.test.fullAccess", auth=full)
    async def full_access(ctx: XrpcContext) -> dict[str, Any]:
        return describe(ctx)

    @router.procedure("io.roost.test.adminOnly", auth=admin)
    async def admin_only(ctx: XrpcContext) -> dict[str, Any]:
        return describe(ctx)

    @router.query("io.roost.test.service", auth=service)
    async def service_only(ctx: XrpcContext) -> dict[str, Any]:
        return describe(ctx)

    @router.query("io.roost.test.either", auth=any_of(session, service))
    async def either(ctx: XrpcContext) -> dict[str, Any]:
        return describe(ctx)

    @router.query("io.roost.test.maybe", auth=optional(session))
    async def maybe(ctx: XrpcContext) -> dict[str, Any]:
        return describe(ctx)

    @router.query("io.roost.test.limited", auth=any_of(session, admin), rate_limits=[LOGIN_LIMIT])
    async def limited(ctx: XrpcContext) -> dict[str, Any]:
        return describe(ctx)

    @router.procedure("io.roost.test.write", auth=any_of(session, admin))
    async def write(ctx: XrpcContext) -> dict[str, Any]:
        ctx.rate_limit(WRITE_LIMIT, cost=ctx.input["cost"])
        return describe(ctx)

    with serve(Starlette(routes=router.routes)) as url:
        yield url


@pytest.fixture
def client(base: str, resolver: FakeResolver) -> Iterator[httpx.Client]:
    resolver.calls.clear()
    resolver.stale.clear()
    with httpx.Client(base_url=base) as c:
        yield c


def access_token(
    did: str = ALICE,
    *,
    scope: str = SCOPE_ACCESS,
    aud: str = SERVICE_DID,
    exp: float | None = None,
    secret: bytes = SECRET,
    typ: str = "at+jwt",
    **extra: Any,
) -> str:
    now = int(time.time())
    payload = {
        "scope": scope,
        "sub": did,
        "aud": aud,
        "iat": now,
        "exp": now + 7200 if exp is None else exp,
    }
    payload.update(extra)
    return create_hs256_jwt(secret, payload, typ=typ)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def service_token(
    *,
    key: PrivateKey = ALICE_KEY,
    iss: str = ALICE,
    aud: str = SERVICE_DID,
    lxm: str | None = "io.roost.test.service",
    now: float | None = None,
    jti: str | None = None,
) -> str:
    return create_service_jwt(key, iss=iss, aud=aud, lxm=lxm, now=now, jti=jti)


# -- session tokens ----------------------------------------------------------------------


def test_access_token(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.whoami"), headers=bearer(access_token()))
    assert r.status_code == 200
    assert r.json() == {
        "kind": "SessionCredentials",
        "did": ALICE,
        "scope": SCOPE_ACCESS,
        "type": "access",
    }
    assert r.headers["cache-control"] == "private"
    assert r.headers["vary"] == "Authorization"
    r = client.get(xrpc("io.roost.test.whoami"), headers=bearer(access_token(scope=SCOPE_APP_PASS)))
    assert r.json()["scope"] == SCOPE_APP_PASS


def test_missing_token(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.whoami"))
    assert_error(r, 401, "AuthMissing")
    assert r.headers["www-authenticate"] == "Bearer"
    # A Basic header is not a bearer token either.
    assert_error(
        client.get(xrpc("io.roost.test.whoami"), headers=basic("admin", ADMIN_PASSWORD)),
        401,
        "AuthMissing",
    )


@pytest.mark.parametrize(
    "token",
    [
        access_token(secret=b"some other secret"),  # forged
        access_token(aud="did:web:other.example.com"),
        access_token(typ=REFRESH_TOKEN_TYP, scope=SCOPE_REFRESH, jti="abc"),
        access_token(scope=SCOPE_TAKENDOWN),
        access_token(scope="com.atproto.somethingElse"),
        access_token(lxm="io.roost.test.whoami"),
        access_token(did="not-a-did"),
        "not.a.jwt",
        "garbage",
        service_token(lxm="io.roost.test.whoami"),
    ],
    ids=[
        "forged",
        "aud",
        "refresh",
        "takendown-scope",
        "odd-scope",
        "lxm",
        "sub",
        "bad-b64",
        "garbage",
        "service",
    ],
)
def test_invalid_session_tokens(client: httpx.Client, token: str) -> None:
    assert_error(
        client.get(xrpc("io.roost.test.whoami"), headers=bearer(token)), 400, "InvalidToken"
    )


def test_expired_token(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.whoami"), headers=bearer(access_token(exp=time.time() - 1)))
    body = assert_error(r, 400, "ExpiredToken")
    assert "expired" in body["message"].lower()


def test_session_check_callback(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.whoami"), headers=bearer(access_token(TAKEN)))
    assert_error(r, 401, "AccountTakedown")


def test_full_access_scope(client: httpx.Client) -> None:
    assert (
        client.get(xrpc("io.roost.test.fullAccess"), headers=bearer(access_token())).status_code
        == 200
    )
    r = client.get(
        xrpc("io.roost.test.fullAccess"), headers=bearer(access_token(scope=SCOPE_APP_PASS))
    )
    body = assert_error(r, 400, "InvalidToken")
    assert body["message"] == "Bad token scope"


def test_refresh_token(client: httpx.Client) -> None:
    token = access_token(typ=REFRESH_TOKEN_TYP, scope=SCOPE_REFRESH, jti="refresh-1")
    r = client.post(xrpc("io.roost.test.refresh"), headers=bearer(token))
    assert r.json() == {
        "kind": "SessionCredentials",
        "did": ALICE,
        "scope": SCOPE_REFRESH,
        "type": "refresh",
    }
    # An access token is never a refresh token, and a refresh token needs a jti.
    assert_error(
        client.post(xrpc("io.roost.test.refresh"), headers=bearer(access_token())),
        400,
        "InvalidToken",
    )
    no_jti = access_token(typ=REFRESH_TOKEN_TYP, scope=SCOPE_REFRESH)
    assert_error(
        client.post(xrpc("io.roost.test.refresh"), headers=bearer(no_jti)), 400, "InvalidToken"
    )
    expired = access_token(
        typ=REFRESH_TOKEN_TYP, scope=SCOPE_REFRESH, jti="r2", exp=time.time() - 5
    )
    assert_error(
        client.post(xrpc("io.roost.test.refresh"), headers=bearer(expired)), 400, "ExpiredToken"
    )


def test_optional_auth(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.maybe"))
    assert r.json() == {"kind": "Unauthenticated", "did": None}
    assert "cache-control" not in r.headers
    r = client.get(xrpc("io.roost.test.maybe"), headers=bearer(access_token()))
    assert r.json()["did"] == ALICE
    # A credential that is present but bad is still refused.
    assert_error(
        client.get(xrpc("io.roost.test.maybe"), headers=bearer("garbage")), 400, "InvalidToken"
    )


# -- admin -------------------------------------------------------------------------------


def test_admin_auth(client: httpx.Client) -> None:
    r = client.post(xrpc("io.roost.test.adminOnly"), headers=basic("admin", ADMIN_PASSWORD))
    assert r.json() == {"kind": "AdminCredentials", "did": None}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("admin", "wrong"),
        basic("root", ADMIN_PASSWORD),
        basic("admin", ADMIN_PASSWORD + "x"),
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Basic"},
        bearer(access_token()),
    ],
)
def test_admin_refusals(client: httpx.Client, headers: dict[str, str]) -> None:
    r = client.post(xrpc("io.roost.test.adminOnly"), headers=headers)
    assert_error(r, 401, "AuthenticationRequired")
    assert r.headers["www-authenticate"].startswith("Basic")


# -- service auth ------------------------------------------------------------------------


def test_service_token(client: httpx.Client, resolver: FakeResolver) -> None:
    r = client.get(xrpc("io.roost.test.service"), headers=bearer(service_token()))
    assert r.json() == {"kind": "ServiceCredentials", "did": ALICE, "lxm": "io.roost.test.service"}
    assert resolver.calls == [(ALICE, False)]
    # P-256 issuer, audience with the service fragment.
    token = service_token(key=BOB_KEY, iss=BOB, aud=SERVICE_DID + "#atproto_pds")
    assert client.get(xrpc("io.roost.test.service"), headers=bearer(token)).json()["did"] == BOB


def test_service_auth_headers_helper(client: httpx.Client) -> None:
    headers = service_auth_headers(
        ALICE_KEY, iss=ALICE, aud=SERVICE_DID, lxm="io.roost.test.service"
    )
    assert client.get(xrpc("io.roost.test.service"), headers=headers).json()["did"] == ALICE


def test_service_token_missing(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.service"))
    assert_error(r, 401, "MissingJwt")
    assert_error(
        client.get(xrpc("io.roost.test.service"), headers=basic("a", "b")), 401, "MissingJwt"
    )


def test_forged_service_token(client: httpx.Client, resolver: FakeResolver) -> None:
    r = client.get(xrpc("io.roost.test.service"), headers=bearer(service_token(key=OTHER_KEY)))
    assert_error(r, 401, "BadJwtSignature")
    # The key was refreshed once before giving up.
    assert resolver.calls == [(ALICE, False), (ALICE, True)]


def test_rotated_key_is_refetched(client: httpx.Client, resolver: FakeResolver) -> None:
    resolver.stale[ALICE] = OTHER_KEY.public_key
    r = client.get(xrpc("io.roost.test.service"), headers=bearer(service_token()))
    assert r.status_code == 200
    assert resolver.calls == [(ALICE, False), (ALICE, True)]


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (lambda: service_token(now=time.time() - 3600), "JwtExpired"),
        (lambda: service_token(aud="did:web:other.example.com"), "BadJwtAudience"),
        (lambda: service_token(aud=SERVICE_DID + "#other_service"), "BadJwtAudience"),
        (lambda: service_token(lxm="io.roost.test.whoami"), "BadJwtLexiconMethod"),
        (lambda: service_token(lxm=None), "BadJwtLexiconMethod"),
        (lambda: service_token(iss="did:plc:nobodynobodynobody"), "BadJwtIss"),
        (lambda: access_token(), "BadJwtType"),
        (lambda: "a.b", "BadJwt"),
    ],
    ids=[
        "expired",
        "aud",
        "aud-fragment",
        "lxm",
        "no-lxm",
        "unknown-iss",
        "session-token",
        "malformed",
    ],
)
def test_bad_service_tokens(client: httpx.Client, token: Any, error: str) -> None:
    r = client.get(xrpc("io.roost.test.service"), headers=bearer(token()))
    assert_error(r, 401, error)


def test_replayed_jti(client: httpx.Client) -> None:
    token = service_token(jti="once-only-0001")
    assert client.get(xrpc("io.roost.test.service"), headers=bearer(token)).status_code == 200
    body = assert_error(
        client.get(xrpc("io.roost.test.service"), headers=bearer(token)), 401, "BadJwt"
    )
    assert "replay" in body["message"]
    # The same jti from another issuer is a different token.
    other = service_token(key=BOB_KEY, iss=BOB, jti="once-only-0001")
    assert client.get(xrpc("io.roost.test.service"), headers=bearer(other)).status_code == 200


def test_service_token_without_jti(client: httpx.Client) -> None:
    now = int(time.time())
    import json

    from roost.jwt import b64url_encode

    header = b64url_encode(json.dumps({"typ": "JWT", "alg": "ES256K"}).encode())
    payload = b64url_encode(
        json.dumps(
            {
                "iss": ALICE,
                "aud": SERVICE_DID,
                "iat": now,
                "exp": now + 60,
                "lxm": "io.roost.test.service",
            }
        ).encode()
    )
    signing_input = f"{header}.{payload}"
    token = signing_input + "." + b64url_encode(ALICE_KEY.sign(signing_input.encode()))
    body = assert_error(
        client.get(xrpc("io.roost.test.service"), headers=bearer(token)), 401, "BadJwt"
    )
    assert "jti" in body["message"]


# -- composition -------------------------------------------------------------------------


def test_any_of_session_or_service(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.either"), headers=bearer(access_token()))
    assert r.json()["kind"] == "SessionCredentials"
    r = client.get(
        xrpc("io.roost.test.either"), headers=bearer(service_token(lxm="io.roost.test.either"))
    )
    assert r.json()["kind"] == "ServiceCredentials"
    # Each kind keeps its own errors.
    assert_error(
        client.get(xrpc("io.roost.test.either"), headers=bearer(access_token(exp=1))),
        400,
        "ExpiredToken",
    )
    assert_error(
        client.get(xrpc("io.roost.test.either"), headers=bearer(service_token())),
        401,
        "BadJwtLexiconMethod",
    )
    assert_error(client.get(xrpc("io.roost.test.either")), 401, "AuthMissing")


# -- rate limits and auth ----------------------------------------------------------------


def test_per_account_limit_from_the_handler(client: httpx.Client) -> None:
    alice, bob = bearer(access_token(ALICE)), bearer(access_token(BOB))
    path = xrpc("io.roost.test.write")
    r = client.post(path, json={"cost": 3}, headers=alice)
    assert r.status_code == 200
    assert r.headers["ratelimit-remaining"] == "2" and r.headers["ratelimit-policy"] == "5;w=3600"
    r = client.post(path, json={"cost": 3}, headers=alice)
    assert_error(r, 429, "RateLimitExceeded")
    assert int(r.headers["retry-after"]) == 720  # 1 point short, 5 points per hour
    # Bob has his own budget; the admin has none at all.
    assert client.post(path, json={"cost": 3}, headers=bob).status_code == 200
    for _ in range(3):
        assert (
            client.post(path, json={"cost": 5}, headers=basic("admin", ADMIN_PASSWORD)).status_code
            == 200
        )


def test_failed_auth_counts_and_admin_bypasses(client: httpx.Client) -> None:
    path = xrpc("io.roost.test.limited")
    for _ in range(3):
        assert client.get(path, headers=bearer("garbage")).status_code == 400
    # The IP's budget is spent: even a good token waits now.
    assert_error(client.get(path, headers=bearer(access_token())), 429, "RateLimitExceeded")
    r = client.get(path, headers=basic("admin", ADMIN_PASSWORD))
    assert r.status_code == 200 and "ratelimit-limit" not in r.headers


def test_subscription_auth_failure_is_an_error_frame() -> None:
    catalog = FakeCatalog.with_docs(LEXICONS)
    router = XrpcRouter(catalog, global_rate_limit=None)

    @router.subscription("io.roost.test.subscribe", auth=SessionAuth(SECRET, SERVICE_DID))
    async def subscribe(ctx: XrpcContext) -> AsyncIterator[Any]:
        yield ("#tick", {"seq": 1, "did": ctx.auth.did})

    with serve(Starlette(routes=router.routes)) as url:
        ws = ws_url(url, "io.roost.test.subscribe")
        with connect(ws) as conn:
            frames, close = read_frames(conn)
        assert frames == [
            ({"op": -1}, {"error": "AuthMissing", "message": "Authentication Required"})
        ]
        assert close.code == 1008 and close.reason == "AuthMissing"
        with connect(ws, additional_headers=bearer(access_token(exp=1))) as conn:
            frames, close = read_frames(conn)
        assert frames[0][1]["error"] == "ExpiredToken"
        with connect(ws, additional_headers=bearer(access_token())) as conn:
            frames, close = read_frames(conn)
        assert frames == [({"op": 1, "t": "#tick"}, {"seq": 1, "did": ALICE})]
        assert close.code == 1000


# -- pieces ------------------------------------------------------------------------------


def test_mint_service_token() -> None:
    token = mint_service_token(
        ALICE_KEY, iss=ALICE, aud=SERVICE_DID, lxm="app.bsky.feed.getFeedSkeleton"
    )
    claims = verify_service_jwt(
        parse_jwt(token), ALICE_KEY.public_key, aud=SERVICE_DID, lxm="app.bsky.feed.getFeedSkeleton"
    )
    assert claims.iss == ALICE and claims.jti
    assert claims.exp - claims.iat == 60
    other = mint_service_token(
        ALICE_KEY, iss=ALICE, aud=SERVICE_DID, lxm="x.y.z", clock=lambda: 1000.0, exp_seconds=30
    )
    parsed = parse_jwt(other).payload
    assert parsed["iat"] == 1000 and parsed["exp"] == 1030 and parsed["jti"] != claims.jti


def test_replay_cache_expiry_and_bound() -> None:
    cache = ReplayCache(max_entries=3)
    assert cache.add("did:a", "1", 100.0, now=0.0)
    assert not cache.add("did:a", "1", 100.0, now=50.0)
    assert cache.add("did:a", "1", 200.0, now=100.0)  # the first one expired
    assert cache.add("did:a", "2", 300.0, now=100.0)
    assert cache.add("did:a", "3", 400.0, now=100.0)
    assert len(cache) == 3
    assert cache.add("did:a", "4", 500.0, now=100.0)  # forgets the one closest to expiry
    assert len(cache) == 3
    assert cache.add("did:a", "1", 600.0, now=100.0)
    assert not cache.add("did:a", "4", 500.0, now=100.0)


def test_credentials_values() -> None:
    assert Unauthenticated().did is None and AdminCredentials().did is None
    a = SessionCredentials(ALICE, SCOPE_ACCESS, "access", payload={"x": 1})
    assert a == SessionCredentials(ALICE, SCOPE_ACCESS, "access")
    with pytest.raises(ValueError):
        SessionAuth(b"", SERVICE_DID)
    with pytest.raises(ValueError):
        SessionAuth(SECRET, SERVICE_DID, token_type="id")
    with pytest.raises(ValueError):
        AdminAuth("")
    with pytest.raises(ValueError):
        any_of()
