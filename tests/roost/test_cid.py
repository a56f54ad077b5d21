"""CID parsing, formatting and hashing, for both implementations.

Every test taking the ``CID`` fixture runs twice: against the C type from
``roost._cidext`` (id ``c``) and against the pure-Python reference class
``roost.cid.PyCID`` (id ``python``). The ``test_agree_*`` tests feed both the
same random input and compare everything observable, error messages included.
"""

from __future__ import annotations

import array
import copy
import hashlib
import importlib
import os
import pickle
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import roost.cid as cid_module
from roost import cbor
from roost.cid import DAG_CBOR, RAW, SHA2_256, PyCID
from roost.errors import CidError

EMPTY_NODE = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
B32 = "abcdefghijklmnopqrstuvwxyz234567"
PURE_ENV = os.environ.get("ROOST_PURE_PYTHON", "") not in ("", "0")


def _c_type() -> tuple[Any, str]:
    """The C type and, when it is not in use, why."""
    if cid_module._cidext is not None:
        return cid_module._cidext.CID, ""
    if PURE_ENV:
        return None, "ROOST_PURE_PYTHON is set: the C type is not in use"
    try:
        importlib.import_module("roost._cidext")
    except ImportError as exc:  # the optional build failed: the fallback is in use
        return None, f"the C extension roost._cidext is not built ({exc})"
    return None, "roost._cidext imports but roost.cid does not use it"  # pragma: no cover


CCID, C_MISSING = _c_type()
EXT: Any = cid_module._cidext
needs_c = pytest.mark.skipif(CCID is None, reason=C_MISSING)


@pytest.fixture(
    scope="module",
    params=[pytest.param("c", marks=needs_c), pytest.param("python")],
)
def CID(request: pytest.FixtureRequest) -> Any:
    return CCID if request.param == "c" else PyCID


# -- behaviour (each test runs against both implementations) ------------------


def test_raw_cid_of_hello_world(CID: Any) -> None:
    cid = CID.for_raw(b"hello world")
    assert str(cid) == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    assert cid.codec == RAW and cid.hash_code == SHA2_256 and cid.is_raw and cid.is_blessed
    assert type(cid) is CID and cid.version == 1


def test_empty_mst_node_cid(CID: Any) -> None:
    cid = CID.for_cbor({"e": [], "l": None})
    assert str(cid) == EMPTY_NODE and cid.encode() == EMPTY_NODE
    assert cid.codec == DAG_CBOR and cid.is_dag_cbor and not cid.is_raw
    assert cid.matches(bytes.fromhex("a2616580616cf6"))
    assert not cid.matches(b"other")
    assert CID.for_cbor_bytes(bytes.fromhex("a2616580616cf6")) == cid


def test_string_round_trip_and_equality(CID: Any) -> None:
    cid = CID.parse(EMPTY_NODE)
    assert str(cid) == EMPTY_NODE and len(cid.bytes) == 36
    assert CID.parse(cid.bytes) == cid
    assert CID.parse(cid) is cid
    assert hash(CID.from_bytes(cid.bytes)) == hash(cid) == hash(cid.bytes)
    assert {cid: 1}[CID.from_str(EMPTY_NODE)] == 1
    assert cid != EMPTY_NODE and cid != cid.bytes
    assert not (cid == EMPTY_NODE) and not (cid != CID.from_bytes(cid.bytes))  # noqa: SIM201,SIM202
    assert repr(cid) == f"CID({EMPTY_NODE!r})"
    assert cid.digest == cid.bytes[4:]
    assert bytes(cid) is cid.bytes
    assert CID(data=cid.bytes) == CID.from_bytes(data=cid.bytes) == CID.from_str(text=EMPTY_NODE)


def test_ordering_is_bytewise(CID: Any) -> None:
    a, b = CID.for_raw(b"a"), CID.for_raw(b"b")
    assert sorted([a, b]) == sorted([b, a])
    assert (a < b) == (a.bytes < b.bytes)
    assert (a <= b, a > b, a >= b) == (a.bytes <= b.bytes, a.bytes > b.bytes, a.bytes >= b.bytes)
    short = CID.from_bytes(bytes([1, 0x55, 0x12, 3, 1, 2, 3]))
    longer = CID.from_bytes(bytes([1, 0x55, 0x12, 4, 1, 2, 3, 0]))
    assert short < longer and longer > short and short <= short  # noqa: PLR0124


