"""Identifier and string-format syntax: DIDs, handles, NSIDs, record keys,
TIDs, AT-URIs, at-identifiers, datetimes, language tags, URIs and CID strings.

These checks back the Lexicon string formats, XRPC parameter checks and the
input checks of the PDS and relay, so they sit on hot paths: every validator
does a cheap type and length test first and then one precompiled, anchored,
ASCII-only regex written with possessive and atomic groups, so no input can
make it backtrack badly. Error messages are worked out only on failure.

Three forms per format:

``is_valid_<fmt>(s) -> bool``
    Never raises, whatever ``s`` is (non-strings are simply invalid).
``ensure_<fmt>(s) -> str``
    Returns the string (handles lower-cased, also as an at-identifier or an
    AT-URI authority) or raises the matching
    :class:`~roost.errors.InvalidSyntax` subclass, whose message names the
    rule broken.
``parse_<fmt>(s) -> value``
    Returns a frozen value type (:class:`Did`, :class:`Handle`, :class:`Nsid`,
    :class:`RecordKey`, :class:`Tid`, :class:`AtUri`, :class:`Datetime`,
    :class:`Language`) whose ``str()`` is canonical. Passing a value of the
    right type returns it unchanged.

Tricky bits, as the specifications and interop vectors pin them down:

* Handles are syntax only: special-use TLDs (``.arpa``, ``.onion``...) are
  valid here; :func:`is_disallowed_handle_tld` is the separate policy check.
* A DID is case-sensitive and never lower-cased; percent-escapes are not
  checked (the spec leaves that to resolution).
* An NSID keeps its case; :meth:`Nsid.normalized` lower-cases the authority.
* AT-URIs use the strict Lexicon form ``at://authority[/nsid[/rkey]]``: no
  query, fragment, trailing slash or empty segment.
* Datetimes need uppercase ``T``/``Z``, seconds and a timezone, reject
  ``-00:00`` and leap seconds, must be a real calendar time, not before
  0001-01-01T00:00:00Z; fractional digits are unlimited (within 64 chars).
* Language tags are RFC 5646 (grandfathered tags, private use, no repeated
  variant or extension singleton, compared case-insensitively) with the atproto
  profile the interop vectors require: the primary language subtag is 2 or 3
  lowercase letters (``JA`` and the reserved 4-letter ``jaja`` are rejected).
* CID strings are a syntax check only: a known multibase prefix followed by
  that base's alphabet, 8 to 256 characters; CIDv0 (``Qm...``) is rejected.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard, TypeVar

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
    InvalidUri,
)
from roost.limits import (
    MAX_AT_URI_LENGTH,
    MAX_DATETIME_LENGTH,
    MAX_DID_LENGTH,
    MAX_HANDLE_LENGTH,
    MAX_LANGUAGE_LENGTH,
    MAX_NSID_LENGTH,
    MAX_RECORD_KEY_LENGTH,
    MAX_URI_LENGTH,
)
from roost.tid import Tid, ensure_tid, is_valid_tid, parse_tid

__all__ = [
    # DID
    "Did",
    "is_valid_did",
    "ensure_did",
    "parse_did",
    # handle
    "Handle",
    "is_valid_handle",
    "ensure_handle",
    "parse_handle",
    "DISALLOWED_HANDLE_TLDS",
    "is_disallowed_handle_tld",
    # NSID
    "Nsid",
    "is_valid_nsid",
    "ensure_nsid",
    "parse_nsid",
    # record key
    "RecordKey",
    "is_valid_record_key",
    "ensure_record_key",
    "parse_record_key",
    # TID (implemented in roost.tid)
    "Tid",
    "is_valid_tid",
    "ensure_tid",
    "parse_tid",
    # at-identifier
    "is_valid_at_identifier",
    "ensure_at_identifier",
    "parse_at_identifier",
    # AT-URI
    "AtUri",
    "is_valid_at_uri",
    "ensure_at_uri",
    "parse_at_uri",
    # datetime
    "Datetime",
    "is_valid_datetime",
    "ensure_datetime",
    "parse_datetime",
    # language
    "Language",
    "is_valid_language",
    "ensure_language",
    "parse_language",
    # uri, cid
    "is_valid_uri",
    "ensure_uri",
    "is_valid_cid_string",
    "ensure_cid_string",
    "MIN_CID_STRING_LENGTH",
    "MAX_CID_STRING_LENGTH",
]

#: Shortest CID string accepted by the ``cid`` format check.
MIN_CID_STRING_LENGTH = 8
#: Longest CID string accepted by the ``cid`` format check.
MAX_CID_STRING_LENGTH = 256
#: Longest handle label, NSID segment or NSID name.
_MAX_LABEL = 63
#: Longest NSID domain authority (everything before the name).
_MAX_NSID_AUTHORITY = 253

#: TLDs that are syntactically fine but never allowed for a registered handle.
DISALLOWED_HANDLE_TLDS = frozenset(
    {"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"}
)

_T = TypeVar("_T")

# -- regexes (ASCII classes only; always used with fullmatch) ---------------

# A hostname label without its length limit: alphanumeric runs joined by
# hyphens, so it starts and ends alphanumeric. Possessive and atomic groups
# leave the engine nothing to backtrack into. Label length (at most 63) is
# checked apart, and only for strings long enough to hold a longer label.
_LABEL = r"[a-zA-Z0-9]++(?:-++[a-zA-Z0-9]++)*+"
_handle_match = re.compile(
    rf"(?:{_LABEL}\.)++[a-zA-Z][a-zA-Z0-9]*+(?:-++[a-zA-Z0-9]++)*+"
).fullmatch
_did_match = re.compile(r"did:[a-z]++:[a-zA-Z0-9._:%-]*+(?<=[a-zA-Z0-9._-])").fullmatch
_nsid_match = re.compile(
    rf"[a-zA-Z][a-zA-Z0-9]*+(?:-++[a-zA-Z0-9]++)*+(?:\.(?>{_LABEL}))+\.[a-zA-Z][a-zA-Z0-9]*+"
).fullmatch
_long_label = re.compile(r"[^.]{64}").search
_rkey_match = re.compile(r"[a-zA-Z0-9._:~-]{1,512}").fullmatch
_datetime_match = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})"
).fullmatch
_uri_match = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:[\x21-\x7e]+").fullmatch
_language_match = re.compile(
    r"(?:"
    r"[a-z]{2,3}(?:-[a-zA-Z]{3}){0,3}"  # language, extlang
    r"(?:-[a-zA-Z]{4})?"  # script
    r"(?:-(?:[a-zA-Z]{2}|[0-9]{3}))?"  # region
    r"(?P<var>(?:-(?:[a-zA-Z0-9]{5,8}|[0-9][a-zA-Z0-9]{3}))*)"  # variants
    r"(?P<ext>(?:-[0-9a-wyzA-WYZ](?:-[a-zA-Z0-9]{2,8})+)*)"  # extensions
    r"(?:-[xX](?:-[a-zA-Z0-9]{1,8})+)?"  # private use
    r"|[xX](?:-[a-zA-Z0-9]{1,8})+"  # private use only
    r")"
).fullmatch

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")
_LABEL_CHARS = _ALNUM | {"-"}
_DID_ID_CHARS = _ALNUM | set("._:%-")
_RKEY_CHARS = _ALNUM | set("._:~-")

_GRANDFATHERED = frozenset(
    tag.lower()
    for tag in (
        # irregular
        "en-GB-oed i-ami i-bnn i-default i-enochian i-hak i-klingon i-lux i-mingo "
        "i-navajo i-pwn i-tao i-tay i-tsu sgn-BE-FR sgn-BE-NL sgn-CH-DE "
        # regular
        "art-lojban cel-gaulish no-bok no-nyn zh-guoyu zh-hakka zh-min zh-min-nan zh-xiang"
    ).split()
)

_B32_LOWER = "[a-z2-7]"
_B32_UPPER = "[A-Z2-7]"
_B32HEX_LOWER = "[0-9a-v]"
_B32HEX_UPPER = "[0-9A-V]"
_B58 = "[1-9A-HJ-NP-Za-km-z]"
_B64 = "[A-Za-z0-9+/]"
_B64URL = "[A-Za-z0-9_-]"
#: multibase prefix -> fullmatch for the rest of the string
_MULTIBASE: dict[str, Callable[..., re.Match[str] | None]] = {
    prefix: re.compile(body).fullmatch
    for prefix, body in {
        "b": f"{_B32_LOWER}+",
        "B": f"{_B32_UPPER}+",
        "c": f"{_B32_LOWER}+=*",
        "C": f"{_B32_UPPER}+=*",
        "v": f"{_B32HEX_LOWER}+",
        "V": f"{_B32HEX_UPPER}+",
        "t": f"{_B32HEX_LOWER}+=*",
        "T": f"{_B32HEX_UPPER}+=*",
        "h": "[ybndrfg8ejkmcpqxot1uwisza345h769]+",
        "k": "[0-9a-z]+",
        "K": "[0-9A-Z]+",
        "z": f"{_B58}+",
        "Z": f"{_B58}+",
        "m": f"{_B64}+",
        "M": f"{_B64}+=*",
        "u": f"{_B64URL}+",
        "U": f"{_B64URL}+=*",
        "f": "[0-9a-f]+",
        "F": "[0-9A-F]+",
        "9": "[0-9]+",
        "7": "[0-7]+",
        "0": "[01]+",
    }.items()
}


def _type_error(kind: str, s: object) -> str:
    return f"{kind} must be a string, not {type(s).__name__}"


def _new(cls: type[_T], **fields: object) -> _T:
    """Build a frozen value without re-running its ``__post_init__`` checks."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


