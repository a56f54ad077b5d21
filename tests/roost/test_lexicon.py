"""roost.lexicon: the interop lexicon vectors, schema checks, and data validation."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.cbor import from_json, to_json
from roost.cid import CID
from roost.errors import DataModelError, LexiconError, ValidationError
from roost.lexicon import Catalog, MethodDef, default_lexicon_dir
from tests.interop import interop_path, load_json

RECORD = "example.lexicon.record"
BLOB_CID = "bafkreibjfgx2gprinfvicegelk5kosd6y2frmqpqzwqkg7usac74l3t2v4"
CBOR_CID = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
POST_URI = f"at://{DID}/app.bsky.feed.post/3l3qo2vuowo2b"


def _named(cases: list[dict[str, Any]]) -> list[Any]:
    return [pytest.param(c, id=f"{i}-{c['name']}") for i, c in enumerate(cases)]


@pytest.fixture(scope="module")
def interop() -> Catalog:
    return Catalog.load(interop_path("lexicon/catalog"))


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return Catalog.load()


def blob(mime: str = "image/png", size: int = 1000, *, json_form: bool = False) -> dict[str, Any]:
    ref: Any = {"$link": BLOB_CID} if json_form else CID.from_str(BLOB_CID)
    return {"$type": "blob", "ref": ref, "mimeType": mime, "size": size}


def doc(defs: dict[str, Any], nsid: str = "com.example.test") -> dict[str, Any]:
    return {"lexicon": 1, "id": nsid, "defs": defs}


def catalog_of(*documents: dict[str, Any]) -> Catalog:
    c = Catalog()
    for d in documents:
        c.add(d)
    return c


def record_doc(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return doc(
        {
            "main": {
                "type": "record",
                "key": "tid",
                "record": {"type": "object", "properties": properties, **extra},
            }
        },
        "com.example.rec",
    )


def check_record(c: Catalog, data: dict[str, Any]) -> None:
    c.validate_record("com.example.rec", {"$type": "com.example.rec", **data})


def fails_at(path: str, fn: Any, *args: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(*args)
    assert info.value.path == path, str(info.value)
    assert str(info.value).startswith(path + " ")
    return info.value


# -- interop vectors --------------------------------------------------------------


@pytest.mark.parametrize("case", _named(load_json("lexicon/lexicon-valid.json")))
def test_interop_lexicon_valid(case: dict[str, Any]) -> None:
    c = Catalog()
    c.add(case["lexicon"])
    assert c.get(case["lexicon"]["id"]) is case["lexicon"]


@pytest.mark.parametrize("case", _named(load_json("lexicon/lexicon-invalid.json")))
def test_interop_lexicon_invalid(case: dict[str, Any]) -> None:
    with pytest.raises(LexiconError):
        Catalog().add(case["lexicon"])


def test_interop_catalog_loads(interop: Catalog) -> None:
    assert set(interop) == {
        "example.lexicon.record",
        "example.lexicon.query",
        "example.lexicon.procedure",
        "example.lexicon.subscription",
        "example.lexicon.permissionset",
    }
    query = interop.method("example.lexicon.query")
    assert query is not None and query.type == "query"
    assert query.errors == ("DemoError", "AnotherDemoError")
    assert query.output_encoding == "application/json"
    proc = interop.method("example.lexicon.procedure")
    assert (
        proc is not None and proc.type == "procedure" and proc.input_encoding == "application/json"
    )
    sub = interop.method("example.lexicon.subscription")
    assert sub is not None and sub.type == "subscription" and sub.errors == ("FutureCursor",)
    assert sub.message_schema == {"type": "union", "refs": ["#yo", "#info"]}
    assert interop.method("example.lexicon.record") is None
    assert interop.method("example.lexicon.permissionset") is None
    assert interop.record_key_type(RECORD) == "literal:demo"


@pytest.mark.parametrize("case", _named(load_json("lexicon/record-data-valid.json")))
@pytest.mark.parametrize("form", ["json", "data-model"])
def test_interop_record_valid(interop: Catalog, case: dict[str, Any], form: str) -> None:
    data = case["data"] if form == "json" else from_json(case["data"])
    interop.validate_record(RECORD, data)
    interop.validate_record_key(RECORD, case["rkey"])


@pytest.mark.parametrize("case", _named(load_json("lexicon/record-data-invalid.json")))
@pytest.mark.parametrize("form", ["json", "data-model"])
def test_interop_record_invalid(interop: Catalog, case: dict[str, Any], form: str) -> None:
    interop.validate_record_key(RECORD, case["rkey"])
    if form == "json":
        with pytest.raises(ValidationError):
            interop.validate_record(RECORD, case["data"])
        return
    # Data-model conversion may reject the case first; otherwise validation must.
    try:
        data = from_json(case["data"])
    except DataModelError:
        return
    with pytest.raises(ValidationError):
        interop.validate_record(RECORD, data)


@pytest.mark.parametrize(
    "value",
    [
        {"$bytes": "123"},
        {"$type": "blob", "mimeType": "text/plain", "size": 12345, "ref": {"$link": CBOR_CID}},
        {"$link": CBOR_CID},
        "a string",
        [1, 2],
        7,
    ],
)
@pytest.mark.parametrize("form", ["json", "data-model"])
def test_interop_unknown_rejects_non_maps(interop: Catalog, value: Any, form: str) -> None:
    # The two "unknown wrong type" vectors also lack the required "integer", so
    # they would fail even if `unknown` checks were missing; check it directly.
    data: Any = {"$type": RECORD, "integer": 1, "unknown": value}
    if form == "data-model":
        data = from_json(data)
    fails_at("record/unknown", interop.validate_record, RECORD, data)


def test_interop_record_key(interop: Catalog) -> None:
    fails_at("rkey", interop.validate_record_key, RECORD, "other")
    fails_at("rkey", interop.validate_record_key, RECORD, "..")


# -- document checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(
            {"lexicon": True, "id": "com.example.test", "defs": {"a": {"type": "integer"}}},
            id="lexicon-true",
        ),
        pytest.param(
            {"lexicon": 2, "id": "com.example.test", "defs": {"a": {"type": "integer"}}},
            id="lexicon-2",
        ),
        pytest.param(
            {"lexicon": 1, "id": "not an nsid", "defs": {"a": {"type": "integer"}}}, id="bad-id"
        ),
        pytest.param({"lexicon": 1, "id": "com.example.test"}, id="no-defs"),
        pytest.param({"lexicon": 1, "id": "com.example.test", "defs": {}}, id="empty-defs"),
        pytest.param(doc({"a": {"type": "union", "refs": []}}), id="named-union"),
        pytest.param(doc({"a": {"type": "params", "properties": {}}}), id="named-params"),
        pytest.param(doc({"a": {"type": "null"}}), id="null-type"),
        pytest.param(doc({"a": {"type": "wibble"}}), id="unknown-type"),
        pytest.param(doc({"a": {"type": "integer", "const": 1, "default": 1}}), id="const-default"),
        pytest.param(doc({"a": {"type": "integer", "minimum": 5, "maximum": 1}}), id="min-max"),
        pytest.param(doc({"a": {"type": "integer", "minimum": "1"}}), id="min-string"),
        pytest.param(doc({"a": {"type": "string", "format": "email"}}), id="bad-format"),
        pytest.param(doc({"a": {"type": "string", "maxLength": -1}}), id="negative-length"),
        pytest.param(doc({"a": {"type": "string", "knownValues": [1]}}), id="bad-known-values"),
        pytest.param(doc({"a": {"type": "boolean", "default": "yes"}}), id="bool-default"),
        pytest.param(doc({"a": {"type": "array"}}), id="array-no-items"),
        pytest.param(
            doc({"a": {"type": "array", "items": {"type": "token"}}}), id="array-of-token"
        ),
        pytest.param(doc({"a": {"type": "object"}}), id="object-no-properties"),
        pytest.param(
            doc({"a": {"type": "object", "required": ["x"], "properties": {}}}),
            id="required-undeclared",
        ),
        pytest.param(
            doc({"a": {"type": "object", "properties": {"x": {"type": "params"}}}}),
            id="inline-params",
        ),
        pytest.param(
            doc({"a": {"type": "object", "properties": {"x": {"type": "ref", "ref": "#"}}}}),
            id="empty-ref-name",
        ),
        pytest.param(
            doc({"a": {"type": "object", "properties": {"x": {"type": "ref", "ref": "nope"}}}}),
            id="bad-ref",
        ),
        pytest.param(
            doc(
                {
                    "a": {
                        "type": "object",
                        "properties": {"x": {"type": "union", "refs": [], "closed": True}},
                    }
                }
            ),
            id="closed-empty-union",
        ),
        pytest.param(doc({"a": {"type": "blob", "accept": ["*"]}}), id="accept-star"),
        pytest.param(doc({"a": {"type": "blob", "accept": ["text/ht*"]}}), id="accept-partial"),
        pytest.param(
            doc(
                {
                    "a": {
                        "type": "record",
                        "key": "tid",
                        "record": {"type": "object", "properties": {}},
                    }
                }
            ),
            id="record-not-main",
        ),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "record",
                        "key": "uuid",
                        "record": {"type": "object", "properties": {}},
                    }
                }
            ),
            id="bad-record-key",
        ),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "record",
                        "key": "literal:a/b",
                        "record": {"type": "object", "properties": {}},
                    }
                }
            ),
            id="bad-literal-key",
        ),
        pytest.param(
            doc({"main": {"type": "query", "parameters": {"type": "object", "properties": {}}}}),
            id="params-wrong-type",
        ),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "query",
                        "parameters": {
                            "type": "params",
                            "properties": {"x": {"type": "object", "properties": {}}},
                        },
                    }
                }
            ),
            id="param-object",
        ),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "query",
                        "output": {"schema": {"type": "object", "properties": {}}},
                    }
                }
            ),
            id="output-no-encoding",
        ),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "query",
                        "output": {"encoding": "application/json", "schema": {"type": "string"}},
                    }
                }
            ),
            id="output-string-schema",
        ),
        pytest.param(
            doc({"main": {"type": "query", "errors": [{"description": "x"}]}}), id="error-no-name"
        ),
        pytest.param(doc({"main": {"type": "subscription"}}), id="subscription-no-message"),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "subscription",
                        "message": {"schema": {"type": "object", "properties": {}}},
                    }
                }
            ),
            id="message-not-union",
        ),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "permission-set",
                        "permissions": [
                            {"type": "permission", "resource": "rpc", "lxm": ["*"], "aud": "*"}
                        ],
                    }
                }
            ),
            id="rpc-double-wildcard",
        ),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "permission-set",
                        "permissions": [
                            {"type": "permission", "resource": "rpc", "lxm": ["com.example.x"]}
                        ],
                    }
                }
            ),
            id="rpc-no-aud",
        ),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "permission-set",
                        "permissions": [
                            {"type": "permission", "resource": "repo", "collection": ["*"]}
                        ],
                    }
                }
            ),
            id="repo-wildcard",
        ),
        pytest.param(
            doc(
                {
                    "main": {
                        "type": "permission-set",
                        "permissions": [
                            {
                                "type": "permission",
                                "resource": "repo",
                                "collection": ["com.example.x"],
                                "action": ["read"],
                            }
                        ],
                    }
                }
            ),
            id="repo-bad-action",
        ),
    ],
)
def test_invalid_documents(document: dict[str, Any]) -> None:
    with pytest.raises(LexiconError):
        Catalog().add(document)


def test_duplicate_document() -> None:
    c = catalog_of(doc({"a": {"type": "integer"}}))
    with pytest.raises(LexiconError, match="already"):
        c.add(doc({"b": {"type": "integer"}}))
    # the failed add left the first document in place
    assert c.validate("com.example.test#a", 3) == 3


def test_failed_add_leaves_nothing_behind() -> None:
    c = Catalog()
    with pytest.raises(LexiconError):
        c.add(doc({"a": {"type": "integer"}, "b": {"type": "wibble"}}))
    assert c.get("com.example.test") is None and "com.example.test" not in c
    c.add(doc({"a": {"type": "integer"}}))


def test_load_reports_the_file(tmp_path: Any) -> None:
    (tmp_path / "a.json").write_text(
        '{"lexicon": 1, "id": "com.example.a", "defs": {"x": {"type": "null"}}}'
    )
    with pytest.raises(LexiconError, match="a.json"):
        Catalog.load(tmp_path)
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(LexiconError, match="a.json"):
        Catalog.load(tmp_path)
    with pytest.raises(LexiconError):
        Catalog.load(tmp_path / "missing")


def test_default_dir() -> None:
    assert default_lexicon_dir().is_dir()
    assert (default_lexicon_dir() / "app" / "bsky" / "feed" / "post.json").is_file()


def test_documents_may_arrive_in_any_order() -> None:
    c = catalog_of(
        doc(
            {
                "main": {
                    "type": "object",
                    "properties": {"b": {"type": "ref", "ref": "com.example.b"}},
                }
            },
            "com.example.a",
        ),
    )
    with pytest.raises(LexiconError, match="com.example.b"):
        c.validate("com.example.a", {"b": {}})
    assert c.unresolved_refs() == [("com.example.a", "com.example.b")]
    c.add(
        doc(
            {
                "main": {
                    "type": "object",
                    "required": ["x"],
                    "properties": {"x": {"type": "integer"}},
                }
            },
            "com.example.b",
        )
    )
    assert c.unresolved_refs() == []
    c.validate("com.example.a", {"b": {"x": 1}})
    fails_at("value/b", c.validate, "com.example.a", {"b": {}})


# -- records and $type ---------------------------------------------------------------


def test_record_type_rules(shipped: Catalog) -> None:
    like = {
        "$type": "app.bsky.feed.like",
        "subject": {"uri": POST_URI, "cid": CBOR_CID},
        "createdAt": "2024-01-01T00:00:00Z",
    }
    shipped.validate_record("app.bsky.feed.like", like)
    fails_at(
        "record",
        shipped.validate_record,
        "app.bsky.feed.like",
        {k: v for k, v in like.items() if k != "$type"},
    )
    fails_at(
        "record/$type",
        shipped.validate_record,
        "app.bsky.feed.like",
        {**like, "$type": "app.bsky.feed.like#main"},
    )
    fails_at(
        "record/$type",
        shipped.validate_record,
        "app.bsky.feed.like",
        {**like, "$type": "app.bsky.feed.repost"},
    )
    fails_at("record", shipped.validate_record, "app.bsky.feed.like", [like])
    with pytest.raises(LexiconError):
        shipped.validate_record("com.example.nothing", like)
    with pytest.raises(LexiconError):
        shipped.validate_record("app.bsky.feed.defs", like)  # not a record


def test_record_keys(shipped: Catalog) -> None:
    shipped.validate_record_key("app.bsky.feed.post", "3l3qo2vuowo2b")
    fails_at("rkey", shipped.validate_record_key, "app.bsky.feed.post", "self")
    shipped.validate_record_key("app.bsky.actor.profile", "self")
    fails_at("rkey", shipped.validate_record_key, "app.bsky.actor.profile", "3l3qo2vuowo2b")
    shipped.validate_record_key("app.bsky.feed.generator", "whats-hot")
    fails_at("rkey", shipped.validate_record_key, "app.bsky.feed.generator", "a/b")
    fails_at("rkey", shipped.validate_record_key, "app.bsky.feed.generator", ".")
    fails_at("rkey", shipped.validate_record_key, "app.bsky.feed.generator", "")
    fails_at("rkey", shipped.validate_record_key, "app.bsky.feed.generator", 5)
    c = catalog_of(
        doc(
            {
                "main": {
                    "type": "record",
                    "key": "nsid",
                    "record": {"type": "object", "properties": {}},
                }
            }
        )
    )
    c.validate_record_key("com.example.test", "com.example.thing")
    fails_at("rkey", c.validate_record_key, "com.example.test", "thing")
    assert shipped.record_key_type("app.bsky.graph.follow") == "tid"
    assert shipped.record_key_type("app.bsky.feed.defs") is None


def test_undeclared_fields_are_allowed() -> None:
    c = catalog_of(record_doc({"a": {"type": "integer"}}))
    check_record(c, {"a": 1, "extra": "whatever", "more": [1.5]})


def test_required_wins_over_other_errors() -> None:
    c = catalog_of(record_doc({"a": {"type": "integer"}, "b": {"type": "integer"}}, required=["b"]))
    err = fails_at("record", check_record, c, {"a": "not an int"})
    assert err.message == 'record must have the property "b"'


# -- nullable ------------------------------------------------------------------------


def test_nullable_vs_optional() -> None:
    c = catalog_of(
        record_doc(
            {"n": {"type": "string"}, "o": {"type": "string"}, "rn": {"type": "string"}},
            required=["rn"],
            nullable=["n", "rn"],
        )
    )
    check_record(c, {"rn": None})
    check_record(c, {"rn": "x", "n": None})
    check_record(c, {"rn": "x", "o": "y"})
    fails_at("record/o", check_record, c, {"rn": "x", "o": None})
    fails_at("record", check_record, c, {"n": None})  # required, even if nullable
    fails_at("record/n", check_record, c, {"rn": None, "n": 3})


# -- strings -----------------------------------------------------------------------


def test_string_byte_lengths() -> None:
    c = catalog_of(doc({"s": {"type": "string", "minLength": 4, "maxLength": 8}}))
    assert c.validate("com.example.test#s", "abcd") == "abcd"
    c.validate("com.example.test#s", "éé")  # 4 bytes, 2 code points
    c.validate("com.example.test#s", "🦋🦋")  # 8 bytes
    fails_at("value", c.validate, "com.example.test#s", "abc")
    fails_at("value", c.validate, "com.example.test#s", "🦋🦋a")  # 9 bytes, 3 code points
    fails_at("value", c.validate, "com.example.test#s", "é")
    fails_at("value", c.validate, "com.example.test#s", 1234)


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("abc", 3),
        ("a\r\nb", 3),
        ("🇩🇪🇫🇷", 2),
        ("👩‍👩‍👦‍👦", 1),
        ("🏳️‍🌈x", 2),
        ("e\u0301e\u0301", 2),
        ("한국어", 3),
        ("\u1100\u1161\u11a8", 1),
    ],
)
def test_graphemes(text: str, count: int) -> None:
    c = catalog_of(
        doc(
            {
                "exact": {"type": "string", "minGraphemes": count, "maxGraphemes": count},
                "less": {"type": "string", "maxGraphemes": count - 1},
                "more": {"type": "string", "minGraphemes": count + 1},
            }
        )
    )
    c.validate("com.example.test#exact", text)
    fails_at("value", c.validate, "com.example.test#less", text)
    fails_at("value", c.validate, "com.example.test#more", text)


def test_lone_surrogates_do_not_crash() -> None:
    c = catalog_of(
        doc({"s": {"type": "string", "maxLength": 3}, "g": {"type": "string", "maxGraphemes": 1}})
    )
    fails_at("value", c.validate, "com.example.test#s", "\ud800\ud800")
    fails_at("value", c.validate, "com.example.test#g", "\ud800\ud800")


def test_string_enum_const_known_values() -> None:
    c = catalog_of(
        doc(
            {
                "e": {"type": "string", "enum": ["a", "b"]},
                "c": {"type": "string", "const": "x"},
                "k": {"type": "string", "knownValues": ["a", "b"]},
            }
        )
    )
    c.validate("com.example.test#e", "a")
    fails_at("value", c.validate, "com.example.test#e", "c")
    c.validate("com.example.test#c", "x")
    fails_at("value", c.validate, "com.example.test#c", "y")
    c.validate("com.example.test#k", "anything else")  # knownValues is only a hint


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("did", DID, "did:PLC:x"),
        ("handle", "alice.bsky.social", "alice"),
        ("at-identifier", "alice.bsky.social", "@alice.bsky.social"),
        ("at-uri", POST_URI, "https://example.com"),
        ("nsid", "app.bsky.feed.post", "app.bsky"),
        ("cid", CBOR_CID, "Qmfoo"),
        ("datetime", "2024-01-01T00:00:00.000Z", "2024-01-01 00:00:00"),
        ("language", "pt-BR", "english!"),
        ("uri", "https://example.com/x", "example.com"),
        ("tid", "3l3qo2vuowo2b", "3l3qo2vuowo2"),
        ("record-key", "self", "a/b"),
    ],
)
def test_string_formats(fmt: str, good: str, bad: str) -> None:
    c = catalog_of(doc({"s": {"type": "string", "format": fmt}}))
    c.validate("com.example.test#s", good)
    err = fails_at("value", c.validate, "com.example.test#s", bad)
    assert fmt in err.message


# -- numbers, booleans, bytes, links ---------------------------------------------------


def test_integers() -> None:
    c = catalog_of(
        doc(
            {
                "r": {"type": "integer", "minimum": 0, "maximum": 10},
                "e": {"type": "integer", "enum": [1, 3]},
                "c": {"type": "integer", "const": 7},
                "i": {"type": "integer"},
            }
        )
    )
    assert c.validate("com.example.test#r", 0) == 0
    fails_at("value", c.validate, "com.example.test#r", -1)
    fails_at("value", c.validate, "com.example.test#r", 11)
    c.validate("com.example.test#e", 3)
    fails_at("value", c.validate, "com.example.test#e", 2)
    fails_at("value", c.validate, "com.example.test#c", 8)
    fails_at("value", c.validate, "com.example.test#i", True)
    fails_at("value", c.validate, "com.example.test#i", "1")
    fails_at("value", c.validate, "com.example.test#i", 1.5)
    fails_at("value", c.validate, "com.example.test#i", 2**63)
    c.validate("com.example.test#i", -(2**63))
    # JSON 3.0 is the integer 3 (as atproto JSON -> data model conversion has it)
    assert c.validate("com.example.test#i", 3.0) == 3
    fails_at("value", c.validate, "com.example.test#i", float("nan"))


def test_booleans() -> None:
    c = catalog_of(doc({"b": {"type": "boolean"}, "t": {"type": "boolean", "const": True}}))
    c.validate("com.example.test#b", False)
    fails_at("value", c.validate, "com.example.test#b", 0)
    fails_at("value", c.validate, "com.example.test#b", "true")
    fails_at("value", c.validate, "com.example.test#t", False)


def test_bytes_both_forms() -> None:
    c = catalog_of(doc({"b": {"type": "bytes", "minLength": 2, "maxLength": 4}}))
    c.validate("com.example.test#b", b"abc")
    c.validate("com.example.test#b", {"$bytes": "YWJj"})
    c.validate("com.example.test#b", {"$bytes": "YWJj"})
    fails_at("value", c.validate, "com.example.test#b", b"a")
    fails_at("value", c.validate, "com.example.test#b", {"$bytes": "YWJjZGU"})  # 5 bytes
    fails_at("value", c.validate, "com.example.test#b", {"$bytes": "!!!"})
    fails_at("value", c.validate, "com.example.test#b", {"$bytes": "YWJj", "x": 1})
    fails_at("value", c.validate, "com.example.test#b", "YWJj")
    fails_at("value", c.validate, "com.example.test#b", bytearray(b"abc"))


def test_cid_links_both_forms() -> None:
    c = catalog_of(doc({"l": {"type": "cid-link"}}))
    c.validate("com.example.test#l", CID.from_str(CBOR_CID))
    c.validate("com.example.test#l", {"$link": CBOR_CID})
    fails_at("value", c.validate, "com.example.test#l", CBOR_CID)
    fails_at("value", c.validate, "com.example.test#l", {"$link": "bafynotacid"})
    fails_at("value", c.validate, "com.example.test#l", {"$link": CBOR_CID, "x": 1})
    fails_at("value", c.validate, "com.example.test#l", {"$link": 5})


# -- blobs ---------------------------------------------------------------------------


def test_blobs() -> None:
    c = catalog_of(
        doc(
            {
                "any": {"type": "blob"},
                "img": {"type": "blob", "accept": ["image/*"], "maxSize": 1000},
                "exact": {"type": "blob", "accept": ["image/png", "video/mp4"]},
                "all": {"type": "blob", "accept": ["*/*"]},
            }
        )
    )
    for json_form in (False, True):
        c.validate(
            "com.example.test#any", blob("application/octet-stream", 10**9, json_form=json_form)
        )
        c.validate("com.example.test#img", blob("image/webp", 1000, json_form=json_form))
        fails_at(
            "value",
            c.validate,
            "com.example.test#img",
            blob("image/webp", 1001, json_form=json_form),
        )
        fails_at(
            "value", c.validate, "com.example.test#img", blob("video/mp4", 10, json_form=json_form)
        )
        c.validate("com.example.test#exact", blob("video/mp4", json_form=json_form))
        c.validate("com.example.test#exact", blob("IMAGE/PNG", json_form=json_form))
        fails_at(
            "value", c.validate, "com.example.test#exact", blob("image/jpeg", json_form=json_form)
        )
        c.validate("com.example.test#all", blob("text/plain", json_form=json_form))
    # legacy blobs: no size, so maxSize cannot apply; accept still does
    c.validate("com.example.test#img", {"cid": BLOB_CID, "mimeType": "image/png"})
    fails_at(
        "value", c.validate, "com.example.test#img", {"cid": BLOB_CID, "mimeType": "text/plain"}
    )
    fails_at(
        "value/cid", c.validate, "com.example.test#any", {"cid": "nope", "mimeType": "image/png"}
    )
    # malformed blobs
    good = blob()
    fails_at("value/ref", c.validate, "com.example.test#any", {**good, "ref": BLOB_CID})
    fails_at("value/ref", c.validate, "com.example.test#any", {**good, "ref": {"$link": "x"}})
    fails_at("value/size", c.validate, "com.example.test#any", {**good, "size": -1})
    fails_at("value/size", c.validate, "com.example.test#any", {**good, "size": "10"})
    fails_at("value/mimeType", c.validate, "com.example.test#any", {**good, "mimeType": ""})
    fails_at("value", c.validate, "com.example.test#any", {**good, "$type": "blobby"})
    fails_at("value", c.validate, "com.example.test#any", "blob")


# -- arrays, objects, unknown -----------------------------------------------------------


def test_arrays() -> None:
    c = catalog_of(
        doc(
            {
                "a": {
                    "type": "array",
                    "minLength": 1,
                    "maxLength": 2,
                    "items": {"type": "string", "maxLength": 3},
                }
            }
        )
    )
    c.validate("com.example.test#a", ["a", "b"])
    fails_at("value", c.validate, "com.example.test#a", [])
    fails_at("value", c.validate, "com.example.test#a", ["a", "b", "c"])
    fails_at("value/1", c.validate, "com.example.test#a", ["a", "long"])
    fails_at("value", c.validate, "com.example.test#a", ("a",))
    fails_at("value/0", c.validate, "com.example.test#a", [None])


def test_unknown() -> None:
    c = catalog_of(doc({"o": {"type": "object", "properties": {"u": {"type": "unknown"}}}}))
    c.validate(
        "com.example.test#o", {"u": {"$type": "com.example.x", "nested": [{"blob": blob()}]}}
    )
    c.validate("com.example.test#o", {"u": {"a": {"$link": CBOR_CID}, "b": CID.from_str(CBOR_CID)}})
    c.validate("com.example.test#o", {"u": {"a": 1.0}})
    fails_at("value/u", c.validate, "com.example.test#o", {"u": {"a": [1.5]}})
    fails_at("value/u", c.validate, "com.example.test#o", {"u": blob()})
    fails_at("value/u", c.validate, "com.example.test#o", {"u": {"$bytes": "YWJj"}})
    fails_at("value/u", c.validate, "com.example.test#o", {"u": {"$link": CBOR_CID}})
    fails_at("value/u", c.validate, "com.example.test#o", {"u": {"$type": 5}})
    fails_at("value/u", c.validate, "com.example.test#o", {"u": {"a": object()}})
    deep: Any = {}
    for _ in range(100):
        deep = {"d": deep}
    fails_at("value/u", c.validate, "com.example.test#o", {"u": deep})


def test_defaults_are_filled_without_mutating_input(shipped: Catalog) -> None:
    c = catalog_of(
        doc(
            {
                "main": {
                    "type": "object",
                    "properties": {
                        "n": {"type": "integer", "default": 5},
                        "s": {"type": "string", "default": "x"},
                        "b": {"type": "boolean", "default": True},
                        "inner": {"type": "array", "items": {"type": "ref", "ref": "#inner"}},
                    },
                },
                "inner": {"type": "object", "properties": {"d": {"type": "integer", "default": 1}}},
            }
        )
    )
    value = {"n": 1, "inner": [{"d": 2}, {}]}
    before = copy.deepcopy(value)
    out = c.validate("com.example.test", value)
    assert value == before
    assert out == {"n": 1, "s": "x", "b": True, "inner": [{"d": 2}, {"d": 1}]}
    same = {"n": 1, "s": "y", "b": False}
    assert c.validate("com.example.test", same) is same


# -- refs and unions ----------------------------------------------------------------------


UNION_DOCS = [
    doc(
        {
            "main": {
                "type": "object",
                "properties": {
                    "open": {"type": "union", "refs": ["#a", "com.example.other"]},
                    "closed": {
                        "type": "union",
                        "refs": ["#a", "com.example.other#main"],
                        "closed": True,
                    },
                    "anything": {"type": "union", "refs": []},
                    "local": {"type": "ref", "ref": "#a"},
                    "global": {"type": "ref", "ref": "com.example.test#a"},
                    "bare": {"type": "ref", "ref": "com.example.other"},
                    "rec": {"type": "ref", "ref": "com.example.rec"},
                    "string": {"type": "ref", "ref": "com.example.other#str"},
                },
            },
            "a": {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}},
            "tok": {"type": "token"},
        }
    ),
    doc(
        {
            "main": {"type": "object", "required": ["y"], "properties": {"y": {"type": "string"}}},
            "str": {"type": "string", "maxLength": 2},
        },
        "com.example.other",
    ),
    record_doc({"z": {"type": "boolean"}}, required=["z"]),
]


def test_refs() -> None:
    c = catalog_of(*UNION_DOCS)
    v = "com.example.test"
    c.validate(v, {"local": {"x": 1}, "global": {"x": 2}, "bare": {"y": "b"}, "string": "ok"})
    c.validate(v, {"local": {"x": 1, "$type": "com.example.test#a"}})  # extra $type is tolerated
    fails_at("value/local/x", c.validate, v, {"local": {"x": "1"}})
    fails_at("value/global", c.validate, v, {"global": {}})
    fails_at("value/bare", c.validate, v, {"bare": {}})
    fails_at("value/string", c.validate, v, {"string": "long"})
    c.validate(v, {"rec": {"$type": "com.example.rec", "z": True}})  # a ref to a record keeps $type
    fails_at("value/rec", c.validate, v, {"rec": {"$type": "com.example.rec"}})
    assert c.unresolved_refs() == []


def test_refs_must_point_at_data() -> None:
    c = catalog_of(
        doc(
            {
                "main": {
                    "type": "object",
                    "properties": {
                        "t": {"type": "ref", "ref": "#tok"},
                        "u": {"type": "union", "refs": ["#str"]},
                        "m": {"type": "ref", "ref": "com.example.q"},
                    },
                },
                "tok": {"type": "token"},
                "str": {"type": "string"},
            }
        ),
        doc({"main": {"type": "query"}}, "com.example.q"),
    )
    assert sorted(r for _, r in c.unresolved_refs()) == ["#str", "#tok", "com.example.q"]
    with pytest.raises(LexiconError):
        c.validate("com.example.test", {})
    with pytest.raises(LexiconError):
        c.validate("com.example.test#tok", "com.example.test#tok")
    with pytest.raises(LexiconError):
        c.validate("com.example.q", {})
    with pytest.raises(LexiconError):
        c.validate("#str", "x")


def test_unions() -> None:
    c = catalog_of(*UNION_DOCS)
    v = "com.example.test"
    c.validate(v, {"open": {"$type": "com.example.test#a", "x": 1}})
    c.validate(v, {"open": {"$type": "com.example.other", "y": "y"}})
    c.validate(v, {"open": {"$type": "com.example.other#main", "y": "y"}})  # X and X#main agree
    c.validate(v, {"open": {"$type": "com.example.elsewhere", "anything": True}})  # open
    fails_at("value/open/x", c.validate, v, {"open": {"$type": "com.example.test#a", "x": "1"}})
    fails_at("value/open", c.validate, v, {"open": {"$type": "com.example.other"}})
    fails_at("value/open", c.validate, v, {"open": {"x": 1}})  # no $type
    fails_at("value/open/$type", c.validate, v, {"open": {"$type": 5}})
    fails_at("value/open/$type", c.validate, v, {"open": {"$type": ""}})
    fails_at("value/open", c.validate, v, {"open": [1]})
    c.validate(v, {"closed": {"$type": "com.example.other", "y": "y"}})
    c.validate(v, {"closed": {"$type": "com.example.other#main", "y": "y"}})
    fails_at("value/closed", c.validate, v, {"closed": {"$type": "com.example.elsewhere"}})
    c.validate(v, {"anything": {"$type": "com.example.whatever"}})
    fails_at("value/anything", c.validate, v, {"anything": {}})


def test_recursive_definitions(shipped: Catalog) -> None:
    c = catalog_of(
        doc(
            {
                "node": {
                    "type": "object",
                    "properties": {
                        "children": {"type": "array", "items": {"type": "ref", "ref": "#node"}},
                        "n": {"type": "integer"},
                    },
                }
            }
        )
    )
    c.validate("com.example.test#node", {"children": [{"children": [{"n": 1}]}]})
    fails_at(
        "value/children/0/children/0/n",
        c.validate,
        "com.example.test#node",
        {"children": [{"children": [{"n": "1"}]}]},
    )
    # the thread view refers to itself through a union
    post = {
        "uri": POST_URI,
        "cid": CBOR_CID,
        "author": {"did": DID, "handle": "alice.test"},
        "record": {"text": "x"},
        "indexedAt": "2024-01-01T00:00:00Z",
    }
    missing = {"$type": "app.bsky.feed.defs#notFoundPost", "uri": POST_URI, "notFound": True}
    thread = {
        "post": post,
        "parent": {"$type": "app.bsky.feed.defs#threadViewPost", "post": post, "parent": missing},
    }
    shipped.validate("app.bsky.feed.defs#threadViewPost", thread)
    thread["parent"]["parent"] = {**missing, "notFound": False}
    fails_at(
        "value/parent/parent/notFound",
        shipped.validate,
        "app.bsky.feed.defs#threadViewPost",
        thread,
    )


# -- params ---------------------------------------------------------------------------


def test_params_coercion(shipped: Catalog) -> None:
    nsid = "com.atproto.repo.listRecords"
    out = shipped.validate_params(
        nsid,
        {
            "repo": "alice.test",
            "collection": "app.bsky.feed.post",
            "limit": "10",
            "reverse": "true",
            "cursor": "abc",
            "unknown": "dropped",
        },
    )
    assert out == {
        "repo": "alice.test",
        "collection": "app.bsky.feed.post",
        "limit": 10,
        "reverse": True,
        "cursor": "abc",
    }
    out = shipped.validate_params(nsid, {"repo": DID, "collection": "app.bsky.feed.post"})
    assert out == {"repo": DID, "collection": "app.bsky.feed.post", "limit": 50}  # default
    out = shipped.validate_params(
        nsid, {"repo": [DID], "collection": ["app.bsky.feed.post"], "reverse": ["false"]}
    )
    assert out["reverse"] is False
    base = {"repo": DID, "collection": "app.bsky.feed.post"}
    fails_at("params", shipped.validate_params, nsid, {"repo": DID})
    fails_at("params/limit", shipped.validate_params, nsid, {**base, "limit": "0"})
    fails_at("params/limit", shipped.validate_params, nsid, {**base, "limit": "101"})
    for bad in ("1.5", "ten", "", " 5", "+5", "5_0", "0x10", "1e2"):
        fails_at("params/limit", shipped.validate_params, nsid, {**base, "limit": bad})
    fails_at("params/limit", shipped.validate_params, nsid, {**base, "limit": ["1", "2"]})
    for bad in ("yes", "1", "True", ""):
        fails_at("params/reverse", shipped.validate_params, nsid, {**base, "reverse": bad})
    fails_at("params/repo", shipped.validate_params, nsid, {**base, "repo": "not a handle"})
    fails_at("params/collection", shipped.validate_params, nsid, {**base, "collection": "nope"})
    # already-typed values are accepted too
    assert shipped.validate_params(nsid, {**base, "limit": 7, "reverse": True})["limit"] == 7  # type: ignore[dict-item]


def test_params_arrays(shipped: Catalog) -> None:
    nsid = "com.atproto.sync.getBlocks"
    out = shipped.validate_params(nsid, {"did": DID, "cids": [CBOR_CID, BLOB_CID]})
    assert out == {"did": DID, "cids": [CBOR_CID, BLOB_CID]}
    assert shipped.validate_params(nsid, {"did": DID, "cids": CBOR_CID}) == {
        "did": DID,
        "cids": [CBOR_CID],
    }
    fails_at("params/cids/1", shipped.validate_params, nsid, {"did": DID, "cids": [CBOR_CID, "x"]})
    fails_at("params", shipped.validate_params, nsid, {"did": DID, "cids": []})
    c = catalog_of(
        doc(
            {
                "main": {
                    "type": "query",
                    "parameters": {
                        "type": "params",
                        "properties": {
                            "n": {
                                "type": "array",
                                "maxLength": 2,
                                "items": {"type": "integer", "minimum": 0},
                            },
                            "k": {"type": "string", "knownValues": ["a"], "maxLength": 3},
                            "e": {"type": "string", "enum": ["a", "b"]},
                        },
                    },
                }
            }
        )
    )
    assert c.validate_params("com.example.test", {"n": ["1", "2"]}) == {"n": [1, 2]}
    fails_at("params/n", c.validate_params, "com.example.test", {"n": ["1", "2", "3"]})
    fails_at("params/n/0", c.validate_params, "com.example.test", {"n": ["-1"]})
    fails_at("params/n/1", c.validate_params, "com.example.test", {"n": ["1", "x"]})
    assert c.validate_params("com.example.test", {"k": "zzz"}) == {"k": "zzz"}
    fails_at("params/k", c.validate_params, "com.example.test", {"k": "zzzz"})
    fails_at("params/e", c.validate_params, "com.example.test", {"e": "c"})
    assert c.validate_params("com.example.test", {}) == {}


def test_params_unknown_method(shipped: Catalog) -> None:
    with pytest.raises(LexiconError):
        shipped.validate_params("com.example.nothing", {})
    assert shipped.validate_params("com.atproto.server.describeServer", {"x": "1"}) == {}


# -- bodies and messages ---------------------------------------------------------------


def test_input_output(shipped: Catalog) -> None:
    nsid = "com.atproto.repo.createRecord"
    m = shipped.method(nsid)
    assert isinstance(m, MethodDef)
    assert m.type == "procedure" and m.input_encoding == "application/json"
    assert "InvalidSwap" in m.errors
    body = {"repo": DID, "collection": "app.bsky.feed.like", "record": {"anything": 1}}
    assert shipped.validate_input(nsid, body) is body
    fails_at(
        "input", shipped.validate_input, nsid, {"repo": DID, "collection": "app.bsky.feed.like"}
    )
    fails_at("input/repo", shipped.validate_input, nsid, {**body, "repo": "x"})
    fails_at("input/validate", shipped.validate_input, nsid, {**body, "validate": "yes"})
    fails_at("input", shipped.validate_input, nsid, None)
    out = {"uri": POST_URI, "cid": CBOR_CID, "validationStatus": "valid"}
    shipped.validate_output(nsid, out)
    fails_at("output/cid", shipped.validate_output, nsid, {**out, "cid": "nope"})
    # no schema: any body passes; no input at all: only None
    assert shipped.validate_input("com.atproto.repo.uploadBlob", b"\x89PNG") == b"\x89PNG"
    assert shipped.validate_input("com.atproto.server.deleteSession", None) is None
    fails_at("input", shipped.validate_input, "com.atproto.server.deleteSession", {"a": 1})
    assert shipped.validate_output("com.atproto.server.deleteSession", None) is None
    with pytest.raises(LexiconError):
        shipped.validate_input("app.bsky.feed.post", {})


def test_messages(shipped: Catalog) -> None:
    nsid = "com.atproto.sync.subscribeRepos"
    identity = {"seq": 5, "did": DID, "time": "2024-01-01T00:00:00Z"}
    shipped.validate_message(nsid, identity, "#identity")
    shipped.validate_message(nsid, identity, f"{nsid}#identity")
    shipped.validate_message(nsid, {**identity, "$type": f"{nsid}#identity"})
    shipped.validate_message(nsid, identity)  # no type at all: the first matching member
    fails_at("message/did", shipped.validate_message, nsid, {**identity, "did": "x"}, "#identity")
    account = {
        "seq": 1,
        "did": DID,
        "time": "2024-01-01T00:00:00Z",
        "active": False,
        "status": "deactivated",
    }
    shipped.validate_message(nsid, account, "#account")
    fails_at(
        "message/active", shipped.validate_message, nsid, {**account, "active": "no"}, "#account"
    )
    fails_at("message", shipped.validate_message, nsid, {"seq": 1}, "#account")
    assert shipped.validate_message(nsid, {"x": 1}, "#somethingNew") == {"x": 1}  # open union
    with pytest.raises(ValidationError):
        shipped.validate_message(nsid, {"nothing": "matches"})
    with pytest.raises(LexiconError):
        shipped.validate_message("com.atproto.repo.createRecord", identity)
    commit = {
        "seq": 1,
        "rebase": False,
        "tooBig": False,
        "repo": DID,
        "commit": CID.from_str(CBOR_CID),
        "rev": "3l3qo2vuowo2b",
        "since": None,
        "blocks": b"\x00",
        "ops": [
            {
                "action": "create",
                "path": "app.bsky.feed.post/3l3qo2vuowo2b",
                "cid": CID.from_str(CBOR_CID),
            }
        ],
        "blobs": [],
        "time": "2024-01-01T00:00:00Z",
    }
    shipped.validate_message(nsid, commit, "#commit")
    shipped.validate_message(nsid, to_json(commit), "#commit")
    fails_at(
        "message/ops/0",
        shipped.validate_message,
        nsid,
        {**commit, "ops": [{"action": "create"}]},
        "#commit",
    )


def test_validate_any_def(shipped: Catalog) -> None:
    ref = "app.bsky.feed.defs#skeletonFeedPost"
    shipped.validate(ref, {"post": POST_URI})
    shipped.validate(
        ref,
        {
            "post": POST_URI,
            "reason": {"$type": "app.bsky.feed.defs#skeletonReasonRepost", "repost": POST_URI},
        },
    )
    fails_at(
        "value/reason/repost",
        shipped.validate,
        ref,
        {
            "post": POST_URI,
            "reason": {"$type": "app.bsky.feed.defs#skeletonReasonRepost", "repost": "nope"},
        },
    )
    fails_at("value", shipped.validate, ref, {})
    shipped.validate("com.atproto.repo.strongRef", {"uri": POST_URI, "cid": CBOR_CID})
    shipped.validate("com.atproto.repo.strongRef#main", {"uri": POST_URI, "cid": CBOR_CID})
    with pytest.raises(LexiconError):
        shipped.validate("com.example.none#x", {})


# -- error paths ------------------------------------------------------------------------


def test_error_message_names_the_path(shipped: Catalog) -> None:
    post = {
        "$type": "app.bsky.feed.post",
        "text": "hi @alice",
        "createdAt": "2024-01-01T00:00:00Z",
        "facets": [
            {
                "index": {"byteStart": -1, "byteEnd": 9},
                "features": [{"$type": "app.bsky.richtext.facet#mention", "did": DID}],
            }
        ],
    }
    err = fails_at(
        "record/facets/0/index/byteStart", shipped.validate_record, "app.bsky.feed.post", post
    )
    assert str(err) == "record/facets/0/index/byteStart must be >= 0"
    assert err.message == str(err)
    assert err.error == "InvalidRequest" and err.status == 400


# -- both forms agree ----------------------------------------------------------------------


POSTS = [
    {"text": "plain", "createdAt": "2024-01-01T00:00:00Z"},
    {
        "text": "pic",
        "createdAt": "2024-01-01T00:00:00Z",
        "embed": {
            "$type": "app.bsky.embed.images",
            "images": [
                {
                    "alt": "",
                    "image": {
                        "$type": "blob",
                        "ref": {"$link": BLOB_CID},
                        "mimeType": "image/png",
                        "size": 10,
                    },
                }
            ],
        },
    },
    {
        "text": "big pic",
        "createdAt": "2024-01-01T00:00:00Z",
        "embed": {
            "$type": "app.bsky.embed.images",
            "images": [
                {
                    "alt": "",
                    "image": {
                        "$type": "blob",
                        "ref": {"$link": BLOB_CID},
                        "mimeType": "image/png",
                        "size": 10**7,
                    },
                }
            ],
        },
    },
    {"text": "bytes", "createdAt": "2024-01-01T00:00:00Z", "extra": {"$bytes": "YWJj"}},
    {
        "text": "float",
        "createdAt": "2024-01-01T00:00:00Z",
        "facets": [{"index": {"byteStart": 0.0, "byteEnd": 2}, "features": []}],
    },
    {
        "text": "bad link",
        "createdAt": "2024-01-01T00:00:00Z",
        "embed": {
            "$type": "app.bsky.embed.video",
            "video": {
                "$type": "blob",
                "ref": {"$link": CBOR_CID},
                "mimeType": "video/mp4",
                "size": 5,
            },
        },
    },
    {"text": "wrong", "createdAt": "yesterday"},
]


@pytest.mark.parametrize("post", POSTS)
def test_json_and_data_model_forms_agree(shipped: Catalog, post: dict[str, Any]) -> None:
    record = {"$type": "app.bsky.feed.post", **post}

    def outcome(value: Any) -> str | None:
        try:
            shipped.validate_record("app.bsky.feed.post", value)
        except ValidationError as exc:
            return exc.path
        return None

    assert outcome(record) == outcome(from_json(record)) == outcome(to_json(from_json(record)))


# -- fuzzing ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "$type",
                    "$link",
                    "$bytes",
                    "text",
                    "createdAt",
                    "facets",
                    "embed",
                    "index",
                    "byteStart",
                    "features",
                    "images",
                    "image",
                    "ref",
                    "size",
                    "mimeType",
                    "alt",
                    "uri",
                    "cid",
                    "did",
                    "langs",
                    "reply",
                    "root",
                    "parent",
                    "labels",
                    "values",
                    "val",
                    "tags",
                    "record",
                    "media",
                    "external",
                    "title",
                    "description",
                    "video",
                    "aspectRatio",
                    "width",
                    "height",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)

type_names = st.sampled_from(
    [
        "app.bsky.embed.images",
        "app.bsky.embed.external",
        "app.bsky.embed.record",
        "app.bsky.embed.recordWithMedia",
        "app.bsky.embed.video",
        "app.bsky.richtext.facet#mention",
        "app.bsky.richtext.facet#link",
        "app.bsky.richtext.facet#tag",
        "com.atproto.label.defs#selfLabels",
        "blob",
        "app.bsky.feed.post",
    ]
)


@st.composite
def post_like(draw: st.DrawFn) -> dict[str, Any]:
    base: dict[str, Any] = {
        "$type": "app.bsky.feed.post",
        "text": "hello",
        "createdAt": "2024-01-01T00:00:00Z",
    }
    for key in draw(
        st.lists(
            st.sampled_from(
                [
                    "text",
                    "createdAt",
                    "facets",
                    "embed",
                    "langs",
                    "labels",
                    "tags",
                    "reply",
                    "entities",
                ]
            ),
            max_size=4,
        )
    ):
        value = draw(json_values)
        if isinstance(value, dict) and draw(st.booleans()):
            value["$type"] = draw(type_names)
        base[key] = value
    return base


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_fuzz_random_json_only_raises_validation_error(shipped: Catalog, value: Any) -> None:
    try:
        shipped.validate_record("app.bsky.feed.post", value)
    except ValidationError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=post_like())
def test_fuzz_post_like_values(shipped: Catalog, value: dict[str, Any]) -> None:
    def outcome(record: Any) -> str | None:
        try:
            shipped.validate_record("app.bsky.feed.post", record)
        except ValidationError as exc:
            assert exc.path.startswith("record")
            return exc.path
        return None

    as_json = outcome(value)
    # Whenever the JSON form converts to the data model, both forms agree.
    try:
        converted = from_json(json.loads(json.dumps(value)))
    except (DataModelError, ValueError):
        return
    assert outcome(converted) == as_json
