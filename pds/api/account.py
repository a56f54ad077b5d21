"""The account lifecycle: deactivation, activation, deletion, migration checks.

``com.atproto.server.*`` methods an account holder calls about their own
account (``spec/account-migration.md``):

- ``deactivateAccount`` (main password): the account stops being served and
  written; ``#account {active: false, status: "deactivated"}``. The final step
  on the old host of a migration; ``deleteAfter`` is kept for the operator.
- ``activateAccount`` (main password): only once the DID document names this
  server (its URL as ``#atproto_pds``, the account's key here as ``#atproto``
  and, for did:plc, this server's rotation key). Emits ``#account`` (active),
  ``#identity`` (handle), then a fresh empty ``#commit`` signed with the
  account's key here at a new ``rev`` and ``#sync`` of that commit (the spec's
  proposal, section 8: relays that check signatures and revs accept it).
- ``checkAccountStatus``: migration progress (repo, records, blobs, DID) and,
  as roost extensions, the bytes the repo and blobs take and the largest blob
  (``roostRepoBytes``, ``roostBlobBytes``, ``roostLargestBlob``), which the
  migration preflight compares with the new host's ``describeServer``.
- ``getServiceAuth``: a service-auth JWT signed with the account's key, e.g.
  for ``createAccount`` on the new host (``exp`` at most an hour away, a
  minute for a token not bound to a method; ``BadExpiration`` otherwise).
- ``requestAccountDelete`` / ``deleteAccount``: a confirmation token goes to
  the member, then the DID, the main password and the token delete the
  account (:func:`pds.api.admin.remove_account`).

Messages to members. roost sends no email: a message (a confirmation token
for deletion or for a PLC operation) is written to the ``outbox`` table, and
the operator reads it with ``org.roost.admin.listOutbox`` (``roost pds admin
outbox``) and passes it on; a local network or a script completes the flow
that way. Tokens are ``XXXXX-XXXXX`` (base32), one live token per account
and purpose, valid :data:`TOKEN_TTL_SECONDS`; a wrong one is ``InvalidToken``,
an old one ``ExpiredToken`` (both 400).
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any, Final

from roost.auth import FULL_ACCESS_SCOPES, PRIVILEGED_SCOPES, SessionCredentials, mint_service_token
from roost.errors import (
    AccountTakedown,
    AuthRequired,
    ExpiredToken,
    InvalidToken,
    RoostError,
)
from roost.ratelimit import RateLimit
from roost.xrpc import XrpcContext, XrpcRouter

from pds.api.server import ACCESS, FULL_ACCESS
from pds.context import PdsContext, UnresolvableDid, pds, resolve_did_document
from pds.passwords import verify_password_async
from pds.proxy import PROTECTED_METHODS
from pds.sqlite import AccountRow, PdsDatabase
from pds.writer import WriteContext, utc_now

__all__ = [
    "PURPOSE_DELETE",
    "PURPOSE_PLC",
    "TOKEN_TTL_SECONDS",
    "BadExpiration",
    "check_did_document",
    "consume_token",
    "own_account",
    "register",
    "send_token",
]

#: How long a confirmation token stays valid (the reference PDS's 15 minutes).
TOKEN_TTL_SECONDS: Final = 15 * 60
#: Token purposes (the reference PDS's names).
PURPOSE_DELETE: Final = "delete_account"
PURPOSE_PLC: Final = "plc_operation"
#: Service-auth tokens: default lifetime, longest, longest without a method.
SERVICE_AUTH_DEFAULT_S: Final = 60
SERVICE_AUTH_MAX_S: Final = 3600
SERVICE_AUTH_METHODLESS_MAX_S: Final = 60
#: Reference PDS limits on deletion requests (per account) and attempts (per IP).
REQUEST_DELETE_LIMITS: Final = (
    RateLimit("request-account-delete-day", 15, 86_400, per="account"),
    RateLimit("request-account-delete-hour", 5, 3_600, per="account"),
)
DELETE_ACCOUNT_LIMIT: Final = RateLimit("delete-account", 50, 300, per="ip")
#: Methods a service token may be bound to only by the main password.
_FULL_ACCESS_LXM: Final = frozenset({"com.atproto.server.createAccount"})
_TOKEN_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


class BadExpiration(RoostError):
    """``getServiceAuth``: the requested ``exp`` is in the past or too far ahead."""

    error = "BadExpiration"


def register(router: XrpcRouter) -> None:
    router.procedure("com.atproto.server.deactivateAccount", auth=FULL_ACCESS)(
        deactivate_account
    )
    router.procedure("com.atproto.server.activateAccount", auth=FULL_ACCESS)(activate_account)
    router.query("com.atproto.server.checkAccountStatus", auth=ACCESS)(check_account_status)
    router.query("com.atproto.server.getServiceAuth", auth=ACCESS)(get_service_auth)
    router.procedure(
        "com.atproto.server.requestAccountDelete",
        auth=FULL_ACCESS,
        rate_limits=REQUEST_DELETE_LIMITS,
    )(request_account_delete)
    router.procedure("com.atproto.server.deleteAccount", rate_limits=(DELETE_ACCOUNT_LIMIT,))(
        delete_account
    )


def own_account(ctx: XrpcContext) -> AccountRow:
    """The account of the session making the request."""
    creds = ctx.auth
    if not isinstance(creds, SessionCredentials):  # pragma: no cover - routes take sessions
        raise AuthRequired("Authentication Required")
    account = pds(ctx).db.account(creds.did)
    if account is None:
        raise AuthRequired("Account not found")
    return account


def _run(w: WriteContext, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    for sql, params in statements:
        w.execute(sql, *params)


# -- confirmation tokens and the outbox -------------------------------------------------


def _new_token() -> str:
    raw = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


async def send_token(
    p: PdsContext, account: AccountRow, purpose: str, subject: str, text: str
) -> None:
    """Issue a token for ``purpose`` and leave it in the outbox for the member.

    ``text`` is the message body; ``{token}`` in it is replaced by the token.
    """
    token = _new_token()
    statements = [
        PdsDatabase.set_email_token_sql(account.did, purpose, token, int(time.time())),
        PdsDatabase.insert_outbox_sql(
            account.did, account.email, purpose, subject,
            text.replace("{token}", token), token, utc_now(),
        ),
    ]
    await p.writer.submit(lambda w: _run(w, statements))


async def consume_token(
    p: PdsContext, did: str, purpose: str, token: str, *, keep: bool = False
) -> None:
    """Check the member's token for ``purpose`` and (unless ``keep``) use it up."""
    stored = p.db.email_token(did, purpose)
    given = token.strip().upper().encode()
    if stored is None or not hmac.compare_digest(stored[0].encode(), given):
        raise InvalidToken("Token is invalid")
    if time.time() - stored[1] > TOKEN_TTL_SECONDS:
        raise ExpiredToken("Token is expired")
    if not keep:
        statement = PdsDatabase.delete_email_token_sql(did, purpose)
        await p.writer.submit(lambda w: _run(w, [statement]))


