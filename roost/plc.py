"""did:plc: operations, signatures, DID derivation, log validation, DID documents, client.

An identity's history is a chain of signed operations kept by a directory:

- ``plc_operation`` (:class:`PlcOperation`) sets the whole state: rotation keys
  (priority order, highest authority first), verification methods, alsoKnownAs
  and services. With ``prev`` null it is a genesis op and the DID is derived
  from its hash; otherwise ``prev`` is the CID *string* of the op it extends.
- ``plc_tombstone`` (:class:`PlcTombstone`) deactivates the DID for good.
- legacy ``create`` (:class:`LegacyCreate`): the first genesis format, still
  valid at the start of old logs, never built any more. Its meaning is its
  :meth:`~LegacyCreate.normalized` ``plc_operation``; hashes and signatures use
  the legacy form.

Each op is signed (ECDSA-SHA256, low-S, ``r || s``) over the DAG-CBOR of the
op *without* its ``sig`` key by a rotation key of the previous op (genesis:
one of its own). ``sig`` is base64url without padding and decoded strictly
(:func:`decode_sig`): anything else would let a third party change an op's CID
without invalidating it.

:func:`validate_next_op` is the directory algorithm (identity spec §3.5): a
new op is checked against the DID's log, including recovery, where a
higher-priority rotation key may fork the chain at an earlier op and nullify
everything after it within :data:`RECOVERY_WINDOW` of the first nullified op.
:func:`replay_log` runs it over a whole audit log.

:class:`PlcClient` talks to a directory over HTTP; the builders
(:func:`build_genesis`, :func:`build_update`, :func:`build_tombstone`,
:func:`sign_op`) make ops offline.

Errors: :class:`~roost.errors.InvalidPlcOperation` names the rule an op breaks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol, TypeAlias, TypeVar
from urllib.parse import quote

import httpx

from roost import cbor
from roost.cid import CID
from roost.crypto import K256, P256, PrivateKey, PublicKey, b58decode, parse_did_key
from roost.errors import (
    CidError,
    CryptoError,
    DataModelError,
    DidDeactivated,
    DidNotFound,
    InvalidPlcOperation,
    PayloadTooLarge,
    PlcConflict,
    RateLimitExceeded,
    RoostError,
    UpstreamFailure,
)

__all__ = [
    "MAX_OP_BYTES",
    "MAX_ALSO_KNOWN_AS",
    "MAX_ALSO_KNOWN_AS_LENGTH",
    "MAX_ROTATION_KEYS",
    "MAX_SERVICES",
    "MAX_SERVICE_ID_LENGTH",
    "MAX_SERVICE_TYPE_LENGTH",
    "MAX_SERVICE_ENDPOINT_LENGTH",
    "MAX_VERIFICATION_METHODS",
    "MAX_VERIFICATION_METHOD_ID_LENGTH",
    "MAX_VERIFICATION_METHOD_KEY_LENGTH",
    "RECOVERY_WINDOW",
    "PDS_SERVICE_ID",
    "PDS_SERVICE_TYPE",
    "Service",
    "PlcOperation",
    "PlcTombstone",
    "LegacyCreate",
    "Op",
    "LogEntry",
    "IndexedOp",
    "NextOp",
    "DocumentState",
    "OpRateLimits",
    "parse_op",
    "load_op",
    "decode_sig",
    "encode_sig",
    "did_for_genesis",
    "is_valid_plc_did",
    "op_cid",
    "verify_op",
    "validate_next_op",
    "replay_log",
    "check_rate_limits",
    "state_from_op",
    "format_timestamp",
    "parse_timestamp",
    "build_genesis",
    "build_update",
    "build_tombstone",
    "sign_op",
    "UNCHANGED",
    "KeyLike",
    "PlcClient",
]

# -- limits -----------------------------------------------------------------------

#: Largest op, in DAG-CBOR bytes (reference directory; the spec allows 7,500).
MAX_OP_BYTES: Final = 4_000
#: ``alsoKnownAs``: entries, and characters per entry (253-char handle + ``at://``).
MAX_ALSO_KNOWN_AS: Final = 10
MAX_ALSO_KNOWN_AS_LENGTH: Final = 258
#: ``rotationKeys`` entries (reference directory; the spec says 5).
MAX_ROTATION_KEYS: Final = 10
#: ``services``: entries, id length, ``type`` and ``endpoint`` lengths.
MAX_SERVICES: Final = 10
MAX_SERVICE_ID_LENGTH: Final = 32
MAX_SERVICE_TYPE_LENGTH: Final = 256
MAX_SERVICE_ENDPOINT_LENGTH: Final = 512
#: ``verificationMethods``: entries, id length, did:key length.
MAX_VERIFICATION_METHODS: Final = 10
MAX_VERIFICATION_METHOD_ID_LENGTH: Final = 32
MAX_VERIFICATION_METHOD_KEY_LENGTH: Final = 256
#: How long after the first op it nullifies a recovery op is accepted (inclusive).
RECOVERY_WINDOW: Final = timedelta(hours=72)

PDS_SERVICE_ID: Final = "atproto_pds"
PDS_SERVICE_TYPE: Final = "AtprotoPersonalDataServer"

_SIG_CHARS: Final = 86  # 64 bytes in unpadded base64
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_PLC_DID_RE: Final = re.compile(r"did:plc:[a-z2-7]{24}")
_DID_KEY_RE: Final = re.compile(r"did:key:z[1-9A-HJ-NP-Za-km-z]+")
_CONTEXT_BASE: Final = ("https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1")
_CONTEXT_BY_CURVE: Final[Mapping[str, str]] = {
    K256: "https://w3id.org/security/suites/secp256k1-2019/v1",
    P256: "https://w3id.org/security/suites/ecdsa-2019/v1",
}
_MS: Final = timedelta(milliseconds=1)


def _bad(message: str) -> InvalidPlcOperation:
    return InvalidPlcOperation(message)


# -- signatures -------------------------------------------------------------------


def encode_sig(raw: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_sig(sig: object) -> bytes:
    """The 64 signature bytes of ``sig``, decoded strictly.

    Only the canonical unpadded base64url encoding of exactly 64 bytes is
    accepted: no ``=`` padding, no whitespace or newlines, no standard-base64
    characters, zero unused trailing bits. (High-S is checked on verify.)
    """
    if not isinstance(sig, str):
        raise _bad("Invalid signature: sig must be a string")
    if len(sig) == _SIG_CHARS and _B64URL_RE.fullmatch(sig):
        raw = base64.urlsafe_b64decode(sig + "==")
        if encode_sig(raw) != sig:
            raise _bad(
                "Invalid signature encoding: non-zero trailing bits (non-canonical base64url)"
            )
        return raw
    if "=" in sig:
        raise _bad("Invalid signature encoding: base64url padding ('=') is not allowed")
    if any(ch.isspace() for ch in sig):
        raise _bad("Invalid signature encoding: whitespace or newlines are not allowed")
    if not _B64URL_RE.fullmatch(sig):
        raise _bad("Invalid signature encoding: sig must be base64url (A-Z a-z 0-9 - _)")
    raise _bad(
        f"Invalid signature encoding: sig must encode 64 bytes ({_SIG_CHARS} base64url "
        f"characters), got {len(sig)} characters (DER signatures are not allowed)"
    )


# -- op types ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Service:
    """One ``services`` entry: ``{"type": ..., "endpoint": ...}``."""

    type: str
    endpoint: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "endpoint": self.endpoint}


class _OpMethods:
    """Behaviour shared by the three op types (each defines ``unsigned``)."""

    __slots__ = ()

    sig: str | None
    prev: str | None

    def unsigned(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The op as a JSON / data-model map (with ``sig`` when signed)."""
        out = self.unsigned()
        if self.sig is not None:
            out["sig"] = self.sig
        return out

    def signing_bytes(self) -> bytes:
        """DAG-CBOR of the op without ``sig``: what the signature covers."""
        return cbor.encode(self.unsigned(), check_floats=False)

    def cbor_bytes(self) -> bytes:
        """DAG-CBOR of the signed op: what the CID and the DID hash."""
        if self.sig is None:
            raise _bad("operation is not signed")
        return cbor.encode(self.to_json(), check_floats=False)

    @property
    def cid(self) -> CID:
        """CID of the signed op (dag-cbor, sha-256)."""
        return CID.for_cbor_bytes(self.cbor_bytes())

    @property
    def is_genesis(self) -> bool:
        return self.prev is None


