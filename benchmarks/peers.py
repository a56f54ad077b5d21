"""Helpers for running roost's reference peers from benchmark scripts.

- ``ensure_node_peers()`` installs the npm packages pinned in
  ``benchmarks/node/package.json`` (with its lock file) into the gitignored
  ``benchmarks/.peers/node/``, never into the tracked tree.
- ``run_node(script, *args)`` runs one of ``benchmarks/node/*.mjs`` there and
  parses the one JSON object it prints on stdout.
- ``ensure_pip(package, spec)`` pip-installs a Python peer into the running
  interpreter when it is missing.
- ``run_in_child(func, *args)`` runs a module-level function in a fresh
  interpreter and returns its result dict with its own peak RSS.

Peak RSS: every figure is the child's ``VmHWM`` (``/proc/self/status``), the
high-water mark of its own address space. ``getrusage(...).ru_maxrss`` is only
a fallback (non-Linux): on Linux a child's ``ru_maxrss`` starts at its parent's
high-water mark (it is kept across ``exec``), and ``RUSAGE_CHILDREN`` is the
maximum over every child waited for so far, so neither isolates one child.

Every helper prints a reason and returns ``None``/``False`` (or raises
``PeerError`` for ``run_node``) rather than crashing a benchmark run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_DIR",
    "NODE_SRC_DIR",
    "NODE_PEERS_DIR",
    "PeerError",
    "ensure_node_peers",
    "ensure_pip",
    "run_node",
    "run_in_child",
    "peak_rss_mb",
    "rss_mb",
    "node_available",
]

BENCH_DIR = Path(__file__).resolve().parent
NODE_SRC_DIR = BENCH_DIR / "node"
NODE_PEERS_DIR = BENCH_DIR / ".peers" / "node"
_STAMP = ".roost-install-stamp"
_MIN_NODE_MAJOR = 18


class PeerError(RuntimeError):
    """A peer could not be installed or run."""


def _say(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


# -- memory -------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set of this process's own address space, in MB."""
    kb = _proc_status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss is KB on Linux/BSD, bytes on macOS
        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = raw // 1024 if sys.platform == "darwin" else raw
    return kb / 1024


def rss_mb() -> float:
    """Current resident set of this process, in MB (0 when unknown)."""
    kb = _proc_status_kb("VmRSS")
    return (kb or 0) / 1024


# -- Python peers -------------------------------------------------------------


def _installed_version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _satisfies(version: str, spec: str) -> bool:
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet

        return version in SpecifierSet(spec)
    except ImportError:
        if spec.startswith("=="):
            return version == spec[2:].strip()
        return True  # cannot judge without `packaging`; take what is there


def ensure_pip(package: str, version_spec: str = "") -> bool:
    """Make ``package`` (e.g. ``"atmst"``, ``"==0.0.6"``) importable here; False on failure."""
    have = _installed_version(package)
    if have is not None and _satisfies(have, version_spec):
        return True
    requirement = f"{package}{version_spec}"
    _say(f"installing {requirement} with pip (have: {have or 'nothing'})")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", requirement],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _say(f"skip: pip install {requirement} failed: {exc}")
        return False
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        _say(f"skip: pip install {requirement} failed: {' | '.join(tail)}")
        return False
    from importlib import invalidate_caches

    invalidate_caches()
    return _installed_version(package) is not None


# -- node peers ---------------------------------------------------------------


def _node_version() -> tuple[int, str] | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    try:
        return int(text.lstrip("v").split(".")[0]), text
    except ValueError:
        return None


def _install_inputs() -> list[Path]:
    names = ("package.json", "package-lock.json")
    return [NODE_SRC_DIR / name for name in names if (NODE_SRC_DIR / name).exists()]


def _inputs_digest() -> str:
    h = hashlib.sha256()
    for p in _install_inputs():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _copy_scripts(dest: Path) -> None:
    # ESM resolves bare imports from the importing file's folder (NODE_PATH is
    # ignored), so the scripts run from a copy next to node_modules.
    for src in NODE_SRC_DIR.glob("*.mjs"):
        target = dest / src.name
        data = src.read_bytes()
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)


