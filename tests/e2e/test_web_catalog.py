"""The feed catalogue in headless Chromium: a post written through the PDS appears in the
open page's preview, and the request counters move, without reloading it.

A did:plc directory and a PDS run on loopback; the feed generator indexes
the PDS's firehose. The page's script refetches the feeds part of the page
every few seconds (the page's Content-Security-Policy must let it).
Screenshots at desktop and phone width go to the test's temporary folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from feedgen.app import create_app
from feedgen.catalog import REFRESH_S
from feedgen.config import FeedgenConfig
from tests.e2e.conftest import Screens
from tests.pds.conftest import Network, running_network
from tests.servers import ServerThread, free_port

#: How long the page may take to show what was written (indexing, then a refresh).
SHOW_WITHIN_MS = (REFRESH_S * 4 + 10) * 1000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, str, str]]:
    tmp = tmp_path_factory.mktemp("web-catalog")
    with running_network(tmp) as net:
        data_dir = tmp / "feedgen"
        data_dir.mkdir()
        (data_dir / "feeds.toml").write_text(
            'publisher = "did:plc:catalogue"\n'
            '[[feed]]\nrkey = "new"\nalgorithm = "latest"\ndisplay_name = "Newest"\n'
            'description = "Everything posted here, newest first"\n'
            '[[feed]]\nrkey = "friends"\nalgorithm = "following"\n'
        )
        port = free_port()
        config = FeedgenConfig(port=port, data_dir=data_dir, hostname=f"localhost:{port}",
                               relay_url=net.pds_url, start_cursor=0, plc_url=net.plc_url,
                               allow_local=True, feeds_file=data_dir / "feeds.toml",
                               batch_delay_s=0.02, entry_points=False)
        server = ServerThread(create_app(config), port=port)
        url = server.start()
        try:
            yield net, url, "at://did:plc:catalogue/app.bsky.feed.generator/new"
        finally:
            server.stop()


def _post(net: Network, session: dict[str, Any], text: str) -> None:
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    response = net.call("com.atproto.repo.createRecord", session, repo=session["did"],
                        collection="app.bsky.feed.post",
                        record={"$type": "app.bsky.feed.post", "text": text, "createdAt": created})
    assert response.status_code == 200, response.text


def test_the_open_page_shows_new_posts_and_requests(
    browser: Any, screens: Screens, world: tuple[Network, str, str], tmp_path: Path
) -> None:
    net, url, feed = world
    carol = net.create_account("carol")
    _post(net, carol, "hello from carol, before the page opened")
    page = browser.new_page()
    errors: list[str] = []  # e.g. a fetch refused by the page's policy, or failing
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" and "favicon" not in message.location.get("url", "")
            else None)
    page.on("response", lambda response: errors.append(f"{response.status} {response.url}")
            if response.status >= 400 and not response.url.endswith("/favicon.ico") else None)
    try:
        page.goto(f"{url}/")
        card = page.locator("#feed-new")
        card.get_by_text("hello from carol, before the page opened").wait_for(
            timeout=SHOW_WITHIN_MS)
        assert "Personalised" in page.locator("#feed-friends").inner_text()
        assert card.locator("b.requests").inner_text() == "0"

        _post(net, carol, "a second post, while the page is open")
        with httpx.Client(timeout=10) as http:
            for _ in range(3):
                response = http.get(f"{url}/xrpc/app.bsky.feed.getFeedSkeleton",
                                    params={"feed": feed})
                assert response.status_code == 200
        card.get_by_text("a second post, while the page is open").wait_for(timeout=SHOW_WITHIN_MS)
        page.wait_for_function(
            "document.querySelector('#feed-new b.requests').textContent === '3'",
            timeout=SHOW_WITHIN_MS)
        assert f"@{carol['handle']}" in card.inner_text()
        screens(page, "feed-catalogue")
        assert not errors, errors
    finally:
        page.close()
