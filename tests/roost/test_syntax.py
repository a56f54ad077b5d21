"""roost.syntax against every interop syntax vector, plus properties and value types."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost import syntax
from roost.errors import (
    InvalidAtIdentifier,
    InvalidAtUri,
    InvalidCidString,
    InvalidDatetime,
    InvalidDid,
    InvalidHandle,
    InvalidLanguage,
    InvalidNsid,
    InvalidRecordKey,
    InvalidSyntax,
    InvalidTid,
    InvalidUri,
)
from roost.syntax import (
    AtUri,
    Datetime,
    Did,
    Handle,
    Language,
    Nsid,
    RecordKey,
    Tid,
)
from tests.interop import INTEROP_DIR, read_cases

SYNTAX_DIR = INTEROP_DIR / "syntax"

#: file-name prefix -> (format name used in function names, error class)
KINDS: dict[str, tuple[str, type[InvalidSyntax]]] = {
    "atidentifier": ("at_identifier", InvalidAtIdentifier),
    "aturi": ("at_uri", InvalidAtUri),
    "cid": ("cid_string", InvalidCidString),
    "datetime": ("datetime", InvalidDatetime),
    "did": ("did", InvalidDid),
    "handle": ("handle", InvalidHandle),
    "language": ("language", InvalidLanguage),
    "nsid": ("nsid", InvalidNsid),
    "recordkey": ("record_key", InvalidRecordKey),
    "tid": ("tid", InvalidTid),
    "uri": ("uri", InvalidUri),
}
FORMATS = {fmt: err for fmt, err in KINDS.values()}
#: formats with a parse_* function
PARSED = {"at_identifier", "at_uri", "datetime", "did", "handle", "language", "nsid",
          "record_key", "tid"}
EXPECTATIONS = ("syntax_valid", "syntax_invalid", "parse_invalid")


def syntax_files() -> list[Path]:
    return sorted(SYNTAX_DIR.glob("*.txt"))


def split_stem(stem: str) -> tuple[str, str]:
    prefix, _, expectation = stem.partition("_")
    return prefix, expectation


def collect_cases() -> list[Any]:
    params = []
    for path in syntax_files():
        for lineno, case in read_cases(f"syntax/{path.name}"):
            params.append(pytest.param(path.stem, case, id=f"{path.stem}:{lineno}"))
    return params


CASES = collect_cases()


def fn(prefix: str, fmt: str) -> Callable[..., Any]:
    return getattr(syntax, f"{prefix}_{fmt}")  # type: ignore[no-any-return]


def canonical(fmt: str, case: str) -> str:
    """The str() of a parsed value: handles (also as authorities) lower-cased."""
    if fmt == "handle" or (fmt == "at_identifier" and not case.startswith("did:")):
        return case.lower()
    if fmt == "at_uri" and not case.startswith("at://did:"):
        authority, sep, rest = case[5:].partition("/")
        return "at://" + authority.lower() + sep + rest
    return case


# -- interop vectors ----------------------------------------------------------


def test_every_syntax_file_is_recognised() -> None:
    files = syntax_files()
    assert len(files) >= 24, f"interop syntax vectors missing under {SYNTAX_DIR}"
    for path in files:
        prefix, expectation = split_stem(path.stem)
        assert prefix in KINDS, f"no validator mapped for {path.name}"
        assert expectation in EXPECTATIONS, path.name
        assert read_cases(path), f"{path.name} has no cases"


def test_cases_keep_surrounding_spaces() -> None:
    handles = [case for _, case in read_cases("syntax/handle_syntax_invalid.txt")]
    assert " john.test" in handles and "john.test " in handles


@pytest.mark.parametrize(("stem", "case"), CASES)
def test_interop_vector(stem: str, case: str) -> None:
    prefix, expectation = split_stem(stem)
    fmt, error = KINDS[prefix]
    is_valid, ensure = fn("is_valid", fmt), fn("ensure", fmt)
    parse = fn("parse", fmt) if fmt in PARSED else None
    if expectation == "syntax_valid":
        assert is_valid(case) is True
        assert ensure(case) == canonical(fmt, case)
        if parse is not None:
            assert str(parse(case)) == canonical(fmt, case)
    else:
        assert is_valid(case) is False
        with pytest.raises(error) as info:
            ensure(case)
        assert type(info.value) is error
        assert info.value.message and info.value.value == case[:200] + (
            "..." if len(case) > 200 else "")
        if parse is not None:
            with pytest.raises(error):
                parse(case)


# Cases from the specification digests and from newer upstream vector files
# that this snapshot lacks.
EXTRA_CASES = [
    ("did", "did:plc:ewvi7nxzyoun6zhxrhs64oiz", True),
    ("did", "did:web:user.example.com", True),
    ("did", "did:method::::val", True),
    ("did", "did:METHOD:val", False),
    ("did", "did:method:val?two", False),
    ("did", "did:method:" + "v" * (2048 - 11), True),
    ("did", "did:method:" + "v" * (2049 - 11), False),
    ("did", "did:method:val\n", False),
    ("handle", "8.cn", True),
    ("handle", "name.t--t", True),
    ("handle", "xn--bcher-.tld", False),
    ("handle", "cn.8", False),
    ("handle", "www.masełkowski.pl.com", False),
    ("handle", "name.org.", False),
    ("handle", "john.test\n", False),
    ("handle", "a." * 125 + "com", True),  # 253 chars
    ("handle", "a." * 126 + "co", False),  # 254 chars
    ("handle", "shoooort" + ".loooooooooooooooooooooooooong" * 8 + ".test", True),
    ("handle", "shoooort" + ".loooooooooooooooooooooooooong" * 9 + ".test", False),
    ("handle", "john.te\u212at", False),  # Kelvin sign folds to k in IGNORECASE regexes
    ("nsid", "net.users.bob.ping", True),
    ("nsid", "a-0.b-1.c", True),
    ("nsid", "com.example.3", False),
    ("nsid", "com.example.foo\n", False),
    ("nsid", "com." + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".x", True),
    ("nsid", "com." + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".x", False),
    ("record_key", "~1.2-3_", True),
    ("record_key", "..", False),
    ("record_key", "", False),
    ("record_key", "any+space", False),
    ("record_key", '"quote"', False),
    ("tid", "3JZFCIJPJ2Z2A", False),
    ("tid", "kjzfcijpj2z2a", False),
    ("tid", "3zzzzzzzzzzzz", True),
    ("tid", "jzzzzzzzzzzzz", True),
    ("tid", "222", False),
    ("at_uri", "at://did:plc:asdf123/com.atproto.feed.post/a", True),
    ("at_uri", "at://did:web:example.com/io.nsid.someFunc/record-key", True),
    ("at_uri", "at://did:web:example.com/io.nsid.someFunc/~", True),
    ("at_uri", "at://Alice.Example.com/app.bsky.feed.post/3k5nobkf2w72g", True),
    ("at_uri", "at://foo.com/example/123", False),
    ("at_uri", "at://example.com:3000", False),
    ("at_uri", "at://user:pass@example.com", False),
    ("at_uri", "at://@example.com", False),
    ("at_uri", "at://did:plc:asdf123/com.atproto.feed.post?q=1", False),
    ("at_uri", "at://did:plc:asdf123/com.atproto.feed.post/..", False),
    ("at_uri", "at://did:plc:asdf123/com.atproto.feed.post/" + "o" * 513, False),
    ("at_uri", "at://did:plc:asdf123/com.atproto.feed.post/" + "o" * 8200, False),
    ("datetime", "1985-13-12T23:20:50.123Z", False),
    ("datetime", "1985-04-12T23:20:61.123Z", False),
    ("datetime", "1985-04-12T23:20:60Z", False),
    ("datetime", "1985-04-31T23:20:50Z", False),
    ("datetime", "2000-02-29T00:00:00Z", True),
    ("datetime", "2024-02-29T00:00:00Z", True),
    ("datetime", "1900-02-29T00:00:00Z", False),
    ("datetime", "2023-02-29T00:00:00Z", False),
    ("datetime", "0000-01-01T00:00:00Z", False),
    ("datetime", "0001-01-01T00:00:00+00:01", False),
    ("datetime", "0001-01-01T00:01:00+00:01", True),
    ("datetime", "0001-01-01T00:00:00-23:59", True),
    ("datetime", "9999-12-31T23:59:59-23:59", True),
    ("datetime", "1985-04-12T23:20:50+24:00", False),
    ("datetime", "1985-04-12T23:20:50+05:60", False),
    ("datetime", "1985-04-12 23:20:50Z", False),
    ("datetime", "1985-04-12T23:20:50Z\n", False),
    ("datetime", "1985-04-12T23:20:50." + "1" * 43 + "Z", True),  # 64 chars
    ("datetime", "1985-04-12T23:20:50." + "1" * 44 + "Z", False),  # 65 chars
    ("datetime", "1985-04-12T23:20:50.123Z", True),
    ("language", "123", False),
    ("language", "ja-", False),
    ("language", "en-a-foo-a-bar", False),
    ("language", "de-419-DE", False),
    ("language", "pt-BR", True),
    ("language", "zh-Hant", True),
    ("language", "zh-yue-HK", True),
    ("language", "en-GB-oed", True),
    ("language", "x-fr-CH", True),
    ("language", "X-private", True),
    ("language", "en-GB-boont-r-extended-sequence-x-private", True),
    ("language", "sl-IT-nedis", True),
    ("language", "mn-Cyrl-MN", True),
    ("language", "de-Latn-DE-1996-x-foo", True),
    ("language", "en-x-a-b-a", True),  # private-use subtags may repeat
    ("language", "en-u-ca-ca", True),  # only singletons must be unique
    ("language", "I-DEFAULT", False),
    ("language", "en-", False),
    ("language", "en--us", False),
    ("language", "en-x", False),
    ("language", "en-a", False),
    ("language", "en-toolongsubtag", False),
    ("language", "en\n", False),
    ("uri", "https://example.com/" + "x" * 5000, True),
    ("uri", "https://example.com/" + "x" * 8200, False),
    ("uri", "mailto:alice@example.com", True),
    ("uri", "file:///etc/hosts", True),
    ("uri", "urn:isbn:0451450523", True),
    ("uri", "https://example.com/\x7f", False),
    ("uri", "https://exämple.com", False),
    ("uri", "https://example.com\n", False),
    ("cid_string", "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm", True),
    ("cid_string", "bafkreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm", True),
    ("cid_string", "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n", False),
    ("cid_string", "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hp1", False),
    ("cid_string", "b" * 257, False),
    ("cid_string", "bafyrei\n", False),
    ("at_identifier", "did:plc:ewvi7nxzyoun6zhxrhs64oiz", True),
    ("at_identifier", "Alice.Test", True),
    ("at_identifier", "@alice.test", False),
    ("at_identifier", "", False),
]


@pytest.mark.parametrize(
    ("fmt", "case", "valid"),
    EXTRA_CASES,
    ids=[f"{fmt}-{i}" for i, (fmt, _, _) in enumerate(EXTRA_CASES)],
)
def test_extra_case(fmt: str, case: str, valid: bool) -> None:
    assert fn("is_valid", fmt)(case) is valid
    if valid:
        assert fn("ensure", fmt)(case) == canonical(fmt, case)
    else:
        with pytest.raises(FORMATS[fmt]):
            fn("ensure", fmt)(case)


# -- properties ---------------------------------------------------------------

VALID_SAMPLES = sorted(
    {
        case
        for path in syntax_files()
        if path.stem.endswith("_syntax_valid")
        for _, case in read_cases(path)
    }
    | {"did:plc:ewvi7nxzyoun6zhxrhs64oiz", "at://did:plc:x/app.bsky.feed.post/3k5nobkf2w72g",
       "en-GB-boont-r-extended-sequence-x-private", "i-default", "2024-02-29T00:00:00+05:30"}
)
ODD_CHARS = list("./:-_~%@#?*+= \t\n\r\x00\x7fTtZz09xX") + ["ü", "\u212a", "💩", "\u0130"]


def check_everywhere(s: object) -> None:
    """Every validator gives a bool/value or its own typed error, consistently."""
    for fmt, error in FORMATS.items():
        ok = fn("is_valid", fmt)(s)
        assert ok is True or ok is False
        try:
            out = fn("ensure", fmt)(s)
        except error as exc:
            assert not ok, (fmt, s)
            assert type(exc) is error and exc.message
            assert not exc.message.startswith("invalid "), (fmt, s, exc.message)
        else:
            assert ok and isinstance(out, str), (fmt, s)
        if fmt in PARSED:
            try:
                value = fn("parse", fmt)(s)
            except error:
                assert not ok, (fmt, s)
            else:
                assert ok, (fmt, s)
                assert str(value) == out
                assert fn("parse", fmt)(str(value)) == value
                assert fn("parse", fmt)(value) is value


@st.composite
def mutated(draw: st.DrawFn) -> str:
    s = draw(st.sampled_from(VALID_SAMPLES))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("insert", "delete", "replace")))
        i = draw(st.integers(0, len(s)))
        c = draw(st.sampled_from(ODD_CHARS) | st.characters(max_codepoint=0x7F) | st.characters())
        if op == "insert":
            s = s[:i] + c + s[i:]
        elif op == "delete":
            s = s[:i] + s[i + 1 :]
        else:
            s = s[:i] + c + s[i + 1 :]
    return s


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_mutations_of_valid_strings_never_crash(s: str) -> None:
    check_everywhere(s)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_random_text_never_crashes(s: str) -> None:
    check_everywhere(s)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdzAZ0129.:-_~%@/#? TZ+x", max_size=40))
def test_random_identifier_like_text_never_crashes(s: str) -> None:
    check_everywhere(s)


@pytest.mark.parametrize(
    "value", [None, 1, 1.5, b"did:plc:abc", ["a.b"], object(), RecordKey("self")],
    ids=lambda v: type(v).__name__,
)
def test_non_strings_are_invalid(value: object) -> None:
    for fmt, error in FORMATS.items():
        assert fn("is_valid", fmt)(value) is False
        with pytest.raises(error):
            fn("ensure", fmt)(value)
        if fmt in PARSED and fmt != "record_key":
            with pytest.raises(error):
                fn("parse", fmt)(value)


def test_all_is_honest() -> None:
    for name in syntax.__all__:
        assert hasattr(syntax, name), name
    public = {n for n in dir(syntax) if n.startswith(("is_valid_", "ensure_", "parse_"))}
    assert public <= set(syntax.__all__)
    for fmt in FORMATS:
        assert {f"is_valid_{fmt}", f"ensure_{fmt}"} <= set(syntax.__all__)


# -- value types --------------------------------------------------------------


def test_did_parts_and_identity() -> None:
    did = syntax.parse_did("did:plc:ewvi7nxzyoun6zhxrhs64oiz")
    assert (did.method, did.identifier) == ("plc", "ewvi7nxzyoun6zhxrhs64oiz")
    assert str(did) == "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    assert did == Did("did:plc:ewvi7nxzyoun6zhxrhs64oiz")
    assert hash(did) == hash(Did("did:plc:ewvi7nxzyoun6zhxrhs64oiz"))
    web = Did.parse("did:web:localhost%3A2583")
    assert (web.method, web.identifier) == ("web", "localhost%3A2583")
    assert Did.parse("did:method:a:b:c").identifier == "a:b:c"
    with pytest.raises(dataclasses.FrozenInstanceError):
        did.value = "did:plc:other"  # type: ignore[misc]
    with pytest.raises(InvalidDid, match="lowercase"):
        Did("DID:plc:abc")
    assert repr(did) == "Did('did:plc:ewvi7nxzyoun6zhxrhs64oiz')"


def test_handle_is_lower_cased() -> None:
    assert syntax.ensure_handle("Alice.Example.COM") == "alice.example.com"
    handle = syntax.parse_handle("XX.LCS.MIT.EDU")
    assert str(handle) == "xx.lcs.mit.edu" and handle.tld == "edu"
    assert Handle("Bob.Test") == Handle("bob.test") == syntax.parse_handle("BOB.TEST")
    assert syntax.ensure_at_identifier("Bob.Test") == "bob.test"
    assert syntax.ensure_at_identifier("did:web:Example.com") == "did:web:Example.com"
    with pytest.raises(InvalidHandle, match="must not start or end with a hyphen"):
        syntax.ensure_handle("john.-est")
    with pytest.raises(InvalidHandle, match="at least two labels"):
        Handle("john")


def test_at_identifier_parses_to_did_or_handle() -> None:
    assert syntax.parse_at_identifier("did:plc:abc") == Did("did:plc:abc")
    assert syntax.parse_at_identifier("Alice.Test") == Handle("alice.test")
    with pytest.raises(InvalidAtIdentifier):
        syntax.parse_at_identifier("alice")


@pytest.mark.parametrize(
    ("handle", "disallowed"),
    [
        ("laptop.arpa", True),
        ("expyuzz4wqqyqhjn.onion", True),
        ("printer.LOCAL", True),
        ("x.alt", True),
        ("x.example", True),
        ("x.internal", True),
        ("handle.invalid", True),
        ("dev.localhost", True),
        ("alice.test", False),
        ("jay.bsky.social", False),
        ("example.com", False),
        ("local.com", False),
    ],
)
def test_disallowed_handle_tld_policy(handle: str, disallowed: bool) -> None:
    assert syntax.is_valid_handle(handle)  # policy is separate from syntax
    assert syntax.is_disallowed_handle_tld(handle) is disallowed
    assert syntax.is_disallowed_handle_tld(Handle(handle)) is disallowed


def test_disallowed_handle_tld_never_raises() -> None:
    assert syntax.is_disallowed_handle_tld(None) is False  # type: ignore[arg-type]
    assert syntax.is_disallowed_handle_tld("") is False


def test_nsid_parts() -> None:
    nsid = syntax.parse_nsid("com.atproto.sync.getRecord")
    assert (nsid.authority, nsid.name, nsid.domain) == (
        "com.atproto.sync", "getRecord", "sync.atproto.com")
    mixed = Nsid("COM.Example.fooBar")
    assert str(mixed) == "COM.Example.fooBar"
    assert str(mixed.normalized()) == "com.example.fooBar"
    assert nsid.normalized() is nsid
    with pytest.raises(InvalidNsid, match="NSID needs at least 3 segments"):
        syntax.ensure_nsid("com.example")


def test_record_key_value() -> None:
    key = syntax.parse_record_key("self")
    assert str(key) == "self" and key == RecordKey("self")
    with pytest.raises(InvalidRecordKey, match="'.' or '..'"):
        RecordKey("..")


def test_at_uri_parts() -> None:
    uri = syntax.parse_at_uri("at://did:plc:vwzwgnygau7ed7b7wt5ux7y2/app.bsky.feed.post/3k5nobkf2w72g")
    assert uri.authority == "did:plc:vwzwgnygau7ed7b7wt5ux7y2"
    assert uri.collection == "app.bsky.feed.post"
    assert uri.rkey == "3k5nobkf2w72g"
    assert uri.authority_is_did
    bare = AtUri.parse("at://Retr0.ID")
    assert (bare.authority, bare.collection, bare.rkey) == ("retr0.id", None, None)
    assert str(bare) == "at://retr0.id" and not bare.authority_is_did
    coll = AtUri.parse("at://did:plc:abc/app.bsky.feed.like")
    assert (coll.collection, coll.rkey) == ("app.bsky.feed.like", None)


def test_at_uri_make() -> None:
    made = AtUri.make(Did("did:plc:abc"), Nsid("app.bsky.feed.post"), Tid.parse("3k5nobkf2w72g"))
    assert str(made) == "at://did:plc:abc/app.bsky.feed.post/3k5nobkf2w72g"
    assert made == AtUri.parse(str(made))
    assert str(AtUri.make("Alice.Test", "app.bsky.actor.profile", "self")) == (
        "at://alice.test/app.bsky.actor.profile/self")
    assert str(AtUri.make("did:plc:abc")) == "at://did:plc:abc"
    assert AtUri("did:plc:abc", "app.bsky.feed.post") == AtUri.make("did:plc:abc",
                                                                   "app.bsky.feed.post")
    with pytest.raises(InvalidAtUri, match="needs a collection"):
        AtUri.make("did:plc:abc", rkey="self")
    with pytest.raises(InvalidAtUri, match="'/'"):
        AtUri.make("did:plc:abc", "app.bsky.feed.post/self")
    with pytest.raises(InvalidAtUri):
        AtUri.make("not a handle")
    with pytest.raises(InvalidAtUri):
        AtUri.make("did:plc:abc", "post", "self")
    with pytest.raises(InvalidAtUri):
        AtUri.make("did:plc:abc", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidAtUri, match="trailing slash"):
        syntax.ensure_at_uri("at://did:plc:abc/")


def test_datetime_keeps_text_and_converts() -> None:
    value = syntax.parse_datetime("1985-04-12T23:20:50.1235678912345Z")
    assert str(value) == "1985-04-12T23:20:50.1235678912345Z"
    assert value.to_datetime() == dt.datetime(1985, 4, 12, 23, 20, 50, 123567,
                                              tzinfo=dt.UTC)
    offset = Datetime("1985-04-12T23:20:50.12-07:00").to_datetime()
    assert offset.utcoffset() == dt.timedelta(hours=-7)
    assert offset.microsecond == 120000
    assert offset == dt.datetime(1985, 4, 13, 6, 20, 50, 120000, tzinfo=dt.UTC)
    assert Datetime("0001-01-01T00:00:00-23:59").to_datetime().year == 1
    assert Datetime("9999-12-31T23:59:59-23:59").to_datetime().year == 9999
    assert Datetime("2024-01-01T00:00:00+05:30").to_datetime().tzinfo is not None


def test_datetime_from_datetime() -> None:
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, 123999, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert str(Datetime.from_datetime(moment)) == "2024-05-06T05:08:09.123Z"
    early = dt.datetime(5, 1, 2, tzinfo=dt.UTC)
    assert str(Datetime.from_datetime(early)) == "0005-01-02T00:00:00.000Z"
    with pytest.raises(InvalidDatetime, match="timezone-aware"):
        Datetime.from_datetime(dt.datetime(2024, 1, 1))


def test_datetime_messages_name_the_rule() -> None:
    with pytest.raises(InvalidDatetime, match="-00:00"):
        syntax.ensure_datetime("1985-04-12T23:20:50.123-00:00")
    with pytest.raises(InvalidDatetime, match="timezone"):
        syntax.ensure_datetime("1985-04-12T23:20:50.123")
    with pytest.raises(InvalidDatetime, match="before year 0001"):
        syntax.ensure_datetime("0001-01-01T00:00:00+01:00")
    with pytest.raises(InvalidDatetime, match="leap seconds"):
        syntax.ensure_datetime("2016-12-31T23:59:60Z")


def test_language_value_and_messages() -> None:
    lang = syntax.parse_language("hy-Latn-IT-arevela")
    assert str(lang) == "hy-Latn-IT-arevela" and lang.primary == "hy"
    assert Language("X-foo").primary == "x"
    with pytest.raises(InvalidLanguage, match="repeats the variant"):
        syntax.ensure_language("en-rozaj-ROZAJ")
    with pytest.raises(InvalidLanguage, match="repeats the extension singleton"):
        syntax.ensure_language("en-a-foo-A-bar")


def test_tid_is_re_exported() -> None:
    from roost import tid

    assert syntax.parse_tid is tid.parse_tid and syntax.Tid is tid.Tid
    assert syntax.is_valid_tid("3jzfcijpj2z2a")
    assert syntax.ensure_tid("3jzfcijpj2z2a") == "3jzfcijpj2z2a"
