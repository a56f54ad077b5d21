"""Backfill, publish, doctor and unpublish through the ``roost feedgen`` commands, against a real PDS.

A did:plc directory and a PDS run on loopback; an account posts before any
feed generator exists; ``roost feedgen backfill`` indexes its repo; the feed
generator serves it; ``publish`` writes the generator record with an app
password; ``doctor`` follows the feed as an AppView would and names what is
wrong when something is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from feedgen.app import create_app
from feedgen.config import FeedgenConfig
from roost.cli import main
from tests.pds.conftest import Network, running_network
from tests.servers import ServerThread, free_port


@dataclass
class Setup:
    net: Network
    did: str
    handle: str
    app_password: str
    posts: list[str]
    feedgen_url: str
    service_did: str
    data_dir: Path

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    @property
    def plc(self) -> list[str]:
        return ["--plc-url", self.net.plc_url, "--allow-local"]

    @property
    def login(self) -> list[str]:
        return ["--identifier", self.handle, "--password", self.app_password,
                "--pds-url", self.net.pds_url, *self.plc]


def _write(
    net: Network, jwt: str, did: str, collection: str, record: dict[str, Any], age_s: int = 3600
) -> str:
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - age_s))
    response = net.http.post(
        net.xrpc("com.atproto.repo.createRecord"), headers={"Authorization": f"Bearer {jwt}"},
        json={"repo": did, "collection": collection,
              "record": {"$type": collection, "createdAt": created, **record}})
    assert response.status_code == 200, response.text
    return str(response.json()["uri"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("feedgen-publish")
    with running_network(tmp) as net:
        account = net.create_account("frank")
        did, jwt = account["did"], account["accessJwt"]
        posts = [_write(net, jwt, did, "app.bsky.feed.post", {"text": f"old post {n}"}, 3600 - n)
                 for n in range(3)]
        _write(net, jwt, did, "app.bsky.graph.follow", {"subject": did})
        app_password = net.http.post(
            net.xrpc("com.atproto.server.createAppPassword"),
            headers={"Authorization": f"Bearer {jwt}"}, json={"name": "feeds"},
        ).json()["password"]
        data_dir = tmp / "feedgen"
        data_dir.mkdir()
        (data_dir / "feeds.toml").write_text(
            f'publisher = "{did}"\n'
            '[[feed]]\nrkey = "new"\nalgorithm = "latest"\n'
            '[[feed]]\nrkey = "friends"\nalgorithm = "following"\n'
        )
        port = free_port()
        config = FeedgenConfig(port=port, data_dir=data_dir, hostname=f"localhost:{port}",
                               plc_url=net.plc_url, allow_local=True, entry_points=False)
        server = ServerThread(create_app(config), port=port)
        server.start()
        try:
            yield Setup(net, did, account["handle"], app_password, posts,
                        f"http://127.0.0.1:{port}", config.did, data_dir)
        finally:
            server.stop()


def test_backfill_indexes_repos_written_before_the_feed_generator(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = setup.run(capsys, "feedgen", "backfill", "--data-dir", str(setup.data_dir),
                                 "--host", setup.net.pds_url, *setup.plc)
    assert status == 0, err
    assert "indexed 4 records from 1 repos" in out
    feed = f"at://{setup.did}/app.bsky.feed.generator/new"
    body = setup.net.http.get(f"{setup.feedgen_url}/xrpc/app.bsky.feed.getFeedSkeleton",
                              params={"feed": feed}).json()
    assert [item["post"] for item in body["feed"]] == setup.posts[::-1]
    # again, by DID: nothing changes
    status, out, _ = setup.run(capsys, "feedgen", "backfill", "--data-dir", str(setup.data_dir),
                               "--did", setup.did, *setup.plc)
    assert status == 0 and "indexed 4 records from 1 repos" in out
    status, _, err = setup.run(capsys, "feedgen", "backfill", "--data-dir", str(setup.data_dir),
                               "--did", "did:plc:nobodyhere2222222222222", *setup.plc)
    assert status == 1 and "did:plc:nobodyhere2222222222222" in err
    assert setup.run(capsys, "feedgen", "backfill", "--data-dir", str(setup.data_dir))[0] == 2


def test_publish_doctor_and_unpublish(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    feed = f"at://{setup.did}/app.bsky.feed.generator/new"
    status, out, err = setup.run(
        capsys, "feedgen", "publish", "new", *setup.login, "--service-did", setup.service_did,
        "--display-name", "Newest", "--description", "Everything, newest first",
    )
    assert status == 0, err
    assert f"published {feed}" in out
    record = setup.net.http.get(setup.net.xrpc("com.atproto.repo.getRecord"), params={
        "repo": setup.did, "collection": "app.bsky.feed.generator", "rkey": "new"}).json()["value"]
    assert record["did"] == setup.service_did and record["displayName"] == "Newest"

    status, out, err = setup.run(capsys, "feedgen", "doctor", feed, *setup.plc)
    assert status == 0, out + err
    assert "[ok  ] describe" in out and "[ok  ] skeleton: 3 posts anonymously" in out
    assert "[WARN] endpoint" in out  # plain http on loopback
    assert "the feed works" in out

    # a personal feed: anonymously the doctor explains; as a reader it goes through their PDS
    friends = f"at://{setup.did}/app.bsky.feed.generator/friends"
    assert setup.run(capsys, "feedgen", "publish", "friends", *setup.login, "--service-did",
                     setup.service_did, "--display-name", "Friends")[0] == 0
    status, out, _ = setup.run(capsys, "feedgen", "doctor", friends, *setup.plc)
    assert status == 0 and "needs a signed-in reader" in out
    status, out, err = setup.run(capsys, "feedgen", "doctor", friends, "--as", setup.handle,
                                 "--password", setup.app_password, "--pds-url", setup.net.pds_url,
                                 *setup.plc)
    assert status == 0, out + err
    assert f"posts as {setup.handle} via their PDS" in out

    # a record this service does not serve, and one pointing at a DID that does not resolve
    assert setup.run(capsys, "feedgen", "publish", "ghost", *setup.login, "--service-did",
                     setup.service_did, "--display-name", "Ghost")[0] == 0
    status, out, _ = setup.run(capsys, "feedgen", "doctor",
                               f"at://{setup.did}/app.bsky.feed.generator/ghost", *setup.plc)
    assert status == 1 and "[FAIL] describe" in out and "does not list" in out
    assert setup.run(capsys, "feedgen", "publish", "ghost", *setup.login, "--service-did",
                     "did:web:localhost%3A1", "--display-name", "Ghost")[0] == 0
    status, out, _ = setup.run(capsys, "feedgen", "doctor",
                               f"at://{setup.did}/app.bsky.feed.generator/ghost", *setup.plc)
    assert status == 1 and "[FAIL] service DID" in out

    status, out, _ = setup.run(capsys, "feedgen", "unpublish", "new", *setup.login)
    assert status == 0 and "deleted" in out
    status, out, _ = setup.run(capsys, "feedgen", "doctor", feed, *setup.plc)
    assert status == 1 and "[FAIL] record" in out and "RecordNotFound" in out


def test_publish_refuses_bad_input_clearly(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = setup.run(capsys, "feedgen", "publish", "x", *setup.login, "--service-did",
                               setup.service_did, "--display-name", "n" * 25)
    assert status == 1 and "not valid" in err and "displayName" in err
    status, _, err = setup.run(capsys, "feedgen", "publish", "x", "--identifier", setup.handle,
                               "--password", "wrong-password", "--pds-url", setup.net.pds_url,
                               *setup.plc, "--service-did",
                               setup.service_did, "--display-name", "X")
    assert status == 1 and "createSession" in err
    status, _, err = setup.run(capsys, "feedgen", "doctor", "at://nope", *setup.plc)
    assert status == 1
