"""What the PDS's pages share: templates, CSRF, the admin session, rate limits, layouts."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pds.config import PdsConfig
from pds.web.calls import public_message
from roost.errors import RoostError
from roost.ratelimit import RateLimit, RateLimiter
from roost.web import (
    CsrfGuard,
    CsrfToken,
    Markup,
    SessionCookie,
    Signer,
    Templates,
    derive_key,
    page,
    render,
)

__all__ = [
    "ADMIN_SESSION_SECONDS",
    "JOIN_LIMIT",
    "LOGIN_LIMIT",
    "WebState",
    "did_path",
    "human_bytes",
]

#: An admin stays signed in this long.
ADMIN_SESSION_SECONDS: Final = 12 * 3600
#: Admin sign-in attempts per client address, and sign-up forms per address.
LOGIN_LIMIT: Final = RateLimit("web-admin-login", 10, 15 * 60, per="ip")
JOIN_LIMIT: Final = RateLimit("web-join", 20, 3600, per="ip")
_ADMIN_COOKIE = "roost_admin"
_ADMIN_SUBJECT = "admin"

Endpoint = Callable[[Request], Awaitable[Response]]


def did_path(did: str) -> str:
    """A DID as a URL path segment."""
    return quote(did, safe=":")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


@dataclass(slots=True)
class WebState:
    """The pages' shared objects, one per app (built when its routes are)."""

    config: PdsConfig
    templates: Templates
    csrf: CsrfGuard
    admin: SessionCookie | None
    limiter: RateLimiter

    @classmethod
    def create(cls, config: PdsConfig) -> WebState:
        if not config.jwt_secret:
            raise ValueError("the web pages need the config's secrets (with_secrets())")
        secure = config.url.startswith("https://")
        admin = None
        if config.admin_password:
            # the admin password is part of the key: changing it ends every admin session
            key = derive_key(f"{config.jwt_secret}\0{config.admin_password}", "pds admin session")
            admin = SessionCookie(_ADMIN_COOKIE, Signer(key), max_age=ADMIN_SESSION_SECONDS,
                                  path="/admin", secure=secure)
        return cls(
            config=config,
            templates=Templates("pds.web"),
            csrf=CsrfGuard(derive_key(config.jwt_secret, "pds csrf"), secure=secure),
            admin=admin,
            limiter=RateLimiter(),
        )

    @property
    def site_name(self) -> str:
        return self.config.server_name or self.config.hostname

    # -- admin session ---------------------------------------------------------------------

    def check_admin_password(self, given: str) -> bool:
        expected = self.config.admin_password
        if not expected:
            return False
        return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))

    def is_admin(self, request: Request) -> bool:
        return self.admin is not None and self.admin.subject(request) == _ADMIN_SUBJECT

    def sign_in(self, response: Response) -> None:
        assert self.admin is not None
        self.admin.issue(response, _ADMIN_SUBJECT)

    def sign_out(self, response: Response) -> None:
        if self.admin is not None:
            self.admin.clear(response)

    # -- rate limits -------------------------------------------------------------------------

    def allowed(self, request: Request, limit: RateLimit) -> int | None:
        """None if ``request``'s address may go on, else seconds to wait."""
        ip = request.client.host if request.client else "unknown"
        if ip in self.config.rate_limit_bypass_ips:
            return None
        status = self.limiter.consume(limit, ip)
        return None if status.allowed else max(1, status.retry_after)

    # -- layouts ---------------------------------------------------------------------------------

    def public_page(
        self,
        title: str,
        body: Markup,
        *,
        csrf: CsrfToken | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        footer = render(
            'roost $v · <a href="/">$site</a> · <a href="/admin">Admin</a>',
            v=self.config.version, site=self.site_name,
        )
        return page(title, body, site=self.site_name, nav=(("Join", "/#join"),
                    ("Rules", "/#rules"), ("Contact", "/#contact")),
                    csrf=csrf, error=error, status=status, footer=footer)

    def admin_page(
        self,
        title: str,
        body: Markup,
        *,
        csrf: CsrfToken,
        current: str,
        notice: str | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        """A console page; ``csrf`` must be the token its forms were built with."""
        footer = render(
            '<form method="post" action="/admin/logout">$csrf'
            '<button type="submit" class="link">Sign out</button></form>'
            ' · roost $v · <a href="/">Public page</a>',
            csrf=csrf.field(), v=self.config.version,
        )
        nav = (
            ("Overview", "/admin"),
            ("Accounts", "/admin/accounts"),
            ("Takedowns", "/admin/takedowns"),
            ("Invites", "/admin/invites"),
            ("Outbox", "/admin/outbox"),
        )
        return page(f"{title} · admin", body, site=self.site_name, home="/admin", nav=nav,
                    current=current, notice=notice, error=error, footer=footer,
                    status=status, csrf=csrf)

    def error_page(self, exc: RoostError, *, back: str = "/") -> HTMLResponse:
        body = render('<section class="card"><h1>$title</h1><p>$message</p>'
                      '<p><a href="$back">Go back</a></p></section>',
                      title="That did not work", message=public_message(exc), back=back)
        return self.public_page("Error", body, status=exc.status)
