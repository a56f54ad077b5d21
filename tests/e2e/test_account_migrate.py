"""``roost account migrate``: the whole move between two roost PDSes, stopped and resumed.

The first run is stopped at the point of no return (nothing visible has
changed: the DID still names the old host), the second continues from where
the hosts say the account stands and completes the move, and a third run
finds nothing left to do. The ``status`` command then reports every check
green. The command line itself is run as a subprocess for its exit status
and messages, and killed (SIGKILL, at a point ``ROOST_MIGRATE_STOP_AFTER``
names) after the repo import, after the first blob and after the PLC
operation; each time the next run completes the move, with every record and
blob there once, one active host and one new PLC operation. The preflight
refuses, before anything is created on the new host, a blob above its upload
limit, a missing invite code, more bytes than it has free, and a host that
does not answer.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from roost.migrate import (
    STOP_AFTER_ENV,
    STOP_POINTS,
    MigrateOptions,
    Migration,
    MigrationError,
    account_status,
)
from tests.e2e.test_migration_endpoints import (
    _outbox_token,
    active_hosts,
    blob_cids,
    check_content_moved,
    did_document,
    login,
    plc_ops,
    populate,
    records,
    second_pds,
)
from tests.pds.conftest import PASSWORD, Network, error, ok, running_network
from tests.servers import ServerThread, free_port


def options(old: Network, new: Network, out: io.StringIO, **extra: Any) -> MigrateOptions:
    def token(prompt: str) -> str:
        did = ok(old.http.get(old.xrpc("com.atproto.identity.resolveHandle"),
                              params={"handle": "alice.pds.test"}))["did"]
        return _outbox_token(old, did)

    return MigrateOptions(
        from_url=old.pds_url, to_url=new.pds_url, identifier="alice.pds.test",
        password=PASSWORD, plc_url=old.plc_url, allow_local=True, ask_token=token,
        out=out, progress_stream=io.StringIO(), **extra,
    )


async def test_migrate_stop_resume_and_finish(tmp_path: Path) -> None:
    with running_network(tmp_path) as old, second_pds(tmp_path, old, "pds2.test") as new:
        old.create_account("alice")
        session = login(old, "alice.pds.test")
        did = session["did"]
        images = populate(old, session)
        before = records(old, did)

        # 1. stopped at the point of no return: the account exists on the new host,
        #    deactivated, with the repo and blobs copied; the identity has not moved.
        out = io.StringIO()
        status = await Migration(options(old, new, out, confirm=lambda _: False)).run()
        assert status == 1, out.getvalue()
        assert "nothing visible changed" in out.getvalue()
        assert did_document(old, did).pds_endpoint == old.pds_url
        new_session = login(new, did)
        assert new_session["active"] is False
        account = ok(new.query("com.atproto.server.checkAccountStatus", new_session))
        assert account["activated"] is False
        assert account["importedBlobs"] == account["expectedBlobs"] == len(images)

        # 2. run again: continues, moves the identity, activates, deactivates the old host
        out = io.StringIO()
        status = await Migration(options(old, new, out, yes=True)).run()
        assert status == 0, out.getvalue()
        assert "repository already imported" in out.getvalue()
        assert did_document(old, did).pds_endpoint == new.pds_url
        assert records(new, did) == before
        old_status = ok(old.query("com.atproto.sync.getRepoStatus", None, did=did))
        assert old_status["active"] is False and old_status["status"] == "deactivated"
        assert login(new, did)["active"] is True

        # 3. a third run has nothing left to do and still passes its checks
        out = io.StringIO()
        assert await Migration(options(old, new, out, yes=True)).run() == 0, out.getvalue()
        assert "creating the account" not in out.getvalue()

        async with httpx.AsyncClient() as http:
            report = await account_status(
                http, did, hosts=[("new", new.pds_url), ("old", old.pds_url)],
                plc_url=old.plc_url, allow_local=True, expect_pds=new.pds_url,
            )
        assert report.ok, report.checks
        assert report.pds_endpoint == new.pds_url


def test_cli_reports_a_wrong_password_and_changes_nothing(tmp_path: Path) -> None:
    with running_network(tmp_path) as old, second_pds(tmp_path, old, "pds2.test") as new:
        created = old.create_account("alice")
        result = subprocess.run(
            [sys.executable, "-m", "roost", "account", "migrate", "--from", old.pds_url,
             "--to", new.pds_url, "--handle", "alice.pds.test", "--password", "wrong",
             "--plc-url", old.plc_url, "--allow-local", "--yes"],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 1
        assert "AuthenticationRequired" in result.stderr or "Invalid" in result.stderr
        assert "run the same command again" in result.stderr
        assert did_document(old, created["did"]).pds_endpoint == old.pds_url
        r = new.http.post(new.xrpc("com.atproto.server.createSession"),
                          json={"identifier": created["did"], "password": PASSWORD})
        assert r.status_code == 401


# -- interrupted by SIGKILL, then run again -----------------------------------------------------


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, Network]]:
    tmp = tmp_path_factory.mktemp("migrate-kill")
    with running_network(tmp) as old, second_pds(tmp, old, "pds2.test") as new:
        yield old, new


def run_cli(old: Network, new: Network, handle: str, token: str,
            stop_after: str | None = None) -> subprocess.CompletedProcess[str]:
    """``roost account migrate`` as a child process (killed by itself at ``stop_after``)."""
    env = {k: v for k, v in os.environ.items() if k != STOP_AFTER_ENV}
    if stop_after is not None:
        env[STOP_AFTER_ENV] = stop_after
    return subprocess.run(
        [sys.executable, "-m", "roost", "account", "migrate", "--from", old.pds_url,
         "--to", new.pds_url, "--handle", handle, "--password", PASSWORD,
         "--plc-url", old.plc_url, "--allow-local", "--yes", "--plc-token", token],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("stage", STOP_POINTS)
def test_killed_at_each_stage_then_run_again(hosts: tuple[Network, Network], stage: str) -> None:
    old, new = hosts
    name = f"kill{stage}"
    session = old.create_account(name)
    did = session["did"]
    images = populate(old, session)
    before, blobs_before = records(old, did), sorted(blob_cids(old, did, session))
    ops_before = plc_ops(old, did)
    # the confirmation code, asked for beforehand (as from the outbox) and passed with
    # --plc-token: the command then asks for no other
    ok(old.call("com.atproto.identity.requestPlcOperationSignature", session))
    token = _outbox_token(old, did)

    killed = run_cli(old, new, f"{name}.pds.test", token, stop_after=stage)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    # where the kill left things
    moved = did_document(old, did).pds_endpoint == new.pds_url
    assert moved is (stage == "plc")
    new_session = login(new, did)
    assert new_session["active"] is False
    status = ok(new.query("com.atproto.server.checkAccountStatus", new_session))
    assert status["indexedRecords"] == len(before)
    assert status["expectedBlobs"] == len(images)
    assert status["importedBlobs"] == {"import": 0, "blob": 1, "plc": len(images)}[stage]
    assert len(plc_ops(old, did)) == len(ops_before) + (stage == "plc")
    assert ok(old.query("com.atproto.sync.getRepoStatus", did=did))["active"] is True

    done = run_cli(old, new, f"{name}.pds.test", token)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"done: {did} now lives at {new.pds_url}" in done.stdout
    assert "creating the account" not in done.stdout
    if stage != "plc":
        assert "repository already imported" in done.stdout

    # nothing lost, nothing twice, one host, one new PLC operation
    check_content_moved(new, new_session, before, blobs_before, images)
    assert active_hosts(old, new, did=did) == [new.pds_url]
    ops = plc_ops(old, did)
    assert ops[: len(ops_before)] == ops_before and len(ops) == len(ops_before) + 1
    assert did_document(old, did).pds_endpoint == new.pds_url


# -- preflight: refused before anything is created on the new host ------------------------------


@contextmanager
def small_host(tmp: Path, free_bytes: int) -> Iterator[str]:
    """A host that says (in describeServer) it has ``free_bytes`` free and knows no one."""

    async def describe(request: Request) -> Response:
        return JSONResponse({"did": "did:web:small.test", "availableUserDomains": [".small.test"],
                             "blobUploadLimit": 1 << 20,
                             "roostStorage": {"freeBytes": free_bytes, "maxRepoBytes": 1 << 20}})

    async def login_refused(request: Request) -> Response:
        return JSONResponse({"error": "AuthenticationRequired", "message": "Invalid identifier"},
                            status_code=401)

    server = ServerThread(Starlette(routes=[
        Route("/xrpc/com.atproto.server.describeServer", describe),
        Route("/xrpc/com.atproto.server.createSession", login_refused, methods=["POST"]),
    ]), port=free_port())
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def _refused(old: Network, to_url: str, handle: str, **extra: Any) -> str:
    out = io.StringIO()
    options = MigrateOptions(
        from_url=old.pds_url, to_url=to_url, identifier=handle, password=PASSWORD,
        plc_url=old.plc_url, allow_local=True, yes=True, out=out,
        progress_stream=io.StringIO(), ask_token=lambda prompt: pytest.fail("asked for a token"),
        **extra,
    )
    with pytest.raises(MigrationError) as caught:
        asyncio.run(Migration(options).run())
    assert "creating the account" not in out.getvalue()
    return str(caught.value)


def test_preflight_refuses_what_the_new_host_cannot_take(
    hosts: tuple[Network, Network], tmp_path: Path
) -> None:
    old, _ = hosts
    session = old.create_account("preflight")
    did = session["did"]
    populate(old, session)  # three images, the largest some 85 bytes
    largest = ok(old.query("com.atproto.server.checkAccountStatus", session))["roostLargestBlob"]
    assert largest > 0

    # blobs above the new host's limit
    with second_pds(tmp_path, old, "tiny.test", max_blob_bytes=largest - 1) as tiny:
        message = _refused(old, tiny.pds_url, "preflight.pds.test")
        assert "largest blob" in message and f"{largest} B" in message
        error(tiny.call("com.atproto.server.createSession", None, identifier=did,
                        password=PASSWORD), 401, "AuthenticationRequired")
    # an invite code needed and not given
    with second_pds(tmp_path, old, "closed.test", signup_mode="invite") as closed:
        assert "--invite-code" in _refused(old, closed.pds_url, "preflight.pds.test")
    # not enough room
    with small_host(tmp_path, free_bytes=1024) as small:
        message = _refused(old, small, "preflight.pds.test")
        assert "1.0 KB free" in message
    # nobody there
    assert "cannot reach the new host" in _refused(
        old, f"http://127.0.0.1:{free_port()}", "preflight.pds.test")
    # and the account never left: its DID still names the old host, which serves it
    assert did_document(old, did).pds_endpoint == old.pds_url
    assert ok(old.query("com.atproto.sync.getRepoStatus", did=did))["active"] is True


def test_preflight_reports_the_room_it_checked(hosts: tuple[Network, Network]) -> None:
    old, new = hosts
    old.create_account("roomy")
    out = io.StringIO()
    options = MigrateOptions(
        from_url=old.pds_url, to_url=new.pds_url, identifier="roomy.pds.test",
        password=PASSWORD, plc_url=old.plc_url, allow_local=True, out=out,
        progress_stream=io.StringIO(), confirm=lambda prompt: False,
    )
    assert asyncio.run(Migration(options).run()) == 1  # stopped at the point of no return
    described = ok(new.query("com.atproto.server.describeServer"))
    assert described["blobUploadLimit"] == new.config.max_blob_bytes
    assert described["roostStorage"]["freeBytes"] > 0
    assert "blobs: largest 0 B, new host takes up to 50.0 MB" in out.getvalue()
    assert "free there" in out.getvalue()