def test_ordering_against_other_types(CID: Any) -> None:
    cid = CID.parse(EMPTY_NODE)
    for other in (5, EMPTY_NODE, cid.bytes, None):
        with pytest.raises(TypeError):
            cid < other  # noqa: B015
        with pytest.raises(TypeError):
            cid >= other  # noqa: B015
        assert cid != other and not cid == other  # noqa: SIM201


def test_immutable_and_copyable(CID: Any) -> None:
    cid = CID.parse(EMPTY_NODE)
    with pytest.raises(AttributeError):
        cid._bytes = b""
    with pytest.raises(AttributeError):
        cid.anything = 1
    with pytest.raises(AttributeError):
        del cid._bytes
    with pytest.raises(AttributeError):
        cid.bytes = b""
    assert copy.copy(cid) is cid and copy.deepcopy(cid) is cid
    assert copy.deepcopy({"k": [cid]})["k"][0] is cid
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(cid, protocol))
        assert again == cid and type(again) is CID
    with pytest.raises(TypeError):
        weakref.ref(cid)


def test_non_blessed_cidv1_is_kept(CID: Any) -> None:
    # CIDv1, dag-pb codec (0x70), sha2-512 (0x13), 64-byte digest
    raw = bytes([1, 0x70, 0x13, 0x40]) + bytes(range(64))
    cid = CID.from_bytes(raw)
    assert not cid.is_blessed and cid.codec == 0x70 and cid.hash_code == 0x13
    assert cid.digest == bytes(range(64)) and not cid.matches(b"")
    assert CID.from_str(str(cid)).bytes == raw
    # a codec needing a two-byte varint
    raw2 = bytes([1, 0x80, 0x01, 0x12, 0x20]) + bytes(32)
    assert CID.from_bytes(raw2).codec == 0x80
    assert not CID.from_bytes(raw2).is_dag_cbor and not CID.from_bytes(raw2).matches(b"")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "b",
        "bafy",
        EMPTY_NODE.upper(),
        "B" + EMPTY_NODE[1:],
        EMPTY_NODE[:10] + "A" + EMPTY_NODE[11:],  # one upper-case letter
        EMPTY_NODE + "a",
        EMPTY_NODE[:-1],
        EMPTY_NODE + "=",
        EMPTY_NODE[:-1] + "b",  # non-zero trailing bits
        "z" + EMPTY_NODE[1:],
        "QmQg1v4o9xdT3Q14wh4S7dxZkDjyZ9ssFzFzyep1YrVJBY",
        " " + EMPTY_NODE,
        EMPTY_NODE + "\n",
        EMPTY_NODE[:-1] + "1",
        EMPTY_NODE[:-1] + "\x00",
        "bé",
        "b\ud800",
        "b" + "a" * 10_000_000,
        "b" + "7" * 1_000_001,
    ],
)
def test_bad_strings(CID: Any, text: str) -> None:
    with pytest.raises(CidError):
        CID.from_str(text)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x12\x20" + bytes(32),  # CIDv0
        b"\x02\x71\x12\x20" + bytes(32),  # version 2
        b"\x01\x71\x12\x20" + bytes(31),  # short digest
        b"\x01\x71\x12\x20" + bytes(33),  # long digest
        b"\x01\x71\x12",  # no length
        b"\x01\xf1",  # truncated varint
        b"\x01\x80\x00\x12\x20" + bytes(32),  # non-minimal varint
        b"\x01" + b"\xff" * 9 + b"\x01",  # varint too long
        b"\xff" * 8 + b"\x7f",  # huge version
        b"\x01\x71\x12\x7f" + bytes(200),  # over the size limit
        bytes(10_000_000),
    ],
)
def test_bad_binary(CID: Any, raw: bytes) -> None:
    with pytest.raises(CidError):
        CID.from_bytes(raw)
    with pytest.raises(CidError):
        CID(raw)


