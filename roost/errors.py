"""Typed errors for every layer of roost.

Each error carries the XRPC error name (``error``) and HTTP status (``status``)
it maps to when it reaches a client, so one handler can turn any of them into
``{"error": ..., "message": ...}``.

Tree::

    RoostError                         (400 InvalidRequest)
    ├── InvalidSyntax                  an identifier or string format is malformed
    │   ├── InvalidDid
    │   ├── InvalidHandle              (error name InvalidHandle)
    │   ├── InvalidNsid
    │   ├── InvalidRecordKey
    │   ├── InvalidTid
    │   ├── InvalidAtUri
    │   ├── InvalidAtIdentifier
    │   ├── InvalidDatetime
    │   ├── InvalidLanguage
    │   ├── InvalidUri
    │   └── InvalidCidString
    ├── DataModelError                 a value is outside the atproto data model
    │   ├── CborDecodeError            bytes are not strict DAG-CBOR
    │   ├── CborEncodeError            a Python value cannot be encoded
    │   ├── CidError                   bytes or a string are not a usable CID
    │   └── JsonDataError              atproto JSON ($link/$bytes/blob) is malformed
    ├── CryptoError
    │   ├── UnsupportedKeyType         a key that is neither k256 nor p256
    │   ├── InvalidKey                 malformed key bytes or did:key string
    │   └── InvalidSignature           a signature that does not verify (strict)
    ├── RepoError                      a repository or its parts are invalid
    │   ├── CarError                   a CAR file is malformed
    │   │   ├── CarTruncated           input ends inside a varint, header or block
    │   │   ├── CarHeaderError         header is not {roots, version: 1}
    │   │   └── CarBlockTooLarge       a section exceeds the size limit
    │   ├── BlockHashMismatch          a block's bytes do not hash to its CID
    │   ├── MissingBlock               a needed block is not present
    │   ├── InvalidMst                 an MST node or tree shape breaks the rules
    │   ├── InvalidCommit              a commit object is malformed
    │   │   ├── BadCommitSignature     the signature does not verify
    │   │   └── WrongDid               the commit is for another DID
    │   ├── InvalidRepoPath            not <collection NSID>/<record key>
    │   ├── InvalidSwap                (InvalidSwap) a swap check failed
    │   ├── RecordNotFound             (RecordNotFound) no record at that path
    │   ├── RecordExists               a create for a path that already exists
    │   └── InvertError                sync v1.1: ops do not invert to prevData
    ├── LexiconError                   a lexicon document is itself invalid
    ├── ValidationError                data does not match its lexicon (``path`` names where)
    ├── PlcError                       a did:plc operation is rejected
    │   ├── InvalidPlcOperation        malformed op, bad signature, wrong prev, too big...
    │   └── PlcConflict                (409) the op no longer extends the latest op
    ├── IdentityError                  a DID or handle does not resolve
    │   ├── DidNotFound                (DidNotFound)
    │   ├── HandleNotFound             (HandleNotFound)
    │   ├── DidDeactivated             (DidDeactivated) tombstoned DID
    │   ├── UnsafeUrl                  an outbound URL targets a forbidden address
    │   └── ResolutionFailed           network error, timeout, oversized or bad document
    ├── AccountError                   account and repo status (PDS, relay)
    │   ├── RepoNotFound               (RepoNotFound)
    │   ├── RepoTakendown              (RepoTakendown)
    │   ├── RepoSuspended              (RepoSuspended)
    │   ├── RepoDeactivated            (RepoDeactivated)
    │   ├── HandleNotAvailable         (HandleNotAvailable)
    │   ├── UnsupportedDomain          (UnsupportedDomain)
    │   ├── InvalidInviteCode          (InvalidInviteCode)
    │   └── InvalidPassword            (InvalidPassword)
    ├── AuthRequired                   (401 AuthenticationRequired)
    │   ├── AuthMissing                (401 AuthMissing) no Authorization header
    │   └── AccountTakedown            (401 AccountTakedown)
    ├── InvalidToken                   (400 InvalidToken) bad session token
    ├── ExpiredToken                   (400 ExpiredToken) session token past exp
    ├── Forbidden                      (403 Forbidden)
    ├── NotFound                       (404 NotFound)
    ├── MethodNotImplemented           (501 MethodNotImplemented)
    ├── PayloadTooLarge                (413 PayloadTooLarge)
    ├── UnsupportedMediaType           (415 UnsupportedMediaType)
    ├── RateLimitExceeded              (429 RateLimitExceeded)
    ├── UpstreamFailure                (502 UpstreamFailure)
    ├── UpstreamTimeout                (504 UpstreamTimeout)
    ├── InternalServerError            (500 InternalServerError) message never shown
    └── JwtError                       (401) a JSON Web Token is rejected
        ├── BadJwt                     malformed token
        ├── BadJwtType
        ├── BadJwtSignature
        ├── JwtExpired
        ├── BadJwtAudience
        ├── BadJwtLexiconMethod
        ├── BadJwtIss
        └── MissingJwt                 no bearer JWT on a service-auth route
"""

