"""Lexicon documents: loading, schema checks and data validation.

A :class:`Catalog` holds lexicon documents by NSID. ``add`` checks a document
against the schema language (``LexiconError`` when it is malformed). The
first time a definition is used it is compiled, once, into a tree of small
closures (one per schema node, constraints captured as locals), so validating
data never walks the JSON schema again. Compiling binds each ``ref`` directly
to its target's compiled check; only recursive refs, and refs to documents not
(yet) in the catalog, go through a trampoline that looks the target up on
first call. Documents can therefore be added in any order; using a dangling
reference raises ``LexiconError``, and :meth:`Catalog.unresolved_refs` lists
them up front.

Data may be given in data-model form (``CID`` objects for links, ``bytes``
for bytes) or in atproto JSON form (``{"$link": ...}``, ``{"$bytes": ...}``,
blobs whose ``ref`` is a ``$link``); both are accepted wherever a cid-link,
bytes or blob is expected. Legacy blobs (``{"cid": ..., "mimeType": ...}``)
are accepted where a blob is expected.

Validation failures raise ``ValidationError(message, path)`` where ``path``
starts with the kind of value (``record``, ``params``, ``input``, ``output``,
``message``, ``rkey`` or ``value``) followed by the keys and indexes that lead
to the bad value, e.g. ``record/facets/0/index/byteStart must be >= 0``.

Tricky bits, as the specification pins them down:

* String ``minLength``/``maxLength`` count UTF-8 bytes; ``minGraphemes``/
  ``maxGraphemes`` count extended grapheme clusters (``regex``'s ``\\X``).
  Cheap bounds (code points vs bytes vs clusters) skip the counting in the
  common case.
* Undeclared object fields are allowed; ``null`` is allowed only for names in
  ``nullable``; a missing ``required`` field is reported before anything else.
* Open unions need ``$type`` but accept types outside ``refs``; closed ones
  do not. ``X`` and ``X#main`` name the same definition.
* ``knownValues`` is a hint and never enforced; ``enum`` and ``const`` are.
* ``unknown`` must be a map, and not a blob, ``$link`` or ``$bytes`` object.
* Records must carry ``$type`` equal to their collection (``#main`` is wrong).
* Validators return the value, with ``default`` values filled in for absent
  fields (the input is copied only when something is filled in).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import regex

from roost import syntax
from roost.cbor import b64decode_lenient
from roost.cid import CID, PyCID
from roost.errors import (
    CidError,
    InvalidSyntax,
    JsonDataError,
    LexiconError,
    ValidationError,
)
from roost.limits import MAX_DATA_DEPTH

__all__ = ["Catalog", "MethodDef", "default_lexicon_dir"]

Check = Callable[[Any], Any]

_CID_TYPES: Final = (CID, PyCID)
_GRAPHEME: Final = regex.compile(r"\X")
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1

#: Definition types that may appear as named defs.
_NAMED_TYPES: Final = frozenset(
    {
        "record",
        "query",
        "procedure",
        "subscription",
        "permission-set",
        "object",
        "array",
        "token",
        "string",
        "integer",
        "boolean",
        "bytes",
        "cid-link",
        "blob",
    }
)
_PRIMARY_TYPES: Final = frozenset(
    {"record", "query", "procedure", "subscription", "permission-set"}
)
_METHOD_TYPES: Final = frozenset({"query", "procedure", "subscription"})
#: Definition types a ``ref`` may point at (and what ``validate`` accepts).
_DATA_TYPES: Final = frozenset(
    {"record", "object", "array", "string", "integer", "boolean", "bytes", "cid-link", "blob"}
)
_UNION_MEMBER_TYPES: Final = frozenset({"object", "record"})
_PARAM_SCALARS: Final = frozenset({"boolean", "integer", "string"})
_REPO_ACTIONS: Final = frozenset({"create", "update", "delete"})
_MIME_PART: Final = regex.compile(r"[A-Za-z0-9!#$&^_.+-]+")


def default_lexicon_dir() -> Path:
    """The lexicon documents shipped with roost.

    ``roost/lexicons/`` in an installed wheel; ``lexicons/`` at the root of a
    source checkout (editable installs).
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "lexicons", here.parent / "lexicons"):
        if candidate.is_dir():
            return candidate
    raise LexiconError("the shipped lexicon documents are missing from this installation")


@dataclass(frozen=True, slots=True)
class MethodDef:
    """An XRPC method as its lexicon declares it (raw schema parts, not compiled)."""

    nsid: str
    type: str  # "query" | "procedure" | "subscription"
    parameters: dict[str, Any] | None
    input_encoding: str | None
    input_schema: dict[str, Any] | None
    output_encoding: str | None
    output_schema: dict[str, Any] | None
    errors: tuple[str, ...]
    message_schema: dict[str, Any] | None


# -- failures -----------------------------------------------------------------


class _Fail(Exception):
    """Internal: a validation failure; ``path`` collects segments innermost first."""

    __slots__ = ("message", "path")

    def __init__(self, message: str) -> None:
        self.message = message
        self.path: list[str] = []


def _fail_at(message: str, *segments: str) -> _Fail:
    f = _Fail(message)
    f.path.extend(reversed(segments))
    return f


def _run(check: Check, value: Any, root: str) -> Any:
    try:
        return check(value)
    except _Fail as f:
        raise ValidationError(f.message, "/".join([root, *reversed(f.path)])) from None
    except RecursionError:  # data nested through a recursive definition
        raise ValidationError("is nested too deeply", root) from None


# -- small helpers --------------------------------------------------------------


def _utf8_len(s: str) -> int:
    if s.isascii():
        return len(s)
    try:
        return len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Fail("must be valid Unicode (no lone surrogates)") from None