def _bad_label(label: str, what: str) -> str | None:
    """The rule a hostname-style label breaks, or None."""
    if not label:
        return f"{what} has an empty label (leading, trailing or double dot)"
    if len(label) > _MAX_LABEL:
        return f"{what} label is longer than {_MAX_LABEL} characters"
    if not all(c in _LABEL_CHARS for c in label):
        return f"{what} label contains a character outside a-z, A-Z, 0-9 and '-'"
    if label[0] == "-" or label[-1] == "-":
        return f"{what} label must not start or end with a hyphen"
    return None


# -- DID --------------------------------------------------------------------


def is_valid_did(s: object) -> TypeGuard[str]:
    """True if ``s`` is a syntactically valid DID (any method)."""
    return isinstance(s, str) and len(s) <= MAX_DID_LENGTH and _did_match(s) is not None


def _did_error(s: object) -> str:
    if not isinstance(s, str):
        return _type_error("DID", s)
    if len(s) > MAX_DID_LENGTH:
        return f"DID is longer than {MAX_DID_LENGTH} characters"
    if not s.startswith("did:"):
        return "DID must start with 'did:' (lowercase)"
    method, sep, ident = s[4:].partition(":")
    if not sep:
        return "DID needs a method and an identifier: did:<method>:<identifier>"
    if not method or not all("a" <= c <= "z" for c in method):
        return "DID method must be one or more lowercase letters a-z"
    if not ident:
        return "DID identifier is empty"
    if any(c not in _DID_ID_CHARS for c in ident):
        return "DID identifier contains a character outside A-Z, a-z, 0-9 and . _ : % -"
    if ident[-1] in ":%":
        return "DID must not end with ':' or '%'"
    return "invalid DID syntax"