# -- DID document checks ------------------------------------------------------------------


async def check_did_document(p: PdsContext, account: AccountRow) -> None:
    """Raise unless the account's DID document makes this server its host.

    For did:plc the directory's current data must list this server's rotation
    key; for both methods ``#atproto_pds`` must be this server's URL and
    ``#atproto`` the account's signing key here.
    """
    did = account.did
    doc = await resolve_did_document(p, did)
    if did.startswith("did:plc:"):
        try:
            data = await p.plc.get_data(did)
        except RoostError as exc:
            raise UnresolvableDid(f"Could not read the DID data of {did}: {exc.message}") from None
        if p.config.rotation_key.public_key.did_key() not in data.rotation_keys:
            raise RoostError("Server rotation key not included in PLC DID data")
    if doc.pds_endpoint != p.config.url:
        raise RoostError(
            "DID document atproto_pds service endpoint does not match PDS public url"
        )
    own = p.signing_key(account).public_key
    if doc.signing_key is None or doc.signing_key.did_key() != own.did_key():
        raise RoostError("DID document verification method does not match expected signing key")


async def _did_valid(p: PdsContext, account: AccountRow) -> bool:
    try:
        await check_did_document(p, account)
    except RoostError:
        return False
    return True


# -- deactivate / activate ------------------------------------------------------------------


async def deactivate_account(ctx: XrpcContext) -> None:
    p = pds(ctx)
    did = own_account(ctx).did
    delete_after = (ctx.input or {}).get("deleteAfter")

    def job(w: WriteContext) -> None:
        account = w.db.account(did)
        if account is None:
            raise AuthRequired("Account not found")
        if account.status not in ("active", "deactivated"):
            raise RoostError(f"The account cannot be deactivated: it is {account.status}")
        statement = PdsDatabase.set_account_status_sql(did, "deactivated", None, delete_after)
        w.execute(statement[0], *statement[1])
        if account.active:
            w.event(did, "#account", {"did": did, "active": False, "status": "deactivated"})

    await p.writer.submit(job)


