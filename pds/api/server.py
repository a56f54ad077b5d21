"""``com.atproto.server.*``: server description, accounts and sessions.

``createAccount`` makes a new did:plc for a new member; given an existing
``did`` and a service-auth token from the DID's current host (``aud`` this
server, ``lxm`` createAccount, signed by the DID's ``#atproto`` key) it takes
in an account migrating here, deactivated and silent until it is activated
(:mod:`pds.api.account`). ``createSession`` is rate limited per identifier
and client address (:data:`LOGIN_LIMITS`), before the password is checked.
The rest of the account lifecycle is in :mod:`pds.api.account`; the
operator's methods in :mod:`pds.api.admin`.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from roost.auth import (
    FULL_ACCESS_SCOPES,
    SCOPE_ACCESS,
    SCOPE_APP_PASS,
    SCOPE_APP_PASS_PRIVILEGED,
    SCOPE_REFRESH,
    InvalidToken,
    ServiceAuth,
    ServiceCredentials,
    SessionCredentials,
    bearer_token,
    optional,
)
from roost.crypto import PrivateKey, parse_did_key
from roost.errors import (
    AccountTakedown,
    AuthRequired,
    CryptoError,
    ExpiredToken,
    HandleNotAvailable,
    InvalidHandle,
    InvalidInviteCode,
    RoostError,
    UnsupportedDomain,
)
from roost.identity import HandleResolver
from roost.jwt import ACCESS_TOKEN_TYP, REFRESH_TOKEN_TYP, create_hs256_jwt
from roost.ratelimit import RateLimit
from roost.syntax import ensure_handle, is_disallowed_handle_tld, is_valid_handle
from roost.xrpc import XrpcContext, XrpcRouter

from pds.context import PdsContext, pds, resolve_signing_key
from pds.passwords import (
    app_password_digest,
    generate_app_password,
    hash_password_async,
    is_app_password_format,
    verify_password_async,
)
from pds.sqlite import AccountRow, PdsDatabase, Statement
from pds.writer import WriteContext, utc_now

__all__ = [
    "ACCESS",
    "ACCESS_TOKEN_SECONDS",
    "FULL_ACCESS",
    "LOGIN_LIMITS",
    "REFRESH_TOKEN_SECONDS",
    "check_external_handle",
    "check_handle",
    "full_access",
    "issue_session",
    "register",
]

#: Lifetimes of session tokens (the reference PDS's values).
ACCESS_TOKEN_SECONDS = 120 * 60
REFRESH_TOKEN_SECONDS = 90 * 24 * 3600
#: A refresh token already used stays valid this long (retries after a lost response).
REFRESH_GRACE_SECONDS = 2 * 3600
#: Handle labels under the server's domain.
MIN_HANDLE_LABEL = 3
MAX_HANDLE_LABEL = 18
#: Longest app password name accepted.
MAX_APP_PASSWORD_NAME = 100
#: Longest application (all answers together).
MAX_APPLICATION_CHARS = 10_000
_MIB = 1024 * 1024
#: Login attempts (the reference PDS's budgets), counted per identifier and client
#: address together: guessing one account's password from one place is slowed
#: down, and nobody elsewhere can lock its holder out.
LOGIN_LIMITS = (
    RateLimit("create-session-5min", 30, 300, per="ip"),
    RateLimit("create-session-day", 300, 86_400, per="ip"),
)


def register(router: XrpcRouter) -> None:
    router.query("com.atproto.server.describeServer")(describe_server)
    router.procedure("com.atproto.server.createAccount", auth=optional(_MigrationAuth()))(
        create_account
    )
    router.procedure("com.atproto.server.createSession")(create_session)

    # verifiers are built in the lifespan, so resolve them per request
    router.query("com.atproto.server.getSession", auth=_Access())(get_session)
    router.procedure("com.atproto.server.refreshSession", auth=_Refresh())(refresh_session)
    router.procedure("com.atproto.server.deleteSession", auth=_Refresh())(delete_session)

    router.procedure("com.atproto.server.createAppPassword", auth=FULL_ACCESS)(
        create_app_password
    )
    router.query("com.atproto.server.listAppPasswords", auth=ACCESS)(list_app_passwords)
    router.procedure("com.atproto.server.revokeAppPassword", auth=ACCESS)(revoke_app_password)

    from pds.api import account, admin  # noqa: PLC0415 (they import this module)

    admin.register(router)
    account.register(router)


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


class _FullAccess(_Access):
    """Access tokens of a main-password session only (app passwords: ``InvalidToken``)."""

    async def __call__(self, conn: Any, nsid: str) -> Any:
        creds = await super().__call__(conn, nsid)
        full_access(creds)
        return creds


def full_access(creds: Any) -> None:
    """Raise ``InvalidToken "Bad token scope"`` unless ``creds`` has full access."""
    if not isinstance(creds, SessionCredentials) or creds.scope not in FULL_ACCESS_SCOPES:
        raise InvalidToken("Bad token scope")


ACCESS = _Access()
#: For "full-access" routes (xrpc.md §6): the main password, never an app password.
FULL_ACCESS = _FullAccess()


def _execute(w: WriteContext, statements: list[Statement]) -> None:
    for sql, params in statements:
        w.execute(sql, *params)


# -- describeServer -------------------------------------------------------------------


async def describe_server(ctx: XrpcContext) -> dict[str, Any]:
    config = pds(ctx).config
    out: dict[str, Any] = {
        "did": config.service_did,
        "availableUserDomains": [config.handle_domain],
        "inviteCodeRequired": config.signup_mode == "invite",
        "phoneVerificationRequired": False,
        "blobUploadLimit": config.max_blob_bytes,
        "links": {},
        # roost extension: room for an account migrating in (its CLI checks this first)
        "roostStorage": storage_report(config.data_dir),
    }
    links = out["links"]
    if config.privacy_url:
        links["privacyPolicy"] = config.privacy_url
    if config.terms_url:
        links["termsOfService"] = config.terms_url
    if config.rules_url:
        links["rules"] = config.rules_url  # roost: the server's rules (open object)
    if config.contact_email:
        out["contact"] = {"email": config.contact_email}
    if config.signup_mode == "application":
        # roost extension: how to apply (answers go in createAccount's
        # ``roostApplication: {"answers": [...]}``, one per question, in order)
        out["roostApplication"] = {"questions": list(config.application_questions)}
        if config.rules_url:
            out["roostApplication"]["rulesUrl"] = config.rules_url
    return out


def storage_report(data_dir: Path) -> dict[str, int]:
    """What an account moving here may bring: the largest repo CAR ``importRepo``
    takes and the free space of the data volume, in whole MiB (no finer detail
    about the machine is given out)."""
    from pds.api.importer import MAX_IMPORT_BYTES  # noqa: PLC0415 (importer imports this module)

    try:
        free = shutil.disk_usage(data_dir).free
    except OSError:
        free = 0
    return {"maxRepoBytes": MAX_IMPORT_BYTES, "freeBytes": free // _MIB * _MIB}


def _application_answers(p: PdsContext, body: dict[str, Any]) -> str | None:
    """The applicant's answers as stored JSON (application mode), else None."""
    if p.config.signup_mode != "application":
        return None
    questions = p.config.application_questions
    raw = body.get("roostApplication")
    answers: Any = raw.get("answers") if isinstance(raw, dict) else None
    if answers is None:
        answers = []
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise RoostError("roostApplication.answers must be a list of strings")
    if len(answers) != len(questions) or any(not a.strip() for a in answers):
        raise RoostError(f"This server requires an application: answer all {len(questions)} questions")
    if sum(len(a) for a in answers) > MAX_APPLICATION_CHARS:
        raise RoostError(f"Application answers are limited to {MAX_APPLICATION_CHARS} characters")
    return json.dumps(
        [{"question": q, "answer": a.strip()} for q, a in zip(questions, answers)]
    )