def ensure_did(s: object) -> str:
    """Return ``s`` if it is a valid DID, else raise :class:`InvalidDid`."""
    if is_valid_did(s):
        return s
    raise InvalidDid(_did_error(s), s)


@dataclass(frozen=True, slots=True)
class Did:
    """A DID such as ``did:plc:ewvi7nxzyoun6zhxrhs64oiz`` (case kept as is)."""

    value: str

    def __post_init__(self) -> None:
        if not is_valid_did(self.value):
            raise InvalidDid(_did_error(self.value), self.value)

    @classmethod
    def parse(cls, s: str | Did) -> Did:
        if isinstance(s, Did):
            return s
        if not is_valid_did(s):
            raise InvalidDid(_did_error(s), s)
        return _new(cls, value=s)

    @property
    def method(self) -> str:
        """The method name, e.g. ``plc``."""
        return self.value[4 : self.value.index(":", 4)]

    @property
    def identifier(self) -> str:
        """Everything after ``did:<method>:``."""
        return self.value[self.value.index(":", 4) + 1 :]

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Did({self.value!r})"


def parse_did(s: str | Did) -> Did:
    """Parse a DID; raise :class:`InvalidDid` if malformed."""
    return Did.parse(s)


# -- handle -----------------------------------------------------------------


def is_valid_handle(s: object) -> TypeGuard[str]:
    """True if ``s`` is a syntactically valid handle (any case, any TLD)."""
    return (
        isinstance(s, str)
        and len(s) <= MAX_HANDLE_LENGTH
        and _handle_match(s) is not None
        and (len(s) <= _MAX_LABEL or _long_label(s) is None)
    )


def _handle_error(s: object) -> str:
    if not isinstance(s, str):
        return _type_error("handle", s)
    if not s:
        return "handle is empty"
    if len(s) > MAX_HANDLE_LENGTH:
        return f"handle is longer than {MAX_HANDLE_LENGTH} characters"
    if not s.isascii():
        return "handle must be ASCII (use the punycode xn-- form)"
    if any(c.isspace() for c in s):
        return "handle must not contain whitespace"
    labels = s.split(".")
    if len(labels) < 2:
        return "handle needs at least two labels (a domain name such as name.example.com)"
    for label in labels:
        problem = _bad_label(label, "handle")
        if problem:
            return problem
    if labels[-1][0] in _DIGITS:
        return "handle top-level domain must not start with a digit"
    return "invalid handle syntax"


def ensure_handle(s: object) -> str:
    """Return ``s`` lower-cased if it is a valid handle, else raise :class:`InvalidHandle`."""
    if is_valid_handle(s):
        return s.lower()
    raise InvalidHandle(_handle_error(s), s)


@dataclass(frozen=True, slots=True)
class Handle:
    """A handle, always lower-cased (handles are case-insensitive)."""

    value: str

    def __post_init__(self) -> None:
        if not is_valid_handle(self.value):
            raise InvalidHandle(_handle_error(self.value), self.value)
        object.__setattr__(self, "value", self.value.lower())

    @classmethod
    def parse(cls, s: str | Handle) -> Handle:
        if isinstance(s, Handle):
            return s
        if not is_valid_handle(s):
            raise InvalidHandle(_handle_error(s), s)
        return _new(cls, value=s.lower())

    @property
    def tld(self) -> str:
        """The last label."""
        return self.value.rpartition(".")[2]

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Handle({self.value!r})"


def parse_handle(s: str | Handle) -> Handle:
    """Parse a handle (lower-casing it); raise :class:`InvalidHandle` if malformed."""
    return Handle.parse(s)


def is_disallowed_handle_tld(handle: str | Handle) -> bool:
    """Policy, not syntax: True if the handle ends in a special-use TLD that
    must fail registration and resolution (``.alt .arpa .example .internal
    .invalid .local .localhost .onion``). ``.test`` is allowed (development).
    """
    text = str(handle) if isinstance(handle, Handle) else handle
    if not isinstance(text, str):
        return False
    return text.rpartition(".")[2].lower() in DISALLOWED_HANDLE_TLDS


# -- NSID -------------------------------------------------------------------


def is_valid_nsid(s: object) -> TypeGuard[str]:
    """True if ``s`` is a valid NSID (``com.example.fooBar``)."""
    return (
        isinstance(s, str)
        and len(s) <= MAX_NSID_LENGTH
        and _nsid_match(s) is not None
        and (len(s) <= _MAX_LABEL or (_long_label(s) is None
                                      and s.rfind(".") <= _MAX_NSID_AUTHORITY))
    )


