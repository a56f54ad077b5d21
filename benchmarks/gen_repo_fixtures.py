"""Generate ``tests/fixtures/repo/recipe-<n>.json`` with the reference implementation.

Runs ``benchmarks/node/gen_fixtures.mjs`` (``@atproto/repo``, pinned in
``benchmarks/node/package.json``) over the roost-recipe-v1 record sets
(``tests/roost/repo_recipes.py``) for n = 0 (the empty repo), 10, 1,000 and
10,000, cross-checks what it reports, and writes one small JSON file per set.

Cross-checks (the script fails, writing nothing, if any disagrees):

- paths and record CIDs: the Python recipe (roost's DAG-CBOR and CID) gives
  the same path and CID for every sampled record, and the same record JSON for
  the n = 10 set;
- commit signature: the unsigned commit is rebuilt in Python (cbrrr), signed
  with coincurve (libsecp256k1, RFC 6979 nonces, low-S) and must give the same
  64 signature bytes and the same commit CID as @atproto/crypto;
- data CIDs: atmst (PyPI, an independent Python MST) must compute the same MST
  root for every set and for both mutations of the 10,000 set, and the same
  number of blocks in a full export.

Usage::

    python benchmarks/gen_repo_fixtures.py            # regenerate and check
    python benchmarks/gen_repo_fixtures.py --check    # check only, write nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parent
_ROOT = _BENCH.parent
for _p in (str(_BENCH), str(_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from peers import PeerError, ensure_pip, run_node  # noqa: E402

FIXTURE_DIR = _ROOT / "tests" / "fixtures" / "repo"
SIZES = (0, 10, 1_000, 10_000)
MUTATE = 10_000
ALL_RECORDS_UP_TO = 10
MAX_FIXTURE_BYTES = 50_000


class Mismatch(AssertionError):
    pass


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise Mismatch(what)


def check_recipe(s: dict[str, Any]) -> None:
    """Node's paths/CIDs/records against the Python recipe (roost's codec)."""
    from tests.roost import repo_recipes as r

    index_of = {r.recipe_path(i): i for i in range(s["n"])}
    for path, cid in s["sample_records"]:
        _check(path in index_of, f"n={s['n']}: sampled path {path} is not in the recipe")
        i = index_of[path]
        py_path, record = r.recipe_record(i)
        _check(py_path == path, f"record {i}: path {py_path} != {path}")
        _check(str(r.record_cid(record)) == cid, f"record {i}: CID differs from the Python recipe")
    for rec in s.get("records", []):
        py_path, record = r.recipe_record(rec["index"])
        _check(py_path == rec["path"], f"record {rec['index']}: path differs")
        _check(record == rec["record"], f"record {rec['index']}: JSON {record} != {rec['record']}")
        _check(str(r.record_cid(record)) == rec["cid"], f"record {rec['index']}: CID differs")
    mut = s.get("mutations")
    if mut:
        for path, cid in mut["sample_records_after_updates"]:
            i = index_of[path]
            if r.is_deleted(i):
                _check(cid is None, f"record {i} should be deleted")
            elif r.is_updated(i):
                edited = str(r.record_cid(r.edited_record(i)))
                _check(cid == edited, f"record {i}: edited CID differs")
            else:
                _check(cid == str(r.record_cid(r.recipe_record(i)[1])), f"record {i}: CID differs")


def check_commit(s: dict[str, Any], key_hex: str) -> str:
    """Re-sign the commit with coincurve; 'identical' or raise."""
    from cbrrr import CID, encode_dag_cbor
    from coincurve import PrivateKey

    c = s["commit"]
    unsigned = {
        "did": c["did"],
        "version": 3,
        "data": CID.decode(s["data_cid"]),
        "rev": c["rev"],
        "prev": None,
    }
    msg = encode_dag_cbor(unsigned)
    priv = PrivateKey(bytes.fromhex(key_hex))
    sig = priv.sign_recoverable(msg, hasher=lambda m: hashlib.sha256(m).digest())[:64]
    # the JS signature must verify in any case, whether or not the bytes match
    from coincurve.ecdsa import cdata_to_der, deserialize_compact

    js_sig = bytes.fromhex(c["sig_hex"])
    ok = priv.public_key.verify(
        cdata_to_der(deserialize_compact(js_sig)), msg, hasher=lambda m: hashlib.sha256(m).digest()
    )
    _check(ok, f"n={s['n']}: the @atproto/crypto signature does not verify with coincurve")
    _check(sig == js_sig, f"n={s['n']}: coincurve signature {sig.hex()} != {c['sig_hex']}")
    signed = encode_dag_cbor({**unsigned, "sig": sig})
    cid = CID.cidv1_dag_cbor_sha256_32_from(signed).encode("base32")
    _check(cid == c["cid"], f"n={s['n']}: commit CID {cid} != {c['cid']}")
    return "identical"


def _atmst_root(items: list[tuple[str, dict[str, Any]]]) -> tuple[Any, Any]:
    from atmst.blockstore import MemoryBlockStore
    from atmst.mst.node_store import NodeStore
    from atmst.mst.node_wrangler import NodeWrangler
    from cbrrr import CID, encode_dag_cbor

    ns = NodeStore(MemoryBlockStore())
    wrangler = NodeWrangler(ns)
    root = ns.get_node(None).cid
    for path, record in items:
        cid = CID.cidv1_dag_cbor_sha256_32_from(encode_dag_cbor(record))
        root = wrangler.put_record(root, path, cid)
    return ns, root


def check_atmst(s: dict[str, Any]) -> str:
    """atmst's MST root (and export block count) for the same set."""
    from atmst.mst.node_walker import NodeWalker

    from tests.roost import repo_recipes as r

    n = s["n"]
    ns, root = _atmst_root(list(r.recipe_records(n)))
    got = root.encode("base32")
    _check(got == s["data_cid"], f"n={n}: atmst data CID {got} != {s['data_cid']}")
    nodes = sum(1 for _ in NodeWalker(ns, root).iter_nodes())
    _check(nodes + n + 1 == s["block_count"],
           f"n={n}: atmst counts {nodes} MST nodes + {n} records + 1 commit != {s['block_count']}")
    mut = s.get("mutations")
    if mut:
        _ns, root = _atmst_root(list(r.mutated_records(n, updates=False)))
        got = root.encode("base32")
        _check(got == mut["data_cid_after_deletes"], f"n={n}: atmst after deletes: {got}")
        _ns, root = _atmst_root(list(r.mutated_records(n, updates=True)))
        got = root.encode("base32")
        _check(got == mut["data_cid_after_updates"], f"n={n}: atmst after updates: {got}")
    return "agrees"


