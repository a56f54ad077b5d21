"""Durability: kill -9 a PDS under write load; every acknowledged write survives.

A did:plc directory runs in-process; the PDS runs as `roost pds serve` in a
child process. Sixteen writers create records concurrently; the PDS is
killed with SIGKILL mid-load twice and restarted on the same data. Every
write that got a 200 must be in the repo afterwards, the repo must verify,
and the firehose must replay a gap-free, strictly increasing sequence.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import websockets.sync.client

from plc.app import create_app as create_plc_app
from plc.config import PlcConfig
from roost.frames import decode_frame
from roost.identity import DidDocument
from roost.repo import verify_car
from tests.pds.conftest import PASSWORD
from tests.servers import ServerThread, free_port

WRITERS = 16
KILLS = 2


def start_pds(data_dir: Path, port: int, plc_url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "ROOST_DATA_DIR": str(data_dir),
        "ROOST_HOSTNAME": "pds.test",
        "ROOST_PLC_URL": plc_url,
        "ROOST_ALLOW_LOCAL": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "roost.cli", "pds", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert re.search(r"listening on http://127\.0\.0\.1:\d+", line), line
    return proc


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    plc = ServerThread(create_plc_app(PlcConfig(data_dir=tmp_path / "plc")))
    plc_url = plc.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_pds(tmp_path / "pds", port, plc_url)
    acked: set[str] = set()
    lock = threading.Lock()
    try:
        with httpx.Client(timeout=30) as http:
            created = http.post(
                f"{url}/xrpc/com.atproto.server.createAccount",
                json={"handle": "alice.pds.test", "email": "a@example.com", "password": PASSWORD},
            ).json()
            did = created["did"]
            token = created["accessJwt"]

        for round_ in range(KILLS + 1):
            stop = threading.Event()

            def writer(n: int) -> None:
                with httpx.Client(timeout=10) as client:
                    i = 0
                    while not stop.is_set():
                        text = f"w{round_}x{n}x{i}"
                        i += 1
                        try:
                            response = client.post(
                                f"{url}/xrpc/com.atproto.repo.createRecord",
                                headers={"Authorization": f"Bearer {token}"},
                                json={
                                    "repo": did,
                                    "collection": "app.bsky.feed.post",
                                    "record": {"$type": "app.bsky.feed.post", "text": text,
                                               "createdAt": "2026-01-01T00:00:00.000Z"},
                                },
                            )
                        except httpx.HTTPError:
                            return  # the server died: stop this writer
                        if response.status_code == 200:
                            with lock:
                                acked.add(response.json()["uri"].rsplit("/", 1)[1])

            threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 20
            target = len(acked) + 150
            while len(acked) < target and time.monotonic() < deadline:
                time.sleep(0.02)
            if round_ < KILLS:
                proc.send_signal(signal.SIGKILL)  # mid-load
                proc.wait(timeout=10)
                if proc.stdout:
                    proc.stdout.close()
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            if round_ < KILLS:
                proc = start_pds(tmp_path / "pds", port, plc_url)

        with httpx.Client(timeout=30) as http:
            car = http.get(f"{url}/xrpc/com.atproto.sync.getRepo", params={"did": did}).content
            doc = DidDocument.parse(http.get(f"{plc_url}/{did}").json(), did=did)
        summary = verify_car(car, did=did, key=doc.signing_key)
        from roost.car import read_car_single_root
        from roost.repo import Repo
        from roost.blockstore import MemoryBlockStore

        root, blocks = read_car_single_root(car)
        present = {path.split("/")[1] for path, _ in Repo.load(MemoryBlockStore(blocks), root).tree}
        assert acked, "no write was acknowledged"
        missing = acked - present
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"
        assert summary.records == len(present)

        # the firehose replays a gap-free sequence across both crashes
        seqs = []
        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor=0"
        ) as ws:
            latest = None
            while True:
                try:
                    message = ws.recv(timeout=3)
                except TimeoutError:
                    break
                header, body = decode_frame(message)
                if header.get("op") == 1 and "seq" in body:
                    seqs.append(body["seq"])
                    latest = body["seq"]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or reorder in the log"
        assert latest is not None and len(seqs) >= len(present) + 4
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()
        plc.stop()