from __future__ import annotations

__all__ = [
    "RoostError",
    "InvalidSyntax",
    "InvalidDid",
    "InvalidHandle",
    "InvalidNsid",
    "InvalidRecordKey",
    "InvalidTid",
    "InvalidAtUri",
    "InvalidAtIdentifier",
    "InvalidDatetime",
    "InvalidLanguage",
    "InvalidUri",
    "InvalidCidString",
    "DataModelError",
    "CborDecodeError",
    "CborEncodeError",
    "CidError",
    "JsonDataError",
    "CryptoError",
    "UnsupportedKeyType",
    "InvalidKey",
    "InvalidSignature",
    "RepoError",
    "CarError",
    "CarTruncated",
    "CarHeaderError",
    "CarBlockTooLarge",
    "BlockHashMismatch",
    "MissingBlock",
    "InvalidMst",
    "InvalidCommit",
    "BadCommitSignature",
    "WrongDid",
    "InvalidRepoPath",
    "InvalidSwap",
    "RecordNotFound",
    "RecordExists",
    "InvertError",
    "LexiconError",
    "ValidationError",
    "PlcError",
    "InvalidPlcOperation",
    "PlcConflict",
    "IdentityError",
    "DidNotFound",
    "HandleNotFound",
    "DidDeactivated",
    "UnsafeUrl",
    "ResolutionFailed",
    "AccountError",
    "RepoNotFound",
    "RepoTakendown",
    "RepoSuspended",
    "RepoDeactivated",
    "HandleNotAvailable",
    "UnsupportedDomain",
    "InvalidInviteCode",
    "InvalidPassword",
    "AuthRequired",
    "AuthMissing",
    "AccountTakedown",
    "InvalidToken",
    "ExpiredToken",
    "MissingJwt",
    "Forbidden",
    "NotFound",
    "MethodNotImplemented",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "RateLimitExceeded",
    "UpstreamFailure",
    "UpstreamTimeout",
    "InternalServerError",
    "JwtError",
    "BadJwt",
    "BadJwtType",
    "BadJwtSignature",
    "JwtExpired",
    "BadJwtAudience",
    "BadJwtLexiconMethod",
    "BadJwtIss",
]


class RoostError(Exception):
    """Base of every error roost raises on purpose.

    ``error`` is the XRPC error name and ``status`` the HTTP status a server
    answers with when this error escapes a handler.
    """

    error: str = "InvalidRequest"
    status: int = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


# -- syntax -----------------------------------------------------------------


class InvalidSyntax(RoostError):
    """A string is not a valid identifier or format value.

    ``kind`` names the format (``"handle"``, ``"did"``...), ``value`` holds the
    rejected input (possibly truncated) and the message names the rule broken.
    """

    kind: str = "string"

    def __init__(self, message: str, value: object = None) -> None:
        super().__init__(message)
        if isinstance(value, str) and len(value) > 200:
            value = value[:200] + "..."
        self.value = value


