"""``com.atproto.server.*``: server description, accounts and sessions."""

from __future__ import annotations

import secrets
import time
from typing import Any

from roost.auth import SCOPE_ACCESS, SCOPE_REFRESH, SessionCredentials
from roost.crypto import PrivateKey, parse_did_key
from roost.errors import (
    AccountTakedown,
    AuthRequired,
    CryptoError,
    HandleNotAvailable,
    InvalidHandle,
    InvalidInviteCode,
    RoostError,
    UnsupportedDomain,
)
from roost.jwt import ACCESS_TOKEN_TYP, REFRESH_TOKEN_TYP, create_hs256_jwt
from roost.syntax import is_valid_handle
from roost.xrpc import XrpcContext, XrpcRouter

from pds.context import PdsContext, pds
from pds.passwords import hash_password_async, verify_password_async
from pds.sqlite import AccountRow
from pds.writer import WriteContext, utc_now

__all__ = ["register", "issue_session", "ACCESS_TOKEN_SECONDS", "REFRESH_TOKEN_SECONDS"]

#: Lifetimes of session tokens (the reference PDS's values).
ACCESS_TOKEN_SECONDS = 120 * 60
REFRESH_TOKEN_SECONDS = 90 * 24 * 3600
#: A refresh token already used stays valid this long (retries after a lost response).
REFRESH_GRACE_SECONDS = 2 * 3600
#: Handle labels under the server's domain.
MIN_HANDLE_LABEL = 3
MAX_HANDLE_LABEL = 18


def register(router: XrpcRouter) -> None:
    router.query("com.atproto.server.describeServer")(describe_server)
    router.procedure("com.atproto.server.createAccount")(create_account)
    router.procedure("com.atproto.server.createSession")(create_session)

    # verifiers are built in the lifespan, so resolve them per request
    router.query("com.atproto.server.getSession", auth=_Access())(get_session)
    router.procedure("com.atproto.server.refreshSession", auth=_Refresh())(refresh_session)
    router.procedure("com.atproto.server.deleteSession", auth=_Refresh())(delete_session)


class _Lazy:
    """A verifier that delegates to the one in the running app's context."""

    attr = ""

    def accepts(self, conn: Any) -> bool:
        return getattr(conn.app.state.pds, self.attr).accepts(conn)  # type: ignore[no-any-return]

    async def __call__(self, conn: Any, nsid: str) -> Any:
        return await getattr(conn.app.state.pds, self.attr)(conn, nsid)


class _Access(_Lazy):
    attr = "access"


class _Refresh(_Lazy):
    attr = "refresh"


ACCESS = _Access()


# -- describeServer -------------------------------------------------------------------


async def describe_server(ctx: XrpcContext) -> dict[str, Any]:
    config = pds(ctx).config
    out: dict[str, Any] = {
        "did": config.service_did,
        "availableUserDomains": [config.handle_domain],
        "inviteCodeRequired": config.signup_mode == "invite",
        "phoneVerificationRequired": False,
        "links": {},
    }
    links = out["links"]
    if config.privacy_url:
        links["privacyPolicy"] = config.privacy_url
    if config.terms_url:
        links["termsOfService"] = config.terms_url
    if config.contact_email:
        out["contact"] = {"email": config.contact_email}
    return out


# -- createAccount ----------------------------------------------------------------------


def _check_handle(p: PdsContext, handle: str) -> str:
    handle = handle.lower()
    if not is_valid_handle(handle):
        raise InvalidHandle("Handle is not valid")
    if not handle.endswith(p.config.handle_domain):
        raise UnsupportedDomain(f"Handles here must end with {p.config.handle_domain}")
    label = handle[: -len(p.config.handle_domain)]
    if "." in label:
        raise InvalidHandle("Handle may not contain a dot before the server domain")
    if not MIN_HANDLE_LABEL <= len(label) <= MAX_HANDLE_LABEL:
        raise InvalidHandle(
            f"Handle name must be {MIN_HANDLE_LABEL} to {MAX_HANDLE_LABEL} characters long"
        )
    if p.db.account_by_handle(handle) is not None:
        raise HandleNotAvailable("Handle already taken")
    return handle