def _invite_uses_pending(w: WriteContext, code: str) -> int:
    """Uses of ``code`` recorded by jobs earlier in this write batch."""
    sql = PdsDatabase.use_invite_code_sql(code, "", "")[0]
    return sum(1 for s, params in w.statements if s == sql and params[0] == code)


def check_invite_code(db: PdsDatabase, code: str, pending_uses: int = 0) -> None:
    """``InvalidInviteCode`` unless ``code`` exists, is enabled and has uses left."""
    row = db.invite_code(code)
    if row is None or row[4]:
        raise InvalidInviteCode("Provided invite code not available")
    if len(db.invite_uses(code)) + pending_uses >= row[3]:
        raise InvalidInviteCode("Provided invite code not available")


# -- createAccount ----------------------------------------------------------------------


def check_handle(p: PdsContext, handle: str) -> str:
    """A handle under the server's domain that is valid and free (lower-cased)."""
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
    """A new account with a new did:plc, or (``did`` given, with a service-auth
    token from the DID's current host) an account migrating in, which starts
    deactivated and announces nothing until it is activated."""
    p = pds(ctx)
    body = ctx.input
    if body.get("plcOp") is not None:
        raise RoostError('Unsupported input: "plcOp"')
    migrating: str | None = body.get("did")
    if migrating is not None:
        creds = ctx.auth
        if not isinstance(creds, ServiceCredentials) or creds.did != migrating:
            raise AuthRequired(f"Missing auth to create account with did: {migrating}")
        if p.db.account(migrating) is not None:
            raise RoostError(f"An account for {migrating} already exists on this server")
        handle = await _migrating_handle(p, migrating, body["handle"])
    else:
        handle = check_handle(p, body["handle"])
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
    invite_code: str | None = None
    if p.config.signup_mode == "invite":
        invite_code = (body.get("inviteCode") or "").strip()
        if not invite_code:
            raise InvalidInviteCode("An invite code is required")
        check_invite_code(p.db, invite_code)
    application = _application_answers(p, body)
    if application is not None:
        status = "pending"
    else:
        status = "deactivated" if migrating is not None else "active"

    password_hash = await hash_password_async(password)
    signing_key = PrivateKey.generate("k256")
    if migrating is not None:
        did = migrating  # the DID document changes later (submitPlcOperation or did.json)
    else:
        did = await _create_did(p, body, signing_key, handle)
    session = _new_session(p, did)

    def job(w: WriteContext) -> None:
        if w.db.account_by_handle(handle) is not None:
            raise HandleNotAvailable("Handle already taken")
        if w.db.account(did) is not None:
            raise RoostError(f"An account for {did} already exists on this server")
        now = utc_now()
        if invite_code is not None:
            # checked again here: the writer runs one job at a time (atomic use)
            check_invite_code(w.db, invite_code, _invite_uses_pending(w, invite_code))
            _execute(w, [PdsDatabase.use_invite_code_sql(invite_code, did, now)])
        w.execute(
            "INSERT INTO account (did, handle, email, password_hash, signing_key, created_at,"
            " status, application, invite_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            did, handle, email, password_hash, signing_key.to_hex(), now, status,
            application, invite_code,
        )
        _execute(w, [PdsDatabase.forget_deletion_sql(did)])
        _store_refresh(w, did, session)
        if migrating is not None:
            # inactive, and not yet named by the DID document: no events at all
            # (account-migration.md section 6); activation announces the account
            mark = len(w.events)
            w.create_repo(did, signing_key)
            del w.events[mark:]
            return
        w.event(did, "#identity", {"did": did, "handle": handle})
        if status == "active":
            w.event(did, "#account", {"did": did, "active": True})
            w.create_repo(did, signing_key)
            w.sync_event(did)
        else:
            # a pending application: inactive, so no #commit goes out (event-stream §6);
            # approval emits #account, #identity and #sync
            w.event(did, "#account", {"did": did, "active": False, "status": "deactivated"})
            mark = len(w.events)
            w.create_repo(did, signing_key)
            del w.events[mark:]

    await p.writer.submit(job)
    out: dict[str, Any] = {
        "did": did,
        "handle": handle,
        "accessJwt": session["access"],
        "refreshJwt": session["refresh"],
    }
    if status != "active":
        out["roostStatus"] = status  # roost extension: pending review, or deactivated
    return out


