"""PdsConfig: environment, overrides, secrets kept across restarts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pds.config import PdsConfig


def test_from_env_and_overrides(tmp_path: Path) -> None:
    env = {
        "ROOST_HOSTNAME": "roost.example",
        "ROOST_PORT": "4000",
        "ROOST_RELAY_URLS": "http://a.test, http://b.test",
        "ROOST_ALLOW_LOCAL": "yes",
        "ROOST_APPLICATION_QUESTIONS": "Your employee number?|Your team?",
        "ROOST_DATA_DIR": str(tmp_path),
        "ROOST_RATE_LIMIT_BYPASS_IPS": "127.0.0.1,::1",
    }
    config = PdsConfig.from_env(env, port=5000)
    assert config.hostname == "roost.example" and config.port == 5000
    assert config.relay_urls == ("http://a.test", "http://b.test")
    assert config.allow_local is True
    assert config.rate_limit_bypass_ips == ("127.0.0.1", "::1")
    assert config.application_questions == ("Your employee number?", "Your team?")
    assert config.service_did == "did:web:roost.example"
    assert config.handle_domain == ".roost.example"
    assert config.url == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    "env",
    [{"ROOST_PORT": "many"}, {"ROOST_SIGNUP_MODE": "lottery"}, {"ROOST_HOSTNAME": "not a host"}],
)
def test_bad_values_are_clear_errors(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        PdsConfig.from_env(env)


def test_secrets_are_created_once_and_masked(tmp_path: Path) -> None:
    config = PdsConfig(data_dir=tmp_path, admin_password="hunter2").with_secrets()
    again = PdsConfig(data_dir=tmp_path).with_secrets()
    assert config.jwt_secret and config.jwt_secret == again.jwt_secret
    assert config.rotation_key.public_key == again.rotation_key.public_key
    mode = stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode)
    assert mode == 0o600
    shown = repr(config)
    assert "hunter2" not in shown and config.jwt_secret not in shown
