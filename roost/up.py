"""``roost up``: the whole network on one machine, wired together.

Four services, each in its own process (so a busy relay has a core of its
own and one crash cannot take the others down), started in dependency order
and stopped in reverse:

==========  ===============  ===========================================
service     port             wired to
==========  ===============  ===========================================
plc         base + 0         (the did:plc directory everyone resolves)
relay       base + 2         plc; crawls the PDS when the PDS asks
pds         base + 1         plc; asks the relay to crawl it
feedgen     base + 3         plc; reads the relay's firehose
==========  ===============  ===========================================

Each service keeps its data in its own folder under one data directory, and
the generated admin password is kept in ``<data-dir>/up.json`` (mode 0600),
so a second run reuses both. Every service runs on loopback with outbound
loopback requests allowed (``--allow-local``): this is a local network.

The supervisor starts a service, waits for its ``NAME listening on URL``
line (see :mod:`roost.server`), forwards everything else it prints with the
service's name in front, and stops everything cleanly on Ctrl-C/SIGTERM or
as soon as one service dies unexpectedly (exit status 1, with the reason).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

__all__ = [
    "READY_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "Network",
    "ServiceProcess",
    "ServiceSpec",
    "UpError",
    "UpOptions",
    "plan",
    "run_up",
    "seed_demo",
]

#: How long a service may take to print its ready line.
READY_TIMEOUT_S: Final = 60.0
#: How long a service may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S: Final = 15.0
#: Lines of a service's output kept to explain why it died.
_TAIL_LINES: Final = 40
_READY_MARK: Final = " listening on "

#: Port offsets from ``--base-port`` (DESIGN: PLC +0, PDS +1, relay +2, feed generator +3).
PORT_OFFSETS: Final = {"plc": 0, "pds": 1, "relay": 2, "feedgen": 3}


class UpError(RuntimeError):
    """The network could not be started (a service failed or never got ready)."""


@dataclass(frozen=True, slots=True)
class UpOptions:
    """What ``roost up`` was asked for."""

    data_dir: Path
    base_port: int = 2582
    host: str = "127.0.0.1"
    hostname: str = "roost.test"
    signup_mode: str = "open"
    admin_password: str | None = None
    demo: bool = False

    def url(self, service: str) -> str:
        return f"http://{self.host}:{self.base_port + PORT_OFFSETS[service]}"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service to start: its name, its command line and where it answers."""

    name: str
    argv: tuple[str, ...]
    url: str
    env: dict[str, str] = field(default_factory=dict)


def load_admin_password(options: UpOptions) -> str:
    """The admin password: the flag's, else the stored one, else a new one (stored)."""
    path = options.data_dir / "up.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    if options.admin_password:
        password = options.admin_password
    elif stored.get("admin_password"):
        return stored["admin_password"]
    else:
        password = secrets.token_urlsafe(18)
    stored["admin_password"] = password
    options.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(stored, f, indent=2)
    os.replace(tmp, path)
    return password


def plan(options: UpOptions, admin_password: str) -> list[ServiceSpec]:
    """The services to start, in start order."""
    roost = (sys.executable, "-m", "roost")
    data = options.data_dir
    plc_url = options.url("plc")

    def core(service: str) -> tuple[str, ...]:
        port = options.base_port + PORT_OFFSETS[service]
        return ("--host", options.host, "--port", str(port), "--data-dir", str(data / service))

    secret_env = {"ROOST_ADMIN_PASSWORD": admin_password}
    return [
        ServiceSpec("plc", (*roost, "plc", "serve", *core("plc")), plc_url),
        ServiceSpec(
            "relay",
            (*roost, "relay", "serve", *core("relay"), "--plc-url", plc_url, "--allow-local"),
            options.url("relay"),
            secret_env,
        ),
        ServiceSpec(
            "pds",
            (
                *roost, "pds", "serve", *core("pds"),
                "--hostname", options.hostname,
                "--public-url", options.url("pds"),
                "--plc-url", plc_url,
                "--relay-url", options.url("relay"),
                "--signup-mode", options.signup_mode,
                "--allow-local",
            ),
            options.url("pds"),
            secret_env,
        ),
        ServiceSpec(
            "feedgen",
            (
                *roost, "feedgen", "serve", *core("feedgen"),
                "--relay-url", options.url("relay"),
                "--plc-url", plc_url,
                "--allow-local",
            ),
            options.url("feedgen"),
            secret_env,
        ),
    ]


