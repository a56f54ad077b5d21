"""Repository engine: roost vs atmst (PyPI) and @atproto/repo (npm), one run.

Same workload for every implementation (see ``repo_peers.py``): build n
records + one signed commit in memory, export the whole repo as a CAR,
import + fully verify that CAR, then 1,000 single-record signed commits on
top of the n-record repo. Each phase runs in its own child process and
reports its own peak RSS.

Targets (issue "Repository engine"), as ratios in the same run: build >= 5x
faster than @atproto/repo and >= 10x faster than atmst; export and verify at
least as fast as atmst and >= 5x faster than @atproto/repo; single-record
commits on the 100k repo >= 2,000/s; peak RSS of export and of import+verify
of the 100k repo under 300 MB.

    python benchmarks/repo.py                  # n = 10,000 and 100,000
    python benchmarks/repo.py --n 10000 --skip-node
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parent
_ROOT = _BENCH.parent
for _p in (str(_BENCH), str(_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from peers import PeerError, peak_rss_mb, run_in_child  # noqa: E402
from repo_peers import COMMITS, _records, _recipe, _row, _summarise, bench_atmst, bench_atproto_repo  # noqa: E402


def _key() -> Any:
    from roost.crypto import PrivateKey

    return PrivateKey.from_hex(_recipe().FIXTURE_KEY_HEX, "k256")


def _roost_build_export(n: int, car_path: str) -> dict[str, Any]:
    from roost.blockstore import MemoryBlockStore
    from roost.repo import Repo

    r = _recipe()
    key = _key()
    records = _records(0, n)
    rss_before = peak_rss_mb()

    t0 = time.perf_counter()
    repo = Repo.create_from_records(
        MemoryBlockStore(), r.FIXTURE_DID, key, sorted(records, key=lambda x: x[0]), rev=r.FIXTURE_REV
    )
    build_s = time.perf_counter() - t0
    build_rss = peak_rss_mb()

    t0 = time.perf_counter()
    with open(car_path, "wb") as f:
        size = 0
        for chunk in repo.export_car():
            f.write(chunk)
            size += len(chunk)
    export_s = time.perf_counter() - t0
    return {
        "build_s": round(build_s, 4),
        "export_s": round(export_s, 4),
        "car_bytes": size,
        "data_cid": str(repo.tree.cid),
        "commit_cid": str(repo.cid),
        "rss_before_build_mb": round(rss_before, 1),
        "build_peak_rss_mb": round(build_rss, 1),
        "export_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _roost_export_only(n: int, car_path: str) -> dict[str, Any]:
    """Export from a repo loaded off a CAR: the memory of exporting alone."""
    from roost.blockstore import MemoryBlockStore
    from roost.car import read_car_single_root
    from roost.repo import Repo

    root, blocks = read_car_single_root(Path(car_path).read_bytes())
    repo = Repo.load(MemoryBlockStore(blocks), root)
    del blocks
    t0 = time.perf_counter()
    size = sum(len(chunk) for chunk in repo.export_car())
    return {"export_s": round(time.perf_counter() - t0, 4), "car_bytes": size,
            "export_peak_rss_mb": round(peak_rss_mb(), 1)}


def _roost_verify(n: int, car_path: str) -> dict[str, Any]:
    from roost.repo import verify_car

    r = _recipe()
    key = _key().public_key
    t0 = time.perf_counter()
    with open(car_path, "rb") as f:
        summary = verify_car(f, did=r.FIXTURE_DID, key=key)
    verify_s = time.perf_counter() - t0
    if summary.records != n:
        raise ValueError(f"verified {summary.records} records, expected {n}")
    return {
        "verify_s": round(verify_s, 4),
        "records": summary.records,
        "car_bytes": Path(car_path).stat().st_size,
        "verify_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _roost_commits(n: int, car_path: str, count: int) -> dict[str, Any]:
    from roost import cbor
    from roost.blockstore import MemoryBlockStore
    from roost.car import read_car_single_root
    from roost.repo import Repo, Write
    from roost.tid import TidClock

    key = _key()
    root, blocks = read_car_single_root(Path(car_path).read_bytes())
    repo = Repo.load(MemoryBlockStore(blocks), root)
    del blocks
    records = [(path, cbor.from_json(rec)) for path, rec in _records(n, n + count)]
    clock = TidClock()
    loaded_rss = peak_rss_mb()

    t0 = time.perf_counter()
    for path, record in records:
        collection, rkey = path.split("/")
        repo, _data = repo.apply_writes([Write.create(collection, rkey, record)], key, clock=clock)
    commits_s = time.perf_counter() - t0
    return {
        "commits_s": round(commits_s, 4),
        "commits": count,
        "commit_ms": round(commits_s * 1000 / count, 3),
        "data_cid_after": str(repo.tree.cid),
        "loaded_peak_rss_mb": round(loaded_rss, 1),
        "commits_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_roost(n: int, *, commits: int = COMMITS, timeout: float = 3600) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="roost-bench-") as tmp:
        car = str(Path(tmp) / f"roost-{n}.car")
        build = run_in_child(_roost_build_export, n, car, timeout=timeout)
        export = run_in_child(_roost_export_only, n, car, timeout=timeout)
        verify = run_in_child(_roost_verify, n, car, timeout=timeout)
        more = run_in_child(_roost_commits, n, car, commits, timeout=timeout)
    from importlib.metadata import version

    out = _summarise(f"roost {version('roost')}", n, build, verify, more)
    out["peak_rss_mb"]["export (loaded repo)"] = export["export_peak_rss_mb"]
    return out


def _ratio(ours: float, theirs: float) -> str:
    return f"{theirs / ours:6.1f}x" if ours > 0 else "   inf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--commits", type=int, default=COMMITS)
    ap.add_argument("--skip-node", action="store_true", help="leave out @atproto/repo")
    ap.add_argument("--skip-atmst", action="store_true", help="leave out atmst")
    args = ap.parse_args(argv)

    header = (f"{'implementation':<22} {'n':>8} {'build':>8} {'export':>8} {'verify':>8} "
              f"{'commits':>9} {'rss b+e':>8} {'rss ver':>8} {'rss com':>8}")
    results: list[dict[str, Any]] = []
    for n in args.n:
        rows = []
        try:
            ours = bench_roost(n, commits=args.commits)
        except PeerError as exc:
            print(f"roost n={n} failed: {exc}", file=sys.stderr)
            return 1
        rows.append(ours)
        if not args.skip_atmst:
            res = bench_atmst(n, commits=args.commits)
            if res:
                rows.append(res)
        if not args.skip_node:
            res = bench_atproto_repo(n, commits=args.commits)
            if res:
                rows.append(res)
        print(f"\nn = {n:,} records (seconds; peak RSS in MB)")
        print(header)
        for res in rows:
            print(_row(res))
        for res in rows[1:]:
            same = "same" if res["data_cid"] == ours["data_cid"] else "DIFFERENT"
            print(
                f"  roost vs {res['peer']}: build {_ratio(ours['build_s'], res['build_s'])}, "
                f"export {_ratio(ours['export_s'], res['export_s'])}, "
                f"verify {_ratio(ours['verify_s'], res['verify_s'])}, "
                f"commits {_ratio(ours['commits_s'], res['commits_s'])} faster; data CID {same}"
            )
        rate = args.commits / ours["commits_s"] if ours["commits_s"] else float("inf")
        rss = ours["peak_rss_mb"]
        print(f"  roost: {rate:,.0f} single-record commits/s; peak RSS export "
              f"{rss['export (loaded repo)']:.0f} MB, import+verify {rss['verify']:.0f} MB")
        results.extend(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
