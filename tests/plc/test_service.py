"""The did:plc directory over real HTTP on loopback: submissions, reads, races, mirror."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from plc.app import create_app
from plc.config import PlcConfig
from roost.crypto import PrivateKey
from roost.errors import (
    DidDeactivated,
    DidNotFound,
    InvalidPlcOperation,
    PlcConflict,
    RateLimitExceeded,
)
from roost.plc import (
    Op,
    PlcClient,
    PlcOperation,
    PlcTombstone,
    build_genesis,
    build_tombstone,
    build_update,
    did_for_genesis,
    op_cid,
    parse_op,
    sign_op,
    validate_next_op,
)
from tests.plc.test_ops import LEGACY_GENESIS, MODERN_GENESIS
from tests.servers import serve

K0 = PrivateKey.from_hex("a1" * 32, "k256")
K1 = PrivateKey.from_hex("a2" * 32, "p256")
K2 = PrivateKey.from_hex("a3" * 32, "k256")
SIGNING = PrivateKey.from_hex("a4" * 32, "k256")


class Clock:
    """Injectable server clock (UTC); tests move it forward."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class RacingStore:
    """Wraps a store so that, once armed, ``parties`` submissions all read the log
    before any of them writes: a deterministic race for the compare-and-set."""

    def __init__(self, inner: Any, parties: int = 2) -> None:
        self.inner = inner
        self.parties = parties
        self.armed = False
        self.arrived = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get_log(self, did: str, **kwargs: Any) -> Any:
        entries = await self.inner.get_log(did, **kwargs)
        if self.armed:
            self.arrived += 1
            deadline = time.monotonic() + 5
            while self.arrived < self.parties and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        return entries


