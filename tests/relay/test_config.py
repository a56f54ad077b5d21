"""RelayConfig: environment variables, CLI overrides, database settings, masked secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.config import RelayConfig
from relay.core import Relay
from roost.errors import Forbidden, RateLimitExceeded


def test_environment_and_overrides() -> None:
    env = {
        "ROOST_PORT": "3000",
        "ROOST_PLC_URL": "http://127.0.0.1:2582",
        "ROOST_CRAWL": "https://pds.example.com, http://127.0.0.1:2583",
        "ROOST_ALLOW_LOCAL": "yes",
        "ROOST_REPLAY_WINDOW_S": "3600",
        "ROOST_VERIFY_WORKERS": "0",
        "ROOST_VERSION": "9.9.9",  # never read from the environment
    }
    config = RelayConfig.from_env(env, port=4000, crawl=None)
    assert config.port == 4000  # the flag wins
    assert config.crawl == ("https://pds.example.com", "http://127.0.0.1:2583")
    assert config.allow_local is True and config.replay_window_s == 3600.0
    assert config.workers == 0 and config.version != "9.9.9"


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="ROOST_PORT must be a number"):
        RelayConfig.from_env({"ROOST_PORT": "eighty"})
    with pytest.raises(ValueError, match="plc_url"):
        RelayConfig(plc_url="ftp://plc")
    with pytest.raises(ValueError, match="consumer_buffer"):
        RelayConfig(consumer_buffer=0)


def test_database_setting(tmp_path: Path) -> None:
    assert RelayConfig(data_dir=tmp_path).database_path == tmp_path / "relay.sqlite"
    assert RelayConfig(database="sqlite:////var/relay.db").database_path == Path("/var/relay.db")
    assert RelayConfig(database="relay.db").database_path == Path("relay.db")
    with pytest.raises(ValueError, match="unsupported"):
        RelayConfig(database="mysql://x")


def test_postgres_and_roles() -> None:
    config = RelayConfig(database="postgresql://relay:s3cret@db/relay", role="frontend")
    assert config.postgres_url == "postgresql://relay:s3cret@db/relay"
    assert "s3cret" not in repr(config)
    with pytest.raises(ValueError, match="PostgreSQL database"):
        config.database_path  # noqa: B018
    assert RelayConfig(role="ingest").postgres_url is None
    with pytest.raises(ValueError, match="postgresql://"):
        RelayConfig(role="frontend")  # a frontend with SQLite has no shared log to serve
    with pytest.raises(ValueError, match="role"):
        RelayConfig(role="mirror")
    assert RelayConfig.from_env({"ROOST_ROLE": "frontend", "ROOST_DATABASE": "postgres://db/r"}).role == "frontend"


def test_admin_password_is_masked() -> None:
    text = repr(RelayConfig(admin_password="hunter2"))
    assert "hunter2" not in text and "admin_password='***'" in text


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"crawl_enabled": False}, Forbidden),
        ({"allowed_hosts": ("*.allowed.example",)}, Forbidden),
        ({"new_hosts_per_day": 0}, RateLimitExceeded),
    ],
)
async def test_public_crawl_requests_follow_the_configuration(
    tmp_path: Path, options: dict[str, Any], refusal: type[Exception]
) -> None:
    relay = Relay(RelayConfig(data_dir=tmp_path, verify_workers=0, **options))
    await relay.start()
    try:
        with pytest.raises(refusal):
            await relay.request_crawl("pds.example.com", check=False)
        # the operator's own requests are not bound by these
        host = await relay.request_crawl("pds.example.com", admin=True, check=False)
        assert host.row.status == "active" and relay.store.hosts()[0].hostname == "pds.example.com"
    finally:
        await relay.stop()
