"""The running PDS's shared objects, built in the app's lifespan.

Handlers reach it as ``pds(ctx)`` (from the request's ``app.state``); nothing
is global, so several PDSes can run in one process (tests, ``roost up``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from roost.auth import SessionAuth, SessionCredentials
from roost.crypto import PrivateKey
from roost.errors import AuthRequired, RepoNotFound
from roost.lexicon import Catalog
from roost.plc import PlcClient
from roost.xrpc import XrpcContext

from pds.blobstore import DiskBlobStore
from pds.config import PdsConfig
from roost.sequencer import Sequencer
from pds.sqlite import AccountRow, PdsDatabase
from pds.writer import Writer

__all__ = ["PdsContext", "pds", "require_self", "resolve_repo"]

#: Parsed signing keys kept in memory (parsing derives the public key: ~0.1 ms).
SIGNING_KEY_CACHE_SIZE = 10_000


@dataclass(slots=True)
class PdsContext:
    config: PdsConfig
    db: PdsDatabase
    writer: Writer
    sequencer: Sequencer
    catalog: Catalog
    plc: PlcClient
    http: httpx.AsyncClient
    access: SessionAuth
    refresh: SessionAuth
    #: The account blobs on disk (``config.blob_dir``).
    blobs: DiskBlobStore
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def service_did(self) -> str:
        return self.config.service_did

    def signing_key(self, account: AccountRow) -> PrivateKey:
        """The account's repo signing key (parsed once, then cached by its hex)."""
        cache: dict[str, PrivateKey] = self.extra.setdefault("signing_keys", {})
        key = cache.get(account.signing_key)
        if key is None:
            if len(cache) >= SIGNING_KEY_CACHE_SIZE:
                cache.clear()
            key = cache[account.signing_key] = PrivateKey.from_hex(account.signing_key, "k256")
        return key


def pds(ctx: XrpcContext) -> PdsContext:
    """The PdsContext of the app serving this request."""
    return ctx.request.app.state.pds  # type: ignore[no-any-return]


def resolve_repo(p: PdsContext, repo: str) -> AccountRow:
    """The local account named by a DID or handle; ``RepoNotFound`` otherwise."""
    account = p.db.account(repo) if repo.startswith("did:") else p.db.account_by_handle(repo)
    if account is None:
        raise RepoNotFound(f"Could not find repo: {repo}")
    return account


def require_self(ctx: XrpcContext, account: AccountRow) -> SessionCredentials:
    """The caller must be the account itself (its session)."""
    creds = ctx.auth
    if not isinstance(creds, SessionCredentials) or creds.did != account.did:
        raise AuthRequired("Authentication Required: not the owner of this repo")
    return creds