def _graphemes(s: str) -> int:
    if s.isascii():
        return len(s) - s.count("\r\n")
    return len(_GRAPHEME.findall(s))


def _is_link(value: Any) -> bool:
    """A CID link in data-model form or a well-formed ``{"$link": ...}`` object."""
    if isinstance(value, _CID_TYPES):
        return True
    if type(value) is dict and len(value) == 1:
        text = value.get("$link")
        if type(text) is str:
            try:
                CID.from_str(text)
            except CidError:
                return False
            return True
    return False


def _check_data(value: Any) -> None:
    """Data-model checks for the inside of an ``unknown`` value (either form)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if t is dict:
            if depth >= MAX_DATA_DEPTH:
                raise _Fail(f"must not be nested more than {MAX_DATA_DEPTH} levels deep")
            for k, item in v.items():
                if type(k) is not str:
                    raise _Fail("must only have string keys")
                stack.append((item, depth + 1))
            if "$type" in v and (type(v["$type"]) is not str or not v["$type"]):
                raise _Fail("must only contain objects whose $type is a non-empty string")
        elif t is list:
            if depth >= MAX_DATA_DEPTH:
                raise _Fail(f"must not be nested more than {MAX_DATA_DEPTH} levels deep")
            stack.extend((item, depth + 1) for item in v)
        elif t is int:
            if not _INT_MIN <= v <= _INT_MAX:
                raise _Fail("must only contain 64-bit integers")
        elif t is float:
            if not v.is_integer():
                raise _Fail("must not contain floating-point numbers")
        elif not (v is None or t is str or t is bool or t is bytes or isinstance(v, _CID_TYPES)):
            raise _Fail(f"must only contain data-model values, not {t.__name__}")


_FORMATS: Final[dict[str, tuple[Callable[[object], bool], Callable[[object], str]]]] = {
    "datetime": (syntax.is_valid_datetime, syntax.ensure_datetime),
    "uri": (syntax.is_valid_uri, syntax.ensure_uri),
    "at-uri": (syntax.is_valid_at_uri, syntax.ensure_at_uri),
    "did": (syntax.is_valid_did, syntax.ensure_did),
    "handle": (syntax.is_valid_handle, syntax.ensure_handle),
    "at-identifier": (syntax.is_valid_at_identifier, syntax.ensure_at_identifier),
    "nsid": (syntax.is_valid_nsid, syntax.ensure_nsid),
    "cid": (syntax.is_valid_cid_string, syntax.ensure_cid_string),
    "language": (syntax.is_valid_language, syntax.ensure_language),
    "tid": (syntax.is_valid_tid, syntax.ensure_tid),
    "record-key": (syntax.is_valid_record_key, syntax.ensure_record_key),
}


def _format_fail(fmt: str, ensure: Callable[[object], str], value: str) -> _Fail:
    try:
        ensure(value)
    except InvalidSyntax as exc:
        return _Fail(f"must be a valid {fmt}: {exc.message}")
    return _Fail(f"must be a valid {fmt}")  # pragma: no cover - is_valid and ensure disagree


def _split_ref(ref: str, base: str) -> tuple[str, str]:
    """``(nsid, name)`` for a reference; ``#x`` is relative to ``base``."""
    if "#" in ref:
        nsid, name = ref.split("#", 1)
        return (nsid or base), name
    return ref, "main"


def _mime_matcher(accept: Sequence[str]) -> Callable[[str], bool]:
    exact = frozenset(a.lower() for a in accept if not a.endswith("/*"))
    prefixes = tuple(a[:-1].lower() for a in accept if a.endswith("/*") and a != "*/*")
    if "*/*" in accept:
        return lambda mime: True

    def matches(mime: str) -> bool:
        m = mime.lower()
        return m in exact or (bool(prefixes) and m.startswith(prefixes))

    return matches


# -- schema checks and compilation --------------------------------------------------


class _Def:
    """One named definition: its raw schema and, once used, its compiled check."""

    __slots__ = ("compiled", "info", "method", "name", "nsid", "record_key", "schema", "type")

    def __init__(
        self, nsid: str, name: str, schema: dict[str, Any], info: MethodDef | None
    ) -> None:
        self.nsid = nsid
        self.name = name
        self.type: str = schema["type"]
        self.schema = schema
        self.record_key: str | None = schema.get("key") if self.type == "record" else None
        self.info = info
        self.compiled: Check | None = None  # data defs (records: the record object)
        self.method: _Method | None = None  # methods, compiled on first use


class _Method:
    __slots__ = ("info", "input", "message", "output", "params")

    def __init__(
        self,
        info: MethodDef,
        params: list[_Param],
        input_: Check | None,
        output: Check | None,
        message: _Union | None,
    ) -> None:
        self.info = info
        self.params = params
        self.input = input_
        self.output = output
        self.message = message


class _Param:
    __slots__ = ("check", "default", "item_type", "name", "required", "type")

    def __init__(
        self,
        name: str,
        type_: str,
        item_type: str | None,
        check: Check,
        default: Any,
        required: bool,
    ) -> None:
        self.name = name
        self.type = type_
        self.item_type = item_type
        self.check = check
        self.default = default
        self.required = required


class _Union:
    """A compiled union: member checks by ``$type`` (both ``X`` and ``X#main``)."""

    __slots__ = ("closed", "members", "names")

    def __init__(self, members: dict[str, Check], closed: bool, names: list[str]) -> None:
        self.members = members
        self.closed = closed
        self.names = names


_NO_DEFAULT: Final = object()


