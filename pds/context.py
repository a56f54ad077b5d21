"""The running PDS's shared objects, built in the app's lifespan.

Handlers reach it as ``pds(ctx)`` (from the request's ``app.state``); nothing
is global, so several PDSes can run in one process (tests, ``roost up``).

Also here, shared by the handlers: the account-status errors the PDS adds to
the tree of :mod:`roost.errors` (``AccountDeactivated``, ``AccountDeleted``)
and resolution of an account's DID document (did:plc through the configured
directory, did:web from its host), uncached: the callers (account creation by
migration, activation, import) must see the document as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from roost.auth import SessionAuth, SessionCredentials
from roost.crypto import PrivateKey, PublicKey
from roost.errors import AuthRequired, IdentityError, PlcError, RepoNotFound, RoostError
from roost.identity import DidDocument, DidResolver
from roost.lexicon import Catalog
from roost.plc import PlcClient
from roost.xrpc import XrpcContext

from pds.blobstore import DiskBlobStore
from pds.config import PdsConfig
from roost.sequencer import Sequencer
from pds.sqlite import AccountRow, PdsDatabase
from pds.writer import Writer

__all__ = [
    "AccountDeactivated",
    "AccountDeleted",
    "PdsContext",
    "UnresolvableDid",
    "pds",
    "require_active",
    "require_self",
    "resolve_did_document",
    "resolve_repo",
    "resolve_signing_key",
]


class AccountDeactivated(AuthRequired):
    """The caller's own account is deactivated (it may have moved to another host)."""

    error = "AccountDeactivated"


class AccountDeleted(AuthRequired):
    """A session of an account deleted from this server."""

    error = "AccountDeleted"


class UnresolvableDid(RoostError):
    """A DID whose document cannot be fetched or used (createAccount's error name)."""

    error = "UnresolvableDid"


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


def require_active(account: AccountRow) -> None:
    """The caller's own account must be active to write (401 ``AccountDeactivated``);
    a taken-down account never gets this far (its sessions are refused)."""
    if not account.active:
        raise AccountDeactivated("Account is deactivated")


async def resolve_did_document(p: PdsContext, did: str) -> DidDocument:
    """The DID document of ``did`` as it is now; ``UnresolvableDid`` if it cannot be had."""
    try:
        if did.startswith("did:plc:"):
            return DidDocument.parse(await p.plc.get_document(did), did=did)
        resolver = DidResolver(plc_url=p.config.plc_url, allow_local=p.config.allow_local)
        try:
            return await resolver.resolve(did)
        finally:
            await resolver.aclose()
    except (IdentityError, PlcError) as exc:
        raise UnresolvableDid(f"Could not resolve DID {did}: {exc.message}") from None
    except RoostError as exc:  # the directory failed (UpstreamFailure...)
        raise UnresolvableDid(f"Could not resolve DID {did}: {exc.message}") from None


async def resolve_signing_key(p: PdsContext, did: str, *, force_refresh: bool = False) -> PublicKey:
    """The ``#atproto`` key of ``did`` (a service-auth key resolver: nothing is cached)."""
    doc = await resolve_did_document(p, did)
    if doc.signing_key is None:
        raise IdentityError(f"{did} has no usable #atproto signing key")
    return doc.signing_key