def _nsid_error(s: object) -> str:
    if not isinstance(s, str):
        return _type_error("NSID", s)
    if len(s) > MAX_NSID_LENGTH:
        return f"NSID is longer than {MAX_NSID_LENGTH} characters"
    if not s.isascii():
        return "NSID must be ASCII"
    if any(c.isspace() for c in s):
        return "NSID must not contain whitespace"
    if "*" in s:
        return "NSID must not contain a wildcard '*'"
    segments = s.split(".")
    if len(segments) < 3:
        return "NSID needs at least 3 segments (domain authority of 2 or more, then a name)"
    for seg in segments[:-1]:
        problem = _bad_label(seg, "NSID domain")
        if problem:
            return problem.replace("label", "segment")
    if segments[0][0] in _DIGITS:
        return "NSID first segment (top-level domain) must not start with a digit"
    if s.rfind(".") > _MAX_NSID_AUTHORITY:
        return f"NSID domain authority is longer than {_MAX_NSID_AUTHORITY} characters"
    name = segments[-1]
    if not name:
        return "NSID name (last segment) is empty"
    if len(name) > _MAX_LABEL:
        return f"NSID name is longer than {_MAX_LABEL} characters"
    if not all(c in _ALNUM for c in name):
        return "NSID name must be letters and digits only (no hyphens or underscores)"
    if name[0] in _DIGITS:
        return "NSID name must not start with a digit"
    return "invalid NSID syntax"


def ensure_nsid(s: object) -> str:
    """Return ``s`` if it is a valid NSID, else raise :class:`InvalidNsid`."""
    if is_valid_nsid(s):
        return s
    raise InvalidNsid(_nsid_error(s), s)


@dataclass(frozen=True, slots=True)
class Nsid:
    """An NSID, kept exactly as written (see :meth:`normalized`).

    ``authority`` is the domain-authority part as written in the NSID
    (``com.example`` for ``com.example.fooBar``), ``domain`` the same as a
    lower-case domain name (``example.com``), ``name`` the last segment.
    """

    value: str

    def __post_init__(self) -> None:
        if not is_valid_nsid(self.value):
            raise InvalidNsid(_nsid_error(self.value), self.value)

    @classmethod
    def parse(cls, s: str | Nsid) -> Nsid:
        if isinstance(s, Nsid):
            return s
        if not is_valid_nsid(s):
            raise InvalidNsid(_nsid_error(s), s)
        return _new(cls, value=s)

    @property
    def authority(self) -> str:
        return self.value.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.value.rpartition(".")[2]

    @property
    def domain(self) -> str:
        """The authority as a DNS name: reversed and lower-cased."""
        return ".".join(reversed(self.authority.lower().split(".")))

    def normalized(self) -> Nsid:
        """This NSID with its (case-insensitive) authority lower-cased."""
        authority, _, name = self.value.rpartition(".")
        lowered = f"{authority.lower()}.{name}"
        return self if lowered == self.value else _new(Nsid, value=lowered)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Nsid({self.value!r})"


def parse_nsid(s: str | Nsid) -> Nsid:
    """Parse an NSID; raise :class:`InvalidNsid` if malformed."""
    return Nsid.parse(s)


# -- record key -------------------------------------------------------------


def is_valid_record_key(s: object) -> TypeGuard[str]:
    """True if ``s`` is a valid record key (1-512 of ``A-Za-z0-9._:~-``, not ``.``/``..``)."""
    return (
        isinstance(s, str)
        and len(s) <= MAX_RECORD_KEY_LENGTH
        and _rkey_match(s) is not None
        and s != "."
        and s != ".."
    )


def _record_key_error(s: object) -> str:
    if not isinstance(s, str):
        return _type_error("record key", s)
    if not s:
        return "record key is empty"
    if len(s) > MAX_RECORD_KEY_LENGTH:
        return f"record key is longer than {MAX_RECORD_KEY_LENGTH} characters"
    if s in (".", ".."):
        return "record key must not be '.' or '..'"
    if any(c not in _RKEY_CHARS for c in s):
        return "record key contains a character outside A-Z, a-z, 0-9 and . - _ : ~"
    return "invalid record key syntax"


def ensure_record_key(s: object) -> str:
    """Return ``s`` if it is a valid record key, else raise :class:`InvalidRecordKey`."""
    if is_valid_record_key(s):
        return s
    raise InvalidRecordKey(_record_key_error(s), s)


@dataclass(frozen=True, slots=True)
class RecordKey:
    """A record key (case-sensitive, opaque)."""

    value: str

    def __post_init__(self) -> None:
        if not is_valid_record_key(self.value):
            raise InvalidRecordKey(_record_key_error(self.value), self.value)

    @classmethod
    def parse(cls, s: str | RecordKey) -> RecordKey:
        if isinstance(s, RecordKey):
            return s
        if not is_valid_record_key(s):
            raise InvalidRecordKey(_record_key_error(s), s)
        return _new(cls, value=s)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"RecordKey({self.value!r})"


def parse_record_key(s: str | RecordKey) -> RecordKey:
    """Parse a record key; raise :class:`InvalidRecordKey` if malformed."""
    return RecordKey.parse(s)


