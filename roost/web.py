"""Server-rendered web pages shared by every roost service.

The PDS's public page and admin console, the relay dashboard and the feed
catalogue are plain HTML forms: no build step, no external assets. This
module holds what they have in common:

- **templates**: ``string.Template`` text (``$name`` / ``${name}``) where every
  value is HTML-escaped unless it is :class:`Markup` (already-safe HTML built
  by another render). :class:`Templates` loads a package's ``templates/*.html``;
- **the layout**: :func:`page` wraps a body in the shared HTML page (site name,
  navigation, one stylesheet and one small script, served by
  :func:`static_routes`) and sets strict security headers (a CSP that allows
  only this origin, no framing, no caching of private pages);
- **forms**: :func:`read_form` parses an ``application/x-www-form-urlencoded``
  body within a size limit (no multipart dependency);
- **signed cookies**: :class:`Signer` (HMAC-SHA256 over a JSON payload with an
  expiry) and :class:`SessionCookie` (HttpOnly, SameSite=Strict, Secure on
  https) for an operator's login; :class:`AdminSession` is that login for a
  service with one admin password;
- **CSRF**: :class:`CsrfGuard`, a signed double-submit token. Each browser gets
  a random ``roost_csrf`` cookie (HttpOnly, SameSite=Strict); every form carries
  ``HMAC(key, cookie)``, which a page on another site can neither read nor
  compute. A POST whose token does not match is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from roost.errors import PayloadTooLarge, RoostError, UnsupportedMediaType

__all__ = [
    "AdminSession",
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "MAX_FORM_BYTES",
    "CsrfFailed",
    "CsrfGuard",
    "CsrfToken",
    "Form",
    "Markup",
    "SessionCookie",
    "Signer",
    "Templates",
    "derive_key",
    "escape",
    "join",
    "page",
    "read_form",
    "redirect",
    "render",
    "safe_next",
    "static_routes",
]

#: Largest form body accepted (answers to an application included).
MAX_FORM_BYTES: Final = 64 * 1024
#: Most fields one form may carry.
MAX_FORM_FIELDS: Final = 200
#: The CSRF cookie, and the hidden form field holding its token.
CSRF_COOKIE: Final = "roost_csrf"
CSRF_FIELD: Final = "csrf"
#: Lifetime of the CSRF cookie (a new one is issued when it is gone).
CSRF_COOKIE_SECONDS: Final = 7 * 24 * 3600
#: How long browsers may cache the stylesheet and the script.
STATIC_MAX_AGE_S: Final = 3600

_FORM_TYPE = "application/x-www-form-urlencoded"
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# -- escaping and templates -------------------------------------------------------------


class Markup(str):
    """A string of HTML that is safe to insert as it is."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """``value`` as HTML text (``&<>"'`` escaped); :class:`Markup` passes unchanged."""
    if isinstance(value, Markup):
        return value
    text = "" if value is None else str(value)
    return Markup(
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def join(parts: Iterable[object], separator: str = "\n") -> Markup:
    """Escaped ``parts`` joined (a list of rendered rows, say)."""
    return Markup(separator.join(escape(part) for part in parts))


def render(template: str, /, **values: object) -> Markup:
    """Fill ``$name`` placeholders of ``template``; values are escaped unless Markup.

    A placeholder without a value is an error (``KeyError``), not an empty string.
    """
    return Markup(Template(template).substitute({k: escape(v) for k, v in values.items()}))


class Templates:
    """The ``*.html`` templates of a package's ``templates/`` folder, read once."""

    def __init__(self, package: str, folder: str = "templates") -> None:
        self._root = resources.files(package).joinpath(folder)
        self._cache: dict[str, str] = {}

    def text(self, name: str) -> str:
        text = self._cache.get(name)
        if text is None:
            text = self._cache[name] = self._root.joinpath(name).read_text(encoding="utf-8")
        return text

    def render(self, name: str, /, **values: object) -> Markup:
        return render(self.text(name), **values)


# -- the page layout ----------------------------------------------------------------------

_LAYOUT: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · $site</title>
<link rel="stylesheet" href="/static/roost.css">
<script src="/static/roost.js" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="$home">$site</a>
  <nav>$nav</nav>
</header>
<main>
$notice$body
</main>
<footer>$footer</footer>
</body>
</html>
"""


def page(
    title: str,
    body: Markup,
    *,
    site: str,
    home: str = "/",
    nav: Sequence[tuple[str, str]] = (),
    current: str | None = None,
    notice: str | None = None,
    error: str | None = None,
    footer: Markup | str = "",
    status: int = 200,
    csrf: CsrfToken | None = None,
) -> HTMLResponse:
    """A whole HTML page: ``body`` inside the shared layout.

    ``nav`` is ``(label, href)`` links (``current`` marks one); ``notice`` and
    ``error`` show a green or red message above the body. Pass the ``csrf``
    token the page's forms use, so its cookie is set when it is new.
    """
    links = join(
        render('<a href="$href"$cur>$label</a>', href=href, label=label,
               cur=Markup(' aria-current="page"' if href == current else ""))
        for label, href in nav
    )
    banner = ""
    if error:
        banner += render('<p class="msg bad" role="alert">$m</p>\n', m=error)
    if notice:
        banner += render('<p class="msg good" role="status">$m</p>\n', m=notice)
    html = render(
        _LAYOUT, title=title, site=site, home=home, nav=links, notice=Markup(banner),
        body=body, footer=footer,
    )
    response = HTMLResponse(html, status_code=status, headers=dict(_SECURITY_HEADERS))
    if csrf is not None:
        csrf.attach(response)
    return response


def redirect(url: str) -> RedirectResponse:
    """303 See Other to a path on this site (after a form POST)."""
    return RedirectResponse(safe_next(url, "/"), status_code=303)


def safe_next(url: str | None, default: str) -> str:
    """``url`` if it is a path on this site (``/x``), else ``default`` (no open redirects)."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return default
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return default
    return url


@cache
def _static(name: str, package: str = "roost") -> bytes:
    return resources.files(package).joinpath(name).read_bytes()


def static_routes(*extra: tuple[str, str, str, str]) -> list[Route]:
    """``/static/roost.css`` and ``/static/roost.js``: the shared stylesheet and script.

    ``extra``: more files a service's pages use, as ``(path, package, resource,
    media type)``, e.g. ``("/static/relay.js", "relay.web", "relay.js",
    "text/javascript; charset=utf-8")``.
    """

    def serve(name: str, media_type: str, package: str = "roost") -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            body = _static(name, package)
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            headers = {
                "Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}",
                "ETag": etag,
                "X-Content-Type-Options": "nosniff",
            }
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            return Response(body, media_type=media_type, headers=headers)

        return endpoint

    return [
        Route("/static/roost.css", serve("web.css", "text/css; charset=utf-8")),
        Route("/static/roost.js", serve("web.js", "text/javascript; charset=utf-8")),
        *(Route(path, serve(name, media, package)) for path, package, name, media in extra),
    ]


# -- forms ----------------------------------------------------------------------------------


class Form:
    """A parsed form body: the first value of a field, or all of them."""

    def __init__(self, fields: Mapping[str, list[str]]) -> None:
        self._fields = dict(fields)

    def get(self, name: str, default: str = "") -> str:
        values = self._fields.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return list(self._fields.get(name, ()))

    def __contains__(self, name: object) -> bool:
        return name in self._fields


async def read_form(request: Request, max_bytes: int = MAX_FORM_BYTES) -> Form:
    """The url-encoded body of a POST; :class:`PayloadTooLarge` past ``max_bytes``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _FORM_TYPE:
        raise UnsupportedMediaType(f"Expected a form ({_FORM_TYPE})")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"Form is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"Form is larger than {max_bytes} bytes")
    try:
        text = body.decode("utf-8")
        fields = parse_qs(
            text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise RoostError(f"Form could not be read: {exc}") from None
    return Form(fields)


# -- signing ----------------------------------------------------------------------------------


def derive_key(secret: str | bytes, purpose: str) -> bytes:
    """A key for one ``purpose`` from a service secret (HMAC-SHA256)."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(raw, b"roost web: " + purpose.encode("utf-8"), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """JSON payloads signed with HMAC-SHA256, valid until their ``exp`` (unix seconds)."""

    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("signing key must be at least 16 bytes")
        self._key = key
        self._clock = clock

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def sign(self, payload: Mapping[str, Any], max_age: float) -> str:
        data = {**payload, "exp": int(self._clock() + max_age)}
        body = _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return f"{body}.{self._mac(body)}"

    def unsign(self, token: str | None) -> dict[str, Any] | None:
        """The payload if the signature is right and it has not expired, else None."""
        if not token or len(token) > 4096 or token.count(".") != 1:
            return None
        body, mac = token.split(".")
        try:
            if not hmac.compare_digest(mac, self._mac(body)):
                return None
            data = json.loads(_unb64(body))
        except (ValueError, UnicodeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int):
            return None
        if data["exp"] < self._clock():
            return None
        return data


def _cookie(
    response: Response, name: str, value: str, *, max_age: int, path: str, secure: bool
) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=path, secure=secure, httponly=True, samesite="strict"
    )


class AdminSession:
    """An operator signed in with the service's admin password, as a session cookie.

    The cookie's key comes from ``secret`` *and* the password, so changing the
    password ends every session. Without a password nobody can sign in.
    """

    SUBJECT: Final = "admin"

    def __init__(
        self,
        password: str | None,
        secret: str | bytes,
        *,
        cookie: str,
        max_age: int,
        path: str = "/",
        secure: bool = False,
    ) -> None:
        self._password = password or None
        self.cookie: SessionCookie | None = None
        if self._password is not None:
            raw = secret.encode("utf-8") if isinstance(secret, str) else secret
            key = derive_key(raw + b"\0" + self._password.encode("utf-8"), f"{cookie} session")
            self.cookie = SessionCookie(cookie, Signer(key), max_age=max_age, path=path,
                                        secure=secure)

    @property
    def enabled(self) -> bool:
        return self.cookie is not None

    def password_matches(self, given: str) -> bool:
        if self._password is None:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self._password.encode("utf-8"))

    def signed_in(self, request: Request) -> bool:
        return self.cookie is not None and self.cookie.subject(request) == self.SUBJECT

    def sign_in(self, response: Response) -> None:
        if self.cookie is None:
            raise ValueError("no admin password is configured")
        self.cookie.issue(response, self.SUBJECT)

    def sign_out(self, response: Response) -> None:
        if self.cookie is not None:
            self.cookie.clear(response)


class SessionCookie:
    """A signed login cookie (HttpOnly, SameSite=Strict, Secure when served over https)."""

    def __init__(
        self, name: str, signer: Signer, *, max_age: int, path: str = "/", secure: bool = False
    ) -> None:
        self.name = name
        self.signer = signer
        self.max_age = max_age
        self.path = path
        self.secure = secure

    def issue(self, response: Response, subject: str) -> None:
        token = self.signer.sign({"sub": subject, "sid": secrets.token_urlsafe(12)}, self.max_age)
        _cookie(response, self.name, token, max_age=self.max_age, path=self.path,
                secure=self.secure)

    def subject(self, request: Request) -> str | None:
        """Who the request's valid session cookie names, or None."""
        data = self.signer.unsign(request.cookies.get(self.name))
        sub = data.get("sub") if data else None
        return sub if isinstance(sub, str) else None

    def clear(self, response: Response) -> None:
        response.delete_cookie(self.name, path=self.path, secure=self.secure, httponly=True,
                               samesite="strict")


# -- CSRF ---------------------------------------------------------------------------------------


class CsrfFailed(RoostError):
    """A form was posted without the token of this browser's CSRF cookie."""

    status = 403
    error = "Forbidden"


@dataclass(frozen=True, slots=True)
class CsrfToken:
    """The token a page's forms carry, and the cookie to set when it is new."""

    value: str
    new_cookie: str | None
    secure: bool

    def field(self) -> Markup:
        """The hidden form input."""
        return render('<input type="hidden" name="$n" value="$v">', n=CSRF_FIELD, v=self.value)

    def attach(self, response: Response) -> None:
        if self.new_cookie is not None:
            _cookie(response, CSRF_COOKIE, self.new_cookie, max_age=CSRF_COOKIE_SECONDS,
                    path="/", secure=self.secure)


class CsrfGuard:
    """Issues and checks form tokens bound to the browser's CSRF cookie."""

    def __init__(self, key: bytes, *, secure: bool = False) -> None:
        self._key = key
        self.secure = secure

    def _token(self, cookie: str) -> str:
        return _b64(hmac.new(self._key, cookie.encode("ascii"), hashlib.sha256).digest())

    @staticmethod
    def _cookie(request: Request) -> str | None:
        value = request.cookies.get(CSRF_COOKIE)
        if value and 16 <= len(value) <= 64 and value.isascii():
            return value
        return None

    def token(self, request: Request) -> CsrfToken:
        """The token for this browser (with a new cookie if it has none yet)."""
        cookie = self._cookie(request)
        if cookie is None:
            fresh = secrets.token_urlsafe(24)
            return CsrfToken(self._token(fresh), fresh, self.secure)
        return CsrfToken(self._token(cookie), None, self.secure)

    def check(self, request: Request, form: Form) -> None:
        """Raise :class:`CsrfFailed` unless ``form`` carries this browser's token."""
        cookie = self._cookie(request)
        given = form.get(CSRF_FIELD)
        if cookie is None or not given or not hmac.compare_digest(given, self._token(cookie)):
            raise CsrfFailed(
                "This form has expired or your browser blocked its cookie: please submit it again."
            )
