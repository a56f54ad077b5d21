"""The relay dashboard at ``/``: hosts, the firehose's rate, consumers, admin actions.

Server-rendered on the shared layout of :mod:`roost.web`. Anyone may read it:
every host with its status, cursor, events per second and failures by reason,
a chart of events per second, and every consumer of the firehose with its lag.
A small script (``/static/relay.js``) polls the JSON view ``/dashboard.json``
to keep the figures and the chart current; without it the page still works.

An operator signs in with the relay's admin password (the one of the
``/admin/`` API) and then sees a ban or unban button per host, a form to take
a repo down, the takedowns with a restore button each, and the admin log.
Each button runs the ``/admin/`` API's own handler (:mod:`relay.admin`), so it
is checked and logged the same way. Forms carry a CSRF token; the session
cookie is signed with a key made when the relay starts (a restart signs
everyone out) and the admin password (changing it does too).

Routes: ``GET /``, ``GET /dashboard.json``, ``GET|POST /dashboard/login``,
``POST /dashboard/logout``, ``POST /dashboard/host``, ``POST /dashboard/repo``,
and the static files.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from roost.errors import AuthRequired, RateLimitExceeded, RoostError
from roost.ratelimit import RateLimit, RateLimiter
from roost.web import (
    AdminSession,
    CsrfFailed,
    CsrfGuard,
    CsrfToken,
    Form,
    Markup,
    derive_key,
    page,
    read_form,
    redirect,
    render,
    static_routes,
)

from relay import admin
from relay.core import Relay
from relay.web.view import (
    MAX_DID_CHARS,
    MAX_REASON_CHARS,
    as_json,
    dashboard_body,
    login_body,
)
from relay.web.stats import Sampler, snapshot

__all__ = ["ADMIN_SESSION_SECONDS", "LOGIN_LIMIT", "RECENT_ACTIONS", "routes"]

#: An operator stays signed in this long.
ADMIN_SESSION_SECONDS: Final = 12 * 3600
#: Sign-in attempts per client address.
LOGIN_LIMIT: Final = RateLimit("relay-web-login", 10, 15 * 60, per="ip")
#: Admin log entries and takedowns shown on the dashboard.
RECENT_ACTIONS: Final = 20
TAKEDOWNS_SHOWN: Final = 100
_SESSION_COOKIE: Final = "roost_relay_admin"
_SITE: Final = "roost relay"
_NOTICES: Final = {
    "ban": "Banned {who}: its connection is closed and its events are refused.",
    "unban": "Unbanned {who}: the relay subscribes to it again.",
    "takedown": "Took down {who}: its events no longer flow from this relay.",
    "restore": "Restored {who}.",
}
_NAV: Final = (("Dashboard", "/"), ("Hosts", "/#hosts"), ("Consumers", "/#consumers"))


class _Dashboard:
    """The pages' shared objects (one per app)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        secret = secrets.token_bytes(32)
        self.csrf = CsrfGuard(derive_key(secret, "relay csrf"))
        self.session = AdminSession(relay.config.admin_password, secret, cookie=_SESSION_COOKIE,
                                    max_age=ADMIN_SESSION_SECONDS)
        self.sampler = Sampler()
        self.limiter = RateLimiter()

    def footer(self, csrf: CsrfToken | None) -> Markup:
        about = render('roost $v · <a href="/xrpc/_health">health</a>',
                       v=self.relay.config.version)
        if csrf is None:
            return render('$a · <a href="/dashboard/login">Admin sign-in</a>', a=about)
        return render(
            '<form method="post" action="/dashboard/logout">$csrf'
            '<button type="submit" class="link">Sign out</button></form> · $a',
            csrf=csrf.field(), a=about,
        )

    def firehose(self, request: Request) -> str:
        scheme = "wss" if request.url.scheme == "https" else "ws"
        return f"{scheme}://{request.url.netloc}/xrpc/com.atproto.sync.subscribeRepos"

    def dashboard(
        self, request: Request, *, notice: str | None = None, error: str | None = None,
        status: int = 200,
    ) -> Response:
        signed_in = self.session.signed_in(request)
        csrf = self.csrf.token(request) if signed_in else None
        snap = snapshot(self.relay, self.sampler)
        takedowns: list[str] = []
        log: list[dict[str, object]] = []
        if signed_in:
            takedowns = [a.did for a in self.relay.store.takedowns(0, TAKEDOWNS_SHOWN)]
            log = self.relay.store.admin_actions(None, RECENT_ACTIONS)
        body = dashboard_body(snap, firehose=self.firehose(request), csrf=csrf,
                              takedowns=takedowns, log=log)
        return page("Dashboard", body, site=_SITE, nav=_NAV, current="/", notice=notice,
                    error=error, status=status, footer=self.footer(csrf), csrf=csrf)

    def login_page(self, request: Request, *, error: str | None = None, notice: str | None = None,
                   status: int = 200) -> Response:
        csrf = self.csrf.token(request)
        return page("Admin sign-in", login_body(csrf), site=_SITE, nav=_NAV, notice=notice,
                    error=error, status=status, footer=self.footer(None), csrf=csrf)

    def message(self, title: str, text: str, status: int) -> Response:
        body = render('<section class="card narrow"><h1>$t</h1><p>$m</p>'
                      '<p><a href="/">Back to the dashboard</a></p></section>', t=title, m=text)
        return page(title, body, site=_SITE, nav=_NAV, status=status, footer=self.footer(None))

    def allowed(self, request: Request) -> int | None:
        """None if ``request``'s address may try to sign in, else seconds to wait."""
        ip = request.client.host if request.client else "unknown"
        status = self.limiter.consume(LOGIN_LIMIT, ip)
        return None if status.allowed else max(1, status.retry_after)


