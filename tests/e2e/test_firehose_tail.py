"""``roost firehose tail`` as a subprocess against a PDS: output lines, filters, Ctrl-C."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pds.conftest import Network, running_network

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with running_network(tmp_path_factory.mktemp("tail")) as n:
        yield n


def write_post(net: Network, session: dict[str, Any], text: str) -> None:
    response = net.http.post(
        net.xrpc("com.atproto.repo.createRecord"),
        headers=net.auth(session),
        json={"repo": session["did"], "collection": "app.bsky.feed.post",
              "record": {"$type": "app.bsky.feed.post", "text": text,
                         "createdAt": "2026-01-01T00:00:00.000Z"}},
    )
    assert response.status_code == 200, response.text


class Tail:
    """A running ``roost firehose tail``; stdout lines arrive through a queue."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roost.cli", "firehose", "tail", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def read(self, count: int) -> list[str]:
        return [self.lines.get(timeout=DEADLINE_S) for _ in range(count)]

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=DEADLINE_S)
        return self.proc.returncode, err


def test_json_lines_then_ctrl_c_prints_the_resume_cursor(net: Network) -> None:
    alice = net.create_account("tail-alice")
    for i in range(3):
        write_post(net, alice, f"post {i}")
    tail = Tail(net.pds_url, "--cursor", "0", "--json", "--verify", "--plc-url", net.plc_url)
    try:
        replayed = [json.loads(line) for line in tail.read(7)]
        write_post(net, alice, "live")
        (live,) = [json.loads(line) for line in tail.read(1)]
    finally:
        code, err = tail.interrupt()
    assert code == 0, err
    assert [e["type"] for e in replayed] == ["identity", "account", "commit", "sync",
                                             "commit", "commit", "commit"]
    assert [e["seq"] for e in replayed] == list(range(1, 8))
    assert replayed[0]["handle"] == "tail-alice.pds.test" and replayed[1]["active"] is True
    texts = [op["record"]["text"] for e in [*replayed, live] if e["type"] == "commit"
             for op in e["ops"]]
    assert texts == ["post 0", "post 1", "post 2", "live"]
    assert live["seq"] == 8 and live["ops"][0]["cid"].startswith("bafyrei")
    assert "resume with: --cursor 8" in err.splitlines()
    assert "invalid 0" in err  # --verify checked every commit against the PLC key


def test_readable_lines_with_filters(net: Network) -> None:
    bob = net.create_account("tail-bob")
    carol = net.create_account("tail-carol")
    write_post(net, carol, "not shown")
    write_post(net, bob, "shown")
    tail = Tail(net.pds_url, "--cursor", "0", "--did", bob["did"],
                "--collection", "app.bsky.feed.*")
    try:
        identity, account, sync, header, op = tail.read(5)
    finally:
        code, err = tail.interrupt()
    assert code == 0, err
    # identity, account and sync events are filtered by DID only; the account's
    # first commit has no ops and so no matching collection
    did = bob["did"]
    assert identity.split()[1:5] == ["identity", did, "handle", "tail-bob.pds.test"]
    assert account.split()[1:4] == ["account", did, "active"]
    assert sync.split()[1:3] == ["sync", did]
    assert header.split()[1:4] == ["commit", did, "rev"] and "(1 ops)" in header
    assert op.startswith("    create app.bsky.feed.post/") and '"text":"shown"' in op
    seq = int(header.split()[0][1:])
    assert f"resume with: --cursor {seq}" in err.splitlines()


def test_bad_flags_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "roost.cli", "firehose", "tail", "http://127.0.0.1:9",
         "--collection", "not a collection"],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S,
    )
    assert proc.returncode == 2 and "not an NSID" in proc.stderr