class InvalidDid(InvalidSyntax):
    kind = "did"


class InvalidHandle(InvalidSyntax):
    kind = "handle"
    error = "InvalidHandle"


class InvalidNsid(InvalidSyntax):
    kind = "nsid"


class InvalidRecordKey(InvalidSyntax):
    kind = "record-key"


class InvalidTid(InvalidSyntax):
    kind = "tid"


class InvalidAtUri(InvalidSyntax):
    kind = "at-uri"


class InvalidAtIdentifier(InvalidSyntax):
    kind = "at-identifier"


class InvalidDatetime(InvalidSyntax):
    kind = "datetime"


class InvalidLanguage(InvalidSyntax):
    kind = "language"


class InvalidUri(InvalidSyntax):
    kind = "uri"


class InvalidCidString(InvalidSyntax):
    kind = "cid"


# -- data model -------------------------------------------------------------


class DataModelError(RoostError):
    """A value is outside the atproto data model."""


class CborDecodeError(DataModelError):
    """Bytes are not one strict DAG-CBOR item as atproto allows it."""


class CborEncodeError(DataModelError):
    """A Python value has no atproto DAG-CBOR encoding (float, non-str key...)."""


class CidError(DataModelError):
    """Bytes or a string do not form a CID we can use."""


class JsonDataError(DataModelError):
    """atproto JSON (``$link``, ``$bytes``, blob objects) is malformed."""


# -- crypto -----------------------------------------------------------------


class CryptoError(RoostError):
    """Base for key and signature problems."""


class UnsupportedKeyType(CryptoError):
    """A key that is not k256 (secp256k1) or p256 (NIST P-256)."""


class InvalidKey(CryptoError):
    """Malformed key bytes, multibase or did:key string."""


class InvalidSignature(CryptoError):
    """A signature that does not verify under atproto's strict rules."""


# -- repository -------------------------------------------------------------


class RepoError(RoostError):
    """A repository, CAR file, MST or commit is invalid."""


class CarError(RepoError):
    """A CAR file is malformed."""


class CarTruncated(CarError):
    """The input ends inside a varint, the header or a block section."""


class CarHeaderError(CarError):
    """The CAR header is not a DAG-CBOR map ``{roots: [CID...], version: 1}``."""


class CarBlockTooLarge(CarError):
    """A header or block section is larger than the configured limit."""


class BlockHashMismatch(RepoError):
    """A block's bytes do not hash to the CID it is stored under."""


class MissingBlock(RepoError):
    """A block that is needed (MST node, record, commit) is not present."""

    error = "BlockNotFound"

    def __init__(self, message: str, cid: object = None) -> None:
        super().__init__(message)
        self.cid = cid


class InvalidMst(RepoError):
    """An MST node or the shape of a tree breaks the MST rules."""


class InvalidCommit(RepoError):
    """A commit object is malformed (fields, version, types)."""


class BadCommitSignature(InvalidCommit):
    """The commit signature does not verify with the expected key."""


class WrongDid(InvalidCommit):
    """The commit belongs to a different DID than expected."""


class InvalidRepoPath(RepoError):
    """A repo path that is not ``<collection NSID>/<record key>``."""


class InvalidSwap(RepoError):
    """A swap (compare-and-set) check failed."""

    error = "InvalidSwap"


class RecordNotFound(RepoError):
    """No record at the given path."""

    error = "RecordNotFound"


class RecordExists(RepoError):
    """A create names a path that already holds a record."""


class InvertError(RepoError):
    """Sync v1.1: a commit's ops do not invert to its ``prevData``."""


# -- lexicons ----------------------------------------------------------------


class LexiconError(RoostError):
    """A lexicon document is itself invalid (bad type, bad ref, wrong shape)."""


