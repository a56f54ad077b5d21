"""Wall time of moving one account between two local roost PDSes.

A did:plc directory and two PDSes run as child processes (``roost plc
serve``, ``roost pds serve``) on loopback; this process fills an account on
the first host with N records (``app.bsky.feed.post``, ``applyWrites``
batches of 200) and B blobs (incompressible PNG images of about
``--blob-kb`` KiB, four to a post), then runs the ``roost account migrate``
flow (:class:`roost.migrate.Migration`, in this process, ``--yes``, the
confirmation code read from the old host's outbox) and prints the time of
each phase it measured:

- export: ``sync.getRepo`` download from the old host;
- import: ``repo.importRepo`` on the new host (CAR verification, MST,
  re-signing, storage);
- blobs: ``listMissingBlobs`` then ``getBlob`` -> ``uploadBlob`` per blob;
- plc: code request, ``signPlcOperation`` (old), ``submitPlcOperation`` (new);
- activate / deactivate: ``activateAccount`` (new), ``deactivateAccount`` (old);
- checks: the DID document and both hosts' status.

No peer is run side by side: the reference PDS has no migration driver of
its own (the ``goat account migrate`` command of indigo would be one, with
two ``@atproto/pds`` instances), so the figures are roost's alone.

    python benchmarks/migrate.py [--records 10000] [--blobs 100] [--blob-kb 64]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import secrets
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.pds import Child, Children, _raise_interrupt, start_plc  # noqa: E402
from roost.migrate import MigrateOptions, Migration  # noqa: E402

PASSWORD = "bench-password-123"
ADMIN_PASSWORD = "bench-admin-secret"
POST = "app.bsky.feed.post"
BATCH = 200  # applyWrites: the most writes one commit may hold
IMAGES_PER_POST = 4  # app.bsky.embed.images allows four
PHASES = ("export", "import", "blobs", "plc", "activate", "deactivate", "checks")


def _say(msg: str) -> None:
    print(f"[migrate-bench] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_pds(children: Children, name: str, plc_url: str) -> Child:
    """A roost PDS at a fixed loopback port (its URL goes into DID documents)."""
    port = _free_port()
    env = dict(os.environ)
    env.update(
        ROOST_DATA_DIR=str(children.workdir / name),
        ROOST_HOSTNAME=f"{name}.test",
        ROOST_PLC_URL=plc_url,
        ROOST_ALLOW_LOCAL="1",
        ROOST_PORT=str(port),
        ROOST_ADMIN_PASSWORD=ADMIN_PASSWORD,
        ROOST_RATE_LIMIT_BYPASS_IPS="127.0.0.1,::1",
        PYTHONPATH=str(REPO_ROOT),
    )
    cmd = [sys.executable, "-m", "roost.cli", "pds", "serve", "--port", str(port)]
    return children.start(name, cmd, env)


def png(size: int) -> bytes:
    """A valid PNG of about ``size`` bytes of random (incompressible) pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    width = 64
    height = max(1, size // (width * 3 + 1))
    rows = b"".join(b"\x00" + secrets.token_bytes(width * 3) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


def _ok(response: httpx.Response) -> Any:
    if not response.is_success:
        raise RuntimeError(f"{response.request.url.path}: {response.status_code} {response.text}")
    return response.json() if response.content else {}


def fill(http: httpx.Client, url: str, records: int, blobs: int, blob_kb: int) -> dict[str, Any]:
    """Create the account and its content; returns the session."""
    session = _ok(http.post(f"{url}/xrpc/com.atproto.server.createAccount", json={
        "handle": "mover.pds1.test", "email": "mover@example.com", "password": PASSWORD}))
    auth = {"authorization": f"Bearer {session['accessJwt']}"}
    refs = []
    for _ in range(blobs):
        out = _ok(http.post(f"{url}/xrpc/com.atproto.repo.uploadBlob", content=png(blob_kb * 1024),
                            headers={**auth, "content-type": "image/png"}))
        refs.append(out["blob"])
    writes: list[dict[str, Any]] = []
    for i in range(records):
        record: dict[str, Any] = {"$type": POST, "text": f"post number {i}",
                                  "createdAt": "2024-05-01T12:00:00.000Z"}
        start = i * IMAGES_PER_POST
        if start < len(refs):
            record["embed"] = {"$type": "app.bsky.embed.images", "images": [
                {"alt": f"image {n}", "image": ref}
                for n, ref in enumerate(refs[start:start + IMAGES_PER_POST], start)]}
        writes.append({"$type": "com.atproto.repo.applyWrites#create",
                       "collection": POST, "value": record})
    for at in range(0, len(writes), BATCH):
        _ok(http.post(f"{url}/xrpc/com.atproto.repo.applyWrites", headers=auth,
                      json={"repo": session["did"], "writes": writes[at:at + BATCH]}))
    return dict(session)


def outbox_token(url: str, did: str) -> str:
    out = _ok(httpx.get(f"{url}/xrpc/org.roost.admin.listOutbox", params={"did": did},
                        auth=("admin", ADMIN_PASSWORD), timeout=30))
    return str(out["messages"][0]["token"])


def run(args: argparse.Namespace, workdir: Path) -> int:
    children = Children(workdir)
    try:
        plc = start_plc(children)
        one = start_pds(children, "pds1", plc.url)
        two = start_pds(children, "pds2", plc.url)
        _say(f"PLC {plc.url}, host 1 {one.url}, host 2 {two.url}; data in {workdir}")
        with httpx.Client(timeout=600) as http:
            started = time.perf_counter()
            session = fill(http, one.url, args.records, args.blobs, args.blob_kb)
            _say(f"filled {args.records} records and {args.blobs} blobs in "
                 f"{time.perf_counter() - started:.1f} s")
            car = http.get(f"{one.url}/xrpc/com.atproto.sync.getRepo",
                           params={"did": session["did"]}).content
        out = io.StringIO()
        options = MigrateOptions(
            from_url=one.url, to_url=two.url, identifier=session["did"], password=PASSWORD,
            plc_url=plc.url, allow_local=True, yes=True, out=out, progress_stream=io.StringIO(),
            ask_token=lambda prompt: outbox_token(one.url, session["did"]),
        )
        migration = Migration(options)
        started = time.perf_counter()
        status = asyncio.run(migration.run())
        total = time.perf_counter() - started
        if status != 0:
            print(out.getvalue())
            _say("the migration did not complete")
            return 1
    finally:
        children.stop_all()

    blob_mb = args.blobs * args.blob_kb / 1024
    print()
    print(f"roost account migrate: {args.records} records (CAR {len(car) / 1e6:.1f} MB), "
          f"{args.blobs} blobs ({blob_mb:.1f} MB), two local roost PDSes, "
          f"Python {sys.version.split()[0]}")
    print(f"{'phase':<12}{'seconds':>10}{'share':>8}")
    for phase in PHASES:
        seconds = migration.timings.get(phase, 0.0)
        print(f"{phase:<12}{seconds:>10.2f}{seconds / total:>8.0%}")
    other = total - sum(migration.timings.get(p, 0.0) for p in PHASES)
    print(f"{'other':<12}{other:>10.2f}{other / total:>8.0%}   (logins, preflight, account, preferences)")
    print(f"{'total':<12}{total:>10.2f}")
    print(f"records/s through export+import: "
          f"{args.records / (migration.timings['export'] + migration.timings['import']):,.0f}; "
          f"blobs/s: {args.blobs / migration.timings['blobs']:,.1f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--blobs", type=int, default=100)
    parser.add_argument("--blob-kb", type=int, default=64, help="size of each blob, KiB")
    parser.add_argument("--keep-data", action="store_true", help="keep the temp data dir")
    args = parser.parse_args(argv)
    if args.records * IMAGES_PER_POST < args.blobs:
        parser.error(f"--blobs needs at least blobs/{IMAGES_PER_POST} records to reference them")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="roost-bench-migrate-"))
    try:
        return run(args, workdir)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    finally:
        if not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
