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
    └── JwtError                       (401) a JSON Web Token is rejected
        ├── BadJwt                     malformed token
        ├── BadJwtType
        ├── BadJwtSignature
        ├── JwtExpired
        ├── BadJwtAudience
        ├── BadJwtLexiconMethod
        └── BadJwtIss
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