class ValidationError(RoostError):
    """Data does not match its lexicon schema.

    ``path`` names the place, e.g. ``record/facets/0/index/byteStart``; the
    message starts with it.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path} {message}" if path else message)
        self.path = path


# -- identity and did:plc -------------------------------------------------------


class PlcError(RoostError):
    """A did:plc operation is rejected."""


class InvalidPlcOperation(PlcError):
    """Malformed op, bad signature, wrong prev, size limits, bad DID."""


class PlcConflict(PlcError):
    """The op does not extend the DID's latest op any more (a racing update won)."""

    status = 409


class IdentityError(RoostError):
    """A DID or handle does not resolve to a usable identity."""


class DidNotFound(IdentityError):
    error = "DidNotFound"


class HandleNotFound(IdentityError):
    error = "HandleNotFound"


class DidDeactivated(IdentityError):
    error = "DidDeactivated"


class UnsafeUrl(IdentityError):
    """An outbound URL resolves to a private, loopback or otherwise forbidden address."""


class ResolutionFailed(IdentityError):
    """Network error, timeout, oversized response or malformed document."""


# -- generic XRPC errors -----------------------------------------------------------


class AuthRequired(RoostError):
    error = "AuthenticationRequired"
    status = 401


class AuthMissing(AuthRequired):
    """No usable ``Authorization`` header on a route that needs one."""

    error = "AuthMissing"


class AccountTakedown(AuthRequired):
    error = "AccountTakedown"


class AccountError(RoostError):
    """An account or repo is missing or not in a state that allows the request."""


class RepoNotFound(AccountError):
    error = "RepoNotFound"


class RepoTakendown(AccountError):
    error = "RepoTakendown"


class RepoSuspended(AccountError):
    error = "RepoSuspended"


class RepoDeactivated(AccountError):
    error = "RepoDeactivated"


class HandleNotAvailable(AccountError):
    error = "HandleNotAvailable"


class UnsupportedDomain(AccountError):
    error = "UnsupportedDomain"


class InvalidInviteCode(AccountError):
    error = "InvalidInviteCode"


class InvalidPassword(AccountError):
    error = "InvalidPassword"


class InvalidToken(RoostError):
    """A session token that is malformed, forged, of the wrong type or scope."""

    error = "InvalidToken"
    status = 400


class ExpiredToken(RoostError):
    """A session token past ``exp``: 400, as the reference and its client expect."""

    error = "ExpiredToken"
    status = 400


class Forbidden(RoostError):
    error = "Forbidden"
    status = 403


class NotFound(RoostError):
    error = "NotFound"
    status = 404


class MethodNotImplemented(RoostError):
    error = "MethodNotImplemented"
    status = 501


class PayloadTooLarge(RoostError):
    error = "PayloadTooLarge"
    status = 413


class UnsupportedMediaType(RoostError):
    error = "UnsupportedMediaType"
    status = 415


class RateLimitExceeded(RoostError):
    error = "RateLimitExceeded"
    status = 429

    def __init__(self, message: str = "Rate Limit Exceeded", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamFailure(RoostError):
    error = "UpstreamFailure"
    status = 502


class UpstreamTimeout(RoostError):
    error = "UpstreamTimeout"
    status = 504


class InternalServerError(RoostError):
    """Answered as 500 with the message "Internal Server Error" whatever it says."""

    error = "InternalServerError"
    status = 500


# -- JWT --------------------------------------------------------------------


class JwtError(RoostError):
    """A JSON Web Token is rejected; maps to 401 with a specific name."""

    error = "BadJwt"
    status = 401


class BadJwt(JwtError):
    error = "BadJwt"


class BadJwtType(JwtError):
    error = "BadJwtType"


class BadJwtSignature(JwtError):
    error = "BadJwtSignature"


class JwtExpired(JwtError):
    error = "JwtExpired"


class BadJwtAudience(JwtError):
    error = "BadJwtAudience"


class BadJwtLexiconMethod(JwtError):
    error = "BadJwtLexiconMethod"


class BadJwtIss(JwtError):
    error = "BadJwtIss"


class MissingJwt(JwtError):
    """A service-auth route called without a bearer JWT."""

    error = "MissingJwt"