@contextmanager
def directory(
    tmp_path: Path, clock: Clock | None = None, store: Any = None, **overrides: Any
) -> Iterator[str]:
    config = PlcConfig(data_dir=tmp_path / "plc", **overrides)
    with serve(create_app(config, clock=clock, store=store)) as url:
        yield url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str | None:
    """The storage back-end: None for the SQLite default, else a fresh PostgreSQL database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_dsn"))
    return None


def open_store(tmp_path: Path, database: str | None) -> Any:
    return PlcConfig(data_dir=tmp_path / "plc", database=database).open_store()


@pytest.fixture
def url(tmp_path: Path, clock: Clock, database: str | None) -> Iterator[str]:
    with directory(
        tmp_path, clock, database=database,
        did_ops_per_hour=1000, did_ops_per_day=1000, did_ops_per_week=1000,
    ) as base:
        yield base


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
async def client(url: str, http: httpx.AsyncClient) -> AsyncIterator[PlcClient]:
    async with PlcClient(url, http) as c:
        yield c


async def export_all(http: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    r = await http.get(f"{url}/export", params={"count": 1000})
    return [json.loads(line) for line in r.text.splitlines() if line]


# -- happy paths -------------------------------------------------------------------------------


async def test_create_update_resolve(client: PlcClient, http: httpx.AsyncClient, url: str) -> None:
    did, genesis = await client.create_did(SIGNING, [K0, K1], "alice.test", "https://pds.test")
    assert did == did_for_genesis(genesis)
    r = await http.get(f"{url}/{did}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/did+ld+json"
    doc = r.json()
    assert doc["id"] == did and doc["alsoKnownAs"] == ["at://alice.test"]
    assert doc["verificationMethod"][0] == {
        "id": f"{did}#atproto",
        "type": "Multikey",
        "controller": did,
        "publicKeyMultibase": SIGNING.public_key.multikey(),
    }
    assert doc["service"] == [
        {
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": "https://pds.test",
        }
    ]

    up1 = await client.update(did, K1, handle="bob.test")
    up2 = await client.update(did, K0, pds_endpoint="https://pds2.test", signing_key=K2)
    data = await client.get_data(did)
    assert data.handle == "bob.test" and data.pds_endpoint == "https://pds2.test"
    assert data.signing_key == K2.public_key.did_key()
    assert data.rotation_keys == (K0.public_key.did_key(), K1.public_key.did_key())
    assert await client.get_log(did) == [genesis, up1, up2]
    assert await client.get_last_op(did) == up2
    audit = await client.get_audit_log(did)
    assert [e.cid for e in audit] == [op_cid(genesis), op_cid(up1), op_cid(up2)]
    assert [e.operation.prev for e in audit] == [None, op_cid(genesis), op_cid(up1)]
    assert not any(e.nullified for e in audit)
    assert audit[0].created_at < audit[1].created_at < audit[2].created_at
    assert (await client.get_document(did))["alsoKnownAs"] == ["at://bob.test"]
    assert (await client.health())["version"]


async def test_worked_examples_are_accepted(http: httpx.AsyncClient, url: str) -> None:
    r = await http.post(f"{url}/did:plc:yk4dd2qkboz2yv6tpubpc6co", json=LEGACY_GENESIS)
    assert r.status_code == 200, r.text
    doc = (await http.get(f"{url}/did:plc:yk4dd2qkboz2yv6tpubpc6co")).json()
    assert doc["alsoKnownAs"] == ["at://dan.bsky.social"]
    assert doc["service"][0]["serviceEndpoint"] == "https://bsky.social"
    last = (await http.get(f"{url}/did:plc:yk4dd2qkboz2yv6tpubpc6co/log/last")).json()
    assert last == LEGACY_GENESIS
    r = await http.post(f"{url}/did:plc:2s2mvm52ttz6r4hocmrq7x27", json=MODERN_GENESIS)
    assert r.status_code == 200, r.text
    data = (await http.get(f"{url}/did:plc:2s2mvm52ttz6r4hocmrq7x27/data")).json()
    assert data == {
        "did": "did:plc:2s2mvm52ttz6r4hocmrq7x27",
        "verificationMethods": {},
        "rotationKeys": MODERN_GENESIS["rotationKeys"],
        "alsoKnownAs": ["at://foo"],
        "services": {},
    }
    # Resubmitting an op that is already in the chain is a no-op.
    r = await http.post(f"{url}/did:plc:2s2mvm52ttz6r4hocmrq7x27", json=MODERN_GENESIS)
    assert r.status_code == 200
    assert len(await export_all(http, url)) == 2


async def test_health(http: httpx.AsyncClient, url: str) -> None:
    for path in ("/_health", "/xrpc/_health"):
        r = await http.get(url + path)
        assert r.status_code == 200 and "version" in r.json()


# -- errors -------------------------------------------------------------------------------------


async def test_not_registered_and_tombstoned(
    client: PlcClient, http: httpx.AsyncClient, url: str
) -> None:
    missing = "did:plc:" + "a" * 24
    for suffix in ("", "/data", "/log", "/log/audit", "/log/last"):
        r = await http.get(f"{url}/{missing}{suffix}")
        assert r.status_code == 404
        assert r.json()["message"] == f"DID not registered: {missing}"
    with pytest.raises(DidNotFound):
        await client.get_data(missing)

    did, _ = await client.create_did(SIGNING, [K0], "alice.test", "https://pds.test")
    tomb = await client.tombstone(did, K0)
    for suffix in ("", "/data"):
        r = await http.get(f"{url}/{did}{suffix}")
        assert r.status_code == 410
        assert r.json()["message"] == f"DID not available: {did}"
    assert await client.get_last_op(did) == tomb
    assert [type(op) for op in await client.get_log(did)] == [PlcOperation, PlcTombstone]
    with pytest.raises(DidDeactivated):
        await client.update(did, K0, handle="back.test")
    # Nor can an op extending the tombstone be submitted directly.
    after = sign_op(PlcOperation((K0.public_key.did_key(),), {}, (), {}, op_cid(tomb)), K0)
    r = await http.post(f"{url}/{did}", json=after.to_json())
    assert r.status_code == 400 and "tombstoned" in r.json()["message"]


async def assert_rejected(
    http: httpx.AsyncClient, url: str, did: str, body: Any, status: int, message: str
) -> None:
    before = await export_all(http, url)
    if isinstance(body, (bytes, str)):
        r = await http.post(
            f"{url}/{did}", content=body, headers={"content-type": "application/json"}
        )
    else:
        r = await http.post(f"{url}/{did}", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["message"]
    assert await export_all(http, url) == before  # nothing stored


async def test_bad_ops_are_rejected_and_not_stored(
    client: PlcClient, http: httpx.AsyncClient, url: str
) -> None:
    did, genesis = await client.create_did(SIGNING, [K0, K1], "alice.test", "https://pds.test")
    prev = op_cid(genesis)
    good = sign_op(build_update(genesis, prev, handle="bob.test"), K0).to_json()
    outsider = PrivateKey.from_hex("a5" * 32, "k256")

    forged = sign_op(build_update(genesis, prev, handle="bob.test"), outsider).to_json()
    await assert_rejected(http, url, did, forged, 400, "Invalid signature")
    tampered = {**good, "alsoKnownAs": ["at://mallory.test"]}
    await assert_rejected(http, url, did, tampered, 400, "Invalid signature")
    wrong_prev = {**good, "prev": "bafyreigcxay6ucqlwowfpu35alyxqtv3c4vsj7gmdtmnidsnqs6nblyarq"}
    wrong_prev = sign_op(parse_op(wrong_prev), K0).to_json()
    await assert_rejected(http, url, did, wrong_prev, 400, "not correctly ordered")
    await assert_rejected(http, url, did, {**good, "sig": good["sig"] + "=="}, 400, "padding")
    await assert_rejected(http, url, did, {**good, "sig": good["sig"] + "\n"}, 400, "whitespace")
    big = {**good, "alsoKnownAs": ["at://" + "x" * 900 + str(i) for i in range(5)]}
    await assert_rejected(http, url, did, big, 400, "Operation too large")
    await assert_rejected(http, url, did, {**good, "extra": 1}, 400, "unknown field")
    await assert_rejected(http, url, did, b"{not json", 400, "Invalid JSON")
    await assert_rejected(http, url, did, b"x" * 20_000, 413, "too large")
    await assert_rejected(http, url, "did:plc:short", good, 400, "Improperly formatted did")
    # A genesis posted under the wrong DID.
    other = sign_op(build_genesis(rotation_keys=[K2], signing_key=SIGNING, handle="c.test",
                                  pds_endpoint="https://pds.test"), K2)  # fmt: skip
    await assert_rejected(
        http, url, "did:plc:" + "b" * 24, other.to_json(), 400, "does not match DID"
    )
    with pytest.raises(InvalidPlcOperation, match="Invalid signature"):
        await client.update(did, outsider, handle="x.test")
    # The good op still goes through afterwards.
    r = await http.post(f"{url}/{did}", json=good)
    assert r.status_code == 200 and r.json()["cid"] == op_cid(parse_op(good))


# -- races ------------------------------------------------------------------------------------------


async def test_concurrent_conflicting_updates(
    tmp_path: Path, clock: Clock, database: str | None
) -> None:
    store = RacingStore(open_store(tmp_path, database))
    with directory(tmp_path, clock, store=store) as url:
        async with httpx.AsyncClient(timeout=10) as http, PlcClient(url, http) as client:
            did, genesis = await client.create_did(
                SIGNING, [K0, K1], "alice.test", "https://pds.test"
            )
            prev = op_cid(genesis)
            a = sign_op(build_update(genesis, prev, handle="a.test"), K0)
            b = sign_op(build_update(genesis, prev, handle="b.test"), K1)
            store.armed = True
            ra, rb = await asyncio.gather(
                http.post(f"{url}/{did}", json=a.to_json()),
                http.post(f"{url}/{did}", json=b.to_json()),
            )
            store.armed = False
            assert sorted([ra.status_code, rb.status_code]) == [200, 409]
            winner, loser = (a, rb) if ra.status_code == 200 else (b, ra)
            message = loser.json()["message"]
            assert "Conflict" in message and "concurrent update" in message
            assert await client.get_log(did) == [genesis, winner]
            audit = await client.get_audit_log(did)
            assert [e.cid for e in audit] == [prev, op_cid(winner)]


async def test_many_concurrent_updates_one_wins(
    client: PlcClient, http: httpx.AsyncClient, url: str
) -> None:
    did, genesis = await client.create_did(SIGNING, [K0], "alice.test", "https://pds.test")
    ops = [
        sign_op(build_update(genesis, op_cid(genesis), handle=f"h{i}.test"), K0) for i in range(8)
    ]
    responses = await asyncio.gather(*(http.post(f"{url}/{did}", json=op.to_json()) for op in ops))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 1
    assert all(s in (400, 409) for s in statuses if s != 200)
    log = await client.get_log(did)
    assert len(log) == 2 and log[1] == ops[statuses.index(200)]


async def test_store_compare_and_set(tmp_path: Path, database: str | None) -> None:
    store = open_store(tmp_path, database)
    await store.open()
    try:
        op = sign_op(build_genesis(rotation_keys=[K0], signing_key=SIGNING, handle=None,
                                   pds_endpoint=None), K0)  # fmt: skip
        did = did_for_genesis(op)
        now = datetime.now(UTC)
        result = validate_next_op(did, [], op, now)
        await store.append(did, op, result, expected_head=None, now=now)
        with pytest.raises(PlcConflict):
            await store.append(did, op, result, expected_head=None, now=now)
        ups = [sign_op(build_update(op, op_cid(op), handle=f"u{i}.test"), K0) for i in range(2)]
        log = await store.get_log(did)
        later = now + timedelta(seconds=1)
        results = await asyncio.gather(
            *(store.append(did, u, validate_next_op(did, log, u, later), expected_head=op_cid(op), now=later)
              for u in ups),
            return_exceptions=True,
        )  # fmt: skip
        assert sum(isinstance(r, PlcConflict) for r in results) == 1
        assert len(await store.get_log(did)) == 2
    finally:
        await store.close()


# -- recovery and rate limits ------------------------------------------------------------------------


async def test_recovery_window_over_http(
    client: PlcClient, http: httpx.AsyncClient, url: str, clock: Clock
) -> None:
    did, genesis = await client.create_did(SIGNING, [K0, K1], "alice.test", "https://pds.test")
    clock.advance(seconds=1)
    hijack = await client.update(did, K1, handle="evil.test", rotation_keys=[K1])
    clock.advance(hours=71)
    recovery = sign_op(build_update(genesis, op_cid(genesis), handle="alice.test"), K0)
    r = await http.post(f"{url}/{did}", json=recovery.to_json())
    assert r.status_code == 200, r.text
    audit = await client.get_audit_log(did)
    assert [(e.cid, e.nullified) for e in audit] == [
        (op_cid(genesis), False), (op_cid(hijack), True), (op_cid(recovery), False)
    ]  # fmt: skip
    assert await client.get_log(did) == [genesis, recovery]
    assert (await client.get_data(did)).handle == "alice.test"

    # Another DID: the hijack is 72 h + 1 s old when the recovery arrives.
    did2, genesis2 = await client.create_did(SIGNING, [K0, K1], "carol.test", "https://pds.test")
    clock.advance(seconds=1)
    await client.update(did2, K1, handle="evil.test")
    clock.advance(hours=72, seconds=1)
    late = sign_op(build_update(genesis2, op_cid(genesis2), handle="carol.test"), K0)
    await assert_rejected(http, url, did2, late.to_json(), 400, "72 hr recovery window")


async def test_ip_rate_limit(tmp_path: Path, http: httpx.AsyncClient) -> None:
    with directory(tmp_path, ip_rate_limit=3, ip_rate_window=3600) as url:
        for _ in range(3):
            r = await http.post(f"{url}/did:plc:" + "a" * 24, json={})
            assert r.status_code == 400
        r = await http.post(f"{url}/did:plc:" + "a" * 24, json={})
        assert r.status_code == 429 and "Too many operations" in r.json()["message"]
        assert int(r.headers["retry-after"]) >= 1
        assert (await http.get(f"{url}/did:plc:" + "a" * 24)).status_code == 404  # reads unaffected


async def test_per_did_rate_limit(tmp_path: Path, clock: Clock, http: httpx.AsyncClient) -> None:
    with directory(tmp_path, clock, did_ops_per_hour=2) as url:
        async with PlcClient(url, http) as client:
            did, genesis = await client.create_did(
                SIGNING, [K0, K1], "alice.test", "https://pds.test"
            )
            await client.update(did, K1, handle="b.test")
            with pytest.raises(RateLimitExceeded, match="last hour"):
                await client.update(did, K1, handle="c.test")
            # Recoveries are never rate limited.
            recovery = sign_op(build_update(genesis, op_cid(genesis), handle="d.test"), K0)
            await client.submit(did, recovery)
            clock.advance(hours=1, seconds=1)
            await client.update(did, K1, handle="e.test")
            assert (await client.get_data(did)).handle == "e.test"


# -- export and persistence ----------------------------------------------------------------------------


async def test_export_paging(client: PlcClient, http: httpx.AsyncClient, url: str) -> None:
    dids = []
    for i in range(12):
        did, _ = await client.create_did(SIGNING, [K0], f"u{i}.test", "https://pds.test")
        dids.append(did)
    await client.update(dids[0], K0, handle="renamed.test")
    r = await http.get(f"{url}/export")
    assert r.headers["content-type"].startswith("application/jsonlines")
    first = [json.loads(line) for line in r.text.split("\n")]
    assert len(first) == 10  # default count
    assert [line["did"] for line in first] == dids[:10]
    assert set(first[0]) == {"did", "operation", "cid", "nullified", "createdAt"}
    # Legacy paging by createdAt.
    page2 = await client.export(after=first[-1]["createdAt"], count=10)
    assert [e.did for e in page2] == [*dids[10:], dids[0]]
    # Sequenced paging.
    seq_page = await client.export(after=0, count=5)
    assert [e.seq for e in seq_page] == [1, 2, 3, 4, 5]
    rest = await client.export(after=5, count=1000)
    assert len(rest) == 8 and rest[-1].operation.prev is not None
    raw = (await http.get(f"{url}/export", params={"after": 12})).text
    assert json.loads(raw)["type"] == "sequenced_op"
    assert len((await http.get(f"{url}/export", params={"count": 5000})).text.split("\n")) == 13
    for bad in ({"count": "0"}, {"count": "x"}, {"after": "yesterday"}):
        r = await http.get(f"{url}/export", params=bad)
        assert r.status_code == 400 and r.json()["message"]


async def test_data_survives_restart(
    tmp_path: Path, http: httpx.AsyncClient, database: str | None
) -> None:
    with directory(tmp_path, database=database) as url:
        async with PlcClient(url, http) as client:
            did, _ = await client.create_did(SIGNING, [K0], "alice.test", "https://pds.test")
            await client.update(did, K0, handle="bob.test")
    with directory(tmp_path, database=database) as url:
        async with PlcClient(url, http) as client:
            assert (await client.get_data(did)).handle == "bob.test"
            assert len(await client.get_audit_log(did)) == 2


# -- mirror ------------------------------------------------------------------------------------------------


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_mirror_follows_and_reads_through(tmp_path: Path, http: httpx.AsyncClient) -> None:
    with directory(tmp_path / "primary") as primary_url:
        async with PlcClient(primary_url, http) as primary:
            did1, _ = await primary.create_did(SIGNING, [K0, K1], "one.test", "https://pds.test")
            await primary.update(did1, K1, handle="uno.test")
            with directory(
                tmp_path / "mirror", upstream=primary_url, poll_interval=0.1
            ) as mirror_url:
                async with PlcClient(mirror_url, http) as mirror:

                    async def synced() -> bool:
                        return len(await mirror.export(after=0, count=100)) == 2

                    await wait_for(synced)
                    assert await mirror.get_document(did1) == await primary.get_document(did1)
                    # New ops upstream are followed.
                    did2, _ = await primary.create_did(
                        SIGNING, [K2], "two.test", "https://pds.test"
                    )

                    async def has_did2() -> bool:
                        return any(e.did == did2 for e in await mirror.export(after=0, count=100))

                    await wait_for(has_did2)
                    # Submissions to the mirror are forwarded upstream.
                    await mirror.update(did2, K2, handle="dos.test")
                    assert (await primary.get_data(did2)).handle == "dos.test"
                    assert (await mirror.get_data(did2)).handle == "dos.test"
            with directory(
                tmp_path / "mirror2", upstream=primary_url, poll_interval=3600
            ) as m2_url:
                async with PlcClient(m2_url, http) as mirror2:
                    await wait_for(lambda: _has(mirror2, did1))
                    # Created after the mirror's one sync: resolved by read-through.
                    did3, _ = await primary.create_did(
                        SIGNING, [K0], "three.test", "https://pds.test"
                    )
                    assert (await mirror2.get_data(did3)).handle == "three.test"
                    assert await mirror2.get_audit_log(did3) == await primary.get_audit_log(did3)


async def _has(client: PlcClient, did: str) -> bool:
    try:
        await client.get_last_op(did)
    except DidNotFound:
        return False
    return True


async def test_mirror_verifies_upstream_ops(tmp_path: Path, http: httpx.AsyncClient) -> None:
    genesis = sign_op(build_genesis(rotation_keys=[K0], signing_key=SIGNING, handle="ok.test",
                                    pds_endpoint="https://pds.test"), K0)  # fmt: skip
    did = did_for_genesis(genesis)
    forged = sign_op(build_update(genesis, op_cid(genesis), handle="evil.test"), K2)
    tomb = sign_op(build_tombstone(op_cid(genesis)), K0)
    ops: list[Op] = [genesis, forged, tomb]
    lines: list[dict[str, Any]] = [
        {"type": "sequenced_op", "did": did, "operation": op.to_json(), "cid": op_cid(op),
         "createdAt": f"2026-01-01T00:00:0{i}.000Z", "seq": i + 1}
        for i, op in enumerate(ops)
    ]  # fmt: skip
    lines[2]["cid"] = "bafyreigcxay6ucqlwowfpu35alyxqtv3c4vsj7gmdtmnidsnqs6nblyarq"  # wrong CID

    async def export(request: Request) -> Response:
        after = int(request.query_params.get("after", "0"))
        body = "\n".join(json.dumps(line) for line in lines if line["seq"] > after)
        return Response(body, media_type="application/jsonlines")

    async def audit(request: Request) -> Response:
        return Response("[]", status_code=404)

    fake = Starlette(routes=[Route("/export", export), Route("/{did}/log/audit", audit)])
    with (
        serve(fake) as upstream_url,
        directory(tmp_path, upstream=upstream_url, poll_interval=0.1) as url,
    ):
        async with PlcClient(url, http) as mirror:
            await wait_for(lambda: _has(mirror, did))
            await asyncio.sleep(0.3)
            assert await mirror.get_log(did) == [genesis]
            assert (await mirror.get_data(did)).handle == "ok.test"


def test_config_from_env(tmp_path: Path) -> None:
    env = {
        "ROOST_HOST": "0.0.0.0",
        "ROOST_PORT": "3000",
        "ROOST_DATA_DIR": str(tmp_path),
        "ROOST_UPSTREAM": "https://plc.directory/",
        "ROOST_IP_RATE_LIMIT": "5",
        "ROOST_DID_OPS_PER_HOUR": "2",
        "ROOST_POLL_INTERVAL": "0.5",
    }
    config = PlcConfig.from_env(env, port=4000)
    assert config.host == "0.0.0.0" and config.port == 4000  # overrides win
    assert config.database_path == tmp_path / "plc.sqlite"
    assert config.upstream == "https://plc.directory" and config.is_mirror
    assert config.ip_rate_limit == 5 and config.poll_interval == 0.5
    assert config.op_rate_limits.per_hour == 2 and config.op_rate_limits.per_week == 100
    assert PlcConfig.from_env({}).database_path == Path("roost-data/plc/plc.sqlite")
    assert PlcConfig.from_env({"ROOST_DATABASE": "/x/y.db"}).database_path == Path("/x/y.db")
    with pytest.raises(ValueError, match="ROOST_PORT"):
        PlcConfig.from_env({"ROOST_PORT": "eighty"})
