"""`roost plc serve` as a real process: prints its URL, serves, stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from roost.crypto import PrivateKey
from roost.plc import build_genesis, did_for_genesis, sign_op


def test_plc_serve_process(tmp_path: Path) -> None:
    env = {**os.environ, "ROOST_DATA_DIR": str(tmp_path / "plc")}
    with subprocess.Popen(
        [sys.executable, "-m", "roost.cli", "plc", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        _exercise(proc)
    assert proc.returncode == 0
    assert (tmp_path / "plc" / "plc.sqlite").exists()


def _exercise(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, f"no URL line: {line!r}"
        url = match.group(1)
        assert httpx.get(f"{url}/_health").status_code == 200
        key = PrivateKey.generate("k256")
        op = sign_op(
            build_genesis(
                signing_key=key.public_key.did_key(),
                rotation_keys=[key.public_key.did_key()],
                handle="alice.test",
                pds_endpoint="https://pds.test",
            ),
            key,
        )
        did = did_for_genesis(op)
        assert httpx.post(f"{url}/{did}", json=op.to_json()).status_code == 200
        doc = httpx.get(f"{url}/{did}").json()
        assert doc["id"] == did and doc["alsoKnownAs"] == ["at://alice.test"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
