"""Signed repository commits (repo format version 3).

A commit is the DAG-CBOR map ``{did, version: 3, data, rev, prev, sig}``:
``data`` links the MST root, ``rev`` is a TID that only grows, ``prev`` is
present and (virtually always) null, ``sig`` is a 64-byte low-S ECDSA
signature over the DAG-CBOR encoding of the same map without ``sig``, made
with the account's ``#atproto`` key. The commit CID is the hash of the signed
block. Version 2 commits (``rev`` optional) are read as version 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from roost import cbor
from roost.cid import CID
from roost.crypto import PrivateKey, PublicKey
from roost.errors import BadCommitSignature, InvalidCommit, RoostError, WrongDid
from roost.syntax import is_valid_did
from roost.tid import is_valid_tid

__all__ = ["COMMIT_VERSION", "Commit", "sign_commit"]

#: The repo format version written by roost.
COMMIT_VERSION = 3
_READABLE_VERSIONS = (2, 3)
_FIELDS = {"did", "version", "data", "rev", "prev", "sig"}


@dataclass(frozen=True, slots=True)
class Commit:
    """A decoded (or freshly signed) commit; ``block`` holds its exact bytes."""

    did: str
    version: int
    data: CID
    rev: str
    prev: CID | None
    sig: bytes
    block: bytes
    cid: CID

    def unsigned_bytes(self) -> bytes:
        """The bytes the signature covers."""
        return cbor.encode(_unsigned(self.did, self.version, self.data, self.rev, self.prev))

    def verify(self, key: PublicKey) -> bool:
        """True if ``sig`` verifies with ``key`` (strict: 64 bytes, low-S)."""
        return key.verify(self.unsigned_bytes(), self.sig)

    def check(self, key: PublicKey | None = None, *, did: str | None = None) -> None:
        """Raise ``WrongDid`` / ``BadCommitSignature`` unless the commit matches."""
        if did is not None and self.did != did:
            raise WrongDid(f"commit is for {self.did}, expected {did}")
        if key is not None and not self.verify(key):
            raise BadCommitSignature(f"commit {self.cid} signature does not verify")

    @classmethod
    def decode(cls, block: bytes, cid: CID | None = None) -> Commit:
        """Parse a commit block strictly; ``cid``, when given, must match the bytes."""
        if cid is not None and not cid.matches(block):
            raise InvalidCommit(f"commit block does not hash to {cid}")
        try:
            obj = cbor.decode(block, check_floats=False)  # fields are type-checked
        except RoostError as exc:
            raise InvalidCommit(f"commit is not valid DAG-CBOR: {exc.message}") from None
        return cls.from_value(obj, block, cid or CID.for_cbor_bytes(block))

    @classmethod
    def from_value(cls, obj: Any, block: bytes, cid: CID) -> Commit:
        if type(obj) is not dict:
            raise InvalidCommit("commit must be a map")
        extra = obj.keys() - _FIELDS
        if extra:
            raise InvalidCommit(f"commit has unexpected fields: {sorted(extra)}")
        version = obj.get("version")
        if type(version) is not int or version not in _READABLE_VERSIONS:
            raise InvalidCommit(f"unsupported commit version {version!r}")
        did = obj.get("did")
        if not is_valid_did(did):
            raise InvalidCommit("commit did is missing or not a valid DID")
        data = obj.get("data")
        if type(data) is not CID or not data.is_dag_cbor:
            raise InvalidCommit("commit data must be a dag-cbor SHA-256 link")
        rev = obj.get("rev")
        if version == 3 or rev is not None:
            if not is_valid_tid(rev):
                raise InvalidCommit("commit rev must be a TID")
        if version == 3 and "prev" not in obj:
            raise InvalidCommit("commit prev must be present (null)")
        prev = obj.get("prev")
        if prev is not None and type(prev) is not CID:
            raise InvalidCommit("commit prev must be a link or null")
        sig = obj.get("sig")
        if type(sig) is not bytes:
            raise InvalidCommit("commit sig must be bytes")
        return cls(did, version, data, rev or "", prev, sig, block, cid)


def _unsigned(did: str, version: int, data: CID, rev: str, prev: CID | None) -> dict[str, Any]:
    out: dict[str, Any] = {"did": did, "version": version, "data": data, "prev": prev}
    if rev or version == 3:
        out["rev"] = rev
    return out


def sign_commit(did: str, data: CID, rev: str, key: PrivateKey, prev: CID | None = None) -> Commit:
    """Build and sign a version-3 commit."""
    unsigned = _unsigned(did, COMMIT_VERSION, data, rev, prev)
    sig = key.sign(cbor.encode(unsigned, check_floats=False))
    unsigned["sig"] = sig
    block = cbor.encode(unsigned, check_floats=False)
    return Commit(did, COMMIT_VERSION, data, rev, prev, sig, block, CID.for_cbor_bytes(block))