def test_wrong_types(CID: Any) -> None:
    with pytest.raises(CidError):
        CID.parse(5)
    with pytest.raises(CidError):
        CID.from_str(b"bafy")
    with pytest.raises(CidError):
        CID("bafy")
    with pytest.raises(TypeError):
        CID()
    with pytest.raises(TypeError):
        CID.from_str(EMPTY_NODE, EMPTY_NODE)
    with pytest.raises(TypeError):
        CID.for_raw()
    with pytest.raises(TypeError):
        CID.for_raw(block=b"")  # the argument is ``data``
    with pytest.raises(TypeError):
        CID.for_raw("text")  # hashlib: strings must be encoded


def test_buffers_are_accepted(CID: Any) -> None:
    cid = CID.parse(EMPTY_NODE)
    raw = cid.bytes
    strided = memoryview(bytes(b for pair in zip(raw, bytes(36)) for b in pair))[::2]
    for buf in (bytearray(raw), memoryview(raw), strided, memoryview(array.array("B", raw))):
        assert CID(buf) == CID.from_bytes(buf) == CID.parse(buf) == cid
        assert type(CID(buf).bytes) is bytes
    block = bytes.fromhex("a2616580616cf6")
    assert CID.for_cbor_bytes(bytearray(block)) == CID.for_cbor_bytes(memoryview(block)) == cid
    assert cid.matches(bytearray(block)) and cid.matches(memoryview(block))


def test_subclasses_keep_their_type(CID: Any) -> None:
    class Sub(CID):  # type: ignore[misc]
        pass

    cid = CID.parse(EMPTY_NODE)
    made = [
        Sub(cid.bytes),
        Sub.from_bytes(cid.bytes),
        Sub.from_str(EMPTY_NODE),
        Sub.parse(EMPTY_NODE),
        Sub.parse(bytearray(cid.bytes)),
        Sub.for_cbor_bytes(bytes.fromhex("a2616580616cf6")),
        Sub.for_cbor({"e": [], "l": None}),
    ]
    for sub in made:
        assert type(sub) is Sub and str(sub) == EMPTY_NODE
        assert sub == cid and cid == sub and hash(sub) == hash(cid)
    assert Sub.parse(cid) is cid
    assert type(Sub.for_raw(b"x")) is Sub
    with pytest.raises(AttributeError):
        made[0].x = 1


@given(st.binary(max_size=80))
@settings(max_examples=1000)
def test_random_binary_only_typed_errors(CID: Any, raw: bytes) -> None:
    try:
        cid = CID.from_bytes(raw)
    except CidError:
        return
    assert CID.from_str(str(cid)) == cid


@given(st.text(max_size=80))
@settings(max_examples=1000)
def test_random_text_only_typed_errors(CID: Any, text: str) -> None:
    try:
        cid = CID.from_str(text)
    except CidError:
        return
    assert str(cid) == text


@given(st.binary(min_size=0, max_size=100))
@settings(max_examples=300)
def test_format_parse_round_trip(CID: Any, data: bytes) -> None:
    for cid in (CID.for_raw(data), CID.for_cbor_bytes(data)):
        text = str(CID.from_bytes(cid.bytes))
        assert text.startswith("bafkrei" if cid.is_raw else "bafyrei") and len(text) == 59
        assert CID.from_str(text) == cid