# -- at-identifier ----------------------------------------------------------


def is_valid_at_identifier(s: object) -> TypeGuard[str]:
    """True if ``s`` is a valid DID or a valid handle."""
    if not isinstance(s, str):
        return False
    if s.startswith("did:"):
        return len(s) <= MAX_DID_LENGTH and _did_match(s) is not None
    return is_valid_handle(s)


def _at_identifier_error(s: object) -> str:
    if not isinstance(s, str):
        return _type_error("at-identifier", s)
    if s.startswith("did:"):
        return f"at-identifier is not a valid DID: {_did_error(s)}"
    if ":" in s:
        return "at-identifier must be a DID (did:method:id) or a handle (no ':')"
    return f"at-identifier is not a valid handle: {_handle_error(s)}"


def ensure_at_identifier(s: object) -> str:
    """Return a valid DID unchanged or a valid handle lower-cased, else raise
    :class:`InvalidAtIdentifier`."""
    if is_valid_at_identifier(s):
        return s if s.startswith("did:") else s.lower()
    raise InvalidAtIdentifier(_at_identifier_error(s), s)


def parse_at_identifier(s: str | Did | Handle) -> Did | Handle:
    """Parse a DID or a handle; raise :class:`InvalidAtIdentifier` if it is neither."""
    if isinstance(s, (Did, Handle)):
        return s
    if not is_valid_at_identifier(s):
        raise InvalidAtIdentifier(_at_identifier_error(s), s)
    if s.startswith("did:"):
        return _new(Did, value=s)
    return _new(Handle, value=s.lower())


# -- AT-URI -----------------------------------------------------------------


def _split_at_uri(s: object) -> tuple[str, str | None, str | None] | None:
    """Split a strict Lexicon AT-URI into (authority, collection, rkey), the
    authority normalised (a handle lower-cased); None if it is invalid."""
    if not isinstance(s, str) or len(s) > MAX_AT_URI_LENGTH or not s.startswith("at://"):
        return None
    parts = s[5:].split("/")
    n = len(parts)
    if n > 3:
        return None
    authority = parts[0]
    if authority.startswith("did:"):
        if len(authority) > MAX_DID_LENGTH or _did_match(authority) is None:
            return None
    elif is_valid_handle(authority):
        authority = authority.lower()
    else:
        return None
    if n == 1:
        return authority, None, None
    collection = parts[1]
    if not is_valid_nsid(collection):
        return None
    if n == 2:
        return authority, collection, None
    rkey = parts[2]
    if not is_valid_record_key(rkey):
        return None
    return authority, collection, rkey


def _at_uri_error(s: object) -> str:
    """Name the rule an invalid AT-URI breaks (called only on failure)."""
    if not isinstance(s, str):
        return _type_error("AT-URI", s)
    if len(s) > MAX_AT_URI_LENGTH:
        return f"AT-URI is longer than {MAX_AT_URI_LENGTH} characters"
    if not s.startswith("at://"):
        return "AT-URI must start with 'at://' (lowercase)"
    if "#" in s or "?" in s:
        return "AT-URI must not have a query or fragment (strict Lexicon form)"
    if any(c.isspace() for c in s):
        return "AT-URI must not contain whitespace"
    parts = s[5:].split("/")
    authority = parts[0]
    if not authority:
        return "AT-URI authority is empty"
    if authority.startswith("did:"):
        if not is_valid_did(authority):
            return f"AT-URI authority is not a valid DID: {_did_error(authority)}"
    elif not is_valid_handle(authority):
        return f"AT-URI authority must be a DID or a handle: {_handle_error(authority)}"
    if s.endswith("/"):
        return "AT-URI must not end with a trailing slash"
    if "" in parts:
        return "AT-URI path must not have an empty segment ('//')"
    if len(parts) > 3:
        return "AT-URI path has more than two segments (at://authority/collection/rkey)"
    if len(parts) == 1:
        return "AT-URI authority is invalid"
    if not is_valid_nsid(parts[1]):
        return f"AT-URI collection is not a valid NSID: {_nsid_error(parts[1])}"
    if len(parts) == 2:
        return "AT-URI collection is invalid"
    return f"AT-URI record key is invalid: {_record_key_error(parts[2])}"


def is_valid_at_uri(s: object) -> TypeGuard[str]:
    """True if ``s`` is a strict Lexicon AT-URI: ``at://authority[/nsid[/rkey]]``."""
    return _split_at_uri(s) is not None


def ensure_at_uri(s: object) -> str:
    """Return ``s`` (with a handle authority lower-cased) if it is a valid AT-URI,
    else raise :class:`InvalidAtUri`."""
    parts = _split_at_uri(s)
    if parts is None:
        raise InvalidAtUri(_at_uri_error(s), s)
    assert isinstance(s, str)
    if s.startswith(parts[0], 5):
        return s
    return _format_at_uri(*parts)