async def _create_did(
    p: PdsContext, body: dict[str, Any], signing_key: PrivateKey, handle: str
) -> str:
    """Register a new did:plc naming this server, its rotation key and the account's key."""
    recovery = body.get("recoveryKey")
    rotation_keys: list[Any] = []
    if recovery is not None:
        try:
            rotation_keys.append(parse_did_key(recovery))
        except CryptoError as exc:
            raise RoostError(f"recoveryKey is not a valid did:key: {exc.message}") from None
    rotation_keys.append(p.config.rotation_key)
    did, _op = await p.plc.create_did(
        signing_key.public_key,
        rotation_keys,
        handle,
        p.config.url,
        signer=p.config.rotation_key,
    )
    return did


async def _migrating_handle(p: PdsContext, did: str, requested: str) -> str:
    """The handle of an account migrating in: one under this server's domain, or
    the account's own domain handle (it must already resolve to the DID)."""
    handle = requested.lower()
    if handle.endswith(p.config.handle_domain):
        return check_handle(p, handle)
    handle = ensure_handle(handle).lower()
    if p.db.account_by_handle(handle) is not None:
        raise HandleNotAvailable("Handle already taken")
    await check_external_handle(p, did, handle)
    return handle


async def check_external_handle(p: PdsContext, did: str, handle: str) -> None:
    """A handle outside the server's domain must resolve (DNS or well-known) to ``did``."""
    if is_disallowed_handle_tld(handle):
        raise InvalidHandle("Handle uses a reserved top-level domain")
    resolver = HandleResolver(allow_local=p.config.allow_local)
    try:
        resolved = await resolver.resolve(handle)
    except RoostError:
        resolved = None
    finally:
        await resolver.aclose()
    if resolved != did:
        raise RoostError("External handle did not resolve to DID")


