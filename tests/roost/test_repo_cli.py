"""`roost repo inspect` and `roost repo verify` on real files."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from roost.blockstore import MemoryBlockStore
from roost.cli import main
from roost.crypto import PrivateKey
from roost.repo import Repo
from roost.tid import TidClock

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
KEY = PrivateKey.from_bytes(hashlib.sha256(b"cli test key").digest(), "k256")


@pytest.fixture(scope="module")
def car_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clock = TidClock()
    records = [(f"app.bsky.feed.post/{clock.next_str()}", {"$type": "app.bsky.feed.post", "text": "x"}) for _ in range(40)]
    records += [(f"app.bsky.graph.follow/{clock.next_str()}", {"$type": "app.bsky.graph.follow"}) for _ in range(3)]
    repo = Repo.create_from_records(MemoryBlockStore(), DID, KEY, sorted(records))
    path = tmp_path_factory.mktemp("car") / "repo.car"
    path.write_bytes(b"".join(repo.export_car()))
    return path


def test_inspect(car_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repo", "inspect", str(car_file)]) == 0
    out = capsys.readouterr().out
    assert DID in out and "43 in 2 collections" in out
    assert "app.bsky.feed.post" in out and "app.bsky.graph.follow" in out


def test_verify_with_key(car_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repo", "verify", str(car_file), "--did", DID, "--key", KEY.public_key.did_key()]) == 0
    assert "signature verified" in capsys.readouterr().out


def test_verify_failures(car_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = PrivateKey.generate("k256").public_key.did_key()
    assert main(["repo", "verify", str(car_file), "--key", other]) == 1
    assert "BadCommitSignature" in capsys.readouterr().err
    assert main(["repo", "verify", str(car_file), "--did", "did:plc:other"]) == 1
    assert "WrongDid" in capsys.readouterr().err
    truncated = tmp_path / "cut.car"
    truncated.write_bytes(car_file.read_bytes()[:-10])
    assert main(["repo", "verify", str(truncated)]) == 1
    assert "CarTruncated" in capsys.readouterr().err
    assert main(["repo", "verify", str(tmp_path / "absent.car")]) == 1
    assert main(["repo", "inspect", str(truncated)]) == 1


@pytest.fixture
def plc_server() -> Iterator[str]:
    doc = {
        "id": DID,
        "verificationMethod": [
            {
                "id": f"{DID}#atproto",
                "type": "Multikey",
                "controller": DID,
                "publicKeyMultibase": KEY.public_key.multikey(),
            }
        ],
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == f"/{DID}":
                body = json.dumps(doc).encode()
                self.send_response(200)
            else:
                body = b'{"message": "DID not registered"}'
                self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_verify_against_directory(car_file: Path, plc_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repo", "verify", str(car_file), "--did", DID, "--plc-url", plc_server]) == 0
    assert "signature verified" in capsys.readouterr().out
    assert main(["repo", "verify", str(car_file), "--did", "did:plc:unknown", "--plc-url", plc_server]) == 1