def _public_message(exc: RoostError) -> str:
    if exc.status >= 500:
        return "Something went wrong on the relay; the operator can find it in the log."
    return exc.message or type(exc).__name__


def routes(relay: Relay) -> list[BaseRoute]:
    """The dashboard's routes, for the app serving ``relay``."""
    d = _Dashboard(relay)

    async def home(request: Request) -> Response:
        done = _NOTICES.get(request.query_params.get("done", ""))
        notice = done.format(who=request.query_params.get("who", "")) if done else None
        return d.dashboard(request, notice=notice)

    async def figures(request: Request) -> Response:
        snap = snapshot(relay, d.sampler)
        return JSONResponse(as_json(snap, admin=d.session.signed_in(request)),
                            headers={"Cache-Control": "no-store"})

    def off() -> Response:
        return d.message("Admin sign-in is off",
                         "Start the relay with an admin password (--admin-password or "
                         "ROOST_ADMIN_PASSWORD) to use the admin actions.", 403)

    async def login(request: Request) -> Response:
        if not d.session.enabled:
            return off()
        if d.session.signed_in(request):
            return redirect("/")
        notice = "Signed out." if request.query_params.get("done") == "signout" else None
        return d.login_page(request, notice=notice)

    async def login_post(request: Request) -> Response:
        if not d.session.enabled:
            return off()
        try:
            form = await read_form(request)
            d.csrf.check(request, form)
        except RoostError as exc:
            return d.login_page(request, error=_public_message(exc), status=exc.status)
        wait = d.allowed(request)
        if wait is not None:
            limited = RateLimitExceeded(f"Too many attempts: try again in {wait // 60 + 1} minutes.")
            return d.login_page(request, error=limited.message, status=limited.status)
        if not d.session.password_matches(form.get("password")):
            return d.login_page(request, error="Wrong password.", status=401)
        response = redirect("/")
        d.session.sign_in(response)
        return response

    async def logout(request: Request) -> Response:
        try:
            d.csrf.check(request, await read_form(request))
        except RoostError as exc:
            return d.message("That did not work", _public_message(exc), exc.status)
        response = redirect("/dashboard/login?done=signout")
        d.session.sign_out(response)
        return response

    Action = Callable[[Request, Form], Awaitable[tuple[str, str]]]

    def action(run: Action) -> Callable[[Request], Awaitable[Response]]:
        """A signed-in operator's form POST: CSRF-checked, then back to the dashboard."""

        async def endpoint(request: Request) -> Response:
            if not d.session.signed_in(request):
                exc = AuthRequired("Your admin session has ended: sign in again.")
                return d.message("Sign in first", exc.message, exc.status)
            try:
                form = await read_form(request)
                d.csrf.check(request, form)
                done, who = await run(request, form)
            except CsrfFailed as exc:
                return d.message("That did not work", exc.message, exc.status)
            except RoostError as exc:
                return d.dashboard(request, error=_public_message(exc), status=exc.status)
            return redirect("/?" + urlencode({"done": done, "who": who}))

        return endpoint

    async def host_action(request: Request, form: Form) -> tuple[str, str]:
        name = form.get("action")
        handler = admin.HOST_ACTIONS.get(name)
        if handler is None:
            raise RoostError(f"unknown host action {name!r}")
        result = await handler(relay, request, {"host": form.get("host")})
        return name, str(result["hostname"])

    async def repo_action(request: Request, form: Form) -> tuple[str, str]:
        name = form.get("action")
        handler = admin.REPO_ACTIONS.get(name)
        if handler is None:
            raise RoostError(f"unknown repo action {name!r}")
        did, reason = form.get("did").strip(), form.get("reason").strip()
        if len(did) > MAX_DID_CHARS:
            raise RoostError(f"a DID has at most {MAX_DID_CHARS} characters")
        if len(reason) > MAX_REASON_CHARS:
            raise RoostError(f"a reason has at most {MAX_REASON_CHARS} characters")
        body = {"did": did, **({"reason": reason} if name == "takedown" else {})}
        result = await handler(relay, request, body)
        return name, str(result["did"])

    return [
        *static_routes(("/static/relay.js", "relay.web", "relay.js",
                        "text/javascript; charset=utf-8")),
        Route("/", home, methods=["GET", "HEAD"]),
        Route("/dashboard.json", figures, methods=["GET"]),
        Route("/dashboard/login", login, methods=["GET", "HEAD"]),
        Route("/dashboard/login", login_post, methods=["POST"]),
        Route("/dashboard/logout", logout, methods=["POST"]),
        Route("/dashboard/host", action(host_action), methods=["POST"]),
        Route("/dashboard/repo", action(repo_action), methods=["POST"]),
    ]