@dataclass(frozen=True, slots=True)
class AtUri:
    """An AT-URI in the strict Lexicon form ``at://authority[/collection[/rkey]]``.

    ``authority`` is a DID (kept as is) or a handle (lower-cased).
    """

    authority: str
    collection: str | None = None
    rkey: str | None = None

    def __post_init__(self) -> None:
        text = _format_at_uri(self.authority, self.collection, self.rkey)
        if self.rkey is not None and self.collection is None:
            raise InvalidAtUri("AT-URI with a record key needs a collection", text)
        for part in (self.authority, self.collection, self.rkey):
            if part is not None and not isinstance(part, str):
                raise InvalidAtUri(_type_error("AT-URI part", part), part)
            if part is not None and "/" in part:
                raise InvalidAtUri("AT-URI part must not contain '/'", part)
        parts = _split_at_uri(text)
        if parts is None:
            raise InvalidAtUri(_at_uri_error(text), text)
        object.__setattr__(self, "authority", parts[0])

    @classmethod
    def parse(cls, s: str | AtUri) -> AtUri:
        if isinstance(s, AtUri):
            return s
        parts = _split_at_uri(s)
        if parts is None:
            raise InvalidAtUri(_at_uri_error(s), s)
        authority, collection, rkey = parts
        return _new(cls, authority=authority, collection=collection, rkey=rkey)

    @classmethod
    def make(
        cls,
        authority: str | Did | Handle,
        collection: str | Nsid | None = None,
        rkey: str | RecordKey | Tid | None = None,
    ) -> AtUri:
        """Build and validate an AT-URI from its parts (value types or strings)."""
        for part in (authority, collection, rkey):
            if part is not None and not isinstance(part, (str, Did, Handle, Nsid, RecordKey, Tid)):
                raise InvalidAtUri(_type_error("AT-URI part", part), part)
        return cls(
            str(authority),
            None if collection is None else str(collection),
            None if rkey is None else str(rkey),
        )

    @property
    def authority_is_did(self) -> bool:
        return self.authority.startswith("did:")

    def __str__(self) -> str:
        return _format_at_uri(self.authority, self.collection, self.rkey)

    def __repr__(self) -> str:
        return f"AtUri({str(self)!r})"


def _format_at_uri(authority: object, collection: object, rkey: object) -> str:
    text = f"at://{authority}"
    if collection is not None:
        text += f"/{collection}"
    if rkey is not None:
        text += f"/{rkey}"
    return text


def parse_at_uri(s: str | AtUri) -> AtUri:
    """Parse a strict Lexicon AT-URI; raise :class:`InvalidAtUri` if malformed."""
    return AtUri.parse(s)


# -- datetime ---------------------------------------------------------------

_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS_IN_MONTH[month]


_date_prefix = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}").match
_time_at = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}").match
_fraction_at = re.compile(r"\.[0-9]+").match
_tz_full = re.compile(r"Z|[+-][0-9]{2}:[0-9]{2}").fullmatch


def _datetime_shape_error(s: str) -> str:
    """Why ``s`` does not have the datetime shape (called only on failure)."""
    if not s.isascii():
        return "datetime must be ASCII (use '-' and ':', not dashes from other scripts)"
    if any(c.isspace() for c in s):
        return "datetime must not contain whitespace"
    if not _date_prefix(s) or (len(s) > 10 and s[10] in _DIGITS):
        return "datetime must start with a date YYYY-MM-DD (4-digit year, 2-digit month and day)"
    if len(s) == 10:
        return "datetime needs a time: YYYY-MM-DDTHH:MM:SS plus a timezone"
    if s[10] != "T":
        return "datetime date and time must be separated by an uppercase 'T'"
    if not _time_at(s, 11) or (len(s) > 19 and s[19] in _DIGITS):
        return "datetime time must be HH:MM:SS with 2-digit fields (seconds are required)"
    pos = 19
    if s.startswith(".", pos):
        m = _fraction_at(s, pos)
        if not m:
            return "datetime fractional seconds need at least one digit after '.'"
        pos = m.end()
    tz = s[pos:]
    if not tz:
        return "datetime needs a timezone: Z or +HH:MM / -HH:MM"
    if tz == "z":
        return "datetime UTC designator must be an uppercase 'Z'"
    return "datetime timezone must be Z or +HH:MM / -HH:MM"


def _datetime_error(s: object) -> str | None:
    """The rule ``s`` breaks as a Lexicon datetime, or None if it is valid."""
    if not isinstance(s, str):
        return _type_error("datetime", s)
    if len(s) > MAX_DATETIME_LENGTH:
        return f"datetime is longer than {MAX_DATETIME_LENGTH} characters"
    m = _datetime_match(s)
    if m is None:
        return _datetime_shape_error(s)
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    tz = m.group(8)
    if not 1 <= month <= 12:
        return "datetime month must be 01-12"
    if not 1 <= day <= _days_in_month(year, month):
        return "datetime day is out of range for its month"
    if hour > 23:
        return "datetime hour must be 00-23"
    if minute > 59:
        return "datetime minute must be 00-59"
    if second > 59:
        return "datetime second must be 00-59 (leap seconds are not supported)"
    if tz != "Z":
        if tz == "-00:00":
            return "datetime offset -00:00 is not allowed; use Z or +00:00"
        off_h, off_m = int(tz[1:3]), int(tz[4:6])
        if off_h > 23 or off_m > 59:
            return "datetime offset must be within -23:59 .. +23:59"
        if (
            tz[0] == "+"
            and year == 1
            and month == 1
            and day == 1
            and hour * 60 + minute < off_h * 60 + off_m
        ):
            return "datetime is before year 0001 once its offset is applied"
    if year == 0:
        return "datetime year must be 0001 or later"
    return None


