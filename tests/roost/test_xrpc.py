"""roost.xrpc: routing by NSID, parameters, bodies, errors, CORS, subscriptions.

Every test talks to a real uvicorn server on a loopback port. The lexicons
come from a small fake catalog (same interface as ``roost.lexicon.Catalog``);
``TestRealCatalog`` repeats the validation paths with the real one when
``roost.lexicon`` is importable.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from roost.cid import CID
from roost.errors import RecordNotFound, ValidationError
from roost.frames import decode_frame
from roost.ratelimit import RateLimit, RateLimiter
from roost.xrpc import BodyStream, Output, XrpcContext, XrpcRouter
from tests.servers import serve

# -- test lexicons ------------------------------------------------------------------------

OBJ_OUT = {"encoding": "application/json"}


def _doc(nsid: str, main: dict[str, Any], **defs: Any) -> dict[str, Any]:
    return {"lexicon": 1, "id": nsid, "defs": {"main": main, **defs}}


LEXICONS: list[dict[str, Any]] = [
    _doc(
        "io.roost.test.echo",
        {
            "type": "query",
            "parameters": {
                "type": "params",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "maxLength": 10},
                    "count": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    "flag": {"type": "boolean"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            },
            "output": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["name", "count"],
                    "properties": {
                        "name": {"type": "string"},
                        "count": {"type": "integer"},
                        "flag": {"type": "boolean"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    ),
    _doc(
        "io.roost.test.create",
        {
            "type": "procedure",
            "input": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["text"],
                    "properties": {"text": {"type": "string", "maxLength": 100}},
                },
            },
            "output": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["text"],
                    "properties": {"text": {"type": "string"}},
                },
            },
        },
    ),
    _doc(
        "io.roost.test.upload",
        {
            "type": "procedure",
            "input": {"encoding": "*/*"},
            "output": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {"size": {"type": "integer"}, "type": {"type": "string"}},
                },
            },
        },
    ),
    _doc(
        "io.roost.test.importCar",
        {"type": "procedure", "input": {"encoding": "application/vnd.ipld.car"}},
    ),
    _doc("io.roost.test.noInput", {"type": "procedure"}),
    _doc("io.roost.test.fail", {"type": "query", "errors": [{"name": "RecordNotFound"}]}),
    _doc("io.roost.test.crash", {"type": "query"}),
    _doc(
        "io.roost.test.badOutput",
        {
            "type": "query",
            "output": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["n"],
                    "properties": {"n": {"type": "integer"}},
                },
            },
        },
    ),
    _doc("io.roost.test.blob", {"type": "query", "output": {"encoding": "*/*"}}),
    _doc("io.roost.test.streamed", {"type": "query", "output": {"encoding": "text/plain"}}),
    _doc("io.roost.test.links", {"type": "query", "output": {"encoding": "application/json"}}),
    _doc("io.roost.test.headers", {"type": "query", "output": {"encoding": "application/json"}}),
    _doc("io.roost.test.unimplemented", {"type": "query"}),
    _doc(
        "io.roost.test.subscribe",
        {
            "type": "subscription",
            "parameters": {
                "type": "params",
                "properties": {"cursor": {"type": "integer"}, "fail": {"type": "string"}},
            },
            "message": {"schema": {"type": "union", "refs": ["#tick", "#info"]}},
            "errors": [{"name": "FutureCursor"}],
        },
        tick={
            "type": "object",
            "required": ["seq"],
            "properties": {"seq": {"type": "integer"}},
        },
        info={
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}},
        },
    ),
    # Used by test_auth.py and the rate-limit tests.
    _doc("io.roost.test.whoami", {"type": "query", "output": OBJ_OUT}),
    _doc("io.roost.test.adminOnly", {"type": "procedure", "output": OBJ_OUT}),
    _doc("io.roost.test.limited", {"type": "query", "output": OBJ_OUT}),
    _doc(
        "io.roost.test.write",
        {
            "type": "procedure",
            "input": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["cost"],
                    "properties": {"cost": {"type": "integer"}},
                },
            },
            "output": OBJ_OUT,
        },
    ),
]


# -- a fake catalog with roost.lexicon.Catalog's interface ---------------------------------


@dataclass(frozen=True, slots=True)
class FakeMethodDef:
    nsid: str
    type: str
    parameters: dict[str, Any] | None
    input_encoding: str | None
    input_schema: dict[str, Any] | None
    output_encoding: str | None
    output_schema: dict[str, Any] | None
    errors: tuple[str, ...]
    message_schema: dict[str, Any] | None


class FakeCatalog:
    """Enough lexicon semantics for the XRPC tests (params, top-level objects)."""

    def __init__(self) -> None:
        self.methods: dict[str, FakeMethodDef] = {}
        self.docs: dict[str, dict[str, Any]] = {}

    @classmethod
    def with_docs(cls, docs: Sequence[dict[str, Any]]) -> FakeCatalog:
        catalog = cls()
        for doc in docs:
            catalog.add(doc)
        return catalog

    def add(self, document: dict[str, Any]) -> None:
        main = document["defs"]["main"]
        nsid = document["id"]
        self.docs[nsid] = document
        self.methods[nsid] = FakeMethodDef(
            nsid=nsid,
            type=main["type"],
            parameters=main.get("parameters"),
            input_encoding=(main.get("input") or {}).get("encoding"),
            input_schema=(main.get("input") or {}).get("schema"),
            output_encoding=(main.get("output") or {}).get("encoding"),
            output_schema=(main.get("output") or {}).get("schema"),
            errors=tuple(e["name"] for e in main.get("errors", ())),
            message_schema=(main.get("message") or {}).get("schema"),
        )

    def method(self, nsid: str) -> FakeMethodDef | None:
        return self.methods.get(nsid)

    def validate_params(
        self, nsid: str, params: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any]:
        schema = self.methods[nsid].parameters or {"properties": {}}
        out: dict[str, Any] = {}
        for name, prop in schema.get("properties", {}).items():
            if name not in params:
                if "default" in prop:
                    out[name] = prop["default"]
                elif name in schema.get("required", ()):
                    raise ValidationError(f'Params must have the property "{name}"', name)
                continue
            raw = params[name]
            if prop["type"] == "array":
                values = [raw] if isinstance(raw, str) else list(raw)
                out[name] = [self._scalar(name, prop["items"], v) for v in values]
            else:
                if not isinstance(raw, str):
                    raise ValidationError("must be a single value", name)
                out[name] = self._scalar(name, prop, raw)
        return out

    @staticmethod
    def _scalar(name: str, prop: dict[str, Any], raw: str) -> Any:
        kind = prop["type"]
        if kind == "integer":
            if not re.fullmatch(r"-?[0-9]+", raw):
                raise ValidationError("must be an integer", name)
            value: Any = int(raw)
            if "minimum" in prop and value < prop["minimum"]:
                raise ValidationError(f"can not be less than {prop['minimum']}", name)
            if "maximum" in prop and value > prop["maximum"]:
                raise ValidationError(f"can not be greater than {prop['maximum']}", name)
            return value
        if kind == "boolean":
            if raw not in ("true", "false"):
                raise ValidationError("must be a boolean", name)
            return raw == "true"
        if "maxLength" in prop and len(raw.encode()) > prop["maxLength"]:
            raise ValidationError(f"must not be longer than {prop['maxLength']} characters", name)
        return raw

    def _object(self, schema: dict[str, Any] | None, value: Any, what: str) -> Any:
        if schema is None:
            return value
        if not isinstance(value, dict):
            raise ValidationError("must be an object", what)
        for name in schema.get("required", ()):
            if name not in value:
                raise ValidationError(f'must have the property "{name}"', what)
        for name, prop in schema.get("properties", {}).items():
            if name not in value:
                continue
            v = value[name]
            kind = prop["type"]
            ok = (
                (kind == "string" and isinstance(v, str))
                or (kind == "integer" and isinstance(v, int) and not isinstance(v, bool))
                or (kind == "boolean" and isinstance(v, bool))
                or (kind == "array" and isinstance(v, list))
            )
            if not ok:
                raise ValidationError(f"must be a {kind}", f"{what}/{name}")
            if kind == "string" and "maxLength" in prop and len(v.encode()) > prop["maxLength"]:
                raise ValidationError("is too long", f"{what}/{name}")
        return value

    def validate_input(self, nsid: str, body: Any) -> Any:
        return self._object(self.methods[nsid].input_schema, body, "Input")

    def validate_output(self, nsid: str, body: Any) -> Any:
        return self._object(self.methods[nsid].output_schema, body, "Output")

    def validate_message(self, nsid: str, message: Any) -> Any:
        defs = self.docs[nsid]["defs"]
        t = message.get("$type", "") if isinstance(message, dict) else ""
        name = t.rpartition("#")[2]
        if not t.startswith(nsid + "#") or name not in defs:
            raise ValidationError("unknown message type", "Message")
        return self._object(defs[name], message, "Message")


def real_catalog(tmp: Path) -> Any:
    lexicon = pytest.importorskip("roost.lexicon")
    for doc in LEXICONS:
        path = tmp.joinpath(*doc["id"].split(".")).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    return lexicon.Catalog.load(tmp)


# -- the test service ---------------------------------------------------------------------


def register_handlers(router: XrpcRouter) -> None:
    @router.query("io.roost.test.echo")
    async def echo(ctx: XrpcContext) -> dict[str, Any]:
        return dict(ctx.params)

    @router.procedure("io.roost.test.create")
    async def create(ctx: XrpcContext) -> dict[str, Any]:
        return {"text": ctx.input["text"]}

    @router.procedure("io.roost.test.upload", max_body=1024)
    async def upload(ctx: XrpcContext) -> dict[str, Any]:
        assert isinstance(ctx.input, bytes)
        return {"size": len(ctx.input), "type": ctx.encoding}

    @router.procedure("io.roost.test.importCar", max_body=4096, stream_input=True)
    async def import_car(ctx: XrpcContext) -> None:
        assert isinstance(ctx.input, BodyStream)
        total = 0
        async for chunk in ctx.input:
            total += len(chunk)
        ctx.response_headers["x-received"] = str(total)

    @router.procedure("io.roost.test.noInput")
    async def no_input(ctx: XrpcContext) -> None:
        return None

    @router.query("io.roost.test.fail")
    async def fail(ctx: XrpcContext) -> None:
        raise RecordNotFound("Could not locate record: at://x")

    @router.query("io.roost.test.crash")
    async def crash(ctx: XrpcContext) -> None:
        raise KeyError("secret-detail-1234")

    @router.query("io.roost.test.badOutput")
    async def bad_output(ctx: XrpcContext) -> dict[str, Any]:
        return {"n": "not an integer"}

    @router.query("io.roost.test.blob")
    async def blob(ctx: XrpcContext) -> Output:
        return Output(b"\x00\x01binary", "application/octet-stream", {"x-kind": "blob"})

    @router.query("io.roost.test.streamed")
    async def streamed(ctx: XrpcContext) -> Output:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"part{i};".encode()

        return Output(chunks(), "text/plain")

    @router.query("io.roost.test.links")
    async def links(ctx: XrpcContext) -> dict[str, Any]:
        return {"cid": CID_VALUE, "data": b"\x01\x02\x03", "text": "héllo"}

    @router.query("io.roost.test.headers")
    async def headers(ctx: XrpcContext) -> PlainTextResponse:
        return PlainTextResponse("plain", headers={"Atproto-Repo-Rev": "3abc"})

    @router.subscription("io.roost.test.subscribe")
    async def subscribe(ctx: XrpcContext) -> AsyncIterator[Any]:
        cursor = ctx.params.get("cursor")
        fail = ctx.params.get("fail")
        if cursor is not None and cursor > 100:
            raise FutureCursorError("Cursor in the future.")
        yield ("#info", {"name": "OutdatedCursor"})
        for seq in range(1, 4):
            yield {"$type": "io.roost.test.subscribe#tick", "seq": seq}
        if fail == "typed":
            raise FutureCursorError("gone wrong")
        if fail == "crash":
            raise RuntimeError("secret subscription detail")
        if fail == "hang":
            await asyncio.sleep(3600)


class FutureCursorError(RecordNotFound):
    error = "FutureCursor"


CID_VALUE = CID.parse("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm")


@pytest.fixture(scope="module")
def catalog() -> FakeCatalog:
    return FakeCatalog.with_docs(LEXICONS)


@pytest.fixture(scope="module")
def base(catalog: FakeCatalog) -> Iterator[str]:
    router = XrpcRouter(catalog, version="9.9.9", global_rate_limit=None, debug=True)
    register_handlers(router)
    with serve(Starlette(routes=router.routes)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base) as c:
        yield c


def xrpc(nsid: str) -> str:
    return f"/xrpc/{nsid}"


def assert_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert isinstance(body.get("message"), str)
    return body


# -- queries and parameters ----------------------------------------------------------------


def test_query_params_are_coerced_and_defaulted(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.echo"), params={"name": "bob"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"name": "bob", "count": 10}

    r = client.get(
        xrpc("io.roost.test.echo"),
        params=[("name", "al"), ("count", "7"), ("flag", "true"), ("tags", "a"), ("tags", "b")],
    )
    assert r.json() == {"name": "al", "count": 7, "flag": True, "tags": ["a", "b"]}


def test_unknown_params_are_dropped(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.echo"), params={"name": "x", "bogus": "1"})
    assert r.json() == {"name": "x", "count": 10}


@pytest.mark.parametrize(
    "params",
    [
        {},  # missing required
        {"name": "x", "count": "seven"},
        {"name": "x", "count": "1.5"},
        {"name": "x", "count": "0"},  # below minimum
        {"name": "x", "count": "101"},
        {"name": "x", "flag": "yes"},
        {"name": "much too long a name"},
        [("name", "a"), ("name", "b")],  # scalar repeated
    ],
)
def test_param_errors_are_400(client: httpx.Client, params: Any) -> None:
    assert_error(client.get(xrpc("io.roost.test.echo"), params=params), 400, "InvalidRequest")


def test_invalid_query_string_encoding(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.echo") + "?name=%ff%fe")
    assert_error(r, 400, "InvalidRequest")


def test_head_query(client: httpx.Client) -> None:
    r = client.head(xrpc("io.roost.test.echo"), params={"name": "x"})
    assert r.status_code == 200
    assert r.content == b""


def test_query_with_body_is_refused(client: httpx.Client) -> None:
    r = client.request("GET", xrpc("io.roost.test.echo") + "?name=x", content=b"{}")
    body = assert_error(r, 400, "InvalidRequest")
    assert "body" in body["message"]


# -- procedures and bodies -----------------------------------------------------------------


def test_procedure_json(client: httpx.Client) -> None:
    r = client.post(xrpc("io.roost.test.create"), json={"text": "hi"})
    assert r.status_code == 200
    assert r.json() == {"text": "hi"}


def test_content_type_parameters_are_ignored(client: httpx.Client) -> None:
    r = client.post(
        xrpc("io.roost.test.create"),
        content=b'{"text":"hi"}',
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert r.json() == {"text": "hi"}


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"text": "a",}',
        b"not json",
        b'{"text": NaN}',
        b'{"text": "a", "text": "b"}',  # duplicate key
        b'{"text": "\xff"}',  # not UTF-8
        b"[" * 100_000,
    ],
)
def test_malformed_json_is_400(client: httpx.Client, body: bytes) -> None:
    if len(body) > 1000:
        path = xrpc("io.roost.test.create")
        r = client.post(path, content=body[:100_000], headers={"content-type": "application/json"})
    else:
        r = client.post(
            xrpc("io.roost.test.create"), content=body, headers={"content-type": "application/json"}
        )
    assert_error(r, 400, "InvalidRequest")


def test_json_that_fails_the_schema_is_400(client: httpx.Client) -> None:
    assert_error(client.post(xrpc("io.roost.test.create"), json={}), 400, "InvalidRequest")
    assert_error(client.post(xrpc("io.roost.test.create"), json={"text": 5}), 400, "InvalidRequest")
    assert_error(client.post(xrpc("io.roost.test.create"), json=[1]), 400, "InvalidRequest")


def test_wrong_content_type_is_415(client: httpx.Client) -> None:
    r = client.post(
        xrpc("io.roost.test.create"),
        content=b'{"text":"hi"}',
        headers={"content-type": "text/plain"},
    )
    body = assert_error(r, 415, "UnsupportedMediaType")
    assert "text/plain" in body["message"]


def test_missing_content_type_is_400(client: httpx.Client) -> None:
    r = client.post(xrpc("io.roost.test.create"), content=b'{"text":"hi"}')
    body = assert_error(r, 400, "InvalidRequest")
    assert "Content-Type" in body["message"]


def test_missing_body_is_400(client: httpx.Client) -> None:
    assert_error(client.post(xrpc("io.roost.test.create")), 400, "InvalidRequest")
    r = client.post(
        xrpc("io.roost.test.create"), content=b"", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "InvalidRequest")


def test_body_where_none_is_expected(client: httpx.Client) -> None:
    assert client.post(xrpc("io.roost.test.noInput")).status_code == 200
    r = client.post(xrpc("io.roost.test.noInput"), json={"x": 1})
    assert_error(r, 400, "InvalidRequest")


def test_no_output_is_empty_200(client: httpx.Client) -> None:
    r = client.post(xrpc("io.roost.test.noInput"))
    assert r.status_code == 200 and r.content == b""


def test_binary_upload_any_type(client: httpx.Client) -> None:
    r = client.post(
        xrpc("io.roost.test.upload"),
        content=b"\x89PNG" + b"x" * 100,
        headers={"content-type": "image/png"},
    )
    assert r.json() == {"size": 104, "type": "image/png"}


def test_oversized_body_with_content_length(client: httpx.Client) -> None:
    r = client.post(
        xrpc("io.roost.test.upload"), content=b"x" * 1025, headers={"content-type": "image/png"}
    )
    body = assert_error(r, 413, "PayloadTooLarge")
    assert "1024" in body["message"]
    # Exactly at the limit is fine.
    r = client.post(
        xrpc("io.roost.test.upload"), content=b"x" * 1024, headers={"content-type": "image/png"}
    )
    assert r.json()["size"] == 1024


def test_oversized_body_without_content_length(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"y" * 512

    r = client.post(
        xrpc("io.roost.test.upload"), content=chunks(), headers={"content-type": "image/png"}
    )
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "PayloadTooLarge")


def test_huge_declared_length_is_refused_before_reading(base: str) -> None:
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(
            b"POST /xrpc/io.roost.test.upload HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: image/png\r\nContent-Length: 1000000000\r\n\r\nabc"
        )
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b'"error":"PayloadTooLarge"' in data


async def test_body_longer_than_its_content_length_is_cut_off(catalog: FakeCatalog) -> None:
    # A server in front of us would not let this through; the ASGI app must not trust it either.
    router = XrpcRouter(catalog, global_rate_limit=None)
    register_handlers(router)
    app = Starlette(routes=router.routes)
    chunks = [b"z" * 600, b"z" * 600, b"z" * 600]
    sent: list[dict[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/xrpc/io.roost.test.upload",
        "raw_path": b"/xrpc/io.roost.test.upload",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"image/png"), (b"content-length", b"10")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"] == "PayloadTooLarge"


def test_streamed_input(client: httpx.Client) -> None:
    r = client.post(
        xrpc("io.roost.test.importCar"),
        content=b"c" * 3000,
        headers={"content-type": "application/vnd.ipld.car"},
    )
    assert r.status_code == 200 and r.headers["x-received"] == "3000"

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"c" * 1000

    r = client.post(
        xrpc("io.roost.test.importCar"),
        content=chunks(),
        headers={"content-type": "application/vnd.ipld.car"},
    )
    assert_error(r, 413, "PayloadTooLarge")
    r = client.post(
        xrpc("io.roost.test.importCar"), content=b"c", headers={"content-type": "application/json"}
    )
    assert_error(r, 415, "UnsupportedMediaType")


# -- results ----------------------------------------------------------------------------------


def test_binary_output(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.blob"))
    assert r.content == b"\x00\x01binary"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-kind"] == "blob"
    assert r.headers["access-control-allow-origin"] == "*"


def test_streamed_output(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.streamed"))
    assert r.text == "part0;part1;part2;"
    assert r.headers["content-type"].startswith("text/plain")


def test_data_model_values_in_json(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.links"))
    assert r.json() == {
        "cid": {"$link": str(CID_VALUE)},
        "data": {"$bytes": base64.b64encode(b"\x01\x02\x03").decode().rstrip("=")},
        "text": "héllo",
    }


def test_response_object_passes_through(client: httpx.Client) -> None:
    r = client.get(xrpc("io.roost.test.headers"))
    assert r.text == "plain"
    assert r.headers["atproto-repo-rev"] == "3abc"
    assert r.headers["access-control-allow-origin"] == "*"


def test_output_validated_in_debug_mode(client: httpx.Client, catalog: FakeCatalog) -> None:
    r = client.get(xrpc("io.roost.test.badOutput"))
    assert_error(r, 500, "InternalServerError")
    router = XrpcRouter(catalog, global_rate_limit=None, debug=False)
    register_handlers(router)
    with serve(Starlette(routes=router.routes)) as url:
        assert httpx.get(url + xrpc("io.roost.test.badOutput")).json() == {"n": "not an integer"}


# -- errors ----------------------------------------------------------------------------------


def test_typed_error(client: httpx.Client) -> None:
    body = assert_error(client.get(xrpc("io.roost.test.fail")), 400, "RecordNotFound")
    assert body["message"] == "Could not locate record: at://x"


def test_crash_is_500_without_detail(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="roost.xrpc"):
        r = client.get(xrpc("io.roost.test.crash"))
    assert r.status_code == 500
    assert r.json() == {"error": "InternalServerError", "message": "Internal Server Error"}
    assert "secret-detail-1234" not in r.text
    records = [rec for rec in caplog.records if rec.name == "roost.xrpc"]
    assert records and records[0].exc_info is not None
    assert "io.roost.test.crash" in records[0].getMessage()


def test_unknown_method_is_501(client: httpx.Client) -> None:
    assert_error(client.get(xrpc("io.roost.test.nothingHere")), 501, "MethodNotImplemented")
    # in the lexicons but without a handler
    assert_error(client.get(xrpc("io.roost.test.unimplemented")), 501, "MethodNotImplemented")
    assert_error(client.post(xrpc("com.example.other")), 501, "MethodNotImplemented")


@pytest.mark.parametrize("path", ["/xrpc/not-an-nsid", "/xrpc/a/b/c", "/xrpc/", "/xrpc/io..x"])
def test_invalid_xrpc_path(client: httpx.Client, path: str) -> None:
    body = assert_error(client.get(path), 400, "InvalidRequest")
    assert body["message"] == "invalid xrpc path"


def test_wrong_verb(client: httpx.Client) -> None:
    body = assert_error(client.post(xrpc("io.roost.test.echo")), 400, "InvalidRequest")
    assert body["message"] == "Incorrect HTTP method (POST) expected GET"
    body = assert_error(client.get(xrpc("io.roost.test.create")), 400, "InvalidRequest")
    assert body["message"] == "Incorrect HTTP method (GET) expected POST"
    assert_error(client.put(xrpc("io.roost.test.create")), 400, "InvalidRequest")
    assert_error(client.delete(xrpc("io.roost.test.echo")), 400, "InvalidRequest")


def test_subscription_over_plain_http(client: httpx.Client) -> None:
    assert_error(client.get(xrpc("io.roost.test.subscribe")), 426, "InvalidRequest")
    assert_error(client.post(xrpc("io.roost.test.subscribe")), 405, "InvalidRequest")


def test_fallback_answers_unknown_methods(catalog: FakeCatalog) -> None:
    seen: list[str] = []

    async def fallback(request: Any, nsid: str) -> PlainTextResponse:
        seen.append(nsid)
        return PlainTextResponse("proxied", status_code=200)

    router = XrpcRouter(catalog, global_rate_limit=None, fallback=fallback)
    with serve(Starlette(routes=router.routes)) as url:
        r = httpx.get(url + xrpc("app.bsky.feed.getTimeline"))
        assert r.text == "proxied"
        assert r.headers["access-control-allow-origin"] == "*"
        assert_error(httpx.get(url + "/xrpc/bad path"), 400, "InvalidRequest")
    assert seen == ["app.bsky.feed.getTimeline"]


def test_registration_is_checked_against_the_catalog(catalog: FakeCatalog) -> None:
    from roost.errors import LexiconError

    router = XrpcRouter(catalog)
    with pytest.raises(LexiconError):
        router.query("io.roost.test.missing")
    with pytest.raises(LexiconError):
        router.procedure("io.roost.test.echo")  # it is a query

    async def handler(ctx: XrpcContext) -> None:
        return None

    router.query("io.roost.test.echo")(handler)
    with pytest.raises(ValueError):
        router.query("io.roost.test.echo")


# -- CORS and health --------------------------------------------------------------------------


def test_cors_preflight(client: httpx.Client) -> None:
    r = client.options(
        xrpc("io.roost.test.create"),
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, atproto-proxy, dpop",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    for name in ("authorization", "content-type", "atproto-proxy", "dpop"):
        assert name in allowed
    assert r.headers["access-control-max-age"] == "86400"

    # Without a requested list, the default one names the atproto headers.
    r = client.options(xrpc("io.roost.test.echo"), headers={"Origin": "https://app.example"})
    allowed = r.headers["access-control-allow-headers"].lower()
    for name in (
        "authorization",
        "content-type",
        "atproto-proxy",
        "atproto-accept-labelers",
        "dpop",
    ):
        assert name in allowed


def test_cors_on_answers_and_errors(client: httpx.Client) -> None:
    ok = client.get(
        xrpc("io.roost.test.echo"), params={"name": "x"}, headers={"Origin": "https://a.b"}
    )
    bad = client.get(xrpc("io.roost.test.echo"), headers={"Origin": "https://a.b"})
    for r in (ok, bad):
        assert r.headers["access-control-allow-origin"] == "*"
        exposed = r.headers["access-control-expose-headers"]
        for name in (
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "RateLimit-Policy",
        ):
            assert name in exposed


def test_health(client: httpx.Client, catalog: FakeCatalog) -> None:
    r = client.get("/xrpc/_health")
    assert r.status_code == 200 and r.json() == {"version": "9.9.9"}
    assert_error(client.post("/xrpc/_health"), 400, "InvalidRequest")

    healthy = True

    async def check() -> dict[str, Any] | None:
        if not healthy:
            raise ConnectionError("database down")
        return {"status": "ok"}

    router = XrpcRouter(catalog, version="1.2.3", health=check)
    with serve(Starlette(routes=router.routes)) as url:
        assert httpx.get(url + "/xrpc/_health").json() == {"version": "1.2.3", "status": "ok"}
        healthy = False
        r = httpx.get(url + "/xrpc/_health")
        assert r.status_code == 503
        assert r.json() == {"version": "1.2.3", "error": "Service Unavailable"}


# -- rate limits ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rate_limit_exhaustion_and_refill(catalog: FakeCatalog) -> None:
    clock = FakeClock()
    limit = RateLimit("limited", 3, 60)
    router = XrpcRouter(
        catalog,
        rate_limiter=RateLimiter(clock=clock),
        global_rate_limit=RateLimit("global", 100, 300),
    )

    @router.query("io.roost.test.limited", rate_limits=[limit])
    async def limited(ctx: XrpcContext) -> dict[str, Any]:
        return {}

    @router.query("io.roost.test.echo")
    async def echo(ctx: XrpcContext) -> dict[str, Any]:
        return dict(ctx.params)

    with serve(Starlette(routes=router.routes)) as url, httpx.Client(base_url=url) as c:
        for remaining in (2, 1, 0):
            r = c.get(xrpc("io.roost.test.limited"))
            assert r.status_code == 200
            assert r.headers["ratelimit-limit"] == "3"
            assert r.headers["ratelimit-remaining"] == str(remaining)
            assert r.headers["ratelimit-policy"] == "3;w=60"
            assert int(r.headers["ratelimit-reset"]) >= int(clock.now)
        r = c.get(xrpc("io.roost.test.limited"))
        assert_error(r, 429, "RateLimitExceeded")
        assert r.headers["retry-after"] == "20"  # one point per 20 s
        assert r.headers["ratelimit-remaining"] == "0"
        assert r.headers["ratelimit-reset"] == str(int(clock.now) + 60)

        # Other methods only see the global budget: 3 accepted calls and this
        # one were charged; the refused call charged nothing (all or nothing).
        r = c.get(xrpc("io.roost.test.echo"), params={"name": "x"})
        assert r.headers["ratelimit-limit"] == "100"
        assert r.headers["ratelimit-remaining"] == "96"

        clock.now += 20
        assert c.get(xrpc("io.roost.test.limited")).status_code == 200
        assert c.get(xrpc("io.roost.test.limited")).status_code == 429
        clock.now += 60
        r = c.get(xrpc("io.roost.test.limited"))
        assert r.status_code == 200 and r.headers["ratelimit-remaining"] == "2"


def test_global_limit_and_bypasses(catalog: FakeCatalog) -> None:
    clock = FakeClock()
    router = XrpcRouter(
        catalog,
        rate_limiter=RateLimiter(clock=clock),
        global_rate_limit=RateLimit("global", 2, 300),
        rate_limit_bypass_secret="let-me-in",
    )
    register_handlers(router)
    with serve(Starlette(routes=router.routes)) as url, httpx.Client(base_url=url) as c:
        assert c.get(xrpc("io.roost.test.echo"), params={"name": "x"}).status_code == 200
        assert c.get(xrpc("io.roost.test.blob")).status_code == 200
        r = c.get(xrpc("io.roost.test.echo"), params={"name": "x"})
        assert_error(r, 429, "RateLimitExceeded")
        assert r.headers["retry-after"] == "150"
        assert r.headers["ratelimit-policy"] == "2;w=300"
        r = c.get(
            xrpc("io.roost.test.echo"),
            params={"name": "x"},
            headers={"x-ratelimit-bypass": "let-me-in"},
        )
        assert r.status_code == 200
        r = c.get(
            xrpc("io.roost.test.echo"),
            params={"name": "x"},
            headers={"x-ratelimit-bypass": "wrong"},
        )
        assert r.status_code == 429
        assert c.get("/xrpc/_health").status_code == 200  # never limited

    router = XrpcRouter(
        catalog,
        rate_limiter=RateLimiter(clock=clock),
        global_rate_limit=RateLimit("global", 1, 300),
        rate_limit_bypass_ips=["127.0.0.1"],
    )
    register_handlers(router)
    with serve(Starlette(routes=router.routes)) as url:
        for _ in range(3):
            assert httpx.get(url + xrpc("io.roost.test.blob")).status_code == 200


def test_subscription_rate_limited_before_upgrade(catalog: FakeCatalog) -> None:
    clock = FakeClock()
    router = XrpcRouter(
        catalog, rate_limiter=RateLimiter(clock=clock), global_rate_limit=RateLimit("g", 1, 60)
    )
    register_handlers(router)
    with serve(Starlette(routes=router.routes)) as url:
        url = ws_url(url, "io.roost.test.subscribe")
        with connect(url) as ws:
            assert read_frames(ws)[0][0][0] == {"op": 1, "t": "#info"}
        with pytest.raises(InvalidStatus) as info:
            connect(url)
        assert info.value.response.status_code == 429
        assert json.loads(info.value.response.body)["error"] == "RateLimitExceeded"
        assert info.value.response.headers["Retry-After"] == "60"


# -- subscriptions ---------------------------------------------------------------------------


def ws_url(base: str, nsid: str, query: str = "") -> str:
    return base.replace("http", "ws", 1) + xrpc(nsid) + (f"?{query}" if query else "")


def read_frames(ws: Any) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], Any]:
    frames = []
    while True:
        try:
            message = ws.recv(timeout=5)
            assert isinstance(message, bytes), "text frames are not part of the protocol"
            frames.append(decode_frame(message))
        except ConnectionClosed as closed:
            return frames, closed.rcvd


def test_subscription_happy_path(base: str) -> None:
    with connect(ws_url(base, "io.roost.test.subscribe", "cursor=5")) as ws:
        frames, close = read_frames(ws)
    assert frames == [
        ({"op": 1, "t": "#info"}, {"name": "OutdatedCursor"}),
        ({"op": 1, "t": "#tick"}, {"seq": 1}),
        ({"op": 1, "t": "#tick"}, {"seq": 2}),
        ({"op": 1, "t": "#tick"}, {"seq": 3}),
    ]
    assert close.code == 1000


def test_subscription_error_frame_from_handler(base: str) -> None:
    with connect(ws_url(base, "io.roost.test.subscribe", "cursor=500")) as ws:
        frames, close = read_frames(ws)
    assert frames == [({"op": -1}, {"error": "FutureCursor", "message": "Cursor in the future."})]
    assert close.code == 1008 and close.reason == "FutureCursor"

    with connect(ws_url(base, "io.roost.test.subscribe", "fail=typed")) as ws:
        frames, close = read_frames(ws)
    assert len(frames) == 5
    assert frames[-1] == ({"op": -1}, {"error": "FutureCursor", "message": "gone wrong"})
    assert close.code == 1008


def test_subscription_bad_params_get_an_error_frame(base: str) -> None:
    with connect(ws_url(base, "io.roost.test.subscribe", "cursor=abc")) as ws:
        frames, close = read_frames(ws)
    assert len(frames) == 1
    header, body = frames[0]
    assert header == {"op": -1} and body["error"] == "InvalidRequest"
    assert close.code == 1008 and close.reason == "InvalidRequest"


def test_subscription_crash_closes_without_frame(
    base: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="roost.xrpc"),
        connect(ws_url(base, "io.roost.test.subscribe", "fail=crash")) as ws,
    ):
        frames, close = read_frames(ws)
    assert [h["op"] for h, _ in frames] == [1, 1, 1, 1]
    assert close.code == 1011
    assert any(r.exc_info for r in caplog.records if r.name == "roost.xrpc")


def test_subscription_client_disconnect_cancels_the_handler(base: str) -> None:
    with connect(ws_url(base, "io.roost.test.subscribe", "fail=hang")) as ws:
        for _ in range(4):
            ws.recv(timeout=5)
    # The server side must still be healthy afterwards.
    with connect(ws_url(base, "io.roost.test.subscribe")) as ws:
        assert len(read_frames(ws)[0]) == 4


def test_subscription_unknown_and_wrong_methods(base: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(base, "io.roost.test.nothing"))
    assert info.value.response.status_code == 501
    assert json.loads(info.value.response.body)["error"] == "MethodNotImplemented"
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(base, "io.roost.test.echo"))
    assert info.value.response.status_code == 400


def test_subscription_message_validated_in_debug(catalog: FakeCatalog) -> None:
    router = XrpcRouter(catalog, global_rate_limit=None, debug=True)

    @router.subscription("io.roost.test.subscribe")
    async def subscribe(ctx: XrpcContext) -> AsyncIterator[Any]:
        yield ("#tick", {"seq": 1})
        yield ("#tick", {"seq": "one"})

    with (
        serve(Starlette(routes=router.routes)) as url,
        connect(ws_url(url, "io.roost.test.subscribe")) as ws,
    ):
        frames, close = read_frames(ws)
    assert frames == [({"op": 1, "t": "#tick"}, {"seq": 1})]
    assert close.code == 1011


# -- the real lexicon catalog --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    catalog = real_catalog(tmp_path_factory.mktemp("lexicons"))
    router = XrpcRouter(catalog, global_rate_limit=None, debug=True)
    register_handlers(router)
    with serve(Starlette(routes=router.routes)) as url:
        yield url


class TestRealCatalog:
    """The same paths with ``roost.lexicon.Catalog`` (skipped until it exists)."""

    def test_params(self, real_base: str) -> None:
        r = httpx.get(real_base + xrpc("io.roost.test.echo"), params=[("name", "a"), ("tags", "x")])
        assert r.json() == {"name": "a", "count": 10, "tags": ["x"]}
        r = httpx.get(
            real_base + xrpc("io.roost.test.echo"),
            params={"name": "a", "count": "3", "flag": "false"},
        )
        assert r.json() == {"name": "a", "count": 3, "flag": False}
        for bad in ({}, {"name": "a", "count": "x"}, {"name": "a", "count": "500"}):
            r = httpx.get(real_base + xrpc("io.roost.test.echo"), params=bad)
            assert_error(r, 400, "InvalidRequest")

    def test_bodies(self, real_base: str) -> None:
        url = real_base + xrpc("io.roost.test.create")
        assert httpx.post(url, json={"text": "hi"}).json() == {"text": "hi"}
        assert_error(httpx.post(url, json={"text": 1}), 400, "InvalidRequest")
        assert_error(httpx.post(url, json={}), 400, "InvalidRequest")

    def test_output_validation(self, real_base: str) -> None:
        r = httpx.get(real_base + xrpc("io.roost.test.badOutput"))
        assert_error(r, 500, "InternalServerError")

    def test_subscription(self, real_base: str) -> None:
        with connect(ws_url(real_base, "io.roost.test.subscribe", "cursor=1")) as ws:
            frames, close = read_frames(ws)
        assert [h.get("t") for h, _ in frames] == ["#info", "#tick", "#tick", "#tick"]
        assert close.code == 1000