@dataclass(frozen=True, slots=True)
class PlcOperation(_OpMethods):
    """A ``plc_operation``: genesis (``prev`` None) or update. ``sig`` None = unsigned."""

    rotation_keys: tuple[str, ...]
    verification_methods: Mapping[str, str]
    also_known_as: tuple[str, ...]
    services: Mapping[str, Service]
    prev: str | None
    sig: str | None = None
    type: Literal["plc_operation"] = field(default="plc_operation", init=False)

    def unsigned(self) -> dict[str, Any]:
        return {
            "type": "plc_operation",
            "rotationKeys": list(self.rotation_keys),
            "verificationMethods": dict(self.verification_methods),
            "alsoKnownAs": list(self.also_known_as),
            "services": {k: v.to_json() for k, v in self.services.items()},
            "prev": self.prev,
        }

    def normalized(self) -> PlcOperation:
        return self


@dataclass(frozen=True, slots=True)
class PlcTombstone(_OpMethods):
    """A ``plc_tombstone``: deactivates the DID (``prev`` is never None)."""

    prev: str
    sig: str | None = None
    type: Literal["plc_tombstone"] = field(default="plc_tombstone", init=False)

    def unsigned(self) -> dict[str, Any]:
        return {"type": "plc_tombstone", "prev": self.prev}

    def normalized(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class LegacyCreate(_OpMethods):
    """A legacy ``create`` genesis op (read and verify only; never build new ones)."""

    signing_key: str
    recovery_key: str
    handle: str
    service: str
    sig: str | None = None
    prev: None = None
    type: Literal["create"] = field(default="create", init=False)

    def unsigned(self) -> dict[str, Any]:
        return {
            "type": "create",
            "signingKey": self.signing_key,
            "recoveryKey": self.recovery_key,
            "handle": self.handle,
            "service": self.service,
            "prev": None,
        }

    def normalized(self) -> PlcOperation:
        """The equivalent ``plc_operation`` (same ``sig``; its CID differs, use the legacy one).

        As the reference: ``at://`` is prefixed to the handle (an ``http(s)://``
        prefix is dropped first) and ``https://`` to a service without a scheme.
        """
        return PlcOperation(
            rotation_keys=(self.recovery_key, self.signing_key),
            verification_methods={"atproto": self.signing_key},
            also_known_as=(_at_uri(self.handle),),
            services={PDS_SERVICE_ID: Service(PDS_SERVICE_TYPE, _http_url(self.service))},
            prev=None,
            sig=self.sig,
        )


Op: TypeAlias = PlcOperation | PlcTombstone | LegacyCreate


def _at_uri(handle: str) -> str:
    if handle.startswith("at://"):
        return handle
    return "at://" + handle.replace("http://", "", 1).replace("https://", "", 1)


def _http_url(endpoint: str) -> str:
    if endpoint.startswith(("http://", "https://")):
        return endpoint
    return "https://" + endpoint


# -- parsing ----------------------------------------------------------------------

_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "plc_operation": frozenset(
        {"type", "rotationKeys", "verificationMethods", "alsoKnownAs", "services", "prev"}
    ),
    "plc_tombstone": frozenset({"type", "prev"}),
    "create": frozenset({"type", "signingKey", "recoveryKey", "handle", "service", "prev"}),
}


