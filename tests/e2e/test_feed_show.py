"""``roost feed show`` against a PDS and a feed generator on loopback.

A did:plc directory and a PDS run on loopback; frank posts, bob follows him;
``roost feedgen backfill`` indexes both repositories; the feed generator
serves a ``latest`` feed and a personal ``following`` feed, published with
``roost feedgen publish``. One of frank's posts is deleted on the PDS after
the backfill, so the feed still lists it and the reader must show it as
missing; frank reposts his oldest post, which bob's feed shows as a repost.
``roost feed show`` follows each feed from its URI alone: the record on the
publisher's PDS, the service's did:web document, the skeleton (with a
service token from bob's PDS for the personal feed), and each post's record
on its author's PDS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from feedgen.app import create_app
from feedgen.config import FeedgenConfig
from roost.cli import main
from tests.e2e.test_feedgen_publish import _write as write_record
from tests.pds.conftest import Network, running_network
from tests.servers import ServerThread, free_port

TEXTS = ["oldest post", "a post\nover two lines", "deleted later", "newest post"]


@dataclass
class Setup:
    net: Network
    publisher: str
    frank: str
    bob: str
    bob_password: str
    posts: list[str]  # TEXTS' URIs, oldest first
    repost: str  # frank's repost of his oldest post, the newest item for his followers
    data_dir: Path

    def feed(self, rkey: str) -> str:
        return f"at://{self.publisher}/app.bsky.feed.generator/{rkey}"

    @property
    def plc(self) -> list[str]:
        return ["--plc-url", self.net.plc_url, "--allow-local"]

    def show(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        status = main(["feed", "show", *argv, *self.plc])
        out, err = capsys.readouterr()
        return status, out, err


def _write(net: Network, session: dict[str, Any], collection: str, record: dict[str, Any],
           age_s: int) -> str:
    return write_record(net, session["accessJwt"], session["did"], collection, record, age_s)


def _app_password(net: Network, session: dict[str, Any]) -> str:
    response = net.call("com.atproto.server.createAppPassword", session, name="feeds")
    assert response.status_code == 200, response.text
    return str(response.json()["password"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("feed-show")
    with running_network(tmp) as net:
        frank, bob = net.create_account("frank"), net.create_account("bob")
        posts = [_write(net, frank, "app.bsky.feed.post", {"text": text}, 600 - 60 * n)
                 for n, text in enumerate(TEXTS)]
        _write(net, bob, "app.bsky.graph.follow", {"subject": frank["did"]}, 900)
        cid = net.query("com.atproto.repo.getRecord", repo=frank["did"],
                        collection="app.bsky.feed.post", rkey=posts[0].rsplit("/", 1)[1]
                        ).json()["cid"]
        repost = _write(net, frank, "app.bsky.feed.repost",
                        {"subject": {"uri": posts[0], "cid": cid}}, 30)
        data_dir = tmp / "feedgen"
        data_dir.mkdir()
        (data_dir / "feeds.toml").write_text(
            f'publisher = "{frank["did"]}"\n'
            '[[feed]]\nrkey = "new"\nalgorithm = "latest"\n'
            '[[feed]]\nrkey = "friends"\nalgorithm = "following"\n'
        )
        plc = ["--plc-url", net.plc_url, "--allow-local"]
        assert main(["feedgen", "backfill", "--data-dir", str(data_dir),
                     "--host", net.pds_url, *plc]) == 0
        rkey = posts[2].rsplit("/", 1)[1]
        assert net.call("com.atproto.repo.deleteRecord", frank, repo=frank["did"],
                        collection="app.bsky.feed.post", rkey=rkey).status_code == 200
        port = free_port()
        config = FeedgenConfig(port=port, data_dir=data_dir, hostname=f"localhost:{port}",
                               plc_url=net.plc_url, allow_local=True, entry_points=False)
        server = ServerThread(create_app(config), port=port)
        server.start()
        try:
            login = ["--identifier", frank["handle"], "--password", _app_password(net, frank),
                     "--pds-url", net.pds_url, *plc]
            for name in ("new", "friends"):
                assert main(["feedgen", "publish", name, *login, "--service-did", config.did,
                             "--display-name", name.title()]) == 0
            yield Setup(net, frank["did"], frank["handle"], bob["handle"],
                        _app_password(net, bob), posts, repost, data_dir)
        finally:
            server.stop()


def test_a_feed_reads_as_posts_with_authors_times_and_text(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    status, out, err = setup.show(capsys, setup.feed("new"))
    assert status == 0, err
    assert out.startswith(f"New ({setup.feed('new')}), 4 posts anonymously")
    # newest first, each under its author and time; the deleted one marked, not skipped
    order = [out.index(text) for text in ("newest post", "a post\n  over two lines", "oldest post")]
    assert order == sorted(order)
    assert f"@{setup.frank} (unverified) · " in out and " UTC\n" in out
    assert "deleted later" not in out
    missing = f"[missing] @{setup.frank} (unverified): deleted, or never existed"
    assert f"{missing}\n  {setup.posts[2]}" in out
    assert "more: --cursor" not in out


def test_json_pages_follow_the_cursor(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    status, out, err = setup.show(capsys, setup.feed("new"), "--limit", "3", "--json")
    assert status == 0, err
    first = json.loads(out)
    assert first["feed"] == setup.feed("new") and first["reader"] is None
    assert first["service"].startswith("did:web:localhost%3A")
    assert [(p["uri"], p["state"]) for p in first["posts"]] == [
        (setup.posts[3], "ok"), (setup.posts[2], "missing"), (setup.posts[1], "ok")]
    newest = first["posts"][0]
    assert newest["text"] == "newest post" and newest["source"] == "pds"
    assert newest["record"]["$type"] == "app.bsky.feed.post"
    assert newest["claimedHandle"] == setup.frank and "handle" not in newest
    status, out, err = setup.show(capsys, setup.feed("new"), "--limit", "3", "--json",
                                  "--cursor", first["cursor"])
    assert status == 0, err
    second = json.loads(out)
    assert [p["uri"] for p in second["posts"]] == [setup.posts[0]] and "cursor" not in second


def test_a_personal_feed_needs_a_reader_and_reads_with_their_service_token(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    status, out, err = setup.show(capsys, setup.feed("friends"))
    assert status == 1 and out == ""
    assert "[FAIL] skeleton" in err and "AuthenticationRequired" in err and "--handle" in err
    status, out, err = setup.show(capsys, setup.feed("friends"), "--handle", setup.bob,
                                  "--password", setup.bob_password,
                                  "--pds-url", setup.net.pds_url)
    assert status == 0, err
    assert out.startswith(f"Friends ({setup.feed('friends')}), 5 posts as {setup.bob}")
    assert "newest post" in out and "[missing]" in out
    assert f"\n  reposted: {setup.repost}\n@{setup.frank} (unverified) · " in out
    status, out, err = setup.show(capsys, setup.feed("friends"), "--handle", setup.bob,
                                  "--password", setup.bob_password, "--pds-url", setup.net.pds_url,
                                  "--json", "--limit", "2")
    assert status == 0, err
    page = json.loads(out)
    assert page["reader"] == setup.bob
    assert [(p["uri"], p.get("repost")) for p in page["posts"]] == [
        (setup.posts[0], setup.repost), (setup.posts[3], None)]
    assert page["posts"][0]["text"] == "oldest post"
    status, _, err = setup.show(capsys, setup.feed("friends"), "--handle", setup.bob,
                                "--password", "wrong", "--pds-url", setup.net.pds_url)
    assert status == 1 and "createSession" in err


def test_each_broken_step_is_named(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    status, _, err = setup.show(capsys, "at://nope")
    assert status == 1 and "[FAIL] feed URI" in err
    status, _, err = setup.show(capsys, setup.feed("unpublished"))
    assert status == 1 and "[FAIL] record" in err and "RecordNotFound" in err
    assert "roost feedgen doctor" in err
    status, _, err = setup.show(capsys, setup.feed("new"), "--limit", "0")
    assert status == 2 and "--limit" in err
    status, _, err = setup.show(capsys, setup.feed("new"), "--cursor", "garbage")
    assert status == 1 and "[FAIL] skeleton" in err and "cursor" in err