class ServiceProcess:
    """One running service: its process and a thread forwarding its output."""

    def __init__(self, spec: ServiceSpec, out: TextIO) -> None:
        self.spec = spec
        self.url: str | None = None
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._out = out
        self._ready = threading.Event()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
        self.process = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            # Its own session: Ctrl-C reaches the supervisor only, which
            # stops the services in reverse dependency order.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._forward, name=f"up-{spec.name}", daemon=True)
        self._reader.start()

    def _forward(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            self.tail.append(line)
            if not self._ready.is_set() and line.startswith(self.spec.name + _READY_MARK):
                self.url = line.split(_READY_MARK, 1)[1].strip()
                self._ready.set()
                continue
            print(f"{self.spec.name:>7} | {line}", file=self._out, flush=True)
        self.process.stdout.close()
        self._ready.set()  # wake a waiter: the process has ended

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        """The URL the service announced; :class:`UpError` if it died or took too long."""
        if not self._ready.wait(timeout):
            raise UpError(f"{self.spec.name} did not start within {timeout:.0f} s{self._why()}")
        if self.url is None:
            self.process.wait(timeout=5)
            raise UpError(
                f"{self.spec.name} exited with status {self.process.returncode}{self._why()}"
            )
        return self.url

    def _why(self) -> str:
        lines = [line for line in self.tail if line.strip()]
        return (":\n    " + "\n    ".join(lines[-10:])) if lines else ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Ask the service to stop (SIGTERM), kill it after ``timeout``; its exit status."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        return self.process.returncode


class Network:
    """The started services; stops them all (in reverse order) on :meth:`stop`."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.services: list[ServiceProcess] = []
        self.out = out

    def start(self, specs: Sequence[ServiceSpec], timeout: float = READY_TIMEOUT_S) -> None:
        for spec in specs:
            service = ServiceProcess(spec, self.out)
            self.services.append(service)
            service.wait_ready(timeout)

    def dead(self) -> ServiceProcess | None:
        """The first service that has exited, if any."""
        return next((s for s in self.services if not s.alive), None)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def url(self, name: str) -> str:
        for service in self.services:
            if service.spec.name == name and service.url:
                return service.url
        raise KeyError(name)


def _banner(options: UpOptions, network: Network, admin_password: str) -> str:
    pds, relay, feedgen = (network.url(n) for n in ("pds", "relay", "feedgen"))
    firehose = relay.replace("http", "ws", 1) + "/xrpc/com.atproto.sync.subscribeRepos"
    rows = [
        ("PDS", pds + "/", f"join page; admin console at {pds}/admin"),
        ("relay", relay + "/", f"dashboard; firehose at {firehose}"),
        ("feed generator", feedgen + "/", "feed catalogue"),
        ("PLC directory", network.url("plc"), ""),
    ]
    width = max(len(url) for _, url, _ in rows) + 2
    lines = ["", "roost is up: a whole AT Protocol network on this machine.", ""]
    for label, url, note in rows:
        lines.append(f"  {label:<16} {url:<{width}}{f'({note})' if note else ''}".rstrip())
    lines += [
        "",
        f"  {'admin user':<16} admin / {admin_password}",
        f"  {'handles':<16} <name>.{options.hostname}",
        f"  {'data':<16} {options.data_dir.resolve()}",
        "",
        "Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


def seed_demo(options: UpOptions, network: Network, admin_password: str) -> None:
    """``--demo``: seed accounts, follows, posts and likes through the PDS (idempotent)."""
    from roost.demo import DEMO_PASSWORD, SeedError, seed

    try:
        accounts = seed(network.url("pds"), options.hostname, admin_password)
    except (SeedError, OSError) as exc:
        raise UpError(f"demo seeding failed: {exc}") from None
    handles = ", ".join(a.handle for a in accounts)
    print(f"demo accounts: {handles} (password {DEMO_PASSWORD})", file=network.out, flush=True)


def run_up(
    options: UpOptions,
    *,
    out: TextIO = sys.stdout,
    seed: Callable[[UpOptions, Network, str], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Start the network, print how to reach it, and supervise it until asked to stop."""
    admin_password = load_admin_password(options)
    network = Network(out)
    stopping = stop or threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        network.start(plan(options, admin_password))
        if seed is not None:
            seed(options, network, admin_password)
        print(_banner(options, network, admin_password), file=out, flush=True)
        while not stopping.wait(0.5):
            dead = network.dead()
            if dead is not None:
                print(
                    f"roost up: {dead.spec.name} stopped unexpectedly "
                    f"(exit status {dead.process.returncode}){dead._why()}",
                    file=sys.stderr,
                )
                status = 1
                break
    except UpError as exc:
        print(f"roost up: {exc}", file=sys.stderr)
        status = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("roost up: stopping...", file=out, flush=True)
        started = time.monotonic()
        network.stop()
        print(f"roost up: stopped in {time.monotonic() - started:.1f} s", file=out, flush=True)
    return status
