"""Ops built by roost, checked by the reference did:plc library (@did-plc/lib from npm).

The pinned package (tests/plc/node/package.json) is installed once into
tests/plc/node/node_modules (gitignored); a stamp file there keeps re-runs
fast. Skipped, with the reason, when node or npm is missing or the install
fails. The node script (tests/plc/node/check_ops.mjs) derives each DID,
recomputes the CIDs, replays the ops through ``assureValidNextOp`` as a
directory would (including a recovery), checks who signed what with
``assureValidSig`` and the final state with ``validateOperationLog``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plc.app import create_app
from plc.config import PlcConfig
from roost.crypto import PrivateKey
from roost.plc import (
    Op,
    PlcClient,
    build_genesis,
    build_tombstone,
    build_update,
    did_for_genesis,
    op_cid,
    parse_op,
    sign_op,
    state_from_op,
)
from tests.plc.test_ops import LEGACY_GENESIS
from tests.servers import serve

NODE_DIR = Path(__file__).resolve().parent / "node"
STAMP = NODE_DIR / "node_modules" / ".roost-install-stamp"
INSTALL_TIMEOUT = 600

K0 = PrivateKey.from_hex("b1" * 32, "k256")
K1 = PrivateKey.from_hex("b2" * 32, "k256")
P0 = PrivateKey.from_hex("b3" * 32, "p256")
P1 = PrivateKey.from_hex("b4" * 32, "p256")
SIGNING_K = PrivateKey.from_hex("b5" * 32, "k256")
SIGNING_P = PrivateKey.from_hex("b6" * 32, "p256")


def _skip(reason: str) -> None:
    print(f"skipping reference-library check: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm_bin is None:
        _skip("node and npm are needed to run @did-plc/lib")
    assert node_bin is not None and npm_bin is not None
    version = subprocess.run(
        [node_bin, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    stamp = hashlib.sha256((NODE_DIR / "package.json").read_bytes()).hexdigest() + " " + version
    if not STAMP.exists() or STAMP.read_text() != stamp:
        try:
            result = subprocess.run(
                [
                    npm_bin,
                    "install",
                    "--no-package-lock",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            _skip(f"npm install failed: {exc}")
        if result.returncode != 0:
            _skip(f"npm install failed ({result.returncode}): {result.stderr.strip()[-500:]}")
        STAMP.write_text(stamp)
    yield node_bin


def run_checks(node: str, cases: list[dict[str, Any]]) -> dict[str, list[str]]:
    result = subprocess.run(
        [node, str(NODE_DIR / "check_ops.mjs")],
        input=json.dumps({"cases": cases}),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NODE_DIR,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {r["name"]: r["errors"] for r in json.loads(result.stdout)["results"]}


def case(name: str, did: str, ops: list[Op], signers: list[PrivateKey | None], chain: list[int],
         nullified: dict[int, list[str]] | None = None) -> dict[str, Any]:  # fmt: skip
    last = ops[chain[-1]]
    state = state_from_op(did, last)
    return {
        "name": name,
        "did": did,
        "ops": [op.to_json() for op in ops],
        "cids": [op_cid(op) for op in ops],
        "signers": [k.public_key.did_key() if k is not None else None for k in signers],
        "chain": chain,
        "data": state.to_json() if state is not None else None,
        "nullified": {str(i): cids for i, cids in (nullified or {}).items()},
    }


def chain_of(keys: list[PrivateKey], signing: PrivateKey, steps: list[tuple[PrivateKey, dict[str, Any]]],
             tombstone_with: PrivateKey | None = None) -> tuple[str, list[Op], list[PrivateKey | None]]:  # fmt: skip
    genesis = sign_op(build_genesis(rotation_keys=keys, signing_key=signing, handle="alice.test",
                                    pds_endpoint="https://pds.example.com"), keys[0])  # fmt: skip
    ops: list[Op] = [genesis]
    signers: list[PrivateKey | None] = [keys[0]]
    for key, changes in steps:
        ops.append(sign_op(build_update(ops[-1], op_cid(ops[-1]), **changes), key))
        signers.append(key)
    if tombstone_with is not None:
        ops.append(sign_op(build_tombstone(op_cid(ops[-1])), tombstone_with))
        signers.append(tombstone_with)
    return did_for_genesis(genesis), ops, signers


def built_offline() -> list[dict[str, Any]]:
    cases = []
    did, ops, signers = chain_of(
        [K0, P0],
        SIGNING_K,
        [
            (P0, {"handle": "bob.test"}),
            (K0, {"rotation_keys": [P1, K1], "signing_key": SIGNING_P}),
            (P1, {"pds_endpoint": "https://pds2.example.com"}),
            (K1, {"also_known_as": ["at://carol.test", "https://carol.example"]}),
        ],
    )
    cases.append(case("k256+p256 chain", did, ops, signers, list(range(len(ops)))))
    did, ops, signers = chain_of([P0], SIGNING_P, [(P0, {"handle": "p.test"})], tombstone_with=P0)
    cases.append(case("p256 chain + tombstone", did, ops, signers, list(range(len(ops)))))

    # Recovery: K1 (rotation index 1) rewrites, K0 (index 0) forks at genesis.
    did, ops, signers = chain_of(
        [K0, K1], SIGNING_K, [(K1, {"handle": "evil.test", "rotation_keys": [K1]})]
    )
    recovery = sign_op(build_update(ops[0], op_cid(ops[0]), handle="alice.test"), K0)
    cases.append(
        case(
            "recovery",
            did,
            [*ops, recovery],
            [*signers, K0],
            [0, 2],
            nullified={2: [op_cid(ops[1])]},
        )
    )
    legacy = parse_op(LEGACY_GENESIS)
    cases.append(case("legacy create", did_for_genesis(legacy), [legacy], [None], [0]))
    return cases


@pytest.fixture(scope="module")
def built_by_client(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Ops made by PlcClient against a live roost directory, read back from /log."""
    import asyncio

    config = PlcConfig(data_dir=tmp_path_factory.mktemp("plc"))

    async def build(url: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=10) as http, PlcClient(url, http) as client:
            did, _ = await client.create_did(
                SIGNING_K, [K0, P0], "client.test", "https://pds.example.com"
            )
            await client.update(did, P0, handle="renamed.test")
            await client.update(did, K0, rotation_keys=[P1, K0], signing_key=SIGNING_P)
            await client.update(did, P1, pds_endpoint="https://moved.example.com")
            ops = await client.get_log(did)
            did2, _ = await client.create_did(
                SIGNING_P, [P0], "gone.test", "https://pds.example.com"
            )
            await client.tombstone(did2, P0)
            ops2 = await client.get_log(did2)
        return [
            case("client chain", did, ops, [K0, P0, K0, P1], list(range(len(ops)))),
            case("client tombstone", did2, ops2, [P0, P0], [0, 1]),
        ]

    with serve(create_app(config)) as url:
        return asyncio.run(build(url))