async def create_account(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    body = ctx.input
    handle = _check_handle(p, body["handle"])
    email = body.get("email")
    if email is not None:
        email = email.strip().lower()
        if "@" not in email or len(email) > 254:
            raise RoostError("Email is not valid")
        if p.db.account_by_email(email) is not None:
            raise RoostError("Email already taken")
    password = body.get("password")
    if not password:
        raise RoostError("Password is required")
    if p.config.signup_mode == "invite" and not body.get("inviteCode"):
        raise InvalidInviteCode("An invite code is required")
    recovery = body.get("recoveryKey")
    rotation_keys: list[Any] = []
    if recovery is not None:
        try:
            rotation_keys.append(parse_did_key(recovery))
        except CryptoError as exc:
            raise RoostError(f"recoveryKey is not a valid did:key: {exc.message}") from None
    rotation_keys.append(p.config.rotation_key)

    password_hash = await hash_password_async(password)
    signing_key = PrivateKey.generate("k256")
    did, _op = await p.plc.create_did(
        signing_key.public_key,
        rotation_keys,
        handle,
        p.config.url,
        signer=p.config.rotation_key,
    )
    session = _new_session(p, did)

    def job(w: WriteContext) -> None:
        if w.db.account_by_handle(handle) is not None:
            raise HandleNotAvailable("Handle already taken")
        w.execute(
            "INSERT INTO account (did, handle, email, password_hash, signing_key, created_at,"
            " status) VALUES (?, ?, ?, ?, ?, ?, 'active')",
            did, handle, email, password_hash, signing_key.to_hex(), utc_now(),
        )
        _store_refresh(w, did, session)
        w.event(did, "#identity", {"did": did, "handle": handle})
        w.event(did, "#account", {"did": did, "active": True})
        w.create_repo(did, signing_key)
        w.sync_event(did)

    await p.writer.submit(job)
    return {
        "did": did,
        "handle": handle,
        "accessJwt": session["access"],
        "refreshJwt": session["refresh"],
    }


# -- sessions ---------------------------------------------------------------------------


def _new_session(p: PdsContext, did: str, *, app_password: str | None = None) -> dict[str, Any]:
    now = int(time.time())
    secret = p.config.jwt_secret.encode()  # type: ignore[union-attr]
    jti = secrets.token_urlsafe(24)
    scope = SCOPE_ACCESS if app_password is None else "com.atproto.appPass"
    access = create_hs256_jwt(
        secret,
        {"scope": scope, "sub": did, "aud": p.service_did, "iat": now,
         "exp": now + ACCESS_TOKEN_SECONDS},
        typ=ACCESS_TOKEN_TYP,
    )
    expires = now + REFRESH_TOKEN_SECONDS
    refresh = create_hs256_jwt(
        secret,
        {"scope": SCOPE_REFRESH, "sub": did, "aud": p.service_did, "jti": jti, "iat": now,
         "exp": expires},
        typ=REFRESH_TOKEN_TYP,
    )
    return {"access": access, "refresh": refresh, "jti": jti, "expires": expires,
            "app_password": app_password}


def issue_session(p: PdsContext, did: str, *, app_password: str | None = None) -> dict[str, Any]:
    """Tokens for a new session (the refresh token is stored by the caller's write)."""
    return _new_session(p, did, app_password=app_password)


def _store_refresh(w: WriteContext, did: str, session: dict[str, Any]) -> None:
    w.execute(
        "INSERT INTO refresh_token (id, did, expires_at, app_password) VALUES (?, ?, ?, ?)",
        session["jti"], did, session["expires"], session["app_password"],
    )
    w.execute("DELETE FROM refresh_token WHERE did = ? AND expires_at < ?", did, int(time.time()))


def _session_output(account: AccountRow, session: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"did": account.did, "handle": account.handle}
    if session is not None:
        out["accessJwt"] = session["access"]
        out["refreshJwt"] = session["refresh"]
    if account.email:
        out["email"] = account.email
        out["emailConfirmed"] = False
    out["active"] = account.active
    if not account.active:
        out["status"] = account.status
    return out


def _find_account(p: PdsContext, identifier: str) -> AccountRow | None:
    identifier = identifier.strip().lower()
    if "@" in identifier:
        return p.db.account_by_email(identifier)
    if identifier.startswith("did:"):
        return p.db.account(identifier)
    return p.db.account_by_handle(identifier)


async def create_session(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    identifier = ctx.input["identifier"]
    password = ctx.input["password"]
    account = _find_account(p, identifier)
    # always hash once so a missing account costs the same time as a wrong password
    ok = await verify_password_async(password, account.password_hash if account else "")
    if account is None or not ok:
        raise AuthRequired("Invalid identifier or password")
    if account.status == "takendown" and not ctx.input.get("allowTakendown"):
        raise AccountTakedown("Account has been taken down")
    session = _new_session(p, account.did)
    await p.writer.submit(lambda w: _store_refresh(w, account.did, session))
    return _session_output(account, session)


async def get_session(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    account = p.db.account(ctx.auth.did)  # type: ignore[arg-type]
    if account is None:
        raise AuthRequired("Account not found")
    return _session_output(account, None)


async def refresh_session(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    creds: SessionCredentials = ctx.auth  # type: ignore[assignment]
    account = p.db.account(creds.did)
    if account is None:
        raise AuthRequired("Account not found")
    old = p.db.refresh_token(creds.jti or "")
    session = _new_session(p, account.did, app_password=old[2] if old else None)
    now = int(time.time())

    def job(w: WriteContext) -> None:
        _store_refresh(w, account.did, session)
        # the used token stays valid for a short grace period, then expires
        w.execute(
            "UPDATE refresh_token SET expires_at = MIN(expires_at, ?), next_id = ? WHERE id = ?",
            now + REFRESH_GRACE_SECONDS, session["jti"], creds.jti,
        )

    await p.writer.submit(job)
    return _session_output(account, session)


async def delete_session(ctx: XrpcContext) -> None:
    p = pds(ctx)
    creds: SessionCredentials = ctx.auth  # type: ignore[assignment]
    await p.writer.submit(
        lambda w: w.execute("DELETE FROM refresh_token WHERE id = ?", creds.jti)
    )
