"""The whole network in a real browser: join, approve, post, see it everywhere, ban.

A did:plc directory, a PDS taking applications (with the operator's
questions), a relay crawling it and a feed generator reading the relay run on
loopback. Headless Chromium (see conftest) is the visitor, the PDS operator
and the relay operator; the `atproto` SDK is the new member's app. The post
must show in the feed catalogue and in the relay dashboard's counts, and the
PDS's network visibility check must go from all green to exactly the relay's
host item red once the relay bans the PDS from its dashboard. Every page is
saved at desktop and phone width into the test's temporary folder.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

atproto = pytest.importorskip("atproto")
sync_api = pytest.importorskip("playwright.sync_api")

from atproto import Client

from feedgen.app import create_app as create_feedgen_app
from feedgen.config import FeedgenConfig
from tests.e2e.conftest import Screens, fill_join_form
from tests.e2e.test_web_pds import _check_items, _sign_in
from tests.pds.conftest import PASSWORD, Network, running_network
from tests.relay.helpers import ADMIN_PASSWORD as RELAY_PASSWORD
from tests.relay.helpers import RelayHandle, running_relay
from tests.servers import ServerThread, free_port

expect = sync_api.expect

QUESTIONS = ("Which boat do you sail?", "Who told you about us?")
HANDLE = "marina.pds.test"
TEXT = "First light over the harbour, posted from an approved account"
#: How long the network may take to carry a post or a ban to every page.
SETTLE_S = 30.0


@dataclass
class Stack:
    net: Network
    relay: RelayHandle
    feedgen_url: str

    @property
    def host(self) -> str:
        """The PDS as the relay names it."""
        return self.net.pds_url.removeprefix("http://")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    relay_port = free_port()
    relay_url = f"http://127.0.0.1:{relay_port}"
    community = {
        "signup_mode": "application",
        "application_questions": QUESTIONS,
        "rules": ("Be kind.",),
        "server_name": "Harbour Social",
        "server_description": "Sailors of the old harbour.",
        "contact_email": "ops@harbour.example",
        "relay_urls": (relay_url,),
    }
    with running_network(tmp_path, **community) as net, running_relay(
        tmp_path, net.plc_url, port=relay_port, crawl=(net.pds_url,)
    ) as relay:
        port = free_port()
        config = FeedgenConfig(
            port=port, data_dir=tmp_path / "feedgen", hostname=f"localhost:{port}",
            relay_url=relay.url, start_cursor=0, plc_url=net.plc_url, allow_local=True,
            entry_points=False, batch_delay_s=0.02,
        )
        feedgen = ServerThread(create_feedgen_app(config), port=port)
        try:
            yield Stack(net, relay, feedgen.start())
        finally:
            feedgen.stop()


def _reload_until(page: Any, url: str, done: Callable[[], bool], what: str) -> None:
    """Load ``url`` until ``done()`` holds for the loaded page."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        page.goto(url)
        if done():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(300)


def _latest_commit(url: str, did: str) -> dict[str, Any] | None:
    response = httpx.get(f"{url}/xrpc/com.atproto.sync.getLatestCommit", params={"did": did})
    return response.json() if response.status_code == 200 else None


def _accepted(stack: Stack) -> int:
    counters = stack.relay.host_counters(stack.host)
    return sum(n for name, n in counters.items() if name.startswith("accepted:"))