class _MigrationAuth:
    """``createAccount`` with an existing DID: a service-auth token from the DID's
    current host (``aud`` = this server, ``lxm`` = createAccount), verified
    against the DID's current ``#atproto`` key; one verifier (and replay cache)
    per running app."""

    def accepts(self, conn: Any) -> bool:
        return bearer_token(conn) is not None

    async def __call__(self, conn: Any, nsid: str) -> Any:
        p: PdsContext = conn.app.state.pds
        verifier = p.extra.get("migration_auth")
        if verifier is None:

            async def resolve_key(did: str, *, force_refresh: bool) -> Any:
                return await resolve_signing_key(p, did, force_refresh=force_refresh)

            verifier = p.extra["migration_auth"] = ServiceAuth(p.service_did, resolve_key)
        return await verifier(conn, nsid)


# -- sessions ---------------------------------------------------------------------------


def _new_session(
    p: PdsContext, did: str, *, app_password: str | None = None, privileged: bool = False
) -> dict[str, Any]:
    now = int(time.time())
    secret = p.config.jwt_secret.encode()  # type: ignore[union-attr]
    jti = secrets.token_urlsafe(24)
    if app_password is None:
        scope = SCOPE_ACCESS
    else:
        scope = SCOPE_APP_PASS_PRIVILEGED if privileged else SCOPE_APP_PASS
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


def issue_session(
    p: PdsContext, did: str, *, app_password: str | None = None, privileged: bool = False
) -> dict[str, Any]:
    """Tokens for a new session (the refresh token is stored by the caller's write)."""
    return _new_session(p, did, app_password=app_password, privileged=privileged)


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
        if account.status_reason and account.status == "rejected":
            out["roostStatusReason"] = account.status_reason  # roost: why it was refused
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
    key = f"{identifier.strip().lower()}-{ctx.client_ip}"
    for limit in LOGIN_LIMITS:
        ctx.rate_limit(limit, key=key)
    account = _find_account(p, identifier)
    # always hash once so a missing account costs the same time as a wrong password
    ok = await verify_password_async(password, account.password_hash if account else "")
    app_password: tuple[str, bool] | None = None
    if account is not None and not ok and is_app_password_format(password):
        # app passwords carry 80 random bits: found by their digest (pds.passwords)
        app_password = p.db.app_password_by_hash(
            account.did, app_password_digest(account.did, password)
        )
    if account is None or not (ok or app_password):
        raise AuthRequired("Invalid identifier or password")
    if account.status == "takendown" and not ctx.input.get("allowTakendown"):
        raise AccountTakedown("Account has been taken down")
    if app_password is None:
        session = _new_session(p, account.did)
    else:
        session = _new_session(
            p, account.did, app_password=app_password[0], privileged=app_password[1]
        )
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
    app_name = old[2] if old else None
    privileged = False
    if app_name is not None:
        # a session of an app password keeps its scope, and ends with the app password
        row = p.db.app_password(account.did, app_name)
        if row is None:
            raise ExpiredToken("Token has been revoked")
        privileged = row[1]
    session = _new_session(p, account.did, app_password=app_name, privileged=privileged)
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


# -- app passwords ------------------------------------------------------------------------


async def create_app_password(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    did: str = ctx.auth.did  # type: ignore[assignment]
    name = ctx.input["name"].strip()
    if not name or len(name) > MAX_APP_PASSWORD_NAME:
        raise RoostError(f"App password name must be 1 to {MAX_APP_PASSWORD_NAME} characters")
    privileged = bool(ctx.input.get("privileged", False))
    password = generate_app_password()
    digest = app_password_digest(did, password)
    created_at = utc_now()

    def job(w: WriteContext) -> None:
        if w.db.app_password(did, name) is not None:
            raise RoostError("An app password with this name already exists")
        _execute(w, [PdsDatabase.insert_app_password_sql(did, name, digest, created_at, privileged)])

    if p.db.app_password(did, name) is not None:
        raise RoostError("An app password with this name already exists")
    await p.writer.submit(job)
    return {"name": name, "password": password, "createdAt": created_at, "privileged": privileged}


async def list_app_passwords(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    rows = p.db.app_passwords(ctx.auth.did)  # type: ignore[arg-type]
    return {
        "passwords": [
            {"name": name, "createdAt": created_at, "privileged": privileged}
            for name, created_at, privileged in rows
        ]
    }


async def revoke_app_password(ctx: XrpcContext) -> None:
    p = pds(ctx)
    did: str = ctx.auth.did  # type: ignore[assignment]
    name = ctx.input["name"].strip()
    await p.writer.submit(lambda w: _execute(w, PdsDatabase.revoke_app_password_sql(did, name)))
