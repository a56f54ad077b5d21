"""roost.web: escaping, templates, signed cookies, CSRF tokens, forms, the layout."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from roost.errors import PayloadTooLarge, UnsupportedMediaType
from roost.web import (
    CSRF_COOKIE,
    CsrfFailed,
    CsrfGuard,
    Form,
    Markup,
    SessionCookie,
    Signer,
    derive_key,
    escape,
    join,
    page,
    read_form,
    render,
    safe_next,
    static_routes,
)
from tests.servers import serve

KEY = derive_key("a service secret", "tests")


def test_escape_and_render() -> None:
    assert escape("<a href='x'>&\"</a>") == "&lt;a href=&#x27;x&#x27;&gt;&amp;&quot;&lt;/a&gt;"
    assert escape(None) == ""
    assert escape(Markup("<b>ok</b>")) == "<b>ok</b>"
    html = render('<p title="$t">$body</p>', t='"><script>', body=Markup("<i>safe</i>"))
    assert html == '<p title="&quot;&gt;&lt;script&gt;"><i>safe</i></p>'
    assert isinstance(html, Markup)
    assert join(["<x>", Markup("<y>")], ", ") == "&lt;x&gt;, <y>"
    with pytest.raises(KeyError):
        render("$missing")


def test_signer_rejects_tampering_expiry_and_other_keys() -> None:
    now = [1000.0]
    signer = Signer(KEY, clock=lambda: now[0])
    token = signer.sign({"sub": "admin"}, max_age=60)
    assert signer.unsign(token) == {"sub": "admin", "exp": 1060}
    body, mac = token.split(".")
    forged = Signer(KEY).sign({"sub": "root"}, 60).split(".")[0]
    assert signer.unsign(f"{forged}.{mac}") is None
    assert signer.unsign(f"{body}.{mac[:-2]}AA") is None
    other = Signer(derive_key("another secret", "tests"))
    assert signer.unsign(other.sign({"sub": "admin"}, 60)) is None
    for junk in ("", "x", "a.b.c", "!!!.???", "." * 5000):
        assert signer.unsign(junk) is None
    now[0] = 1061.0
    assert signer.unsign(token) is None
    with pytest.raises(ValueError):
        Signer(b"short")


def test_safe_next_stays_on_site() -> None:
    assert safe_next("/admin/accounts?q=a", "/admin") == "/admin/accounts?q=a"
    bad_targets = ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x")
    for bad in (*bad_targets, "", None):
        assert safe_next(bad, "/admin") == "/admin"


def _app() -> Starlette:
    guard = CsrfGuard(KEY)
    session = SessionCookie("s", Signer(KEY), max_age=60, path="/")

    async def show(request: Request) -> Response:
        token = guard.token(request)
        return page("Form", render("<form>$f</form>", f=token.field()), site="Test", csrf=token)

    async def submit(request: Request) -> Response:
        try:
            form = await read_form(request, max_bytes=1000)
            guard.check(request, form)
        except CsrfFailed as exc:
            return PlainTextResponse(exc.message, status_code=exc.status)
        except (PayloadTooLarge, UnsupportedMediaType) as exc:
            return PlainTextResponse(exc.message, status_code=exc.status)
        response = PlainTextResponse("ok " + ",".join(form.getlist("v")))
        session.issue(response, "admin")
        return response

    async def whoami(request: Request) -> Response:
        return PlainTextResponse(session.subject(request) or "nobody")

    return Starlette(routes=[Route("/", show), Route("/", submit, methods=["POST"]),
                             Route("/who", whoami), *static_routes()])


def test_csrf_token_is_bound_to_the_browser_cookie() -> None:
    with serve(_app()) as url, httpx.Client(base_url=url) as browser:
        shown = browser.get("/")
        assert shown.status_code == 200
        cookie = shown.headers["set-cookie"]
        assert f"{CSRF_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
        token = shown.text.split('value="')[1].split('"')[0]
        assert browser.get("/").text.count(token) == 1  # same cookie, same token, no new cookie
        ok = browser.post("/", data={"csrf": token, "v": ["1", "2"]})
        assert ok.status_code == 200 and ok.text == "ok 1,2"
        session_cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie
        assert browser.get("/who").text == "admin"
        assert browser.post("/", data={"csrf": token + "x"}).status_code == 403
        assert browser.post("/", data={"v": "no token"}).status_code == 403
        assert browser.post("/", data={"csrf": token, "v": "x" * 2000}).status_code == 413
        assert browser.post("/", json={"csrf": token}).status_code == 415
    # a token copied into another browser fails
    with serve(_app()) as url, httpx.Client(base_url=url) as other_browser:
        assert other_browser.post("/", data={"csrf": token}).status_code == 403
        other_browser.get("/")
        assert other_browser.post("/", data={"csrf": token}).status_code == 403
        assert other_browser.get("/who").text == "nobody"


def test_static_assets_are_served_with_validators() -> None:
    with serve(_app()) as url, httpx.Client(base_url=url) as client:
        css = client.get("/static/roost.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert "@media" in css.text  # the phone layout
        again = client.get("/static/roost.css", headers={"if-none-match": css.headers["etag"]})
        assert again.status_code == 304
        js = client.get("/static/roost.js")
        assert js.status_code == 200 and "data-confirm" in js.text


def test_form_fields() -> None:
    form = Form({"a": ["1", "2"], "b": [""]})
    assert form.get("a") == "1" and form.getlist("a") == ["1", "2"]
    assert form.get("b") == "" and form.get("c", "d") == "d" and "b" in form and "c" not in form
