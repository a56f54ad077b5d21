"""Repo benchmark, peer side: atmst (PyPI) and @atproto/repo (npm) on the same workload.

Workload for ``n`` records of the roost-recipe-v1 set (``tests/roost/repo_recipes.py``):

- **build**: n records + one signed commit, in memory (record values are
  prepared beforehand; encoding them is part of the build);
- **export**: the whole repo as CAR bytes (commit, every MST node, every record),
  timed twice: right after the build (``export_s``) and from a repo loaded from
  that CAR in a fresh process (``export_loaded_s``, the getRepo case; its peak
  RSS is not inflated by the build);
- **verify**: CAR import + full verification: parse, check every block's hash,
  walk the MST (structure checks), require every record block, verify the
  commit signature;
- **commits**: 1,000 single-record commits on top of the n-record repo (each
  creates one record, updates the MST, works out the new blocks, signs a commit).

Each phase runs in its own child process (a fresh interpreter, or node), so
each peak RSS (``VmHWM``, MB) is that phase's own: build+export share one
process (the export needs the built repo in memory); the loaded export, verify
and commits start from the CAR file written by the build. Times are seconds of
wall clock; ``peak_rss_mb`` holds ``build``, ``build+export``,
``export (loaded repo)``, ``verify``, ``commits`` and ``baseline`` (the
process with its inputs ready, before the timed work).

Usage::

    python benchmarks/repo_peers.py                 # n = 10,000 and 100,000
    python benchmarks/repo_peers.py --n 1000 --json

From Python: ``bench_atmst(n)`` and ``bench_atproto_repo(n)`` return a dict,
or None (with the reason printed) when the peer cannot run.

atmst side, per its public API (0.0.6): ``MemoryBlockStore``, ``NodeStore``,
``NodeWrangler.put_record`` for the tree, ``NodeWalker`` for walks,
``ReadOnlyCARBlockStore`` to read CARs, ``mst_diff`` for the blocks of a
commit; commits are DAG-CBOR (cbrrr) signed with coincurve (SHA-256 ECDSA,
RFC 6979, low-S, 64-byte r||s).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
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

from peers import (  # noqa: E402
    PeerError,
    ensure_node_peers,
    ensure_pip,
    peak_rss_mb,
    run_in_child,
    run_node,
)

__all__ = ["bench_atmst", "bench_atproto_repo", "COMMITS"]

ATMST_SPEC = "==0.0.6"
COMMITS = 1000
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


# -- shared bits (run inside the children) -------------------------------------


def _recipe() -> Any:
    from tests.roost import repo_recipes

    return repo_recipes


def _records(start: int, stop: int) -> list[tuple[str, dict[str, Any]]]:
    r = _recipe()
    return [r.recipe_record(i) for i in range(start, stop)]


def _sign(priv: Any, msg: bytes) -> bytes:
    # libsecp256k1 signs with RFC 6979 nonces and emits low-S: r||s is the first 64 bytes
    sig: bytes = priv.sign_recoverable(msg, hasher=lambda m: hashlib.sha256(m).digest())[:64]
    return sig


def _verify(pub: Any, sig: bytes, msg: bytes) -> bool:
    from coincurve.ecdsa import cdata_to_der, deserialize_compact

    if len(sig) != 64 or int.from_bytes(sig[32:], "big") > _SECP256K1_N // 2:
        return False
    der = cdata_to_der(deserialize_compact(sig))
    return bool(pub.verify(der, msg, hasher=lambda m: hashlib.sha256(m).digest()))


def _signed_commit(priv: Any, did: str, data: Any, rev: str) -> tuple[Any, bytes]:
    from cbrrr import CID, encode_dag_cbor

    commit: dict[str, Any] = {"did": did, "version": 3, "data": data, "rev": rev, "prev": None}
    commit["sig"] = _sign(priv, encode_dag_cbor(commit))
    block = encode_dag_cbor(commit)
    return CID.cidv1_dag_cbor_sha256_32_from(block), block


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


# -- atmst children ------------------------------------------------------------


def _atmst_car(ns: Any, bs: Any, commit_cid: Any, commit_block: bytes, root: Any) -> bytes:
    """A full export: header, commit, then MST nodes pre-order with their records."""
    from atmst.mst.node_walker import NodeWalker
    from cbrrr import encode_dag_cbor

    out = io.BytesIO()
    header = encode_dag_cbor({"version": 1, "roots": [commit_cid]})
    out.write(_varint(len(header)) + header)

    def put(cid: Any, block: bytes) -> None:
        raw = bytes(cid)
        out.write(_varint(len(raw) + len(block)))
        out.write(raw)
        out.write(block)

    put(commit_cid, commit_block)
    seen: set[Any] = set()
    for node in NodeWalker(ns, root).iter_nodes():
        put(node.cid, node.serialised)
        for val in node.vals:
            if val not in seen:
                seen.add(val)
                put(val, bs.get_block(bytes(val)))
    return out.getvalue()


def _atmst_build_export(n: int, car_path: str) -> dict[str, Any]:
    from atmst.blockstore import MemoryBlockStore
    from atmst.mst.node_store import NodeStore
    from atmst.mst.node_wrangler import NodeWrangler
    from cbrrr import CID, encode_dag_cbor
    from coincurve import PrivateKey

    r = _recipe()
    priv = PrivateKey(bytes.fromhex(r.FIXTURE_KEY_HEX))
    records = _records(0, n)
    rss_before = peak_rss_mb()

    t0 = time.perf_counter()
    bs = MemoryBlockStore()
    ns = NodeStore(bs)
    wrangler = NodeWrangler(ns)
    root = ns.get_node(None).cid
    for path, record in records:
        block = encode_dag_cbor(record)
        cid = CID.cidv1_dag_cbor_sha256_32_from(block)
        bs.put_block(bytes(cid), block)
        root = wrangler.put_record(root, path, cid)
    commit_cid, commit_block = _signed_commit(priv, r.FIXTURE_DID, root, r.FIXTURE_REV)
    bs.put_block(bytes(commit_cid), commit_block)
    build_s = time.perf_counter() - t0
    build_rss = peak_rss_mb()

    t0 = time.perf_counter()
    car = _atmst_car(ns, bs, commit_cid, commit_block, root)
    export_s = time.perf_counter() - t0
    export_rss = peak_rss_mb()

    Path(car_path).write_bytes(car)
    return {
        "build_s": round(build_s, 4),
        "export_s": round(export_s, 4),
        "car_bytes": len(car),
        "data_cid": root.encode("base32"),
        "commit_cid": commit_cid.encode("base32"),
        "rss_before_build_mb": round(rss_before, 1),
        "build_peak_rss_mb": round(build_rss, 1),
        "export_peak_rss_mb": round(export_rss, 1),
    }


def _atmst_export_only(n: int, car_path: str) -> dict[str, Any]:
    """Export a repo loaded from the CAR (no build garbage in memory): time and RSS."""
    from atmst.blockstore import MemoryBlockStore
    from atmst.blockstore.car_file import ReadOnlyCARBlockStore
    from atmst.mst.node_store import NodeStore
    from cbrrr import decode_dag_cbor

    car = ReadOnlyCARBlockStore(io.BytesIO(Path(car_path).read_bytes()))
    bs = MemoryBlockStore({key: car.get_block(key) for key in car.block_offsets})
    commit_cid = car.car_root
    del car
    commit_block = bs.get_block(bytes(commit_cid))
    root = decode_dag_cbor(commit_block)["data"]
    ns = NodeStore(bs)
    loaded_rss = peak_rss_mb()

    t0 = time.perf_counter()
    out = _atmst_car(ns, bs, commit_cid, commit_block, root)
    export_s = time.perf_counter() - t0
    return {
        "export_s": round(export_s, 4),
        "car_bytes": len(out),
        "loaded_peak_rss_mb": round(loaded_rss, 1),
        "export_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _atmst_verify(n: int, car_path: str) -> dict[str, Any]:
    from atmst.blockstore import MemoryBlockStore
    from atmst.blockstore.car_file import ReadOnlyCARBlockStore
    from atmst.mst.node_store import NodeStore
    from atmst.mst.node_walker import NodeWalker
    from cbrrr import decode_dag_cbor, encode_dag_cbor
    from coincurve import PrivateKey

    r = _recipe()
    pub = PrivateKey(bytes.fromhex(r.FIXTURE_KEY_HEX)).public_key  # the DID doc's key, in effect
    data = Path(car_path).read_bytes()

    t0 = time.perf_counter()
    car = ReadOnlyCARBlockStore(io.BytesIO(data), validate_hashes=True)
    # every block once: get_block checks its SHA-256 against the CID
    blocks = {key: car.get_block(key) for key in car.block_offsets}
    commit = decode_dag_cbor(blocks[bytes(car.car_root)])
    if commit.get("did") != r.FIXTURE_DID or commit.get("version") != 3:
        raise ValueError("unexpected commit")
    unsigned = {k: v for k, v in commit.items() if k != "sig"}
    if not _verify(pub, commit["sig"], encode_dag_cbor(unsigned)):
        raise ValueError("bad commit signature")
    ns = NodeStore(MemoryBlockStore(blocks))
    count = 0
    for _key, val in NodeWalker(ns, commit["data"]).iter_kv():  # untrusted walk: layer checks
        if bytes(val) not in blocks:
            raise ValueError(f"missing record block {val.encode('base32')}")
        count += 1
    verify_s = time.perf_counter() - t0
    if count != n:
        raise ValueError(f"walked {count} records, expected {n}")
    return {
        "verify_s": round(verify_s, 4),
        "records": count,
        "car_bytes": len(data),
        "verify_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _atmst_commits(n: int, car_path: str, count: int) -> dict[str, Any]:
    from atmst.blockstore import MemoryBlockStore
    from atmst.blockstore.car_file import ReadOnlyCARBlockStore
    from atmst.mst.diff import mst_diff
    from atmst.mst.node_store import NodeStore
    from atmst.mst.node_wrangler import NodeWrangler
    from atmst.mst.proof import build_inclusion_proof
    from cbrrr import CID, decode_dag_cbor, encode_dag_cbor
    from coincurve import PrivateKey

    r = _recipe()
    priv = PrivateKey(bytes.fromhex(r.FIXTURE_KEY_HEX))
    car = ReadOnlyCARBlockStore(io.BytesIO(Path(car_path).read_bytes()))
    bs = MemoryBlockStore({key: car.get_block(key) for key in car.block_offsets})
    commit = decode_dag_cbor(bs.get_block(bytes(car.car_root)))
    del car
    ns = NodeStore(bs)
    wrangler = NodeWrangler(ns)
    root = commit["data"]
    last_us = 0
    records = _records(n, n + count)
    loaded_rss = peak_rss_mb()

    t0 = time.perf_counter()
    for path, record in records:
        block = encode_dag_cbor(record)
        cid = CID.cidv1_dag_cbor_sha256_32_from(block)
        bs.put_block(bytes(cid), block)
        new_root = wrangler.put_record(root, path, cid)
        created, _deleted = mst_diff(ns, root, new_root)  # the commit's new MST blocks
        build_inclusion_proof(ns, new_root, path)  # blocks proving the write
        last_us = max(time.time_ns() // 1000, last_us + 1)  # rev: a TID, strictly increasing
        commit_cid, commit_block = _signed_commit(
            priv, r.FIXTURE_DID, new_root, r.tid_string(last_us, 0)
        )
        bs.put_block(bytes(commit_cid), commit_block)
        root = new_root
    commits_s = time.perf_counter() - t0
    return {
        "commits_s": round(commits_s, 4),
        "commits": count,
        "commit_ms": round(commits_s * 1000 / count, 3),
        "data_cid_after": root.encode("base32"),
        "loaded_peak_rss_mb": round(loaded_rss, 1),
        "commits_peak_rss_mb": round(peak_rss_mb(), 1),
    }


# -- drivers --------------------------------------------------------------------


def _summarise(peer: str, n: int, build: dict[str, Any], verify: dict[str, Any],
               commits: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"peer": peer, "n": n}
    for key in ("build_s", "export_s", "car_bytes", "data_cid", "commit_cid"):
        out[key] = build[key]
    out["verify_s"] = verify["verify_s"]
    out["commits_s"] = commits["commits_s"]
    out["commit_ms"] = commits["commit_ms"]
    out["data_cid_after_commits"] = commits["data_cid_after"]
    out["peak_rss_mb"] = {
        "build": build["build_peak_rss_mb"],
        "build+export": build["export_peak_rss_mb"],
        "verify": verify["verify_peak_rss_mb"],
        "commits": commits["commits_peak_rss_mb"],
        "baseline": build["rss_before_build_mb"],
    }
    return out


def _add_loaded_export(out: dict[str, Any], export: dict[str, Any]) -> None:
    # the same export, from a repo loaded from the CAR (a PDS serving getRepo)
    out["export_loaded_s"] = export["export_s"]
    out["peak_rss_mb"]["export (loaded repo)"] = export["export_peak_rss_mb"]


def bench_atmst(n: int, *, commits: int = COMMITS, timeout: float = 3600) -> dict[str, Any] | None:
    """atmst figures for n records (seconds, MB); None with a printed reason if it cannot run."""
    if not ensure_pip("atmst", ATMST_SPEC) or not ensure_pip("coincurve", ">=20"):
        print("skip atmst: could not install atmst/coincurve", file=sys.stderr)
        return None
    from importlib.metadata import version

    try:
        with tempfile.TemporaryDirectory(prefix="roost-bench-") as tmp:
            car = str(Path(tmp) / f"atmst-{n}.car")
            build = run_in_child(_atmst_build_export, n, car, timeout=timeout)
            export = run_in_child(_atmst_export_only, n, car, timeout=timeout)
            verify = run_in_child(_atmst_verify, n, car, timeout=timeout)
            more = run_in_child(_atmst_commits, n, car, commits, timeout=timeout)
    except PeerError as exc:
        print(f"skip atmst n={n}: {exc}", file=sys.stderr)
        return None
    out = _summarise(f"atmst {version('atmst')}", n, build, verify, more)
    _add_loaded_export(out, export)
    return out


def bench_atproto_repo(
    n: int, *, commits: int = COMMITS, timeout: float = 3600
) -> dict[str, Any] | None:
    """@atproto/repo figures for n records; None with a printed reason if it cannot run."""
    if ensure_node_peers() is None:
        print("skip @atproto/repo: node peers unavailable", file=sys.stderr)
        return None
    # a 100k-record build needs more than node's default old-space limit on small machines
    node_args = ("--max-old-space-size=8192",)
    try:
        with tempfile.TemporaryDirectory(prefix="roost-bench-") as tmp:
            car = str(Path(tmp) / f"atproto-{n}.car")
            build = run_node("bench_repo.mjs", "build", "--n", n, "--car", car,
                             timeout=timeout, node_args=node_args)
            export = run_node("bench_repo.mjs", "export", "--n", n, "--car", car,
                              timeout=timeout, node_args=node_args)
            verify = run_node("bench_repo.mjs", "verify", "--n", n, "--car", car,
                              timeout=timeout, node_args=node_args)
            more = run_node("bench_repo.mjs", "commits", "--n", n, "--car", car,
                            "--count", commits, timeout=timeout, node_args=node_args)
    except PeerError as exc:
        print(f"skip @atproto/repo n={n}: {exc}", file=sys.stderr)
        return None
    out = _summarise(build["peer"], n, build, verify, more)
    _add_loaded_export(out, export)
    return out


def _row(res: dict[str, Any]) -> str:
    rss = res["peak_rss_mb"]
    return (
        f"{res['peer']:<22} {res['n']:>8,} {res['build_s']:>8.2f} {res['export_s']:>8.2f} "
        f"{res['verify_s']:>8.2f} {res['commits_s']:>9.2f} "
        f"{rss['build+export']:>8.0f} {rss['verify']:>8.0f} {rss['commits']:>8.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--commits", type=int, default=COMMITS)
    ap.add_argument("--peer", choices=["atmst", "atproto", "both"], default="both")
    ap.add_argument("--json", action="store_true", help="print the results as JSON lines")
    args = ap.parse_args(argv)

    results = []
    for n in args.n:
        for name, fn in (("atmst", bench_atmst), ("atproto", bench_atproto_repo)):
            if args.peer not in (name, "both"):
                continue
            res = fn(n, commits=args.commits)
            if res is not None:
                results.append(res)
                if args.json:
                    print(json.dumps(res), flush=True)
    if not args.json:
        print(f"{'peer':<22} {'n':>8} {'build s':>8} {'export s':>8} {'verify s':>8} "
              f"{args.commits:>5} cmt s {'RSS b+e':>8} {'RSS ver':>8} {'RSS cmt':>8}")
        for res in results:
            print(_row(res))
        for res in results:
            print(f"{res['peer']} n={res['n']:,}: export of a repo loaded from CAR "
                  f"{res['export_loaded_s']:.2f} s, peak RSS "
                  f"{res['peak_rss_mb']['export (loaded repo)']:.0f} MB")
        by_n: dict[int, set[str]] = {}
        for res in results:
            by_n.setdefault(res["n"], set()).add(res["data_cid"])
        for n, cids in by_n.items():
            if len(cids) > 1:
                print(f"WARNING: peers disagree on the data CID for n={n}: {sorted(cids)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