def test_large_blocks_hash_like_hashlib(CID: Any) -> None:
    for size in (8191, 8192, 8193, 3_000_000):
        block = bytes(range(256)) * (size // 256) + bytes(size % 256)
        digest = hashlib.sha256(block).digest()
        assert CID.for_raw(block).digest == CID.for_cbor_bytes(block).digest == digest
        assert CID.for_raw(block).matches(block)


# -- the implementation in use --------------------------------------------------


def test_active_implementation() -> None:
    if CCID is not None:
        assert cid_module.CID is CCID and cid_module._cid_from_link is EXT.cid_from_link
    else:
        assert cid_module.CID is PyCID and cid_module._cid_from_link is cid_module._py_cid_from_link
    block = cbor.encode({"a": cid_module.CID.parse(EMPTY_NODE), "b": [cid_module.CID.for_raw(b"")]})
    value = cbor.decode(block)
    assert type(value["a"]) is cid_module.CID and type(value["b"][0]) is cid_module.CID
    assert str(value["a"]) == EMPTY_NODE and cbor.encode(value) == block


def test_pure_python_env_var() -> None:
    """ROOST_PURE_PYTHON=1 selects the Python class; pickles cross over by name."""
    pickled = pickle.dumps([cid_module.CID.parse(EMPTY_NODE), PyCID.parse(EMPTY_NODE)])
    script = (
        "import pickle, sys\n"
        "import roost.cid as m\n"
        "from roost import cbor\n"
        "assert m.CID is m.PyCID and m._cidext is None\n"
        "assert m.CID.__qualname__ == 'CID'\n"
        "assert type(cbor.decode(cbor.encode(m.CID.for_raw(b'x')))) is m.CID\n"
        "a, b = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
        "assert type(a) is type(b) is m.CID and a == b\n"
        "print(str(a))\n"
    )
    env = {**os.environ, "ROOST_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script, pickled.hex()],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == EMPTY_NODE


def test_pure_python_base32_fallback_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = [PyCID.for_raw(bytes([i])) for i in range(50)] + [PyCID.parse(EMPTY_NODE)]
    expected = [str(PyCID.from_bytes(c.bytes)) for c in samples]
    monkeypatch.setattr(cid_module, "_c_decode", None)
    monkeypatch.setattr(cid_module, "_c_encode", None)
    assert [str(PyCID.from_bytes(c.bytes)) for c in samples] == expected
    assert [PyCID.from_str(t) for t in expected] == samples
    for bad in ("", "b", EMPTY_NODE.upper(), EMPTY_NODE[:-1] + "b", EMPTY_NODE + "=", "bé"):
        with pytest.raises(CidError):
            PyCID.from_str(bad)


# -- the two implementations agree on random input --------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _outcome(fn: Callable[[Any], Any], arg: Any) -> tuple[Any, ...]:
    """Everything observable about ``fn(arg)``: the CID's fields, or the error."""
    try:
        cid = fn(arg)
    except Exception as exc:  # noqa: BLE001 - the type and message are compared
        return ("error", type(exc), str(exc))
    return (
        "ok",
        cid.bytes,
        str(cid),
        repr(cid),
        hash(cid),
        cid.codec,
        cid.hash_code,
        cid.digest,
        cid.is_blessed,
        cid.is_dag_cbor,
        cid.is_raw,
        cid.version,
        cid.matches(b""),
    )


@st.composite
def cid_like_bytes(draw: st.DrawFn) -> bytes:
    """Mostly well-formed CIDs, some with one field off."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=160))
    if kind == 1:  # blessed prefix, random digest, sometimes mutated
        buf = bytearray(draw(st.sampled_from([b"\x01\x71\x12\x20", b"\x01\x55\x12\x20"])))
        buf += draw(st.binary(min_size=30, max_size=34))
        if draw(st.booleans()):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        return bytes(buf)
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 0x12, 2**63 - 1]))
    codec = draw(st.one_of(st.integers(0, 300), st.integers(0, 2**63 - 1)))
    hash_code = draw(st.one_of(st.integers(0, 300), st.integers(0, 2**63 - 1)))
    digest = draw(st.binary(max_size=100))
    declared = max(0, len(digest) + draw(st.sampled_from([0, 0, 0, -1, 1])))
    raw = _varint(version) + _varint(codec) + _varint(hash_code) + _varint(declared) + digest
    if kind == 5:  # a non-minimal or overlong varint somewhere
        at = draw(st.integers(0, 3))
        parts = [_varint(version), _varint(codec), _varint(hash_code), _varint(declared)]
        parts[at] = bytes(b | 0x80 for b in parts[at]) + draw(
            st.sampled_from([b"\x00", b"\x80" * 9])
        )
        raw = b"".join(parts) + digest
    return raw


@st.composite
def cid_like_strings(draw: st.DrawFn) -> str:
    """Random text, random base32 of any length, and valid CID strings with one edit."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(max_size=100))
    if kind == 1:
        return "b" + draw(st.text(alphabet=B32, max_size=180))
    text = PyCID.from_bytes(draw(valid_cid_bytes())).encode()
    if kind == 2:
        return text
    chars = list(text)
    at = draw(st.integers(0, len(chars)))
    edit = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "upper"]))
    new = draw(st.sampled_from(B32 + "AZ=01890 \x00éB\u212a"))
    if edit == "replace" and at < len(chars):
        chars[at] = new
    elif edit == "insert":
        chars.insert(at, new)
    elif edit == "delete" and at < len(chars):
        del chars[at]
    elif edit == "truncate":
        del chars[at:]
    elif edit == "upper":
        chars[at:] = [c.upper() for c in chars[at:]]
    return "".join(chars)


