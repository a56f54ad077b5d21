"""``roost up``: the whole network from one command, as a new operator runs it.

Runs the real command in a subprocess (four service processes behind it),
checks every service answers and that they are wired to each other (the
relay crawled the PDS, the feed generator indexed the demo posts from the
relay), stops it with Ctrl-C, and starts it again on the same data directory:
nothing is duplicated and the admin password is the same.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT_S = 120
_BANNER_END = "Press Ctrl-C to stop."


def free_base_port() -> int:
    """A port P such that P..P+3 are all free on loopback."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        try:
            sockets = []
            for offset in range(4):
                t = socket.socket()
                sockets.append(t)
                t.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for t in sockets:
                t.close()
    raise RuntimeError("no block of four free ports")


class Up:
    """A running ``roost up`` and everything it printed."""

    def __init__(self, data_dir: Path, base_port: int, *extra: str) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "roost", "up", "--data-dir", str(data_dir),
             "--base-port", str(base_port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if _BANNER_END in line:
                self.ready.set()
        self.process.stdout.close()
        self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def url(self, label: str) -> str:
        match = re.search(rf"^\s+{label}\s+(http://\S+?)/?\s", self.output + " ", re.M)
        assert match, self.output
        return match.group(1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(60)
        self._reader.join(10)
        return code


@contextmanager
def roost_up(data_dir: Path, base_port: int, *extra: str) -> Iterator[Up]:
    up = Up(data_dir, base_port, *extra)
    try:
        assert up.ready.wait(START_TIMEOUT_S), up.output
        assert up.process.poll() is None, up.output
        yield up
    finally:
        if up.process.poll() is None:
            up.process.send_signal(signal.SIGINT)
            try:
                up.process.wait(60)
            except subprocess.TimeoutExpired:
                up.process.kill()
                up.process.wait()
        up._reader.join(10)


def eventually(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_up_demo_wires_the_network_and_restarts_on_the_same_data(tmp_path: Path) -> None:
    data = tmp_path / "roost-data"
    base = free_base_port()
    with roost_up(data, base, "--demo") as up, httpx.Client(timeout=10) as http:
        plc, pds, relay, feedgen = (up.url(n) for n in ("PLC directory", "PDS", "relay",
                                                         "feed generator"))
        assert [plc, pds, relay, feedgen] == [f"http://127.0.0.1:{base + i}" for i in range(4)]
        for url in (plc, pds, relay, feedgen):
            assert http.get(f"{url}/xrpc/_health").status_code == 200, url
        password = re.search(r"admin user\s+admin / (\S+)", up.output)
        assert password, up.output
        assert json.loads((data / "up.json").read_text())["admin_password"] == password.group(1)

        # the relay crawled the PDS and follows the three demo accounts
        def relay_repos() -> list[dict[str, Any]]:
            out = http.get(f"{relay}/xrpc/com.atproto.sync.listRepos").json()
            return [r for r in out.get("repos", []) if r.get("active")]

        assert len(eventually(lambda: len(relay_repos()) == 3 and relay_repos())) == 3

        # the feed generator indexed the demo posts from the relay
        described = http.get(f"{feedgen}/xrpc/app.bsky.feed.describeFeedGenerator").json()
        latest = next(f["uri"] for f in described["feeds"] if f["uri"].endswith("/latest"))

        def skeleton() -> list[dict[str, Any]]:
            r = http.get(f"{feedgen}/xrpc/app.bsky.feed.getFeedSkeleton", params={"feed": latest})
            return r.json().get("feed", []) if r.status_code == 200 else []

        assert len(eventually(lambda: len(skeleton()) >= 5 and skeleton())) == 5
        alice = http.get(f"{pds}/xrpc/com.atproto.identity.resolveHandle",
                         params={"handle": "alice.roost.test"}).json()["did"]

    assert up.process.returncode == 0, up.output
    assert "roost up: stopped" in up.output

    # a second run reuses the data: same accounts, no duplicate demo content
    with roost_up(data, base, "--demo") as again, httpx.Client(timeout=10) as http:
        assert f"admin / {password.group(1)}" in again.output
        did = http.get(f"{pds}/xrpc/com.atproto.identity.resolveHandle",
                       params={"handle": "alice.roost.test"}).json()["did"]
        assert did == alice
        posts = http.get(f"{pds}/xrpc/com.atproto.repo.listRecords",
                         params={"repo": did, "collection": "app.bsky.feed.post"}).json()
        assert len(posts["records"]) == 2
        assert again.stop() == 0


def test_up_explains_a_port_in_use(tmp_path: Path) -> None:
    base = free_base_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base + 2))  # the relay's port
        blocker.listen()
        up = Up(tmp_path / "data", base)
        code = up.process.wait(START_TIMEOUT_S)
        up._reader.join(10)
    assert code == 1
    assert "relay" in up.output and "stopped" in up.output
