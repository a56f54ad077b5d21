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