@st.composite
def valid_cid_bytes(draw: st.DrawFn) -> bytes:
    """Well-formed CIDs: blessed ones, and others with short, clashing digests."""
    if draw(st.booleans()):
        prefix = draw(st.sampled_from([b"\x01\x71\x12\x20", b"\x01\x55\x12\x20"]))
        return prefix + draw(st.binary(min_size=32, max_size=32))
    codec = draw(st.sampled_from([0x55, 0x71, 0x70, 0x80, 2**63 - 1]))
    hash_code = draw(st.sampled_from([0x12, 0x13, 0, 300]))
    digest = draw(
        st.one_of(
            st.binary(max_size=60), st.lists(st.sampled_from([0, 1, 255]), max_size=3).map(bytes)
        )
    )
    return b"\x01" + _varint(codec) + _varint(hash_code) + _varint(len(digest)) + digest


@needs_c
@given(cid_like_bytes())
@settings(max_examples=1500)
def test_agree_on_random_binary(raw: bytes) -> None:
    expected = _outcome(PyCID.from_bytes, raw)
    assert _outcome(CCID.from_bytes, raw) == expected
    assert _outcome(CCID, raw) == _outcome(PyCID, raw) == expected
    assert _outcome(CCID.parse, bytearray(raw)) == expected
    assert _outcome(EXT.cid_from_link, raw) == _outcome(cid_module._py_cid_from_link, raw)
    if expected[0] == "ok":
        assert _outcome(CCID.from_str, expected[2]) == expected


@needs_c
@given(cid_like_strings())
@settings(max_examples=1500)
def test_agree_on_random_strings(text: str) -> None:
    expected = _outcome(PyCID.from_str, text)
    assert _outcome(CCID.from_str, text) == expected
    assert _outcome(CCID.parse, text) == _outcome(PyCID.parse, text) == expected


@needs_c
@given(st.lists(valid_cid_bytes(), min_size=2, max_size=6))
@settings(max_examples=300)
def test_agree_on_comparisons(raws: list[bytes]) -> None:
    cs = [CCID.from_bytes(r) for r in raws]
    ps = [PyCID.from_bytes(r) for r in raws]
    for i in range(len(raws)):
        for j in range(len(raws)):
            a, b, x, y = cs[i], cs[j], ps[i], ps[j]
            assert (a == b, a != b, a < b, a <= b, a > b, a >= b) == (
                x == y,
                x != y,
                x < y,
                x <= y,
                x > y,
                x >= y,
            )
            assert (hash(a) == hash(b)) == (hash(x) == hash(y))
            assert a != x and not a == x  # noqa: SIM201 - different types are never equal
    assert [c.bytes for c in sorted(cs)] == [p.bytes for p in sorted(ps)]


@needs_c
@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_agree_on_hashing(block: bytes) -> None:
    for maker in ("for_raw", "for_cbor_bytes"):
        expected = _outcome(getattr(PyCID, maker), block)
        assert _outcome(getattr(CCID, maker), block) == expected
        assert CCID.from_bytes(expected[1]).matches(block)
        assert not CCID.from_bytes(expected[1]).matches(block + b"x")