class _Builder:
    """Checks one document's schemas and compiles them into closures."""

    def __init__(self, catalog: Catalog, doc_id: str, *, bind: bool) -> None:
        self.catalog = catalog
        self.doc_id = doc_id
        #: False: only check the schema (refs are not followed); True: compile
        #: for use, binding refs to their targets' checks.
        self.bind = bind

    # -- shared field checks (schema side) --

    def _bad(self, where: str, message: str) -> LexiconError:
        return LexiconError(f"{self.doc_id}: {where}: {message}")

    def _opt(
        self, schema: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str
    ) -> Any:
        value = schema.get(key)
        if value is None:
            return None
        ok = isinstance(value, kind) and not (
            isinstance(value, bool) and bool not in _as_tuple(kind)
        )
        if not ok:
            raise self._bad(where, f"{key!r} has the wrong type")
        return value

    def _opt_int(
        self, schema: Mapping[str, Any], key: str, where: str, *, minimum: int | None = None
    ) -> int | None:
        value = self._opt(schema, key, int, where)
        if value is not None and minimum is not None and value < minimum:
            raise self._bad(where, f"{key!r} must be >= {minimum}")
        return value  # type: ignore[no-any-return]

    def _str_list(self, schema: Mapping[str, Any], key: str, where: str) -> list[str] | None:
        value = schema.get(key)
        if value is None:
            return None
        if type(value) is not list or not all(type(v) is str for v in value):
            raise self._bad(where, f"{key!r} must be a list of strings")
        return value

    def _common(self, schema: Any, where: str) -> str:
        if type(schema) is not dict:
            raise self._bad(where, "a schema must be an object")
        t = schema.get("type")
        if type(t) is not str:
            raise self._bad(where, "a schema needs a string 'type'")
        if "description" in schema and type(schema["description"]) is not str:
            raise self._bad(where, "'description' must be a string")
        return t

    def ref_key(self, ref: Any, where: str) -> str:
        """Check a reference and return its normalised ``nsid#name`` form."""
        if type(ref) is not str or not ref:
            raise self._bad(where, "a reference must be a non-empty string")
        nsid, name = _split_ref(ref, self.doc_id)
        if not syntax.is_valid_nsid(nsid) or not name or "#" in name:
            raise self._bad(where, f"invalid reference {ref!r}")
        return f"{nsid}#{name}"

    # -- named definitions --

    def named(self, name: Any, schema: Any) -> _Def:
        """Check one named definition (``bind=False``) and describe it."""
        where = f"defs/{name}"
        if type(name) is not str or not name or "#" in name:
            raise self._bad("defs", f"invalid definition name {name!r}")
        t = self._common(schema, where)
        if t not in _NAMED_TYPES:
            raise self._bad(where, f"type {t!r} cannot be a named definition")
        if t in _PRIMARY_TYPES and name != "main":
            raise self._bad(where, f"a {t} definition must be named 'main'")
        info = None
        if t == "record":
            self._record_key_type(schema.get("key"), where)
            body = schema.get("record")
            if type(body) is not dict or body.get("type") != "object":
                raise self._bad(where, "a record's 'record' must be an object schema")
            self.object(body, where + "/record")
        elif t in _METHOD_TYPES:
            info = self.method(t, schema, where).info
        elif t == "permission-set":
            self.permission_set(schema, where)
        elif t != "token":
            self.field(schema, where)
        return _Def(self.doc_id, name, schema, info)

    def compile_def(self, d: _Def) -> Check:
        """The check of a data definition (a record's is that of its object)."""
        where = f"defs/{d.name}"
        if d.type == "record":
            return self.object(d.schema["record"], where + "/record")
        return self.field(d.schema, where)

    def _record_key_type(self, key: Any, where: str) -> None:
        if key in ("tid", "nsid", "any"):
            return
        if type(key) is str and key.startswith("literal:") and syntax.is_valid_record_key(key[8:]):
            return
        raise self._bad(where, f"invalid record key type {key!r}")

    def method(self, t: str, schema: dict[str, Any], where: str) -> _Method:
        params_schema = schema.get("parameters")
        params: list[_Param] = []
        if params_schema is not None:
            params = self.params(params_schema, where + "/parameters")
        errors: list[str] = []
        raw_errors = schema.get("errors")
        if raw_errors is not None:
            if type(raw_errors) is not list:
                raise self._bad(where, "'errors' must be a list")
            for e in raw_errors:
                if type(e) is not dict or type(e.get("name")) is not str or not e["name"]:
                    raise self._bad(where, "each error needs a string 'name'")
                errors.append(e["name"])
        input_enc = input_schema = output_enc = output_schema = None
        input_check = output_check = None
        message: _Union | None = None
        message_schema = None
        if t == "procedure" and schema.get("input") is not None:
            input_enc, input_schema, input_check = self.body(schema["input"], where + "/input")
        elif t != "procedure" and "input" in schema:
            raise self._bad(where, f"a {t} has no input")
        if t != "subscription" and schema.get("output") is not None:
            output_enc, output_schema, output_check = self.body(schema["output"], where + "/output")
        elif t == "subscription":
            if "output" in schema or "input" in schema:
                raise self._bad(where, "a subscription has no input or output")
            msg = schema.get("message")
            if type(msg) is not dict:
                raise self._bad(where, "a subscription needs a 'message' object")
            message_schema = msg.get("schema")
            if type(message_schema) is not dict or message_schema.get("type") != "union":
                raise self._bad(where + "/message", "the message schema must be a union")
            message = self.union_parts(message_schema, where + "/message/schema")
        info = MethodDef(
            nsid=self.doc_id,
            type=t,
            parameters=params_schema,
            input_encoding=input_enc,
            input_schema=input_schema,
            output_encoding=output_enc,
            output_schema=output_schema,
            errors=tuple(errors),
            message_schema=message_schema,
        )
        return _Method(info, params, input_check, output_check, message)

    def body(self, body: Any, where: str) -> tuple[str, dict[str, Any] | None, Check | None]:
        if type(body) is not dict:
            raise self._bad(where, "must be an object")
        encoding = body.get("encoding")
        if type(encoding) is not str or not encoding:
            raise self._bad(where, "needs a string 'encoding'")
        schema = body.get("schema")
        if schema is None:
            return encoding, None, None
        t = self._common(schema, where + "/schema")
        if t not in ("object", "ref", "union"):
            raise self._bad(where, "'schema' must be an object, ref or union")
        return encoding, schema, self.field(schema, where + "/schema")

    def params(self, schema: Any, where: str) -> list[_Param]:
        if self._common(schema, where) != "params":
            raise self._bad(where, "'parameters' must have type 'params'")
        props = schema.get("properties", {})
        if type(props) is not dict:
            raise self._bad(where, "'properties' must be an object")
        required = self._str_list(schema, "required", where) or []
        for r in required:
            if r not in props:
                raise self._bad(where, f"required parameter {r!r} is not a property")
        out: list[_Param] = []
        for name, prop in props.items():
            pwhere = f"{where}/properties/{name}"
            t = self._common(prop, pwhere)
            item_type = None
            if t == "array":
                items = prop.get("items")
                item_type = self._common(items, pwhere + "/items")
                if item_type not in _PARAM_SCALARS:
                    raise self._bad(pwhere, "array parameters hold booleans, integers or strings")
            elif t not in _PARAM_SCALARS:
                raise self._bad(pwhere, f"a parameter cannot have type {t!r}")
            check = self.field(prop, pwhere)
            default = prop.get("default", _NO_DEFAULT)
            out.append(_Param(name, t, item_type, check, default, name in required))
        return out

    def permission_set(self, schema: dict[str, Any], where: str) -> None:
        for key in ("title", "detail"):
            self._opt(schema, key, str, where)
            lang = schema.get(key + ":lang")
            if lang is not None and (
                type(lang) is not dict or not all(type(v) is str for v in lang.values())
            ):
                raise self._bad(where, f"'{key}:lang' must map language tags to strings")
        perms = schema.get("permissions")
        if type(perms) is not list:
            raise self._bad(where, "a permission-set needs a 'permissions' list")
        for i, perm in enumerate(perms):
            self.permission(perm, f"{where}/permissions/{i}")

    def permission(self, perm: Any, where: str) -> None:
        if self._common(perm, where) != "permission":
            raise self._bad(where, "must have type 'permission'")
        resource = perm.get("resource")
        if type(resource) is not str or not resource:
            raise self._bad(where, "a permission needs a string 'resource'")
        if resource == "repo":
            coll = self._str_list(perm, "collection", where)
            if not coll or not all(syntax.is_valid_nsid(c) for c in coll):
                raise self._bad(where, "'collection' must be a non-empty list of NSIDs")
            action = self._str_list(perm, "action", where)
            if action is not None and not set(action) <= _REPO_ACTIONS:
                raise self._bad(where, "'action' may only hold create, update, delete")
        elif resource == "rpc":
            lxm = self._str_list(perm, "lxm", where)
            if not lxm or not all(m == "*" or syntax.is_valid_nsid(m) for m in lxm):
                raise self._bad(where, "'lxm' must be a non-empty list of NSIDs or '*'")
            aud = self._opt(perm, "aud", str, where)
            inherit = self._opt(perm, "inheritAud", bool, where)
            if aud is None and not inherit:
                raise self._bad(where, "an rpc permission needs 'aud' or 'inheritAud: true'")
            if aud == "*" and "*" in lxm:
                raise self._bad(where, "'aud' and 'lxm' cannot both be wildcards")
        # other resources: unknown to us, ignored (forward compatible)

    # -- field schemas --

    def field(self, schema: Any, where: str) -> Check:
        t = self._common(schema, where)
        build = _FIELD_BUILDERS.get(t)
        if build is None:
            raise self._bad(where, f"type {t!r} is not allowed here")
        if "const" in schema and "default" in schema:
            raise self._bad(where, "'const' and 'default' are mutually exclusive")
        return build(self, schema, where)

    def boolean(self, schema: dict[str, Any], where: str) -> Check:
        const = self._opt(schema, "const", bool, where)
        self._opt(schema, "default", bool, where)

        def check_bool(x: Any) -> Any:
            if type(x) is not bool:
                raise _Fail("must be a boolean")
            if const is not None and x is not const:
                raise _Fail(f"must be {str(const).lower()}")
            return x

        return check_bool

    def integer(self, schema: dict[str, Any], where: str) -> Check:
        const = self._opt(schema, "const", int, where)
        self._opt(schema, "default", int, where)
        lo = self._opt(schema, "minimum", int, where)
        hi = self._opt(schema, "maximum", int, where)
        if lo is not None and hi is not None and lo > hi:
            raise self._bad(where, "'minimum' is above 'maximum'")
        enum_list = schema.get("enum")
        if enum_list is not None and (
            type(enum_list) is not list or not all(type(v) is int for v in enum_list)
        ):
            raise self._bad(where, "'enum' must be a list of integers")
        enum = frozenset(enum_list) if enum_list is not None else None
        shown = ", ".join(map(str, enum_list or ()))

        def check_int(x: Any) -> Any:
            if type(x) is not int:
                if type(x) is float and x.is_integer():
                    x = int(x)  # JSON 3.0 is the integer 3 (as in the data model)
                else:
                    raise _Fail("must be an integer")
            if not _INT_MIN <= x <= _INT_MAX:
                raise _Fail("must be a 64-bit integer")
            if const is not None and x != const:
                raise _Fail(f"must be {const}")
            if enum is not None and x not in enum:
                raise _Fail(f"must be one of ({shown})")
            if lo is not None and x < lo:
                raise _Fail(f"must be >= {lo}")
            if hi is not None and x > hi:
                raise _Fail(f"must be <= {hi}")
            return x

        return check_int

    def string(self, schema: dict[str, Any], where: str) -> Check:
        fmt = self._opt(schema, "format", str, where)
        if fmt is not None and fmt not in _FORMATS:
            raise self._bad(where, f"unknown string format {fmt!r}")
        const = self._opt(schema, "const", str, where)
        self._opt(schema, "default", str, where)
        min_len = self._opt_int(schema, "minLength", where, minimum=0)
        max_len = self._opt_int(schema, "maxLength", where, minimum=0)
        min_g = self._opt_int(schema, "minGraphemes", where, minimum=0)
        max_g = self._opt_int(schema, "maxGraphemes", where, minimum=0)
        if min_len is not None and max_len is not None and min_len > max_len:
            raise self._bad(where, "'minLength' is above 'maxLength'")
        if min_g is not None and max_g is not None and min_g > max_g:
            raise self._bad(where, "'minGraphemes' is above 'maxGraphemes'")
        enum_list = self._str_list(schema, "enum", where)
        self._str_list(schema, "knownValues", where)
        enum = frozenset(enum_list) if enum_list is not None else None
        shown = ", ".join(enum_list or ())
        is_valid, ensure = _FORMATS[fmt] if fmt is not None else (None, None)
        min_len = min_len or None
        min_g = min_g or None
        plain = const is None and enum is None and fmt is None
        plain = plain and min_len is None and max_len is None and min_g is None and max_g is None

        if plain:
            return _check_plain_str

        def check_str(x: Any) -> Any:
            if type(x) is not str:
                raise _Fail("must be a string")
            if const is not None and x != const:
                raise _Fail(f"must be {const!r}")
            if enum is not None and x not in enum:
                raise _Fail(f"must be one of ({shown})")
            n = len(x)
            if max_len is not None and n * 4 > max_len and _utf8_len(x) > max_len:
                raise _Fail(f"must not be longer than {max_len} bytes")
            if min_len is not None and n < min_len and _utf8_len(x) < min_len:
                raise _Fail(f"must not be shorter than {min_len} bytes")
            if max_g is not None and n > max_g and _graphemes(x) > max_g:
                raise _Fail(f"must not be longer than {max_g} graphemes")
            if min_g is not None and (n < min_g or _graphemes(x) < min_g):
                raise _Fail(f"must not be shorter than {min_g} graphemes")
            if is_valid is not None and not is_valid(x):
                raise _format_fail(fmt, ensure, x)  # type: ignore[arg-type]
            return x

        return check_str

    def bytes_(self, schema: dict[str, Any], where: str) -> Check:
        lo = self._opt_int(schema, "minLength", where, minimum=0)
        hi = self._opt_int(schema, "maxLength", where, minimum=0)
        if lo is not None and hi is not None and lo > hi:
            raise self._bad(where, "'minLength' is above 'maxLength'")

        def check_bytes(x: Any) -> Any:
            if type(x) is bytes:
                n = len(x)
            elif type(x) is dict and len(x) == 1 and type(x.get("$bytes")) is str:
                try:
                    n = len(b64decode_lenient(x["$bytes"]))
                except JsonDataError:
                    raise _Fail("must be valid base64 bytes") from None
            else:
                raise _Fail("must be bytes")
            if lo is not None and n < lo:
                raise _Fail(f"must not be shorter than {lo} bytes")
            if hi is not None and n > hi:
                raise _Fail(f"must not be longer than {hi} bytes")
            return x

        return check_bytes

    def cid_link(self, schema: dict[str, Any], where: str) -> Check:
        return _check_cid_link

    def blob(self, schema: dict[str, Any], where: str) -> Check:
        accept = self._str_list(schema, "accept", where)
        max_size = self._opt_int(schema, "maxSize", where, minimum=0)
        if accept is not None:
            for a in accept:
                if a == "*/*":
                    continue
                parts = a.split("/")
                if (
                    len(parts) != 2
                    or not _MIME_PART.fullmatch(parts[0])
                    or not (parts[1] == "*" or _MIME_PART.fullmatch(parts[1]))
                ):
                    raise self._bad(where, f"invalid MIME type pattern {a!r} in 'accept'")
        matches = _mime_matcher(accept) if accept is not None else None
        shown = ", ".join(accept or ())

        def check_blob(x: Any) -> Any:
            if type(x) is not dict:
                raise _Fail("must be a blob")
            if x.get("$type") == "blob":
                if not _is_link(x.get("ref")):
                    raise _fail_at("must be a CID link", "ref")
                mime = x.get("mimeType")
                if type(mime) is not str or not mime:
                    raise _fail_at("must be a non-empty string", "mimeType")
                size = x.get("size")
                if type(size) is not int or size < 0:
                    raise _fail_at("must be a non-negative integer", "size")
            elif "$type" not in x and "cid" in x:  # legacy blob
                if not syntax.is_valid_cid_string(x["cid"]):
                    raise _fail_at("must be a CID string", "cid")
                mime = x.get("mimeType")
                if type(mime) is not str or not mime:
                    raise _fail_at("must be a non-empty string", "mimeType")
                size = None
            else:
                raise _Fail("must be a blob")
            if max_size is not None and size is not None and size > max_size:
                raise _Fail(f"is too large: {size} bytes, at most {max_size} allowed")
            if matches is not None and not matches(mime):
                raise _Fail(f"has MIME type {mime!r}, expected one of ({shown})")
            return x

        return check_blob

    def unknown(self, schema: dict[str, Any], where: str) -> Check:
        return _check_unknown

    def array(self, schema: dict[str, Any], where: str) -> Check:
        if "items" not in schema:
            raise self._bad(where, "an array needs 'items'")
        item = self.field(schema["items"], where + "/items")
        lo = self._opt_int(schema, "minLength", where, minimum=0)
        hi = self._opt_int(schema, "maxLength", where, minimum=0)
        if lo is not None and hi is not None and lo > hi:
            raise self._bad(where, "'minLength' is above 'maxLength'")
        lo = lo or None

        def check_array(x: Any) -> Any:
            if type(x) is not list:
                raise _Fail("must be an array")
            n = len(x)
            if hi is not None and n > hi:
                raise _Fail(f"must not have more than {hi} elements")
            if lo is not None and n < lo:
                raise _Fail(f"must not have fewer than {lo} elements")
            out = x
            for i, v in enumerate(x):
                try:
                    w = item(v)
                except _Fail as f:
                    f.path.append(str(i))
                    raise
                if w is not v:
                    if out is x:
                        out = list(x)
                    out[i] = w
            return out

        return check_array

    def object(self, schema: dict[str, Any], where: str) -> Check:
        props = schema.get("properties")
        if type(props) is not dict:
            raise self._bad(where, "an object needs a 'properties' object")
        required = tuple(self._str_list(schema, "required", where) or ())
        nullable = frozenset(self._str_list(schema, "nullable", where) or ())
        for name in required:
            if name not in props:
                raise self._bad(where, f"required property {name!r} is not declared")
        for name in nullable:
            if name not in props:
                raise self._bad(where, f"nullable property {name!r} is not declared")
        table: dict[str, Check] = {}
        defaults: list[tuple[str, Any]] = []
        for name, prop in props.items():
            if type(name) is not str or not name:
                raise self._bad(where, f"invalid property name {name!r}")
            table[name] = self.field(prop, f"{where}/properties/{name}")
            if prop.get("type") in ("boolean", "integer", "string") and "default" in prop:
                defaults.append((name, prop["default"]))
        missing = {name: f'must have the property "{name}"' for name in required}

        def check_object(x: Any) -> Any:
            if type(x) is not dict:
                raise _Fail("must be an object")
            for name in required:
                if name not in x:
                    raise _Fail(missing[name])
            out = x
            for k, v in x.items():
                fn = table.get(k)
                if fn is None:
                    continue
                if v is None:
                    if k in nullable:
                        continue
                    raise _fail_at("must not be null", k)
                try:
                    w = fn(v)
                except _Fail as f:
                    f.path.append(k)
                    raise
                if w is not v:
                    if out is x:
                        out = dict(x)
                    out[k] = w
            if defaults:
                for k, d in defaults:
                    if k not in x:
                        if out is x:
                            out = dict(x)
                        out[k] = d
            return out

        return check_object

    def ref(self, schema: dict[str, Any], where: str) -> Check:
        key = self.ref_key(schema.get("ref"), where)
        if not self.bind:
            return _check_nothing
        return self.catalog._bind(key, union_member=False)

    def union_parts(self, schema: dict[str, Any], where: str) -> _Union:
        refs = schema.get("refs")
        if type(refs) is not list:
            raise self._bad(where, "a union needs a 'refs' list")
        closed = self._opt(schema, "closed", bool, where) or False
        if closed and not refs:
            raise self._bad(where, "a closed union needs at least one ref")
        members: dict[str, Check] = {}
        names: list[str] = []
        for ref in refs:
            key = self.ref_key(ref, where)
            fn = self.catalog._bind(key, union_member=True) if self.bind else _check_nothing
            members[key] = fn
            nsid, name = key.split("#", 1)
            if name == "main":
                members[nsid] = fn
                names.append(nsid)
            else:
                names.append(key)
        return _Union(members, closed, names)

    def union(self, schema: dict[str, Any], where: str) -> Check:
        parts = self.union_parts(schema, where)
        members = parts.members
        closed = parts.closed
        shown = ", ".join(parts.names)

        def check_union(x: Any) -> Any:
            if type(x) is not dict:
                raise _Fail("must be an object")
            t = x.get("$type")
            if type(t) is not str or not t:
                if t is None:
                    raise _Fail('must have the property "$type"')
                raise _fail_at("must be a non-empty string", "$type")
            fn = members.get(t)
            if fn is None:
                if closed:
                    raise _Fail(f"$type must be one of ({shown}), not {t!r}")
                return x
            return fn(x)

        return check_union


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _check_nothing(x: Any) -> Any:
    return x


