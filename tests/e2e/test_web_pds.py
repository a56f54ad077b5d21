"""The PDS's pages in a real browser: apply, approve, post, check visibility.

A did:plc directory and a PDS in "application" mode run on loopback; headless
Chromium (see conftest) is the visitor and the operator, and the `atproto`
SDK is the new member's app. Every page is saved at desktop and phone width
into the test's temporary folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

atproto = pytest.importorskip("atproto")
sync_api = pytest.importorskip("playwright.sync_api")

from atproto import Client
from atproto_client.exceptions import RequestErrorBase

from tests.e2e.conftest import Screens, fill_join_form
from tests.pds.conftest import PASSWORD, Network, running_network
from tests.servers import free_port

expect = sync_api.expect

QUESTIONS = ("What was your employee number?", "Which team were you on?")
RULES = ("Be kind to each other.", "No advertising.")
ADMIN_PASSWORD = "admin-secret"  # tests/pds/conftest's
HANDLE = "alice.pds.test"


def _community(tmp: Path, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "signup_mode": "application",
        "application_questions": QUESTIONS,
        "rules": RULES,
        "server_name": "Harbour Social",
        "server_description": "Former colleagues of the harbour office.",
        "contact_email": "ops@harbour.example",
        "privacy_url": "https://harbour.example/privacy",
    }
    return running_network(tmp, **{**settings, **overrides})


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with _community(tmp_path) as network:
        yield network


@pytest.fixture
def sdk(net: Network) -> Iterator[Callable[[], Client]]:
    """New SDK clients pointed at the PDS (the member's app); all closed afterwards."""
    clients: list[Client] = []

    def make() -> Client:
        clients.append(Client(base_url=f"{net.pds_url}/xrpc"))
        return clients[-1]

    yield make
    for client in clients:
        client.request.close()


def _sign_in(page: Any, net: Network, screens: Screens | None = None) -> None:
    page.goto(f"{net.pds_url}/admin")
    expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    if screens is not None:
        page.fill("#password", "not the password")
        page.click("button[type=submit]")
        expect(page.locator(".msg.bad")).to_have_text("Wrong password.")
        screens(page, "admin-login")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")


def _check_items(page: Any) -> dict[str, tuple[bool, str]]:
    """Visibility check items: title -> (passes, reason)."""
    items = {}
    for li in page.locator("ul.checks > li").all():
        title = li.locator(".what").inner_text()
        title = re.sub(r"\s*\((passes|fails)\)$", "", title.strip())
        items[title] = ("ok" in (li.get_attribute("class") or ""), li.locator(".why").inner_text())
    return items


def test_apply_approve_post_and_check_visibility(
    browser: Any, page: Any, net: Network, sdk: Callable[[], Client], screens: Screens
) -> None:
    # -- a visitor reads the public page and applies -----------------------------------------------
    page.goto(f"{net.pds_url}/")
    expect(page.locator("h1")).to_have_text("Harbour Social")
    for rule in RULES:
        expect(page.locator("#rules")).to_contain_text(rule)
    expect(page.locator("#rules a")).to_have_attribute("href", "https://harbour.example/privacy")
    expect(page.locator("#contact a")).to_have_attribute("href", "mailto:ops@harbour.example")
    for question in QUESTIONS:
        expect(page.locator("#join")).to_contain_text(question)
    screens(page, "home")

    # a handle the server refuses: the form comes back with the reason and the answers
    fill_join_form(page, "al", "alice@example.com", PASSWORD, ["4711", "Platform <b>team</b> & friends"])
    page.click("form.join button[type=submit]")
    expect(page.locator("#join .msg.bad")).to_contain_text("Handle name must be 3 to 18 characters")
    expect(page.locator("#handle")).to_have_value("al")
    expect(page.locator("#email")).to_have_value("alice@example.com")
    expect(page.locator("#answer_2")).to_have_value("Platform <b>team</b> & friends")
    expect(page.locator("input[name=accept_rules]")).to_be_checked()
    screens(page, "join-refused")

    page.fill("#handle", "alice")
    page.fill("#password", PASSWORD)
    page.click("form.join button[type=submit]")
    expect(page.locator("h1")).to_have_text("Application received")
    expect(page.locator("main")).to_contain_text(HANDLE)
    expect(page.locator("main")).to_contain_text(net.pds_url)
    screens(page, "join-received")

    # pending: the member can sign in, but not post
    member = sdk()
    member.login(HANDLE, PASSWORD, fetch_bsky_profile=False)
    with pytest.raises(RequestErrorBase):
        member.send_post("too early", profile_identify=HANDLE)

    # -- the admin signs in and approves -----------------------------------------------------------
    _sign_in(page, net, screens)
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["roost_admin"]["httpOnly"] and cookies["roost_admin"]["sameSite"] == "Strict"
    assert cookies["roost_csrf"]["httpOnly"] and cookies["roost_csrf"]["sameSite"] == "Strict"
    application = page.locator("li.application", has_text=HANDLE)
    expect(application).to_contain_text(QUESTIONS[0])
    expect(application.locator("dd").nth(0)).to_have_text("4711")
    # answers are shown as text, never as markup
    expect(application.locator("dd").nth(1)).to_have_text("Platform <b>team</b> & friends")
    assert application.locator("dd b").count() == 0
    screens(page, "admin-overview")
    application.get_by_role("button", name="Approve alice.pds.test").click()
    expect(page.locator(".msg.good")).to_contain_text("Approved alice.pds.test")
    expect(page.locator("#applications")).to_contain_text("No application waits for review.")

    # -- the member posts with the SDK -------------------------------------------------------------
    member = sdk()
    member.login(HANDLE, PASSWORD, fetch_bsky_profile=False)
    post = member.send_post("Hello harbour, from an approved account", profile_identify=HANDLE)
    did = post.uri.split("/")[2]
    assert did.startswith("did:plc:") and "/app.bsky.feed.post/" in post.uri
    assert net.http.get(net.xrpc("com.atproto.repo.getRecord"), params={
        "repo": HANDLE, "collection": "app.bsky.feed.post", "rkey": post.uri.rsplit("/", 1)[1]
    }).json()["value"]["text"] == "Hello harbour, from an approved account"
    member.com.atproto.server.request_account_delete()  # leaves a token in the outbox

    # -- accounts, the account page, the visibility check ------------------------------------------
    page.click("header nav >> text=Accounts")
    row = page.locator("ul.rows > li", has_text=HANDLE)
    expect(row.locator(".badge")).to_have_text("active")
    expect(row).to_contain_text("repo ")
    screens(page, "admin-accounts")
    row.locator("a.name").click()
    expect(page.locator("h1")).to_have_text(HANDLE)
    expect(page.locator("main")).to_contain_text(did)
    screens(page, "admin-account")

    page.click("text=Run the network visibility check")
    expect(page.locator("h1")).to_have_text("Network visibility: alice.pds.test")
    items = _check_items(page)
    for title in (
        "Account is active here",
        "DID document points to this PDS",
        "DID document has the account's signing key",
        "DID document claims the handle",
        "Handle resolves to the DID",
    ):
        assert items[title][0], (title, items[title][1])
    passes, why = items["A relay is configured"]
    assert not passes and "no relay URL is configured" in why
    expect(page.locator(".lead")).to_contain_text("1 of 6 checks fail")
    screens(page, "admin-visibility")

    # -- take down with a reason, see it listed, restore -------------------------------------------
    page.goto(f"{net.pds_url}/admin/accounts/{did}")
    page.once("dialog", lambda dialog: dialog.accept())
    takedown = page.locator("form", has=page.locator("input[value=takedown]"))
    takedown.locator("input[name=reason]").fill("Spam <script>alert(1)</script>")
    takedown.locator("button").click()
    expect(page.locator(".msg.good")).to_contain_text("Took down alice.pds.test")
    page.click("header nav >> text=Takedowns")
    listed = page.locator("ul.rows > li", has_text=HANDLE)
    expect(listed).to_contain_text("Reason: Spam <script>alert(1)</script>")
    with pytest.raises(RequestErrorBase):
        sdk().login(HANDLE, PASSWORD, fetch_bsky_profile=False)
    screens(page, "admin-takedowns")
    page.get_by_role("button", name="Restore alice.pds.test").click()
    expect(page.locator(".msg.good")).to_contain_text("Restored alice.pds.test")
    expect(page.locator("main")).to_contain_text("No account is taken down.")
    sdk().login(HANDLE, PASSWORD, fetch_bsky_profile=False)

    # -- invite codes and the outbox ---------------------------------------------------------------
    page.click("header nav >> text=Invites")
    page.fill("input[name=count]", "2")
    page.fill("input[name=uses]", "3")
    page.click("text=Create invite codes")
    expect(page.locator(".msg.good")).to_contain_text("Created 2 invite code(s)")
    codes = page.locator("ul.rows > li")
    expect(codes).to_have_count(2)
    expect(codes.first).to_contain_text("3 of 3 uses left")
    screens(page, "admin-invites")
    page.click("header nav >> text=Outbox")
    message = page.locator("ul.rows > li", has_text=HANDLE)
    expect(message).to_have_count(1)
    expect(message.locator("code")).not_to_be_empty()
    screens(page, "admin-outbox")

    # -- signing out ends the session --------------------------------------------------------------
    page.click("footer button")
    expect(page.locator(".msg.good")).to_have_text("Signed out.")
    page.goto(f"{net.pds_url}/admin/accounts")
    expect(page).to_have_url(re.compile(r"/admin/login"))


def test_unreachable_relay_is_a_red_item(browser: Any, page: Any, tmp_path: Path) -> None:
    relay = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with _community(tmp_path, signup_mode="open", relay_urls=(relay,)) as net:
        did = net.create_account("bob")["did"]
        _sign_in(page, net)
        page.goto(f"{net.pds_url}/admin/accounts/{did}/check")
        items = _check_items(page)
        for title in (
            f"Relay {relay} knows this host",
            f"Account is active on relay {relay}",
            f"Relay {relay} has our latest commit",
        ):
            passes, why = items[title]
            assert not passes and why.startswith("relay unreachable"), (title, why)
        assert items["DID document points to this PDS"][0]


def test_forms_refuse_posts_without_the_csrf_token(net: Network) -> None:
    with httpx.Client(base_url=net.pds_url) as http:
        home = http.get("/")
        assert home.status_code == 200
        assert "default-src 'none'" in home.headers["content-security-policy"]
        # a cross-site form post carries neither the cookie nor the token
        with httpx.Client(base_url=net.pds_url) as other_site:
            refused = other_site.post("/admin/login", data={"password": ADMIN_PASSWORD})
            assert refused.status_code == 403 and "roost_admin" not in refused.cookies
            joined = other_site.post("/join", data={
                "handle": "mallory", "password": PASSWORD, "accept_rules": "yes",
                "answer_1": "1", "answer_2": "2",
            })
            assert joined.status_code == 403
        # the token of one browser does not work with another browser's cookie
        token = re.search(r'name="csrf" value="([^"]+)"', home.text)
        assert token is not None
        http.cookies.set("roost_csrf", "a-different-browser-cookie-value")
        refused = http.post("/admin/login", data={"csrf": token[1], "password": ADMIN_PASSWORD})
        assert refused.status_code == 403
        # admin pages and actions need the session
        assert http.get("/admin/invites").status_code == 303
        assert http.post("/admin/invites", data={"count": "1", "uses": "1"}).status_code == 401
        listed = http.get("/xrpc/com.atproto.admin.searchAccounts", auth=("admin", ADMIN_PASSWORD))
        assert listed.json()["accounts"] == []  # mallory was never created


def _form_token(html: str) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', html)
    assert token is not None
    return token[1]


@pytest.mark.parametrize("mode", ["invite", "open"])
def test_join_form_in_invite_and_open_modes(tmp_path: Path, mode: str) -> None:
    with _community(tmp_path, signup_mode=mode) as net, httpx.Client(base_url=net.pds_url) as web:
        home = web.get("/")
        assert ('name="invite_code"' in home.text) == (mode == "invite")
        assert "answer_1" not in home.text
        form = {"csrf": _form_token(home.text), "handle": "carol", "email": "carol@example.com",
                "password": PASSWORD, "accept_rules": "yes"}
        if mode == "invite":
            refused = web.post("/join", data={**form, "invite_code": "no-such-code"})
            assert refused.status_code == 400
            assert "invite code not available" in refused.text
            assert 'value="no-such-code"' in refused.text and 'value="carol"' in refused.text
            created = net.http.post(
                net.xrpc("com.atproto.server.createInviteCode"),
                json={"useCount": 1}, auth=("admin", ADMIN_PASSWORD),
            )
            form["invite_code"] = created.json()["code"]
        unaccepted = web.post("/join", data={k: v for k, v in form.items() if k != "accept_rules"})
        assert unaccepted.status_code == 400 and "accept them" in unaccepted.text
        joined = web.post("/join", data=form)
        assert joined.status_code == 200 and "Welcome!" in joined.text
        session = net.http.post(
            net.xrpc("com.atproto.server.createSession"),
            json={"identifier": "carol.pds.test", "password": PASSWORD},
        )
        assert session.status_code == 200 and session.json()["active"] is True
        again = web.post("/join", data=form)
        assert again.status_code == 400 and "Handle already taken" in again.text