def _check_keys(obj: Mapping[str, Any], op_type: str, require_sig: bool) -> None:
    expected = _KEYS[op_type]
    keys = set(obj)
    missing = expected - keys
    if require_sig and "sig" not in keys:
        missing = missing | {"sig"}
    if missing:
        raise _bad(f"Invalid {op_type}: missing field(s) {', '.join(sorted(missing))}")
    extra = keys - expected - {"sig"}
    if extra:
        raise _bad(f"Invalid {op_type}: unknown field(s) {', '.join(sorted(extra))}")


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"Invalid operation: {what} must be a string")
    return value


def _prev(value: object, *, nullable: bool) -> str | None:
    if value is None:
        if nullable:
            return None
        raise _bad("Invalid operation: prev must be a CID string, not null")
    if not isinstance(value, str):
        raise _bad("Invalid operation: prev must be a CID string (not a link object)")
    try:
        cid = CID.from_str(value)
    except (CidError, DataModelError):
        raise _bad(f"Invalid operation: prev is not a valid CID: {value[:100]!r}") from None
    if not cid.is_dag_cbor or str(cid) != value:
        raise _bad(f"Invalid operation: prev must be a base32 dag-cbor CID: {value[:100]!r}")
    return value


def _rotation_key(value: object) -> str:
    key = _string(value, "rotation key")
    try:
        parse_did_key(key)
    except CryptoError:
        raise _bad(f"Invalid rotationKey (must be a k256 or p256 did:key): {key[:300]}") from None
    return key


def _parse_plc_operation(obj: Mapping[str, Any]) -> PlcOperation:
    rotation = obj["rotationKeys"]
    if not isinstance(rotation, list):
        raise _bad("Invalid operation: rotationKeys must be an array")
    if len(rotation) > MAX_ROTATION_KEYS:
        raise _bad(f"Too many rotationKeys entries (max {MAX_ROTATION_KEYS})")
    rotation_keys = tuple(_rotation_key(k) for k in rotation)

    methods = obj["verificationMethods"]
    if not isinstance(methods, dict):
        raise _bad("Invalid operation: verificationMethods must be an object")
    if len(methods) > MAX_VERIFICATION_METHODS:
        raise _bad(f"Too many verificationMethods entries (max {MAX_VERIFICATION_METHODS})")
    for vm_id, key in methods.items():
        if len(vm_id) > MAX_VERIFICATION_METHOD_ID_LENGTH:
            raise _bad(
                f"Verification method id too long (max {MAX_VERIFICATION_METHOD_ID_LENGTH}): "
                f"{vm_id[:100]}"
            )
        _string(key, f"verificationMethods[{vm_id!r}]")
        if len(key) > MAX_VERIFICATION_METHOD_KEY_LENGTH or not _DID_KEY_RE.fullmatch(key):
            raise _bad(f"Invalid verificationMethod key (must be a did:key): {key[:300]}")

    aka = obj["alsoKnownAs"]
    if not isinstance(aka, list):
        raise _bad("Invalid operation: alsoKnownAs must be an array")
    if len(aka) > MAX_ALSO_KNOWN_AS:
        raise _bad(f"Too many alsoKnownAs entries (max {MAX_ALSO_KNOWN_AS})")
    seen: set[str] = set()
    for entry in aka:
        _string(entry, "alsoKnownAs entry")
        if len(entry) > MAX_ALSO_KNOWN_AS_LENGTH:
            raise _bad(
                f"alsoKnownAs entry too long (max {MAX_ALSO_KNOWN_AS_LENGTH}): {entry[:300]}"
            )
        if entry in seen:
            raise _bad(f"Duplicate alsoKnownAs entry: {entry}")
        seen.add(entry)

    raw_services = obj["services"]
    if not isinstance(raw_services, dict):
        raise _bad("Invalid operation: services must be an object")
    if len(raw_services) > MAX_SERVICES:
        raise _bad(f"Too many services entries (max {MAX_SERVICES})")
    services: dict[str, Service] = {}
    for sid, svc in raw_services.items():
        if len(sid) > MAX_SERVICE_ID_LENGTH:
            raise _bad(f"Service id too long (max {MAX_SERVICE_ID_LENGTH}): {sid[:100]}")
        if not isinstance(svc, dict) or set(svc) != {"type", "endpoint"}:
            raise _bad(f"Invalid service {sid!r}: must be an object with exactly type and endpoint")
        stype = _string(svc["type"], f"services[{sid!r}].type")
        endpoint = _string(svc["endpoint"], f"services[{sid!r}].endpoint")
        if len(stype) > MAX_SERVICE_TYPE_LENGTH:
            raise _bad(f"Service type too long (max {MAX_SERVICE_TYPE_LENGTH})")
        if len(endpoint) > MAX_SERVICE_ENDPOINT_LENGTH:
            raise _bad(f"Service endpoint too long (max {MAX_SERVICE_ENDPOINT_LENGTH})")
        services[sid] = Service(stype, endpoint)

    return PlcOperation(
        rotation_keys=rotation_keys,
        verification_methods=dict(methods),
        also_known_as=tuple(aka),
        services=services,
        prev=_prev(obj["prev"], nullable=True),
        sig=obj.get("sig"),
    )