def test_reference_library_accepts_roost_ops(
    node: str, built_by_client: list[dict[str, Any]]
) -> None:
    cases = built_offline() + built_by_client
    results = run_checks(node, cases)
    assert set(results) == {c["name"] for c in cases}
    failures = {name: errors for name, errors in results.items() if errors}
    assert not failures, json.dumps(failures, indent=2)


def test_reference_library_rejects_tampered_ops(node: str) -> None:
    """The check is not vacuous: ops altered after signing fail in the reference too."""
    did, ops, signers = chain_of([K0, P0], SIGNING_K, [(P0, {"handle": "bob.test"})])
    good = case("tampered", did, ops, signers, [0, 1])
    good["ops"][1] = {**good["ops"][1], "alsoKnownAs": ["at://mallory.test"]}
    forged_sig = case("forged", did, ops, signers, [0, 1])
    outsider = PrivateKey.from_hex("bf" * 32, "k256")
    forged_sig["ops"][1] = sign_op(
        build_update(ops[0], op_cid(ops[0]), handle="x.test"), outsider
    ).to_json()
    wrong_did = case("wrong did", "did:plc:" + "a" * 24, ops, signers, [0, 1])
    results = run_checks(node, [good, forged_sig, wrong_did])
    assert any("assureValidNextOp" in e or "Signature" in e for e in results["tampered"])
    assert any("assureValidNextOp" in e for e in results["forged"])
    assert any("didForCreateOp" in e for e in results["wrong did"])
