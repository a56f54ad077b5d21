"""PDS -> relay -> feed generator on loopback: the feed generator reads the relay's firehose.

The relay crawls the PDS (as an operator-configured host), verifies and
re-sequences its commits; the feed generator subscribes to the relay, so what
accounts write through the PDS reaches the feeds through the relay.
"""

from __future__ import annotations

from pathlib import Path

from feedgen.app import create_app
from feedgen.config import FeedgenConfig
from tests.e2e.test_feedgen import eventually
from tests.pds.conftest import running_network
from tests.relay.helpers import running_relay
from tests.servers import ServerThread, free_port


def test_posts_reach_a_feed_through_the_relay(tmp_path: Path) -> None:
    with running_network(tmp_path) as net:
        with running_relay(tmp_path, net.plc_url, crawl=(net.pds_url,)) as relay:
            port = free_port()
            config = FeedgenConfig(
                port=port, data_dir=tmp_path / "feedgen", hostname=f"localhost:{port}",
                relay_url=relay.url, start_cursor=0, plc_url=net.plc_url, allow_local=True,
                entry_points=False, batch_delay_s=0.02,
            )
            feedgen = ServerThread(create_app(config), port=port)
            url = feedgen.start()
            try:
                account = net.create_account("rita")
                auth = net.auth(account)
                uris = []
                for n in range(3):
                    response = net.http.post(
                        net.xrpc("com.atproto.repo.createRecord"), headers=auth,
                        json={"repo": account["did"], "collection": "app.bsky.feed.post",
                              "record": {"$type": "app.bsky.feed.post", "text": f"via relay {n}",
                                         "createdAt": f"2024-06-01T00:00:0{n}.000Z"}},
                    )
                    assert response.status_code == 200, response.text
                    uris.append(response.json()["uri"])
                feed = f"at://{config.publisher}/app.bsky.feed.generator/latest"

                def served() -> list[str]:
                    body = net.http.get(f"{url}/xrpc/app.bsky.feed.getFeedSkeleton",
                                        params={"feed": feed}).json()
                    return [item["post"] for item in body["feed"]]

                assert eventually(lambda: served() == uris[::-1] or None, timeout=30)
                health = net.http.get(f"{url}/xrpc/_health").json()["indexer"]
                assert health["url"] == relay.url and health["cursor"] > 0
            finally:
                feedgen.stop()
