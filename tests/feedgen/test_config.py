"""Feed generator configuration: environment, feeds files, and the serve command's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedgen.app import build_feeds, build_registry
from feedgen.config import FeedgenConfig, load_feeds_file
from feedgen.plugins import FeedConfigError
from roost.cli import main


def test_environment_and_derived_values(tmp_path: Path) -> None:
    config = FeedgenConfig.from_env(
        {"ROOST_PORT": "3000", "ROOST_PLUGINS": "a.b, c.d:e", "ROOST_FULLTEXT": "yes",
         "ROOST_PAGE_CACHE_S": "0"},
        data_dir=tmp_path,
    )
    assert config.port == 3000 and config.plugins == ("a.b", "c.d:e") and config.fulltext
    assert config.page_cache_s == 0
    assert config.did == "did:web:localhost%3A3000" and config.url == "http://localhost:3000"
    assert config.publisher == config.did
    public = FeedgenConfig(hostname="feeds.example.com", publisher_did="did:plc:me")
    assert public.did == "did:web:feeds.example.com" and public.url == "https://feeds.example.com"
    assert public.publisher == "did:plc:me"
    with pytest.raises(ValueError, match="must be a number"):
        FeedgenConfig.from_env({"ROOST_PORT": "many"})
    for bad in ({"service_did": "nope"}, {"relay_url": "ftp://x"}, {"page_cache_s": -1},
                {"start_cursor": -5}, {"algorithm_threads": 0}):
        with pytest.raises(ValueError):
            FeedgenConfig(**bad)  # type: ignore[arg-type]


def _feeds(tmp_path: Path, text: str) -> FeedgenConfig:
    path = tmp_path / "feeds.toml"
    path.write_text(text)
    return FeedgenConfig(data_dir=tmp_path, entry_points=False)


def test_feeds_file_builds_feeds(tmp_path: Path) -> None:
    config = _feeds(tmp_path, '''
        publisher = "did:plc:pub"
        [[feed]]
        rkey = "cats"
        algorithm = "hashtag"
        display_name = "Cats"
        options = { tags = ["cats"] }
        [[feed]]
        rkey = "mine"
        algorithm = "latest"
        publisher = "did:plc:other"
        anonymous = false
    ''')
    feeds = build_feeds(config, build_registry(config))
    assert sorted(feeds) == ["at://did:plc:other/app.bsky.feed.generator/mine",
                             "at://did:plc:pub/app.bsky.feed.generator/cats"]
    mine = feeds["at://did:plc:other/app.bsky.feed.generator/mine"]
    assert not mine.anonymous and mine.algorithm.name == "latest"


@pytest.mark.parametrize("text, problem", [
    ("[[feed]]\nrkey = 1\nalgorithm = 'latest'\n", "required strings"),
    ("[[feed]]\nrkey = 'a'\nalgorithm = 'latest'\ncolour = 'red'\n", "unknown keys colour"),
    ("publisher = 'me'\n", "not a DID"),
    ("[[feed]\n", "not valid TOML"),
    ("[[feed]]\nrkey = 'a'\nalgorithm = 'latest'\noptions = 3\n", "options must be a table"),
])
def test_feeds_file_mistakes_are_explained(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "feeds.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        load_feeds_file(path)


def test_unknown_algorithms_and_bad_options_stop_the_start(tmp_path: Path) -> None:
    config = _feeds(tmp_path, "[[feed]]\nrkey = 'a'\nalgorithm = 'nope'\n")
    with pytest.raises(FeedConfigError, match="no algorithm named 'nope'"):
        build_feeds(config, build_registry(config))
    config = _feeds(tmp_path, "[[feed]]\nrkey = 'a'\nalgorithm = 'hashtag'\n")
    with pytest.raises(FeedConfigError, match="bad options for hashtag"):
        build_feeds(config, build_registry(config))


def test_serve_refuses_a_broken_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "feeds.toml").write_text("[[feed]]\nrkey = 'a'\nalgorithm = 'nope'\n")
    assert main(["feedgen", "serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    assert "no algorithm named 'nope'" in capsys.readouterr().err


def test_roles_say_what_a_process_does_with_the_index(tmp_path: Path) -> None:
    both = FeedgenConfig(data_dir=tmp_path)
    assert (both.role, both.indexes, both.serves) == ("all", True, True)
    server = FeedgenConfig.from_env({"ROOST_ROLE": "server"}, data_dir=tmp_path)
    assert (server.indexes, server.serves) == (False, True)
    indexer = FeedgenConfig(data_dir=tmp_path, role="indexer", relay_url="wss://relay.test")
    assert (indexer.indexes, indexer.serves) == (True, False)
    with pytest.raises(ValueError, match="an indexer needs a firehose"):
        FeedgenConfig(data_dir=tmp_path, role="indexer")
    with pytest.raises(ValueError, match="role must be one of"):
        FeedgenConfig(data_dir=tmp_path, role="frontend")


def test_serve_refuses_a_second_indexer_of_a_sqlite_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fcntl

    database = tmp_path / "feedgen.sqlite"
    with open(f"{database}.indexer-lock", "a") as held:  # the first indexer
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        args = ["feedgen", "serve", "--role", "indexer", "--relay-url", "ws://127.0.0.1:9",
                "--data-dir", str(tmp_path), "--database", str(database), "--port", "0"]
        assert main(args) == 1
    assert "another indexer is already writing" in capsys.readouterr().err