def _parse_legacy_create(obj: Mapping[str, Any]) -> LegacyCreate:
    if obj["prev"] is not None:
        raise _bad("Invalid create: legacy create operations must have prev null")
    op = LegacyCreate(
        signing_key=_rotation_key(obj["signingKey"]),
        recovery_key=_rotation_key(obj["recoveryKey"]),
        handle=_string(obj["handle"], "handle"),
        service=_string(obj["service"], "service"),
        sig=obj.get("sig"),
    )
    norm = op.normalized()
    if len(norm.also_known_as[0]) > MAX_ALSO_KNOWN_AS_LENGTH:
        raise _bad(f"handle too long (max {MAX_ALSO_KNOWN_AS_LENGTH - 5})")
    if len(norm.services[PDS_SERVICE_ID].endpoint) > MAX_SERVICE_ENDPOINT_LENGTH:
        raise _bad(f"Service endpoint too long (max {MAX_SERVICE_ENDPOINT_LENGTH})")
    return op


def parse_op(obj: object, *, require_sig: bool = True) -> Op:
    """A typed op from its JSON form, checking structure, field limits and size.

    Unknown fields are refused (not silently dropped: that would change the
    op's CID and break its signature). ``sig`` must be present and strictly
    encoded unless ``require_sig`` is false.
    """
    if not isinstance(obj, dict):
        raise _bad("Invalid operation: expected a JSON object")
    try:
        size = len(cbor.encode(obj))
    except DataModelError as exc:
        raise _bad(f"Invalid operation: not encodable as DAG-CBOR ({exc.message})") from None
    if size > MAX_OP_BYTES:
        raise _bad(
            f"Operation too large ({MAX_OP_BYTES} bytes maximum in cbor encoding, got {size})"
        )
    op_type = obj.get("type")
    if not isinstance(op_type, str) or op_type not in _KEYS:
        raise _bad(
            f"Invalid operation: type must be plc_operation, plc_tombstone or create, "
            f"got {op_type!r}"[:300]
        )
    _check_keys(obj, op_type, require_sig)
    if "sig" in obj:
        decode_sig(obj["sig"])
    op: Op
    if op_type == "plc_operation":
        op = _parse_plc_operation(obj)
    elif op_type == "plc_tombstone":
        prev = _prev(obj["prev"], nullable=False)
        assert prev is not None
        op = PlcTombstone(prev=prev, sig=obj.get("sig"))
    else:
        op = _parse_legacy_create(obj)
    return op


def load_op(obj: Mapping[str, Any]) -> Op:
    """A typed op from JSON that was validated before (a store's own rows).

    No limit, key or signature-encoding checks: use :func:`parse_op` for
    anything that comes from outside.
    """
    op_type = obj["type"]
    if op_type == "plc_operation":
        return PlcOperation(
            rotation_keys=tuple(obj["rotationKeys"]),
            verification_methods=dict(obj["verificationMethods"]),
            also_known_as=tuple(obj["alsoKnownAs"]),
            services={k: Service(v["type"], v["endpoint"]) for k, v in obj["services"].items()},
            prev=obj["prev"],
            sig=obj.get("sig"),
        )
    if op_type == "plc_tombstone":
        return PlcTombstone(prev=obj["prev"], sig=obj.get("sig"))
    if op_type == "create":
        return LegacyCreate(
            signing_key=obj["signingKey"],
            recovery_key=obj["recoveryKey"],
            handle=obj["handle"],
            service=obj["service"],
            sig=obj.get("sig"),
        )
    raise _bad(f"unknown operation type {op_type!r}")


# -- hashing and signatures ---------------------------------------------------------


def op_cid(op: Op) -> str:
    """The CID string of a signed op (what the next op's ``prev`` holds)."""
    return str(op.cid)


def did_for_genesis(op: Op) -> str:
    """``did:plc:`` + the first 24 base32 characters of sha256(signed genesis op)."""
    digest = hashlib.sha256(op.cbor_bytes()).digest()
    return "did:plc:" + base64.b32encode(digest).decode("ascii").lower()[:24]


def is_valid_plc_did(did: object) -> bool:
    """True for ``did:plc:`` + 24 lowercase base32 characters."""
    return isinstance(did, str) and _PLC_DID_RE.fullmatch(did) is not None


def _parse_keys(keys: Iterable[str]) -> Iterator[PublicKey | None]:
    """Parsed keys, lazily (most ops are signed by the first key tried)."""
    for key in keys:
        try:
            yield parse_did_key(key)
        except CryptoError:
            yield None


def verify_op(op: Op, keys: Sequence[str]) -> int | None:
    """Index of the first of ``keys`` (did:key strings) whose signature ``op`` carries.

    Strict: the ``sig`` encoding rules of :func:`decode_sig` and low-S.
    Returns None if no key verifies; raises InvalidPlcOperation for a
    malformed ``sig``.
    """
    raw = decode_sig(op.sig)
    message = op.signing_bytes()
    for i, key in enumerate(_parse_keys(keys)):
        if key is not None and key.verify(message, raw):
            return i
    return None


def _require_sig(op: Op, keys: Sequence[str], what: str) -> int:
    index = verify_op(op, keys)
    if index is not None:
        return index
    raw = decode_sig(op.sig)
    message = op.signing_bytes()
    for key in _parse_keys(keys):
        if key is not None and key.verify(message, raw, allow_high_s=True):
            raise _bad(f"Invalid signature: high-S signature (low-S is required); {what}")
    raise _bad(f"Invalid signature: {what}")


