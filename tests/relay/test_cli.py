"""``roost relay serve``: flags and ROOST_* variables, the ready line, health, clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from roost.cli import build_parser


def test_flags_reach_the_handler() -> None:
    args = build_parser().parse_args([
        "relay", "serve", "--port", "0", "--plc-url", "http://127.0.0.1:2582",
        "--crawl", "http://127.0.0.1:2583", "--crawl", "pds.example.com",
        "--admin-password", "pw", "--allow-local", "--database", "relay.db", "--role", "ingest",
    ])
    assert args.crawl == ["http://127.0.0.1:2583", "pds.example.com"]
    assert args.allow_local is True and args.database == "relay.db" and args.role == "ingest"


def test_serve_announces_itself_and_stops_cleanly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ROOST_DATA_DIR": str(tmp_path / "relay"),
        "ROOST_VERIFY_WORKERS": "1",
        "ROOST_ADMIN_PASSWORD": "pw",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "roost.cli", "relay", "serve", "--port", "0", "--allow-local",
         "--plc-url", "http://127.0.0.1:9"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"relay listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        response = httpx.get(match[1] + "/xrpc/_health", timeout=10)
        assert response.status_code == 200 and response.json()["seq"] == 0
        assert "atproto-relay" in response.headers["server"]
        assert httpx.get(match[1] + "/admin/pds/list", auth=("admin", "pw")).json() == {"hosts": []}
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(20)
        assert proc.stdout is not None
        proc.stdout.close()
    assert status == 0


def test_a_database_it_cannot_use_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roost.cli", "relay", "serve", "--data-dir", str(tmp_path),
         "--role", "frontend"],
        capture_output=True, text=True, timeout=60,
    )
    # a frontend serves a shared PostgreSQL log: with SQLite there is none
    assert result.returncode == 2 and "postgresql://" in result.stderr
