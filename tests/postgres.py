"""A real PostgreSQL server for tests: initdb in a temporary folder, loopback port.

The server is started from the PostgreSQL binaries on the machine (Debian's
``postgresql`` package; ``.ci/run`` installs it when missing), listens on
127.0.0.1 on a free port with its socket in the data folder, trusts local
connections, and runs without fsync (the tests check behaviour, not the
disk). Every test gets a fresh database from :meth:`PostgresServer.new_database`.

PostgreSQL refuses to run as root; when the tests run as root the server
runs as the ``postgres`` system user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.servers import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bindir"]

_START_TIMEOUT_S = 60
#: How often the watchdog looks for the test process.
_WATCHDOG_POLL_S = 2


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine (the reason is the message)."""


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.insert(0, found)
    for initdb in candidates:
        bindir = Path(initdb).resolve().parent
        if (bindir / "pg_ctl").exists():
            return bindir
    raise PostgresUnavailable("PostgreSQL is not installed (no initdb and pg_ctl found)")


class PostgresServer:
    """One PostgreSQL cluster for a test session."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="roost-pg-"))
        self.data = self.root / "data"
        self.user = "roost"
        self._run_as: str | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and no 'postgres' user exists") from None
            self._run_as = "postgres"
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o700)

    def _cmd(self, *args: str) -> list[str]:
        if self._run_as is None:
            return list(args)
        return ["runuser", "-u", self._run_as, "--", *args]

    def start(self) -> None:
        subprocess.run(
            self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                      "-U", self.user, "-E", "UTF8", "--no-sync", "--no-instructions"),
            check=True, capture_output=True, timeout=_START_TIMEOUT_S,
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        result = subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                      "-l", str(self.root / "server.log"), "-w", "-t", str(_START_TIMEOUT_S),
                      "start"),
            capture_output=True, text=True, timeout=_START_TIMEOUT_S + 10,
        )
        if result.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{log}")
        self._watchdog = self._start_watchdog()

    def _start_watchdog(self) -> subprocess.Popen[bytes]:
        """A detached shell that stops the server once this process is gone.

        A test run killed before its teardown (a timeout, Ctrl-C twice, kill -9)
        would otherwise leave the server and its folder behind.
        """
        stop = " ".join(shlex.quote(a) for a in self._stop_cmd())
        script = (
            f"while kill -0 {os.getpid()} 2>/dev/null; do sleep {_WATCHDOG_POLL_S}; done; "
            f"{stop} >/dev/null 2>&1; rm -rf {shlex.quote(str(self.root))}"
        )
        return subprocess.Popen(
            ["sh", "-c", script], start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def _stop_cmd(self) -> list[str]:
        return self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                         "-w", "stop")

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        subprocess.run(self._stop_cmd(), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; its DSN."""
        name = "t_" + uuid.uuid4().hex[:16]
        subprocess.run(
            [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
             "-d", "postgres", "-q", "-c", f'CREATE DATABASE "{name}"'],
            check=True, capture_output=True, timeout=30,
        )
        return self.dsn(name)