def ensure_node_peers() -> Path | None:
    """Install the pinned npm peers under ``benchmarks/.peers/node``; that folder, or None."""
    found = _node_version()
    if found is None:
        _say("skip node peers: `node` is not on PATH")
        return None
    major, text = found
    if major < _MIN_NODE_MAJOR:
        _say(f"skip node peers: node {text} is older than {_MIN_NODE_MAJOR}")
        return None
    npm = shutil.which("npm")
    if npm is None:
        _say("skip node peers: `npm` is not on PATH")
        return None
    if not (NODE_SRC_DIR / "package.json").exists():
        _say(f"skip node peers: {NODE_SRC_DIR / 'package.json'} is missing")
        return None

    dest = NODE_PEERS_DIR
    digest = _inputs_digest()
    stamp = dest / _STAMP
    if (
        stamp.exists()
        and stamp.read_text().strip() == digest
        and (dest / "node_modules" / "@atproto" / "repo").is_dir()
    ):
        _copy_scripts(dest)
        return dest

    dest.mkdir(parents=True, exist_ok=True)
    for p in _install_inputs():
        shutil.copyfile(p, dest / p.name)
    use_ci = (dest / "package-lock.json").exists()
    cmd = [npm, "ci" if use_ci else "install", "--no-audit", "--no-fund", "--loglevel=error"]
    _say(f"running `{' '.join(cmd[1:])}` in {dest}")
    try:
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _say(f"skip node peers: npm failed: {exc}")
        return None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        _say(f"skip node peers: npm exited {proc.returncode}: {' | '.join(tail)}")
        return None
    stamp.write_text(digest + "\n")
    _copy_scripts(dest)
    return dest


def run_node(
    script: str,
    *args: str | int,
    timeout: float = 1800,
    node_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``benchmarks/node/<script>`` with the installed peers; its JSON output.

    The script must print one JSON object on stdout (the last non-empty line is
    parsed). Raises ``PeerError`` when the peers are unavailable, the script
    fails, times out or prints no JSON.
    """
    where = ensure_node_peers()
    if where is None:
        raise PeerError("node peers are not available (reason printed above)")
    node = shutil.which("node")
    assert node is not None
    cmd = [node, *node_args, str(where / script), *map(str, args)]
    try:
        proc = subprocess.run(cmd, cwd=where, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PeerError(f"node {script} timed out after {timeout:.0f} s") from None
    except OSError as exc:
        raise PeerError(f"node {script} could not start: {exc}") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-8:]
        raise PeerError(f"node {script} exited {proc.returncode}: " + "\n".join(tail))
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise PeerError(f"node {script} printed nothing on stdout")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise PeerError(f"node {script} printed no JSON object: {exc}") from None
    if not isinstance(result, dict):
        raise PeerError(f"node {script} printed JSON that is not an object")
    return result


# -- Python children ----------------------------------------------------------


def _child_main(conn: Any, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result = func(*args)
        if result is None:
            result = {}
        elif not isinstance(result, dict):
            result = {"result": result}
        result.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
        conn.send(("ok", result))
    except BaseException as exc:  # report anything, including SystemExit
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))
    finally:
        conn.close()


def run_in_child(func: Callable[..., Any], *args: Any, timeout: float = 1800) -> dict[str, Any]:
    """Run ``func(*args)`` in a fresh interpreter (spawn); its dict plus ``peak_rss_mb``.

    ``func`` must be a module-level function returning a JSON-able dict (or
    None). The child's own peak RSS is added as ``peak_rss_mb`` unless the
    function already set it (e.g. measured before a cleanup step). Raises
    ``PeerError`` when the child fails, dies or times out.
    """
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, func, args), daemon=True)
    started = time.monotonic()
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            raise PeerError(f"{func.__name__} timed out after {timeout:.0f} s")
        status, payload = recv.recv()
    except EOFError:
        proc.join(5)
        raise PeerError(f"{func.__name__} died (exit code {proc.exitcode})") from None
    finally:
        recv.close()
        if proc.is_alive():
            proc.join(10)
        if proc.is_alive():
            proc.terminate()  # only our own child
            proc.join(5)
    if status != "ok":
        raise PeerError(f"{func.__name__} failed: {payload}")
    payload.setdefault("wall_s", round(time.monotonic() - started, 3))
    return dict(payload)


def node_available() -> bool:
    """True when node and npm are on PATH (without installing anything)."""
    return _node_version() is not None and shutil.which("npm") is not None


if __name__ == "__main__":  # a quick self-check: python benchmarks/peers.py
    where = ensure_node_peers()
    print(f"node peers: {where}")
    print(f"this process: peak {peak_rss_mb():.1f} MB")
    if where is not None and os.environ.get("ROOST_PEERS_SMOKE", "1") == "1":
        out = run_node("gen_fixtures.mjs", "--n", "0")
        print(f"@atproto/repo smoke: {out['generator']}, empty data {out['sets'][0]['data_cid']}")