async def activate_account(ctx: XrpcContext) -> None:
    p = pds(ctx)
    account = own_account(ctx)
    if account.active:
        return  # already active: nothing to announce again
    _check_activatable(account)
    await check_did_document(p, account)
    did = account.did
    key = p.signing_key(account)

    def job(w: WriteContext) -> None:
        current = w.db.account(did)
        if current is None:
            raise AuthRequired("Account not found")
        if current.active:
            return
        _check_activatable(current)
        statement = PdsDatabase.set_account_status_sql(did, "active", None)
        w.execute(statement[0], *statement[1])
        w.event(did, "#account", {"did": did, "active": True})
        w.event(did, "#identity", {"did": did, "handle": current.handle})
        if w.repo(did) is None:
            w.create_repo(did, key)
        else:
            # a fresh commit over the same data, signed here, above any earlier rev
            w.commit(did, key, [])
        w.sync_event(did)

    await p.writer.submit(job)


def _check_activatable(account: AccountRow) -> None:
    if account.status == "takendown":
        raise AccountTakedown("Account has been taken down")
    if account.status in ("pending", "rejected"):
        raise RoostError("The account's application has not been approved")
    if account.status != "deactivated":
        raise RoostError(f"The account cannot be activated: it is {account.status}")


# -- checkAccountStatus ----------------------------------------------------------------------


async def check_account_status(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    account = own_account(ctx)
    root = p.db.repo_root(account.did)
    if root is None:  # pragma: no cover - every account has a repo
        raise RoostError("The account has no repository")
    repo_bytes, blob_bytes = p.db.storage_use(account.did)
    return {
        "activated": account.active,
        "validDid": await _did_valid(p, account),
        "repoCommit": str(root[0]),
        "repoRev": root[1],
        **p.db.account_counts(account.did),
        # roost extension: what a move elsewhere must find room for (migration preflight)
        "roostRepoBytes": repo_bytes,
        "roostBlobBytes": blob_bytes,
        "roostLargestBlob": p.db.largest_blob(account.did),
    }


# -- getServiceAuth --------------------------------------------------------------------------


async def get_service_auth(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    account = own_account(ctx)
    creds: SessionCredentials = ctx.auth  # type: ignore[assignment]
    aud: str = ctx.params["aud"]
    lxm: str | None = ctx.params.get("lxm")
    exp: int | None = ctx.params.get("exp")
    now = int(time.time())
    lifetime = SERVICE_AUTH_DEFAULT_S
    if exp is not None:
        lifetime = exp - now
        if lifetime <= 0:
            raise BadExpiration("expiration is in past")
        if lifetime > SERVICE_AUTH_MAX_S:
            raise BadExpiration(
                "cannot request a token with an expiration more than an hour in the future"
            )
        if lxm is None and lifetime > SERVICE_AUTH_METHODLESS_MAX_S:
            raise BadExpiration(
                "cannot request a method-less token with an expiration more than a minute"
                " in the future"
            )
    if lxm is not None and lxm in PROTECTED_METHODS:
        raise RoostError(
            f"cannot request a service auth token for the following protected method: {lxm}"
        )
    if (lxm is None or lxm in _FULL_ACCESS_LXM) and creds.scope not in FULL_ACCESS_SCOPES:
        raise InvalidToken("Bad token scope")
    if lxm is not None and lxm.startswith("chat.bsky.") and creds.scope not in PRIVILEGED_SCOPES:
        raise InvalidToken("Bad token scope")
    token = mint_service_token(
        p.signing_key(account), iss=account.did, aud=aud, lxm=lxm, exp_seconds=lifetime,
        clock=lambda: now,
    )
    return {"token": token}


# -- deletion by the member --------------------------------------------------------------------


async def request_account_delete(ctx: XrpcContext) -> None:
    p = pds(ctx)
    account = own_account(ctx)
    await send_token(
        p,
        account,
        PURPOSE_DELETE,
        "Account deletion request",
        f"Someone asked to delete the account {account.handle} ({account.did}) on"
        f" {p.config.hostname}. To confirm, use this code within"
        f" {TOKEN_TTL_SECONDS // 60} minutes: {{token}}\n"
        "If you did not ask for this, ignore this message and change your password.",
    )


async def delete_account(ctx: XrpcContext) -> None:
    from pds.api.admin import remove_account  # noqa: PLC0415 (admin imports server)

    p = pds(ctx)
    body = ctx.input
    did: str = body["did"]
    account = p.db.account(did)
    if account is None:
        raise RoostError("account not found")
    if not await verify_password_async(body["password"], account.password_hash):
        raise AuthRequired("Invalid did or password")
    await consume_token(p, did, PURPOSE_DELETE, body["token"], keep=True)
    await remove_account(p, did)