def _odd_inputs() -> Iterator[Any]:
    raw = PyCID.parse(EMPTY_NODE).bytes

    class MyBytes(bytes):
        pass

    class MyStr(str):
        pass

    class MyByteArray(bytearray):
        def __bytes__(self) -> bytes:
            return raw

    released = memoryview(raw)
    released.release()
    yield from (None, 5, 1.5, [1], {}, object(), PyCID, EMPTY_NODE, MyStr(EMPTY_NODE))
    yield from (raw, MyBytes(raw), MyByteArray(b"x"), released, bytearray(raw), b"")
    yield from (memoryview(array.array("H", raw)), memoryview(raw).cast("c"), bytearray())


def _result(fn: Callable[[Any], Any], arg: Any) -> tuple[Any, ...]:
    try:
        return ("ok", fn(arg))
    except Exception as exc:  # noqa: BLE001 - the type and message are compared
        return ("error", type(exc), str(exc))


@needs_c
def test_agree_on_odd_inputs() -> None:
    c_cid, py_cid = CCID.parse(EMPTY_NODE), PyCID.parse(EMPTY_NODE)
    c_other, py_other = (
        CCID.from_bytes(bytes([1, 0x70, 0x13, 0])),
        PyCID.from_bytes(bytes([1, 0x70, 0x13, 0])),
    )
    for value in _odd_inputs():
        for name in ("from_bytes", "from_str", "parse", "for_raw", "for_cbor_bytes"):
            expected = _outcome(getattr(PyCID, name), value)
            assert _outcome(getattr(CCID, name), value) == expected, (name, value)
        assert _outcome(CCID, value) == _outcome(PyCID, value), value
        assert _result(c_cid.matches, value) == _result(py_cid.matches, value), value
        assert _result(c_other.matches, value) == _result(py_other.matches, value) == ("ok", False)


# -- the C extension only ----------------------------------------------------------


@needs_c
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_every_sha256_path(mode: int) -> None:
    ext = EXT
    if mode == 2 and not ext.HAVE_SHA_NI:
        pytest.skip("this CPU has no SHA extensions")
    sizes = [0, 1, 36, 55, 56, 63, 64, 65, 119, 120, 127, 128, 150, 1000, 8191, 8192, 8193, 70000]
    old = ext._set_sha256_mode(mode)
    try:
        for size in sizes:
            block = hashlib.sha512(str(size).encode()).digest() * (size // 64 + 1)
            block = block[:size]
            digest = hashlib.sha256(block).digest()
            if mode in (1, 2):
                assert ext._sha256(block, mode) == digest, size
            assert CCID.for_cbor_bytes(block).digest == digest, size
            assert CCID.for_raw(block).digest == digest, size
            assert CCID.for_raw(block).matches(block) and not CCID.for_raw(block).matches(
                block + b"!"
            )
    finally:
        ext._set_sha256_mode(old)


@needs_c
@given(st.binary(max_size=700), st.sampled_from([0, 1, 2]))
@settings(max_examples=500)
def test_sha256_matches_hashlib(block: bytes, mode: int) -> None:
    ext = EXT
    if mode == 2 and not ext.HAVE_SHA_NI:
        mode = 1
    assert ext._sha256(block, mode) == hashlib.sha256(block).digest()


@needs_c
def test_no_reference_leaks() -> None:
    raw = PyCID.for_raw(b"leak").bytes
    text = PyCID.from_bytes(raw).encode()
    bad_raw, bad_text = raw[:-1], text[:-1]
    block = b"x" * 150
    counts = [sys.getrefcount(o) for o in (raw, text, bad_raw, bad_text, block)]
    for _ in range(2000):
        cid = CCID.from_bytes(raw)
        str(cid), repr(cid), cid.digest, cid.codec, hash(cid), cid.__reduce__()
        cid = CCID.from_str(text)
        cid = EXT.cid_from_link(raw)
        cid = CCID.for_cbor_bytes(block)
        cid.matches(block)
        for fn, arg in ((CCID.from_bytes, bad_raw), (CCID.from_str, bad_text)):
            try:
                fn(arg)
            except CidError:
                pass
    del cid, fn, arg
    assert [sys.getrefcount(o) for o in (raw, text, bad_raw, bad_text, block)] == counts