def is_valid_datetime(s: object) -> TypeGuard[str]:
    """True if ``s`` is a valid Lexicon datetime (RFC 3339 / ISO 8601 profile)."""
    return _datetime_error(s) is None


def ensure_datetime(s: object) -> str:
    """Return ``s`` if it is a valid datetime, else raise :class:`InvalidDatetime`."""
    problem = _datetime_error(s)
    if problem is not None:
        raise InvalidDatetime(problem, s)
    return s  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Datetime:
    """A Lexicon datetime, keeping the original string (all fractional digits).

    :meth:`to_datetime` gives an aware :class:`datetime.datetime` in the
    string's own offset, truncated to microseconds.
    """

    value: str

    def __post_init__(self) -> None:
        problem = _datetime_error(self.value)
        if problem is not None:
            raise InvalidDatetime(problem, self.value)

    @classmethod
    def parse(cls, s: str | Datetime) -> Datetime:
        if isinstance(s, Datetime):
            return s
        problem = _datetime_error(s)
        if problem is not None:
            raise InvalidDatetime(problem, s)
        return _new(cls, value=s)

    @classmethod
    def from_datetime(cls, dt: _dt.datetime) -> Datetime:
        """Format an aware datetime the preferred way: UTC, milliseconds, ``Z``."""
        if not isinstance(dt, _dt.datetime) or dt.utcoffset() is None:
            raise InvalidDatetime("datetime must be timezone-aware", dt)
        try:
            u = dt.astimezone(_dt.UTC)
        except (OverflowError, ValueError) as exc:
            raise InvalidDatetime("datetime is out of range once converted to UTC", dt) from exc
        return cls.parse(
            f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:"
            f"{u.second:02d}.{u.microsecond // 1000:03d}Z"
        )

    def to_datetime(self) -> _dt.datetime:
        m = _datetime_match(self.value)
        assert m is not None
        year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
        micro = int((m.group(7) or "").ljust(6, "0")[:6])
        tz = m.group(8)
        if tz == "Z":
            tzinfo = _dt.UTC
        else:
            delta = _dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
            tzinfo = _dt.timezone(-delta if tz[0] == "-" else delta)
        return _dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=tzinfo)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Datetime({self.value!r})"


def parse_datetime(s: str | Datetime) -> Datetime:
    """Parse a Lexicon datetime; raise :class:`InvalidDatetime` if invalid."""
    return Datetime.parse(s)


# -- language ---------------------------------------------------------------


def _has_duplicate_subtags(m: re.Match[str]) -> bool:
    variants = m.group("var")
    if variants and variants.count("-") > 1:
        subtags = variants.lower().split("-")[1:]
        if len(set(subtags)) != len(subtags):
            return True
    extensions = m.group("ext")
    if extensions and extensions.count("-") > 2:
        singletons = [t for t in extensions.lower().split("-")[1:] if len(t) == 1]
        if len(set(singletons)) != len(singletons):
            return True
    return False


def is_valid_language(s: object) -> TypeGuard[str]:
    """True if ``s`` is a valid BCP 47 language tag (see the module notes)."""
    if not isinstance(s, str) or len(s) > MAX_LANGUAGE_LENGTH:
        return False
    m = _language_match(s)
    if m is not None:
        return not _has_duplicate_subtags(m)
    lowered = s.lower()
    return lowered in _GRANDFATHERED and s.split("-", 1)[0].islower()


def _language_error(s: object) -> str:
    """Walk the RFC 5646 grammar to name the rule an invalid tag breaks."""
    if not isinstance(s, str):
        return _type_error("language tag", s)
    if not s:
        return "language tag is empty"
    if len(s) > MAX_LANGUAGE_LENGTH:
        return f"language tag is longer than {MAX_LANGUAGE_LENGTH} characters"
    if not s.isascii():
        return "language tag must be ASCII"
    subtags = s.split("-")
    for tag in subtags:
        if not tag:
            return "language tag has an empty subtag (leading, trailing or double '-')"
        if len(tag) > 8 or not all(c in _ALNUM for c in tag):
            return "language subtags must be 1-8 letters or digits"
    first = subtags[0]
    if s.lower() in _GRANDFATHERED:
        return "grandfathered language tag must start with a lowercase subtag"
    if first in ("x", "X"):
        return "private-use tag needs 'x' followed by subtags of 1-8 letters or digits"
    if not all(c in _LETTERS for c in first):
        return "primary language subtag must be letters only"
    if len(first) == 4:
        return "primary language subtag of 4 letters is reserved (use 2 or 3 letters)"
    if len(first) > 3:
        return "primary language subtag must be 2 or 3 letters (5-8 letter subtags are unregistered)"
    if len(first) < 2:
        return "primary language subtag must be 2 or 3 letters"
    if not first.islower():
        return "primary language subtag must be lowercase"
    i, n = 1, len(subtags)
    extlangs = 0
    while i < n and extlangs < 3 and len(subtags[i]) == 3 and subtags[i].isalpha():
        i, extlangs = i + 1, extlangs + 1
    if i < n and len(subtags[i]) == 4 and subtags[i].isalpha():
        i += 1  # script
    if i < n and (
        (len(subtags[i]) == 2 and subtags[i].isalpha())
        or (len(subtags[i]) == 3 and subtags[i].isdigit())
    ):
        i += 1  # region
    seen_variants: set[str] = set()
    while i < n and (
        5 <= len(subtags[i]) <= 8 or (len(subtags[i]) == 4 and subtags[i][0] in _DIGITS)
    ):
        variant = subtags[i].lower()
        if variant in seen_variants:
            return f"language tag repeats the variant subtag {subtags[i]!r}"
        seen_variants.add(variant)
        i += 1
    seen_singletons: set[str] = set()
    while i < n and len(subtags[i]) == 1 and subtags[i] not in ("x", "X"):
        singleton = subtags[i].lower()
        if singleton in seen_singletons:
            return f"language tag repeats the extension singleton {subtags[i]!r}"
        seen_singletons.add(singleton)
        i += 1
        start = i
        while i < n and len(subtags[i]) >= 2:
            i += 1
        if i == start:
            return f"extension {subtags[start - 1]!r} needs subtags of 2-8 letters or digits"
    if i < n and subtags[i] in ("x", "X"):
        if i + 1 == n:
            return "private-use 'x' needs at least one subtag"
        return "invalid private-use section"
    if i < n:
        return (
            f"language subtag {subtags[i]!r} is out of place "
            "(order: language-extlang-script-region-variant-extension-x-private)"
        )
    return "invalid language tag syntax"