# -- logs and validation --------------------------------------------------------------


def format_timestamp(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.sssZ`` in UTC (milliseconds, truncated)."""
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """A UTC datetime (millisecond precision) from an ISO 8601 timestamp with offset or Z."""
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("timestamp must be a short string")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid timestamp {text!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"timestamp needs a timezone: {text!r}")
    when = when.astimezone(UTC)
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


class IndexedOp(Protocol):
    """What the validator reads from a stored op (:class:`LogEntry` and store rows)."""

    @property
    def operation(self) -> Op: ...
    @property
    def cid(self) -> str: ...
    @property
    def nullified(self) -> bool: ...
    @property
    def created_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One op as a directory holds it: ``/log/audit`` and ``/export`` entries.

    ``seq`` is the directory's own sequence number when it has one.
    """

    did: str
    operation: Op
    cid: str
    created_at: datetime
    nullified: bool = False
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The audit-log / legacy export form."""
        return {
            "did": self.did,
            "operation": self.operation.to_json(),
            "cid": self.cid,
            "nullified": self.nullified,
            "createdAt": format_timestamp(self.created_at),
        }

    def to_sequenced_json(self) -> dict[str, Any]:
        """The ``sequenced_op`` export form."""
        return {
            "type": "sequenced_op",
            "did": self.did,
            "operation": self.operation.to_json(),
            "cid": self.cid,
            "createdAt": format_timestamp(self.created_at),
            "seq": self.seq,
        }

    @classmethod
    def from_json(cls, obj: object, *, did: str | None = None) -> LogEntry:
        """From an audit-log or export line (legacy or ``sequenced_op``)."""
        if not isinstance(obj, dict):
            raise _bad("log entry must be a JSON object")
        entry_did = obj.get("did", did)
        if not isinstance(entry_did, str) or (did is not None and entry_did != did):
            raise _bad("log entry has a missing or mismatched did")
        op = parse_op(obj.get("operation"))
        cid = obj.get("cid")
        if not isinstance(cid, str):
            raise _bad("log entry has no cid")
        try:
            created_at = parse_timestamp(obj.get("createdAt"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise _bad(f"log entry has a bad createdAt: {exc}") from None
        seq = obj.get("seq")
        nullified = obj.get("nullified", False)
        if not isinstance(nullified, bool) or not (seq is None or type(seq) is int):
            raise _bad("log entry has a bad nullified or seq field")
        return cls(entry_did, op, cid, created_at, nullified, seq)


@dataclass(frozen=True, slots=True)
class NextOp:
    """A validated op: its CID, the op it extends, and the ops it nullifies."""

    cid: str
    prev: str | None
    nullified: tuple[str, ...]
    key_index: int

    @property
    def is_recovery(self) -> bool:
        return bool(self.nullified)


def validate_next_op(did: str, log: Sequence[IndexedOp], op: Op, now: datetime) -> NextOp:
    """Check ``op`` as the next op of ``did`` given its ``log`` (oldest first) at ``now``.

    ``log`` may include nullified entries (they are skipped). Raises
    :class:`InvalidPlcOperation` naming the broken rule; rate limits are
    separate (:func:`check_rate_limits`). Rules (identity spec §3.5):

    - creation: a ``plc_operation`` or legacy ``create``, ``prev`` null, signed by
      one of its own rotation keys, hashing to ``did``;
    - otherwise ``prev`` names an op of the valid chain that is not a tombstone;
      appending at the head needs a signature by one of that op's rotation keys;
    - forking earlier (recovery) needs a key of strictly higher priority than the
      one that signed the first op after the fork point, within
      :data:`RECOVERY_WINDOW` of that op's ``createdAt``; every later op is nullified;
    - ``now`` must be later than the newest op of the chain.
    """
    if op.sig is None:
        raise _bad("Invalid operation: missing sig")
    chain = [entry for entry in log if not entry.nullified]
    if not chain:
        if isinstance(op, PlcTombstone):
            raise _bad("Operations not correctly ordered: a tombstone cannot create a DID")
        if op.prev is not None:
            raise _bad(f"Invalid genesis operation: expected prev null for a new DID ({did})")
        norm = op.normalized()
        index = _require_sig(
            op, norm.rotation_keys, "genesis not signed by one of its rotationKeys"
        )
        expected = did_for_genesis(op)
        if expected != did:
            raise _bad(f"Hash of genesis operation does not match DID identifier: {expected}")
        return NextOp(cid=op_cid(op), prev=None, nullified=(), key_index=index)

    if op.prev is None:
        raise _bad(
            f"Operations not correctly ordered: prev is null but {did} already exists "
            "(only the genesis op has prev null)"
        )
    if isinstance(op, LegacyCreate):  # pragma: no cover - parse_op forces prev null
        raise _bad("Invalid operation: legacy create operations are only valid as genesis")
    fork_index = next((i for i, e in enumerate(chain) if e.cid == op.prev), None)
    if fork_index is None:
        if any(e.cid == op.prev for e in log):
            raise _bad(f"Operations not correctly ordered: prev {op.prev} is a nullified operation")
        raise _bad(f"Operations not correctly ordered: prev {op.prev} is not in the log of {did}")
    fork = chain[fork_index]
    fork_op = fork.operation.normalized()
    if fork_op is None:
        raise _bad(f"Operations not correctly ordered: {did} is tombstoned (prev is a tombstone)")
    head = chain[-1]
    if now <= head.created_at:
        raise _bad("Invalid operation timestamp order: must be later than the newest operation")
    keys = fork_op.rotation_keys
    later = chain[fork_index + 1 :]
    if not later:
        index = _require_sig(op, keys, "not signed by a rotationKey of the previous operation")
        return NextOp(cid=op_cid(op), prev=op.prev, nullified=(), key_index=index)

    disputed = later[0]
    disputed_index = verify_op(disputed.operation, keys)
    if disputed_index is None:  # pragma: no cover - stored ops were validated
        raise _bad(f"Stored operation {disputed.cid} does not verify; cannot fork over it")
    stronger = keys[:disputed_index]
    index = _require_sig(
        op,
        stronger,
        "a recovery must be signed by a rotationKey of higher priority than the key that "
        f"signed the operation it nullifies ({disputed.cid})",
    )
    lapsed = now - disputed.created_at
    if lapsed > RECOVERY_WINDOW:
        raise _bad(
            "Recovery operation occurred outside of the allowed 72 hr recovery window "
            f"(time lapsed: {lapsed})"
        )
    return NextOp(
        cid=op_cid(op), prev=op.prev, nullified=tuple(e.cid for e in later), key_index=index
    )


def replay_log(
    did: str, entries: Sequence[LogEntry], *, check_nullified: bool = True
) -> list[LogEntry]:
    """Validate a whole audit log (oldest first); returns it with recomputed ``nullified``.

    Each entry is checked with :func:`validate_next_op` at its own
    ``createdAt``, its CID recomputed, and (``check_nullified``) the given
    ``nullified`` flags compared with the recomputed ones.
    """
    if not entries:
        raise _bad(f"empty log for {did}")
    log: list[LogEntry] = []
    for entry in entries:
        if entry.did != did:
            raise _bad(f"log entry for {entry.did} in the log of {did}")
        if op_cid(entry.operation) != entry.cid:
            raise _bad(f"log entry CID {entry.cid} does not match its operation")
        result = validate_next_op(did, log, entry.operation, entry.created_at)
        if result.nullified:
            gone = set(result.nullified)
            log = [replace(e, nullified=True) if e.cid in gone else e for e in log]
        log.append(replace(entry, nullified=False))
    if check_nullified:
        for given, computed in zip(entries, log, strict=True):
            if given.nullified != computed.nullified:
                raise _bad(f"inconsistent nullified flag for {given.cid}")
    return log


@dataclass(frozen=True, slots=True)
class OpRateLimits:
    """Per-DID op limits for plain appends (reference: 10 / hour, 30 / day, 100 / week)."""

    per_hour: int = 10
    per_day: int = 30
    per_week: int = 100


def check_rate_limits(log: Sequence[IndexedOp], now: datetime, limits: OpRateLimits) -> None:
    """Raise RateLimitExceeded if the DID already has the maximum ops in a window."""
    for window, limit, name in (
        (timedelta(hours=1), limits.per_hour, "hour"),
        (timedelta(days=1), limits.per_day, "day"),
        (timedelta(days=7), limits.per_week, "week"),
    ):
        count = sum(1 for e in log if e.created_at > now - window)
        if count >= limit:
            raise RateLimitExceeded(f"Too many operations within last {name} (max {limit})")


# -- state and DID documents -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentState:
    """A DID's current state: what ``GET /:did/data`` returns."""

    did: str
    rotation_keys: tuple[str, ...]
    verification_methods: Mapping[str, str]
    also_known_as: tuple[str, ...]
    services: Mapping[str, Service]

    def to_json(self) -> dict[str, Any]:
        return {
            "did": self.did,
            "verificationMethods": dict(self.verification_methods),
            "rotationKeys": list(self.rotation_keys),
            "alsoKnownAs": list(self.also_known_as),
            "services": {k: v.to_json() for k, v in self.services.items()},
        }

    @classmethod
    def from_json(cls, obj: object) -> DocumentState:
        if not isinstance(obj, dict) or not isinstance(obj.get("did"), str):
            raise _bad("DID data must be an object with a did")
        op = _parse_plc_operation({**obj, "prev": None})
        return cls(
            obj["did"], op.rotation_keys, op.verification_methods, op.also_known_as, op.services
        )

    @property
    def handle(self) -> str | None:
        """The first ``at://`` alsoKnownAs entry, without the scheme."""
        for aka in self.also_known_as:
            if aka.startswith("at://"):
                return aka[5:]
        return None

    @property
    def pds_endpoint(self) -> str | None:
        svc = self.services.get(PDS_SERVICE_ID)
        return svc.endpoint if svc is not None and svc.type == PDS_SERVICE_TYPE else None

    @property
    def signing_key(self) -> str | None:
        return self.verification_methods.get("atproto")

    def did_document(self) -> dict[str, Any]:
        """The DID document as the reference directory renders it."""
        context = list(_CONTEXT_BASE)
        methods = []
        for vm_id, key in self.verification_methods.items():
            suite = _CONTEXT_BY_CURVE.get(_did_key_curve(key) or "")
            if suite is not None and suite not in context:
                context.append(suite)
            methods.append(
                {
                    "id": f"{self.did}#{vm_id}",
                    "type": "Multikey",
                    "controller": self.did,
                    "publicKeyMultibase": key.removeprefix("did:key:"),
                }
            )
        return {
            "@context": context,
            "id": self.did,
            "alsoKnownAs": list(self.also_known_as),
            "verificationMethod": methods,
            "service": [
                {"id": f"#{sid}", "type": svc.type, "serviceEndpoint": svc.endpoint}
                for sid, svc in self.services.items()
            ],
        }


_CURVE_BY_PREFIX: Final[Mapping[bytes, str]] = {b"\xe7\x01": K256, b"\x80\x24": P256}


def _did_key_curve(key: str) -> str | None:
    """k256 / p256 from a did:key's multicodec prefix (None for other key types).

    Only for rendering: keys were validated when their op was accepted.
    """
    if not key.startswith("did:key:z"):
        return None
    try:
        raw = b58decode(key[9:])
    except ValueError:
        return None
    return _CURVE_BY_PREFIX.get(raw[:2]) if len(raw) == 35 else None


def state_from_op(did: str, op: Op) -> DocumentState | None:
    """The state an op sets (None for a tombstone)."""
    norm = op.normalized()
    if norm is None:
        return None
    return DocumentState(
        did,
        norm.rotation_keys,
        dict(norm.verification_methods),
        norm.also_known_as,
        dict(norm.services),
    )


# -- builders -----------------------------------------------------------------------------

KeyLike: TypeAlias = PrivateKey | PublicKey | str


def _did_key(key: KeyLike) -> str:
    if isinstance(key, PrivateKey):
        return key.public_key.did_key()
    if isinstance(key, PublicKey):
        return key.did_key()
    if isinstance(key, str):
        parse_did_key(key)
        return key
    raise TypeError(f"expected a key or did:key string, not {type(key).__name__}")


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()


def build_genesis(
    *,
    rotation_keys: Sequence[KeyLike],
    signing_key: KeyLike,
    handle: str | None,
    pds_endpoint: str | None,
) -> PlcOperation:
    """An unsigned genesis ``plc_operation`` for an atproto account."""
    return PlcOperation(
        rotation_keys=tuple(_did_key(k) for k in rotation_keys),
        verification_methods={"atproto": _did_key(signing_key)},
        also_known_as=(_at_uri(handle),) if handle else (),
        services={PDS_SERVICE_ID: Service(PDS_SERVICE_TYPE, pds_endpoint)} if pds_endpoint else {},
        prev=None,
    )


def build_update(
    prev_op: Op,
    prev_cid: str | CID,
    *,
    signing_key: KeyLike | _Unchanged = UNCHANGED,
    pds_endpoint: str | _Unchanged = UNCHANGED,
    handle: str | _Unchanged = UNCHANGED,
    rotation_keys: Sequence[KeyLike] | _Unchanged = UNCHANGED,
    also_known_as: Sequence[str] | _Unchanged = UNCHANGED,
    verification_methods: Mapping[str, str] | _Unchanged = UNCHANGED,
    services: Mapping[str, Service] | _Unchanged = UNCHANGED,
) -> PlcOperation:
    """An unsigned update extending ``prev_op`` (whose CID is ``prev_cid``).

    Fields left UNCHANGED are copied. ``handle`` replaces the first ``at://``
    alsoKnownAs entry (or is prepended); ``pds_endpoint`` sets the
    ``atproto_pds`` service; ``signing_key`` sets the ``atproto`` method.
    """
    base = prev_op.normalized()
    if base is None:
        raise _bad("cannot update a tombstoned DID")
    methods = dict(base.verification_methods)
    if not isinstance(verification_methods, _Unchanged):
        methods = dict(verification_methods)
    if not isinstance(signing_key, _Unchanged):
        methods["atproto"] = _did_key(signing_key)
    aka = list(base.also_known_as)
    if not isinstance(also_known_as, _Unchanged):
        aka = list(also_known_as)
    if not isinstance(handle, _Unchanged):
        uri = _at_uri(handle)
        idx = next((i for i, a in enumerate(aka) if a.startswith("at://")), None)
        if idx is None:
            aka.insert(0, uri)
        else:
            aka[idx] = uri
    svcs = dict(base.services)
    if not isinstance(services, _Unchanged):
        svcs = dict(services)
    if not isinstance(pds_endpoint, _Unchanged):
        svcs[PDS_SERVICE_ID] = Service(PDS_SERVICE_TYPE, pds_endpoint)
    keys = base.rotation_keys
    if not isinstance(rotation_keys, _Unchanged):
        keys = tuple(_did_key(k) for k in rotation_keys)
    return PlcOperation(
        rotation_keys=keys,
        verification_methods=methods,
        also_known_as=tuple(aka),
        services=svcs,
        prev=str(prev_cid),
    )


def build_tombstone(prev_cid: str | CID) -> PlcTombstone:
    """An unsigned tombstone extending the op ``prev_cid``."""
    return PlcTombstone(prev=str(prev_cid))


OpT = TypeVar("OpT", bound=Op)


def sign_op(op: OpT, key: PrivateKey) -> OpT:
    """``op`` with ``sig`` set by ``key`` (over the DAG-CBOR of the op without sig)."""
    unsigned = replace(op, sig=None)
    return replace(unsigned, sig=encode_sig(key.sign(unsigned.signing_bytes())))


# -- client ---------------------------------------------------------------------------------


class PlcClient:
    """A did:plc directory over HTTP.

    Pass ``http`` to share a client (it is then not closed by :meth:`aclose`).
    Directory answers map to typed errors: 400 InvalidPlcOperation, 404
    DidNotFound, 409 PlcConflict, 410 DidDeactivated, 413 PayloadTooLarge,
    429 RateLimitExceeded, anything else UpstreamFailure.
    """

    def __init__(
        self, base_url: str, http: httpx.AsyncClient | None = None, *, timeout: float = 10.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> PlcClient:  # noqa: PYI034 - not meant to be subclassed
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _url(self, did: str, suffix: str = "") -> str:
        return f"{self.base_url}/{quote(did, safe=':')}{suffix}"

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise UpstreamFailure(
                f"PLC directory request failed: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code >= 400:
            raise _error_for(response)
        return response

    async def _get_json(self, url: str) -> Any:
        response = await self._request("GET", url)
        try:
            return response.json()
        except ValueError:
            raise UpstreamFailure(f"PLC directory returned invalid JSON from {url}") from None

    # reads

    async def get_document(self, did: str) -> dict[str, Any]:
        """The DID document (raw JSON)."""
        doc = await self._get_json(self._url(did))
        if not isinstance(doc, dict):
            raise UpstreamFailure("DID document is not a JSON object")
        return doc

    async def get_data(self, did: str) -> DocumentState:
        return DocumentState.from_json(await self._get_json(self._url(did, "/data")))

    async def get_log(self, did: str) -> list[Op]:
        """The valid chain, oldest first."""
        body = await self._get_json(self._url(did, "/log"))
        if not isinstance(body, list):
            raise UpstreamFailure("op log is not a JSON array")
        return [parse_op(item) for item in body]

    async def get_audit_log(self, did: str) -> list[LogEntry]:
        """Every op including nullified ones, by createdAt."""
        body = await self._get_json(self._url(did, "/log/audit"))
        if not isinstance(body, list):
            raise UpstreamFailure("audit log is not a JSON array")
        return [LogEntry.from_json(item, did=did) for item in body]

    async def get_last_op(self, did: str) -> Op:
        return parse_op(await self._get_json(self._url(did, "/log/last")))

    async def export(
        self, after: str | int | datetime | None = None, count: int | None = None
    ) -> list[LogEntry]:
        """One page of ``/export``: ``after`` an int (seq) or a timestamp."""
        params: dict[str, str] = {}
        if isinstance(after, datetime):
            params["after"] = format_timestamp(after)
        elif after is not None:
            params["after"] = str(after)
        if count is not None:
            params["count"] = str(count)
        response = await self._request("GET", f"{self.base_url}/export", params=params)
        return [
            LogEntry.from_json(json.loads(line))
            for line in response.text.splitlines()
            if line.strip()
        ]

    async def health(self) -> dict[str, Any]:
        body = await self._get_json(f"{self.base_url}/_health")
        return body if isinstance(body, dict) else {}

    # writes

    async def submit(self, did: str, op: Op) -> None:
        """POST a signed op for ``did``."""
        await self._request("POST", self._url(did), json=op.to_json())

    async def create_did(
        self,
        signing_key: KeyLike,
        rotation_keys: Sequence[KeyLike],
        handle: str | None,
        pds_endpoint: str | None,
        *,
        signer: PrivateKey | None = None,
    ) -> tuple[str, PlcOperation]:
        """Create a DID; signed by ``signer`` or the first PrivateKey in ``rotation_keys``."""
        if signer is None:
            signer = next((k for k in rotation_keys if isinstance(k, PrivateKey)), None)
            if signer is None:
                raise ValueError("create_did needs a private rotation key (or signer=) to sign")
        op = build_genesis(
            rotation_keys=rotation_keys,
            signing_key=signing_key,
            handle=handle,
            pds_endpoint=pds_endpoint,
        )
        signed = sign_op(op, signer)
        did = did_for_genesis(signed)
        await self.submit(did, signed)
        return did, signed

    async def _last(self, did: str) -> tuple[Op, str]:
        last = await self.get_last_op(did)
        if isinstance(last, PlcTombstone):
            raise DidDeactivated(f"{did} is tombstoned")
        return last, op_cid(last)

    async def update(
        self,
        did: str,
        rotation_key: PrivateKey,
        *,
        signing_key: KeyLike | _Unchanged = UNCHANGED,
        pds_endpoint: str | _Unchanged = UNCHANGED,
        handle: str | _Unchanged = UNCHANGED,
        rotation_keys: Sequence[KeyLike] | _Unchanged = UNCHANGED,
        also_known_as: Sequence[str] | _Unchanged = UNCHANGED,
        verification_methods: Mapping[str, str] | _Unchanged = UNCHANGED,
        services: Mapping[str, Service] | _Unchanged = UNCHANGED,
    ) -> PlcOperation:
        """Fetch ``/log/last``, build the update, sign it with ``rotation_key``, submit it."""
        last, cid = await self._last(did)
        op = build_update(
            last,
            cid,
            signing_key=signing_key,
            pds_endpoint=pds_endpoint,
            handle=handle,
            rotation_keys=rotation_keys,
            also_known_as=also_known_as,
            verification_methods=verification_methods,
            services=services,
        )
        signed = sign_op(op, rotation_key)
        await self.submit(did, signed)
        return signed

    async def tombstone(self, did: str, rotation_key: PrivateKey) -> PlcTombstone:
        """Deactivate ``did`` for good (subject to the recovery window)."""
        _, cid = await self._last(did)
        signed = sign_op(build_tombstone(cid), rotation_key)
        await self.submit(did, signed)
        return signed


def _error_for(response: httpx.Response) -> RoostError:
    try:
        body = response.json()
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    if not isinstance(message, str):
        message = f"PLC directory answered HTTP {response.status_code}"
    status = response.status_code
    errors: Mapping[int, Callable[[str], RoostError]] = {
        400: InvalidPlcOperation,
        404: DidNotFound,
        409: PlcConflict,
        410: DidDeactivated,
        413: PayloadTooLarge,
        429: RateLimitExceeded,
    }
    return errors.get(status, UpstreamFailure)(message)