def _check_plain_str(x: Any) -> Any:
    if type(x) is not str:
        raise _Fail("must be a string")
    return x


def _check_cid_link(x: Any) -> Any:
    if not _is_link(x):
        raise _Fail("must be a CID link")
    return x


def _check_unknown(x: Any) -> Any:
    if type(x) is not dict:
        raise _Fail("must be an object")
    if x.get("$type") == "blob" or "$bytes" in x or "$link" in x:
        raise _Fail("must be a plain object, not a blob, bytes or link")
    _check_data(x)
    return x


_FIELD_BUILDERS: Final[dict[str, Callable[[_Builder, dict[str, Any], str], Check]]] = {
    "boolean": _Builder.boolean,
    "integer": _Builder.integer,
    "string": _Builder.string,
    "bytes": _Builder.bytes_,
    "cid-link": _Builder.cid_link,
    "blob": _Builder.blob,
    "unknown": _Builder.unknown,
    "array": _Builder.array,
    "object": _Builder.object,
    "ref": _Builder.ref,
    "union": _Builder.union,
}


# -- the catalog ----------------------------------------------------------------------


class Catalog:
    """Lexicon documents by NSID, checked and compiled for validation."""

    def __init__(self) -> None:
        self._docs: dict[str, dict[str, Any]] = {}
        self._defs: dict[str, _Def] = {}  # "nsid#name" -> definition
        self._compiling: set[str] = set()

    # -- loading --

    @classmethod
    def load(cls, directory: str | Path | None = None) -> Catalog:
        """Every ``*.json`` document under ``directory`` (default: the shipped ones)."""
        root = Path(directory) if directory is not None else default_lexicon_dir()
        if not root.is_dir():
            raise LexiconError(f"no lexicon directory at {root}")
        catalog = cls()
        for path in sorted(root.rglob("*.json")):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise LexiconError(f"{path}: cannot read lexicon JSON: {exc}") from None
            try:
                catalog.add(document)
            except LexiconError as exc:
                raise LexiconError(f"{path}: {exc.message}") from None
        return catalog

    def add(self, document: dict[str, Any]) -> None:
        """Check ``document`` and add it; ``LexiconError`` if invalid or a duplicate."""
        if type(document) is not dict:
            raise LexiconError("a lexicon document must be a JSON object")
        version = document.get("lexicon")
        if type(version) is not int or version != 1:
            raise LexiconError(f"'lexicon' must be the integer 1, not {version!r}")
        doc_id = document.get("id")
        if type(doc_id) is not str or not syntax.is_valid_nsid(doc_id):
            raise LexiconError(f"'id' must be an NSID string, not {doc_id!r}")
        if doc_id in self._docs:
            raise LexiconError(f"{doc_id}: a lexicon with this id is already loaded")
        if "description" in document and type(document["description"]) is not str:
            raise LexiconError(f"{doc_id}: 'description' must be a string")
        if "revision" in document and type(document["revision"]) is not int:
            raise LexiconError(f"{doc_id}: 'revision' must be an integer")
        defs = document.get("defs")
        if type(defs) is not dict or not defs:
            raise LexiconError(f"{doc_id}: 'defs' must be a non-empty object")
        builder = _Builder(self, doc_id, bind=False)
        checked = {f"{doc_id}#{name}": builder.named(name, schema) for name, schema in defs.items()}
        self._docs[doc_id] = document
        self._defs.update(checked)

    # -- lookups --

    def __contains__(self, nsid: object) -> bool:
        return nsid in self._docs

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._docs))

    def get(self, nsid: str) -> dict[str, Any] | None:
        """The raw document with this id (do not mutate it), or None."""
        return self._docs.get(nsid)

    def method(self, nsid: str) -> MethodDef | None:
        """The query, procedure or subscription ``nsid``, or None."""
        d = self._defs.get(f"{nsid}#main")
        return d.info if d is not None else None

    def record_key_type(self, collection: str) -> str | None:
        """The ``key`` of a record lexicon (``tid``, ``any``, ``literal:self``...), or None."""
        d = self._defs.get(f"{collection}#main")
        return d.record_key if d is not None and d.type == "record" else None

    def unresolved_refs(self) -> list[tuple[str, str]]:
        """``(document id, ref)`` for every ref or union ref that does not resolve to a
        definition of a kind it may point at."""
        out: list[tuple[str, str]] = []
        for doc_id, doc in self._docs.items():
            for ref, member in _iter_refs(doc["defs"]):
                key = "#".join(_split_ref(ref, doc_id))
                d = self._defs.get(key)
                if d is None or d.type not in (_UNION_MEMBER_TYPES if member else _DATA_TYPES):
                    out.append((doc_id, ref))
        return out

    # -- compilation and ref binding --

    def _check_of(self, key: str, union_member: bool) -> Check:
        """The compiled check of definition ``key``, compiled now if need be."""
        d = self._defs.get(key)
        if d is None:
            raise LexiconError(f"lexicon reference {key} does not resolve")
        allowed = _UNION_MEMBER_TYPES if union_member else _DATA_TYPES
        if d.type not in allowed:
            what = "a union member" if union_member else "the target of a ref"
            raise LexiconError(f"{key} is a {d.type} and cannot be {what}")
        if d.compiled is None:
            self._compiling.add(key)
            try:
                d.compiled = _Builder(self, d.nsid, bind=True).compile_def(d)
            finally:
                self._compiling.discard(key)
        return d.compiled

    def _bind(self, key: str, union_member: bool) -> Check:
        """A ref's check: its target's own check, or a trampoline that finds the
        target on first use (while the target is being compiled, or absent)."""
        d = self._defs.get(key)
        if d is not None and (d.compiled is not None or key not in self._compiling):
            return self._check_of(key, union_member)
        target: Check | None = None

        def check_ref(x: Any) -> Any:
            nonlocal target
            if target is None:
                target = self._check_of(key, union_member)
            return target(x)

        return check_ref

    def _method(self, nsid: str) -> _Method:
        d = self._defs.get(f"{nsid}#main")
        if d is None or d.info is None:
            raise LexiconError(f"no method lexicon {nsid!r}")
        if d.method is None:
            d.method = _Builder(self, nsid, bind=True).method(d.type, d.schema, "defs/main")
        return d.method

    # -- validation --

    def _record_def(self, collection: str) -> _Def:
        d = self._defs.get(f"{collection}#main")
        if d is None or d.type != "record":
            raise LexiconError(f"no record lexicon for collection {collection!r}")
        return d

    def validate_record(self, collection: str, record: Any) -> None:
        """Check a record for ``collection``: ``$type`` must equal it, then the schema."""
        d = self._defs.get(collection + "#main")
        check = d.compiled if d is not None else None
        if check is None:
            self._record_def(collection)
            check = self._check_of(collection + "#main", union_member=False)
        if type(record) is not dict:
            raise ValidationError("must be an object", "record")
        t = record.get("$type")
        if t is None:
            raise ValidationError('must have the property "$type"', "record")
        if t != collection:
            raise ValidationError(f'must be "{collection}", not {t!r}', "record/$type")
        _run(check, record, "record")

    def validate_record_key(self, collection: str, rkey: Any) -> None:
        """Check ``rkey`` against the generic syntax and the collection's key type."""
        key_type = self._record_def(collection).record_key
        if not syntax.is_valid_record_key(rkey):
            raise ValidationError("must be a valid record key", "rkey")
        if key_type == "tid" and not syntax.is_valid_tid(rkey):
            raise ValidationError(f"must be a TID for {collection}", "rkey")
        if key_type == "nsid" and not syntax.is_valid_nsid(rkey):
            raise ValidationError(f"must be an NSID for {collection}", "rkey")
        if key_type is not None and key_type.startswith("literal:") and rkey != key_type[8:]:
            raise ValidationError(f'must be "{key_type[8:]}" for {collection}', "rkey")

    def validate_params(
        self, nsid: str, params: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any]:
        """Typed, checked parameters from raw query-string values.

        Integers and booleans (``true``/``false``) are parsed, repeated keys
        (lists) make arrays, defaults fill absent parameters, undeclared
        parameters are dropped.
        """
        out: dict[str, Any] = {}
        for p in self._method(nsid).params:
            raw = params.get(p.name)
            if raw is None or (isinstance(raw, (list, tuple)) and not raw):
                if p.default is not _NO_DEFAULT:
                    out[p.name] = p.default
                elif p.required:
                    raise ValidationError(f'must have the property "{p.name}"', "params")
                continue
            try:
                if p.type == "array":
                    values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
                    typed: Any = [
                        _parse_param(v, p.item_type or "string", i) for i, v in enumerate(values)
                    ]
                else:
                    if isinstance(raw, (list, tuple)):
                        if len(raw) != 1:
                            raise _Fail("must be given only once")
                        raw = raw[0]
                    typed = _parse_param(raw, p.type, None)
                out[p.name] = p.check(typed)
            except _Fail as f:
                raise ValidationError(
                    f.message, "/".join(["params", p.name, *reversed(f.path)])
                ) from None
        return out

    def validate_input(self, nsid: str, body: Any) -> Any:
        """Check a procedure's input body against its schema (if it declares one)."""
        m = self._method(nsid)
        return _check_body(nsid, m.info.input_encoding, m.input, body, "input", "takes no input")

    def validate_output(self, nsid: str, body: Any) -> Any:
        """Check a method's output body against its schema (if it declares one)."""
        m = self._method(nsid)
        return _check_body(nsid, m.info.output_encoding, m.output, body, "output", "has no output")

    def validate_message(self, nsid: str, message: Any, message_type: str | None = None) -> Any:
        """Check one subscription message against the member of its message union.

        The member is picked by ``message_type`` (``#commit`` or the full
        ``com.atproto.sync.subscribeRepos#commit``, as a frame header names
        it) or by the message's own ``$type``; with neither, the first member
        the message satisfies wins. Types outside an open union pass as is.
        """
        m = self._method(nsid)
        if m.message is None:
            raise LexiconError(f"{nsid} is not a subscription")
        union = m.message
        if message_type is None and type(message) is dict and type(message.get("$type")) is str:
            message_type = message["$type"]
        if message_type is not None:
            if message_type.startswith("#"):
                message_type = nsid + message_type
            fn = union.members.get(message_type)
            if fn is None:
                if union.closed:
                    shown = ", ".join(union.names)
                    raise ValidationError(
                        f"must be one of ({shown}), not {message_type!r}", "message"
                    )
                return message
            return _run(fn, message, "message")
        first: ValidationError | None = None
        for member in dict.fromkeys(union.members.values()):
            try:
                return _run(member, message, "message")
            except ValidationError as exc:
                first = first or exc
        if first is not None and len(union.names) == 1:
            raise first
        raise ValidationError(f"must be one of ({', '.join(union.names)})", "message")

    def validate(self, ref: str, value: Any) -> Any:
        """Check ``value`` against any data definition, e.g. ``app.bsky.feed.defs#postView``."""
        if type(ref) is not str or ref.startswith("#"):
            raise LexiconError(f"validate needs a full reference, not {ref!r}")
        key = "#".join(_split_ref(ref, ""))
        return _run(self._check_of(key, union_member=False), value, "value")