def fixture_for(s: dict[str, Any], gen: dict[str, Any], checks: dict[str, str]) -> dict[str, Any]:
    c = s["commit"]
    out: dict[str, Any] = {
        "description": (
            "roost-recipe-v1 record set (rules and Python generator: tests/roost/repo_recipes.py), "
            "built with the reference implementation by benchmarks/gen_repo_fixtures.py. "
            "data_cid is the MST root; block_count and car_size describe a full CAR export "
            "(commit + every MST node + every record, one root)."
        ),
        "generator": gen["generator"],
        "crypto": gen["crypto"],
        "recipe": gen["recipe"],
        "n": s["n"],
        "data_cid": s["data_cid"],
        "commit": {
            "did": c["did"],
            "version": c["version"],
            "rev": c["rev"],
            "prev": None,
            "signing_key_hex": gen["signing_key_hex"],
            "signing_did_key": gen["signing_did_key"],
            "cid": c["cid"],
            "sig_hex": c["sig_hex"],
        },
        "block_count": s["block_count"],
        "mst_node_count": s["block_count"] - s["n"] - 1,
        "car_size": s["car_size"],
        "sample_records": s["sample_records"],
    }
    if "records" in s:
        out["records"] = s["records"]
    if "mutations" in s:
        out["mutations"] = s["mutations"]
    out["cross_checks"] = checks
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate the repo fixtures with @atproto/repo.")
    ap.add_argument("--check", action="store_true", help="run and cross-check, write nothing")
    ap.add_argument("--out", type=Path, default=FIXTURE_DIR)
    args = ap.parse_args(argv)

    if not ensure_pip("atmst", "==0.0.6"):
        print("cannot cross-check without atmst 0.0.6", file=sys.stderr)
        return 2
    from importlib.metadata import version

    try:
        gen = run_node(
            "gen_fixtures.mjs",
            "--n", ",".join(map(str, SIZES)),
            "--mutate", str(MUTATE),
            "--all-records", str(ALL_RECORDS_UP_TO),
            timeout=1800,
        )
    except PeerError as exc:
        print(f"cannot generate fixtures: {exc}", file=sys.stderr)
        return 2

    from tests.roost import repo_recipes as r

    _check(gen["recipe"] == r.RECIPE, "recipe name differs")
    _check(gen["signing_key_hex"] == r.FIXTURE_KEY_HEX, "signing key differs")
    _check(r.FIXTURE_KEY_HEX == hashlib.sha256(b"roost fixture key").hexdigest(), "key rule")

    fixtures = {}
    try:
        for s in gen["sets"]:
            _check(s["commit"]["did"] == r.FIXTURE_DID and s["commit"]["rev"] == r.FIXTURE_REV,
                   "commit did/rev differ from the recipe")
            check_recipe(s)
            checks = {
                "python_recipe": "paths, record JSON and record CIDs agree (roost.cbor, roost.cid)",
                "commit_signature": f"coincurve {version('coincurve')}: "
                + check_commit(s, gen["signing_key_hex"])
                + " signature bytes and commit CID",
                "data_cid": f"atmst {version('atmst')}: " + check_atmst(s)
                + (" (also after both mutations)" if "mutations" in s else ""),
            }
            fixtures[s["n"]] = fixture_for(s, gen, checks)
            print(f"n={s['n']:>6}: data {s['data_cid']}  commit {s['commit']['cid']}  "
                  f"blocks {s['block_count']}  checks ok", flush=True)
    except Mismatch as exc:
        print(f"MISMATCH: {exc}", file=sys.stderr)
        return 1

    if args.check:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, fx in fixtures.items():
        text = json.dumps(fx, indent=1, ensure_ascii=False) + "\n"
        size = len(text.encode())
        _check(size < MAX_FIXTURE_BYTES, f"recipe-{n}.json would be {size} bytes")
        path = args.out / f"recipe-{n}.json"
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(_ROOT)} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