def ensure_language(s: object) -> str:
    """Return ``s`` if it is a valid language tag, else raise :class:`InvalidLanguage`."""
    if is_valid_language(s):
        return s
    raise InvalidLanguage(_language_error(s), s)


@dataclass(frozen=True, slots=True)
class Language:
    """A BCP 47 language tag, kept exactly as written."""

    value: str

    def __post_init__(self) -> None:
        if not is_valid_language(self.value):
            raise InvalidLanguage(_language_error(self.value), self.value)

    @classmethod
    def parse(cls, s: str | Language) -> Language:
        if isinstance(s, Language):
            return s
        if not is_valid_language(s):
            raise InvalidLanguage(_language_error(s), s)
        return _new(cls, value=s)

    @property
    def primary(self) -> str:
        """The primary language subtag, lower-cased (``x`` for private use)."""
        return self.value.split("-", 1)[0].lower()

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Language({self.value!r})"


def parse_language(s: str | Language) -> Language:
    """Parse a language tag; raise :class:`InvalidLanguage` if invalid."""
    return Language.parse(s)


# -- uri --------------------------------------------------------------------


def is_valid_uri(s: object) -> TypeGuard[str]:
    """True if ``s`` is a generic URI: an RFC 3986 scheme, ``:``, then printable ASCII."""
    return isinstance(s, str) and len(s) <= MAX_URI_LENGTH and _uri_match(s) is not None


def _uri_error(s: object) -> str:
    if not isinstance(s, str):
        return _type_error("URI", s)
    if len(s) > MAX_URI_LENGTH:
        return f"URI is longer than {MAX_URI_LENGTH} characters"
    if not s.isascii():
        return "URI must be ASCII (percent-encode other characters)"
    if any(c.isspace() for c in s):
        return "URI must not contain whitespace"
    scheme, sep, rest = s.partition(":")
    if not sep:
        return "URI needs a scheme followed by ':' (e.g. https:)"
    if not scheme or scheme[0] not in _LETTERS:
        return "URI scheme must start with a letter"
    if not all(c in _ALNUM or c in "+.-" for c in scheme):
        return "URI scheme may only contain letters, digits, '+', '.' and '-'"
    if not rest:
        return "URI needs something after the scheme"
    return "URI contains a control character"


def ensure_uri(s: object) -> str:
    """Return ``s`` if it is a valid URI, else raise :class:`InvalidUri`."""
    if is_valid_uri(s):
        return s
    raise InvalidUri(_uri_error(s), s)


# -- CID string -------------------------------------------------------------


def is_valid_cid_string(s: object) -> TypeGuard[str]:
    """True if ``s`` looks like a multibase CID string (syntax only, no decode)."""
    if not isinstance(s, str) or not MIN_CID_STRING_LENGTH <= len(s) <= MAX_CID_STRING_LENGTH:
        return False
    rest_match = _MULTIBASE.get(s[0])
    return rest_match is not None and rest_match(s, 1) is not None


def _cid_error(s: object) -> str:
    if not isinstance(s, str):
        return _type_error("CID string", s)
    if len(s) < MIN_CID_STRING_LENGTH:
        return f"CID string is shorter than {MIN_CID_STRING_LENGTH} characters"
    if len(s) > MAX_CID_STRING_LENGTH:
        return f"CID string is longer than {MAX_CID_STRING_LENGTH} characters"
    if any(c.isspace() for c in s):
        return "CID string must not contain whitespace"
    if s.startswith("Qm"):
        return "CIDv0 strings (Qm...) are not allowed; use CIDv1"
    if s[0] not in _MULTIBASE:
        return f"CID string does not start with a known multibase prefix (got {s[0]!r})"
    return f"CID string has characters outside its multibase alphabet (prefix {s[0]!r})"


def ensure_cid_string(s: object) -> str:
    """Return ``s`` if it is a syntactically valid CID string, else raise
    :class:`InvalidCidString`."""
    if is_valid_cid_string(s):
        return s
    raise InvalidCidString(_cid_error(s), s)

