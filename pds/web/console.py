"""The admin console (``/admin``): applications, accounts, takedowns, invites, outbox.

Signing in with the admin password sets a signed session cookie (HttpOnly,
SameSite=Strict, path ``/admin``); every form carries a CSRF token. Each
action runs the admin XRPC handler of :mod:`pds.api.admin` in-process (see
:mod:`pds.web.calls`), so the console and ``roost pds admin`` / the
``com.atproto.admin.*`` API can never disagree. Each account has a network
visibility check (:mod:`pds.web.visibility`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pds.api import admin, sync
from pds.web.calls import AS_ADMIN, call, pds_of, public_message
from pds.web.site import LOGIN_LIMIT, WebState, did_path, human_bytes
from pds.web.visibility import check_visibility
from roost.errors import AuthRequired, NotFound, RateLimitExceeded, RoostError
from roost.web import CsrfFailed, CsrfToken, Markup, join, read_form, redirect, render, safe_next

__all__ = ["MAX_ACCOUNTS_SCANNED", "routes"]

#: Accounts listed per page, and at most read to find applications and takedowns.
ACCOUNTS_PER_PAGE: Final = 50
MAX_ACCOUNTS_SCANNED: Final = 10_000
_SCAN_PAGE = 100
#: Invite codes listed per page.
INVITES_PER_PAGE: Final = 100
#: Outbox messages listed per page.
OUTBOX_PER_PAGE: Final = 50
#: Longest reason accepted for a rejection or a takedown.
MAX_REASON_CHARS: Final = 500

_REPO_REF = "com.atproto.admin.defs#repoRef"
_NOTICES: Final = {
    "approved": "Approved {who}: the account is active and announced to the network.",
    "rejected": "Rejected {who}; they see your reason when they try to sign in.",
    "takendown": "Took down {who}.",
    "restored": "Restored {who}.",
    "invites": "Created {who} invite code(s): they are at the top of the list.",
    "disabled": "Disabled invite code {who}.",
}
_STATUS_BADGE: Final = {
    "active": "good",
    "pending": "warn",
    "rejected": "bad",
    "takendown": "bad",
    "deactivated": "",
}

AdminHandler = Callable[[Request, CsrfToken], Awaitable[Response]]


def _badge(status: str) -> Markup:
    return render('<span class="badge $c">$s</span>', c=_STATUS_BADGE.get(status, ""), s=status)


def _storage(view: dict[str, Any]) -> str:
    use = view.get("roostStorage") or {}
    repo, blobs = int(use.get("repoBytes", 0)), int(use.get("blobBytes", 0))
    return f"{human_bytes(repo + blobs)} (repo {human_bytes(repo)}, blobs {human_bytes(blobs)})"


def _date(value: str | None) -> str:
    return (value or "")[:16].replace("T", " ")


def _notice(request: Request) -> str | None:
    template = _NOTICES.get(request.query_params.get("done", ""))
    return template.format(who=request.query_params.get("who", "")) if template else None


def _with_notice(url: str, done: str, who: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{urlencode({'done': done, 'who': who})}"


async def _scan_accounts(
    request: Request, keep: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Account views (searchAccounts, every page up to the scan limit) that ``keep`` keeps."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_ACCOUNTS_SCANNED // _SCAN_PAGE):
        out = await call(request, admin.search_accounts, "com.atproto.admin.searchAccounts",
                         auth=AS_ADMIN, params={"limit": _SCAN_PAGE, "cursor": cursor})
        found.extend(view for view in out["accounts"] if keep(view))
        cursor = out.get("cursor")
        if not cursor:
            break
    return found


def _answers(view: dict[str, Any]) -> Markup:
    items = view.get("roostApplication") or []
    return join(
        render("<dt>$q</dt><dd>$a</dd>", q=item.get("question", ""), a=item.get("answer", ""))
        for item in items if isinstance(item, dict)
    )


def _application(state: WebState, csrf: CsrfToken, view: dict[str, Any], next_url: str) -> Markup:
    return state.templates.render(
        "application.html",
        handle=view["handle"],
        email=view.get("email") or "no email",
        created=_date(view.get("indexedAt")),
        answers=_answers(view) or render("<dd>$t</dd>", t="(no answers)"),
        did_q=did_path(view["did"]),
        csrf=csrf.field(),
        next=next_url,
    )


def _account_row(state: WebState, view: dict[str, Any], extra: Markup | str = "") -> Markup:
    reason = view.get("roostStatusReason")
    return state.templates.render(
        "account_row.html",
        did_q=did_path(view["did"]),
        did=view["did"],
        handle=view["handle"],
        badge=_badge(view.get("roostStatus", "")),
        storage=_storage(view),
        email=view.get("email") or "no email",
        created=_date(view.get("indexedAt")),
        reason=render('<div class="small">Reason: $r</div>', r=reason) if reason else "",
        extra=extra,
    )


def _status_form(csrf: CsrfToken, did: str, action: str, label: str, *, reason: bool = False,
                 danger: bool = False, confirm: str | None = None, next_url: str = "") -> Markup:
    """A button (with a reason field) that changes the account's status, then goes to
    ``next_url`` (default: the account's page)."""
    return render(
        '<form method="post" action="/admin/accounts/$d/status"$confirm>$csrf'
        '<input type="hidden" name="action" value="$a"><input type="hidden" name="next" value="$n">'
        '$reason<button type="submit"$cls>$label</button></form>',
        d=did_path(did), csrf=csrf.field(), a=action, label=label, n=next_url,
        reason=render('<input type="text" name="reason" required maxlength="$m" '
                      'placeholder="Reason" aria-label="Reason">', m=MAX_REASON_CHARS)
        if reason else "",
        cls=Markup(' class="danger"' if danger else ""),
        confirm=render(' data-confirm="$c"', c=confirm) if confirm else "",
    )


def _back(request: Request) -> str:
    """The page this request came from (its Referer) if it is one of ours, else /admin."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc != request.url.netloc:
        return "/admin"
    return safe_next(referer.path + (f"?{referer.query}" if referer.query else ""), "/admin")


def _outbox_message(state: WebState, message: dict[str, Any], handle: str | None) -> Markup:
    token = message.get("token")
    return state.templates.render(
        "outbox_message.html",
        subject=message["subject"],
        purpose=message["purpose"].replace("_", " "),
        created=_date(message["createdAt"]),
        did_q=did_path(message["did"]),
        to=handle or message["did"],
        recipient=render(" · $r", r=message["recipient"]) if message.get("recipient") else "",
        body=message["body"],
        token=render('<p>Token: <code>$t</code> <button type="button" class="link" '
                     'data-copy="$t">Copy</button></p>', t=token) if token else "",
    )


def routes(state: WebState) -> list[Route]:
    config = state.config

    def admin_error(csrf: CsrfToken, exc: RoostError, back: str) -> Response:
        body = render('<section class="card"><h1>$t</h1><p><a href="$b">Go back</a></p></section>',
                      t="That did not work", b=safe_next(back, "/admin"))
        return state.admin_page("Error", body, csrf=csrf, current="",
                                error=public_message(exc), status=exc.status)

    def guarded(handler: AdminHandler) -> Callable[[Request], Awaitable[Response]]:
        """Only for a signed-in admin; a POST must also carry the CSRF token."""

        async def endpoint(request: Request) -> Response:
            if state.admin is None:
                return disabled()
            if not state.is_admin(request):
                if request.method in ("GET", "HEAD"):
                    query = request.url.query
                    target = request.url.path + (f"?{query}" if query else "")
                    return redirect("/admin/login?" + urlencode({"next": target}))
                return state.error_page(
                    AuthRequired("Your admin session has ended: sign in again."),
                    back="/admin/login",
                )
            csrf = state.csrf.token(request)
            try:
                return await handler(request, csrf)
            except RoostError as exc:
                return admin_error(csrf, exc, _back(request))

        return endpoint

    def disabled() -> Response:
        body = render('<section class="card narrow"><h1>$t</h1><p>$m</p></section>',
                      t="The admin console is off",
                      m="Start the server with an admin password (--admin-password or "
                        "ROOST_ADMIN_PASSWORD) to use it.")
        return state.public_page("Admin", body, status=403)

    # -- sign in and out -----------------------------------------------------------------

    def login_page(request: Request, csrf: CsrfToken, next_url: str, *, error: str | None = None,
                   notice: str | None = None, status: int = 200) -> Response:
        form = state.templates.render("login_form.html", csrf=csrf.field(), next=next_url)
        if notice:
            form = render('<p class="msg good">$n</p>$f', n=notice, f=form)
        body = state.templates.render("login.html", body=form)
        return state.public_page("Admin sign-in", body, csrf=csrf, error=error, status=status)

    async def login(request: Request) -> Response:
        if state.admin is None:
            return disabled()
        next_url = safe_next(request.query_params.get("next"), "/admin")
        if state.is_admin(request):
            return redirect(next_url)
        notice = "Signed out." if request.query_params.get("done") == "signout" else None
        return login_page(request, state.csrf.token(request), next_url, notice=notice)

    async def login_post(request: Request) -> Response:
        if state.admin is None:
            return disabled()
        try:
            form = await read_form(request)
        except RoostError as exc:
            return state.error_page(exc, back="/admin/login")
        csrf = state.csrf.token(request)
        next_url = safe_next(form.get("next"), "/admin")
        try:
            state.csrf.check(request, form)
        except CsrfFailed as exc:
            return login_page(request, csrf, next_url, error=exc.message, status=exc.status)
        wait = state.allowed(request, LOGIN_LIMIT)
        if wait is not None:
            limited = RateLimitExceeded(
                f"Too many attempts: try again in {wait // 60 + 1} minutes."
            )
            return login_page(request, csrf, next_url, error=limited.message,
                              status=limited.status)
        if not state.check_admin_password(form.get("password")):
            return login_page(request, csrf, next_url, error="Wrong password.", status=401)
        response = redirect(next_url)
        state.sign_in(response)
        return response

    async def logout(request: Request) -> Response:
        try:
            form = await read_form(request)
            state.csrf.check(request, form)
        except RoostError as exc:
            return state.error_page(exc, back="/admin")
        response = redirect("/admin/login?done=signout")
        state.sign_out(response)
        return response

    # -- pages -----------------------------------------------------------------------------

    async def overview(request: Request, csrf: CsrfToken) -> Response:
        views = await _scan_accounts(request, lambda view: True)
        pending = [v for v in views if v.get("roostStatus") == "pending"]
        counts: dict[str, int] = {}
        for view in views:
            counts[view.get("roostStatus", "")] = counts.get(view.get("roostStatus", ""), 0) + 1
        stats = join(
            render("<div class=\"stat\"><b>$n</b><span>$l</span></div>", n=n, l=label)
            for label, n in (
                ("accounts", len(views)),
                ("active", counts.get("active", 0)),
                ("pending", counts.get("pending", 0)),
                ("taken down", counts.get("takendown", 0)),
            )
        )
        if pending:
            applications = render('<ul class="rows">$r</ul>', r=join(
                _application(state, csrf, view, "/admin") for view in pending
            ))
        elif config.signup_mode == "application":
            applications = render("<p class=\"muted\">$t</p>", t="No application waits for review.")
        else:
            applications = render(
                "<p class=\"muted\">$t</p>",
                t=f"Sign-up mode is \"{config.signup_mode}\": applications are used only in "
                  "\"application\" mode.",
            )
        relays = join((render("<code>$u</code>", u=u) for u in config.relay_urls), ", ")
        body = state.templates.render(
            "dashboard.html",
            stats=stats,
            pending_count=len(pending),
            applications=applications,
            url=config.url,
            domain=config.handle_domain,
            signup=config.signup_mode,
            plc=config.plc_url,
            relays=relays or render("<span class=\"badge bad\">$t</span>", t="none configured"),
        )
        return state.admin_page("Overview", body, csrf=csrf, current="/admin",
                                notice=_notice(request))

    async def accounts(request: Request, csrf: CsrfToken) -> Response:
        query = request.query_params.get("q", "").strip()
        cursor = request.query_params.get("cursor") or None
        out = await call(request, admin.search_accounts, "com.atproto.admin.searchAccounts",
                         auth=AS_ADMIN,
                         params={"email": query or None, "limit": ACCOUNTS_PER_PAGE,
                                 "cursor": cursor})
        views = out["accounts"]
        rows = join(_account_row(state, view) for view in views) or render(
            "<li class=\"muted\">$t</li>", t="No account matches." if query else "No account yet."
        )
        more: Markup | str = ""
        if out.get("cursor"):
            href = "/admin/accounts?" + urlencode({"q": query, "cursor": out["cursor"]})
            more = render('<p><a href="$h">Next page</a></p>', h=href)
        body = state.templates.render("accounts.html", q=query, rows=rows, more=more)
        return state.admin_page("Accounts", body, csrf=csrf, current="/admin/accounts",
                                notice=_notice(request))

    async def account(request: Request, csrf: CsrfToken) -> Response:
        did = request.path_params["did"]
        if pds_of(request).db.account(did) is None:
            raise NotFound(f"No account {did} on this server")
        view = await call(request, admin.get_account_info, "com.atproto.admin.getAccountInfo",
                          auth=AS_ADMIN, params={"did": did})
        status = view.get("roostStatus", "")
        reason = view.get("roostStatusReason")
        actions: list[Markup] = []
        if status in ("pending", "rejected"):
            actions.append(_status_form(csrf, did, "approve", "Approve"))
        if status == "pending":
            actions.append(_status_form(csrf, did, "reject", "Reject", reason=True, danger=True))
        if status == "takendown":
            actions.append(_status_form(csrf, did, "restore", "Restore the account"))
        else:
            actions.append(_status_form(
                csrf, did, "takedown", "Take down", reason=True, danger=True,
                confirm=f"Take down {view['handle']}? It disappears from the network.",
            ))
        application: Markup | str = ""
        if view.get("roostApplication"):
            application = render('<section class="card"><h2>Application</h2>'
                                 '<dl class="answers">$a</dl></section>', a=_answers(view))
        invited = view.get("invitedBy", {}).get("code") if view.get("invitedBy") else None
        body = state.templates.render(
            "account.html",
            handle=view["handle"],
            badge=_badge(status),
            reason=render('<span class="muted">Reason: $r</span>', r=reason) if reason else "",
            did=did,
            did_q=did_path(did),
            email=view.get("email") or "none",
            created=_date(view.get("indexedAt")),
            storage=_storage(view),
            invited=invited or "no invite code",
            application=application,
            actions=join(actions),
        )
        return state.admin_page(view["handle"], body, csrf=csrf, current="/admin/accounts",
                                notice=_notice(request))

    async def visibility(request: Request, csrf: CsrfToken) -> Response:
        did = request.path_params["did"]
        p = pds_of(request)
        row = p.db.account(did)
        if row is None:
            raise NotFound(f"No account {did} on this server")
        try:
            ours = await call(request, sync.get_latest_commit, "com.atproto.sync.getLatestCommit",
                              auth=AS_ADMIN, params={"did": did})
        except RoostError:
            ours = None
        items = await check_visibility(p, row, ours)
        failed = [item for item in items if not item.ok]
        if failed:
            summary = (f"{len(failed)} of {len(items)} checks fail: the network may not see this "
                       "account's posts until they pass.")
        else:
            summary = f"All {len(items)} checks pass: the network can see this account."
        rows = join(
            state.templates.render(
                "check_item.html",
                cls="ok" if item.ok else "fail",
                mark="✓" if item.ok else "✗",
                state="passes" if item.ok else "fails", title=item.title, detail=item.detail,
            )
            for item in items
        )
        body = state.templates.render(
            "check.html", handle=row.handle, summary=summary, items=rows, did_q=did_path(did),
            when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
        return state.admin_page("Visibility", body, csrf=csrf, current="/admin/accounts")

    async def set_status(request: Request, csrf: CsrfToken) -> Response:
        did = request.path_params["did"]
        form = await read_form(request)
        state.csrf.check(request, form)
        row = pds_of(request).db.account(did)
        if row is None:
            raise NotFound(f"No account {did} on this server")
        action = form.get("action")
        reason = form.get("reason").strip()
        subject = {"$type": _REPO_REF, "did": did}
        bodies: dict[str, dict[str, Any]] = {
            "approve": {"deactivated": {"applied": False}},
            "reject": {"deactivated": {"applied": True, "ref": reason}},
            "takedown": {"takedown": {"applied": True, "ref": reason}},
            "restore": {"takedown": {"applied": False}},
        }
        if action not in bodies:
            raise RoostError(f"Unknown action {action!r}")
        if action in ("reject", "takedown"):
            if not reason:
                raise RoostError("Give a reason: the member is told it.")
            if len(reason) > MAX_REASON_CHARS:
                raise RoostError(f"Keep the reason under {MAX_REASON_CHARS} characters.")
        await call(request, admin.update_subject_status, "com.atproto.admin.updateSubjectStatus",
                   auth=AS_ADMIN, body={"subject": subject, **bodies[action]})
        done = {"approve": "approved", "reject": "rejected", "takedown": "takendown",
                "restore": "restored"}[action]
        target = safe_next(form.get("next"), f"/admin/accounts/{did_path(did)}")
        return redirect(_with_notice(target, done, row.handle))

    async def takedowns(request: Request, csrf: CsrfToken) -> Response:
        views = await _scan_accounts(request, lambda v: v.get("roostStatus") == "takendown")
        rows = join(
            _account_row(state, view, render('<div class="actions">$f</div>', f=_status_form(
                csrf, view["did"], "restore", f"Restore {view['handle']}",
                next_url="/admin/takedowns")))
            for view in views
        ) or render('<li class="muted">$t</li>', t="No account is taken down.")
        body = state.templates.render("takedowns.html", rows=rows)
        return state.admin_page("Takedowns", body, csrf=csrf, current="/admin/takedowns",
                                notice=_notice(request))

    async def invites(request: Request, csrf: CsrfToken) -> Response:
        p = pds_of(request)
        cursor = request.query_params.get("cursor") or None
        out = await call(request, admin.get_invite_codes, "com.atproto.admin.getInviteCodes",
                         auth=AS_ADMIN, params={"limit": INVITES_PER_PAGE, "cursor": cursor})
        rows = []
        for code in out["codes"]:
            users = []
            for use in code["uses"]:
                holder = p.db.account(use["usedBy"])
                users.append(render('<a href="/admin/accounts/$d">$h</a>',
                                    d=did_path(use["usedBy"]),
                                    h=holder.handle if holder else use["usedBy"]))
            left = max(0, code["available"] - len(code["uses"]))
            disable: Markup | str = ""
            if not code["disabled"]:
                disable = render(
                    '<form method="post" action="/admin/invites/disable">$c'
                    '<input type="hidden" name="code" value="$v">'
                    '<button type="submit" class="link">Disable</button></form>',
                    c=csrf.field(), v=code["code"],
                )
            rows.append(state.templates.render(
                "invite_row.html",
                code=code["code"],
                state=_badge("disabled") if code["disabled"] else (
                    _badge("used up") if left == 0 else ""),
                left=f"{left} of {code['available']} uses left",
                created=_date(code["createdAt"]),
                users=join(users, ", ") or "nobody yet",
                disable=disable,
            ))
        more: Markup | str = ""
        if out.get("cursor"):
            more = render('<p><a href="$h">Next page</a></p>',
                          h="/admin/invites?" + urlencode({"cursor": out["cursor"]}))
        body = state.templates.render(
            "invites.html", csrf=csrf.field(),
            rows=join(rows) or render('<li class="muted">$t</li>', t="No invite code yet."),
            more=more, max_codes=admin.MAX_CODES_PER_CALL, max_uses=admin.MAX_CODE_USES,
        )
        notice = _notice(request)
        if config.signup_mode != "invite":
            body = render('<p class="msg warn">$t</p>$b', b=body,
                          t=f"Sign-up mode is \"{config.signup_mode}\": invite codes are only "
                            "asked for in \"invite\" mode.")
        return state.admin_page("Invites", body, csrf=csrf, current="/admin/invites",
                                notice=notice)

    async def create_invites(request: Request, csrf: CsrfToken) -> Response:
        form = await read_form(request)
        state.csrf.check(request, form)
        try:
            count, uses = int(form.get("count", "1")), int(form.get("uses", "1"))
        except ValueError:
            raise RoostError("Codes and uses must be whole numbers.") from None
        await call(request, admin.create_invite_codes, "com.atproto.server.createInviteCodes",
                   auth=AS_ADMIN, body={"codeCount": count, "useCount": uses})
        return redirect(_with_notice("/admin/invites", "invites", str(count)))

    async def disable_invite(request: Request, csrf: CsrfToken) -> Response:
        form = await read_form(request)
        state.csrf.check(request, form)
        code = form.get("code").strip()
        if not code:
            raise RoostError("Which code?")
        await call(request, admin.disable_invite_codes, "com.atproto.admin.disableInviteCodes",
                   auth=AS_ADMIN, body={"codes": [code]})
        return redirect(_with_notice("/admin/invites", "disabled", code))

    async def outbox(request: Request, csrf: CsrfToken) -> Response:
        p = pds_of(request)
        did = request.query_params.get("did") or None
        cursor = request.query_params.get("cursor") or None
        out = await call(request, admin.list_outbox, "org.roost.admin.listOutbox", auth=AS_ADMIN,
                         params={"did": did, "limit": OUTBOX_PER_PAGE, "cursor": cursor})
        items = []
        for message in out["messages"]:
            holder = p.db.account(message["did"])
            items.append(_outbox_message(state, message, holder.handle if holder else None))
        listing = render('<ul class="rows">$r</ul>', r=join(items)) if items else render(
            '<p class="muted">$t</p>', t="No message waits for a member."
        )
        if out.get("cursor"):
            query = {"cursor": out["cursor"], **({"did": did} if did else {})}
            listing = render('$l<p><a href="$h">Older messages</a></p>', l=listing,
                             h="/admin/outbox?" + urlencode(query))
        scope = render('<p class="small">Only the messages for <code>$d</code>. '
                       '<a href="/admin/outbox">Show all</a></p>', d=did) if did else ""
        body = state.templates.render("outbox.html", scope=scope, body=listing)
        return state.admin_page("Outbox", body, csrf=csrf, current="/admin/outbox")

    return [
        Route("/admin/login", login, methods=["GET", "HEAD"]),
        Route("/admin/login", login_post, methods=["POST"]),
        Route("/admin/logout", logout, methods=["POST"]),
        Route("/admin", guarded(overview), methods=["GET", "HEAD"]),
        Route("/admin/accounts", guarded(accounts), methods=["GET", "HEAD"]),
        Route("/admin/accounts/{did}", guarded(account), methods=["GET", "HEAD"]),
        Route("/admin/accounts/{did}/check", guarded(visibility), methods=["GET", "HEAD"]),
        Route("/admin/accounts/{did}/status", guarded(set_status), methods=["POST"]),
        Route("/admin/takedowns", guarded(takedowns), methods=["GET", "HEAD"]),
        Route("/admin/invites", guarded(invites), methods=["GET", "HEAD"]),
        Route("/admin/invites", guarded(create_invites), methods=["POST"]),
        Route("/admin/invites/disable", guarded(disable_invite), methods=["POST"]),
        Route("/admin/outbox", guarded(outbox), methods=["GET", "HEAD"]),
    ]