def _parse_param(raw: Any, type_: str, index: int | None) -> Any:
    """One raw query-string value converted to its declared scalar type."""
    try:
        if type_ == "integer":
            if type(raw) is int:
                return raw
            if type(raw) is str and _INTEGER_PARAM.fullmatch(raw):
                return int(raw)
            raise _Fail("must be an integer")
        if type_ == "boolean":
            if type(raw) is bool:
                return raw
            if raw == "true":
                return True
            if raw == "false":
                return False
            raise _Fail('must be a boolean ("true" or "false")')
        if type(raw) is not str:
            raise _Fail("must be a string")
        return raw
    except _Fail as f:
        if index is not None:
            f.path.append(str(index))
        raise


_INTEGER_PARAM: Final = regex.compile(r"-?[0-9]{1,19}")


def _iter_refs(node: Any) -> Iterator[tuple[str, bool]]:
    """Every ``(ref, is_union_member)`` in a schema tree."""
    if type(node) is dict:
        t = node.get("type")
        if t == "ref" and type(node.get("ref")) is str:
            yield node["ref"], False
        elif t == "union" and type(node.get("refs")) is list:
            for r in node["refs"]:
                if type(r) is str:
                    yield r, True
        for v in node.values():
            if type(v) in (dict, list):
                yield from _iter_refs(v)
    elif type(node) is list:
        for v in node:
            yield from _iter_refs(v)


def _check_body(
    nsid: str, encoding: str | None, validator: Any, body: Any, where: str, absent: str
) -> Any:
    """Validate an input or output body: none allowed without an encoding."""
    if encoding is None:
        if body is not None:
            raise ValidationError(f"{nsid} {absent}", where)
        return body
    if validator is None:
        return body
    return _run(validator, body, where)