def test_join_post_see_it_everywhere_then_ban(page: Any, stack: Stack, screens: Screens) -> None:
    net, relay = stack.net, stack.relay

    # -- a visitor applies with answers; the PDS operator approves ---------------------------------
    page.goto(f"{net.pds_url}/")
    for question in QUESTIONS:
        expect(page.locator("#join")).to_contain_text(question)
    screens(page, "pds-public")
    fill_join_form(page, "marina", "marina@example.com", PASSWORD, ["The Heron", "The harbour master"])
    page.click("form.join button[type=submit]")
    expect(page.locator("h1")).to_have_text("Application received")

    _sign_in(page, net)
    application = page.locator("li.application", has_text=HANDLE)
    expect(application.locator("dd").nth(0)).to_have_text("The Heron")
    screens(page, "pds-console")
    application.get_by_role("button", name=f"Approve {HANDLE}").click()
    expect(page.locator(".msg.good")).to_contain_text(f"Approved {HANDLE}")

    # -- the relay dashboard, open while the member posts ------------------------------------------
    dash = page.context.new_page()
    dash.goto(f"{relay.url}/")
    host_row = dash.locator("li.host", has_text=stack.host)
    expect(host_row.locator(".badge").first).to_have_text("active")
    accepted_cell = host_row.locator("[data-live$=':accepted']")
    before = int(accepted_cell.inner_text().replace(",", ""))

    member = Client(base_url=f"{net.pds_url}/xrpc")
    try:
        member.login(HANDLE, PASSWORD, fetch_bsky_profile=False)
        post = member.send_post(TEXT, profile_identify=HANDLE)
    finally:
        member.request.close()
    did = post.uri.split("/")[2]
    ours = _latest_commit(net.pds_url, did)
    assert ours is not None
    deadline = time.monotonic() + SETTLE_S
    while _latest_commit(relay.url, did) != ours:
        assert time.monotonic() < deadline, "the relay never got the post's commit"
        time.sleep(0.1)

    # the page's script brings the new counts in without a reload
    after = _accepted(stack)
    assert after > before
    try:
        expect(accepted_cell).to_have_text(f"{after:,}", timeout=SETTLE_S * 1000)
    except AssertionError as exc:
        figures = httpx.get(f"{relay.url}/dashboard.json")
        raise AssertionError(f"{exc}\n/dashboard.json: {figures.status_code} {figures.text}") from None
    expect(dash.locator("svg.chart .line")).to_have_attribute("points", re.compile(r"\d+,\d+ \d"))
    consumer = dash.locator("li.consumer").first  # the feed generator, reading the firehose
    expect(consumer.locator("[data-live$=':lag']")).to_have_text("0", timeout=SETTLE_S * 1000)
    screens(dash, "relay-dashboard")

    # -- the post reaches the feed catalogue through the relay -------------------------------------
    _reload_until(page, f"{stack.feedgen_url}/", lambda: TEXT in page.locator("main").inner_text(),
                  "the post in the feed catalogue")
    screens(page, "feed-catalogue")

    # -- the visibility check: all green -----------------------------------------------------------
    check_url = f"{net.pds_url}/admin/accounts/{did}/check"
    _reload_until(page, check_url, lambda: all(ok for ok, _ in _check_items(page).values()),
                  "every visibility check to pass")
    items = _check_items(page)
    assert f"Relay {relay.url} has our latest commit" in items and len(items) >= 8
    screens(page, "pds-visibility-green")

    # -- the relay operator bans the PDS from the dashboard ----------------------------------------
    dash.goto(f"{relay.url}/dashboard/login")
    dash.fill("#password", RELAY_PASSWORD)
    dash.click("form button[type=submit]")
    expect(dash.locator("h1")).to_have_text("Relay dashboard")
    screens(dash, "relay-dashboard-admin")
    dash.once("dialog", lambda dialog: dialog.accept())
    dash.get_by_role("button", name=f"Ban {stack.host}").click()
    expect(dash.locator(".msg.good")).to_contain_text(f"Banned {stack.host}")
    expect(host_row.locator(".badge").first).to_have_text("banned")
    expect(dash.locator("#log")).to_contain_text("host.ban")

    # -- and the PDS operator sees exactly which link broke ----------------------------------------
    page.goto(check_url)
    items = _check_items(page)
    red = {title: why for title, (ok, why) in items.items() if not ok}
    assert list(red) == [f"Relay {relay.url} knows this host"], red
    assert f"the relay knows {stack.host} (status banned" in red[f"Relay {relay.url} knows this host"]
    expect(page.locator(".lead")).to_contain_text(f"1 of {len(items)} checks fail")
    screens(page, "pds-visibility-red")
    dash.close()

