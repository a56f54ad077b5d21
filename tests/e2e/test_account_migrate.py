"""``roost account migrate``: the whole move between two roost PDSes, stopped and resumed.

The first run is stopped at the point of no return (nothing visible has
changed: the DID still names the old host), the second continues from where
the hosts say the account stands and completes the move, and a third run
finds nothing left to do. The ``status`` command then reports every check
green. The command line itself is run once as a subprocess, for its exit
status and messages.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from roost.migrate import MigrateOptions, Migration, account_status
from tests.e2e.test_migration_endpoints import (
    _outbox_token,
    did_document,
    login,
    populate,
    records,
    second_pds,
)
from tests.pds.conftest import PASSWORD, Network, ok, running_network


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
