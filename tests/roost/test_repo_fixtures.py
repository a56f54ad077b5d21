"""Root CIDs, commits and exports agree with the reference implementation.

The fixtures in tests/fixtures/repo/ were produced by @atproto/repo from the
record recipe in repo_recipes.py (see benchmarks/gen_repo_fixtures.py).
Signatures are deterministic (RFC 6979) on both sides, so the signed commit
must match byte for byte too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roost import cbor
from roost.blockstore import MemoryBlockStore
from roost.car import read_car_single_root
from roost.cid import CID
from roost.crypto import PrivateKey
from roost.mst import MST, NodeStore
from roost.repo import Repo, Write, verify_car
from tests.roost import repo_recipes as recipe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "repo"
SETS = sorted(FIXTURES.glob("recipe-*.json"), key=lambda p: int(p.stem.split("-")[1]))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def build(n: int) -> Repo:
    key = PrivateKey.from_hex(recipe.FIXTURE_KEY_HEX, "k256")
    records = sorted((path, cbor.from_json(rec)) for path, rec in recipe.recipe_records(n))
    return Repo.create_from_records(
        MemoryBlockStore(), recipe.FIXTURE_DID, key, records, rev=recipe.FIXTURE_REV
    )


@pytest.fixture(scope="module", params=SETS, ids=lambda p: p.stem)
def built(request: pytest.FixtureRequest) -> tuple[dict, Repo]:
    fixture = load(request.param)
    return fixture, build(fixture["n"])


def test_fixture_sets_present() -> None:
    assert {load(p)["n"] for p in SETS} >= {0, 10, 1000, 10000}


def test_data_cid_matches_reference(built: tuple[dict, Repo]) -> None:
    fixture, repo = built
    assert str(repo.tree.cid) == fixture["data_cid"]


def test_signed_commit_matches_reference(built: tuple[dict, Repo]) -> None:
    fixture, repo = built
    commit = fixture["commit"]
    assert repo.commit.sig.hex() == commit["sig_hex"]
    assert str(repo.cid) == commit["cid"]
    assert repo.rev == commit["rev"] and repo.did == commit["did"]
    assert PrivateKey.from_hex(commit["signing_key_hex"], "k256").public_key.did_key() == commit["signing_did_key"]


def test_export_matches_reference_shape(built: tuple[dict, Repo]) -> None:
    fixture, repo = built
    car = b"".join(repo.export_car())
    root, blocks = read_car_single_root(car)
    assert root == repo.cid
    assert len(blocks) == fixture["block_count"]
    assert sum(1 for _ in repo.tree.nodes()) == fixture.get("mst_node_count", sum(1 for _ in repo.tree.nodes()))
    if "car_size" in fixture:
        assert len(car) == fixture["car_size"]
    key = PrivateKey.from_hex(recipe.FIXTURE_KEY_HEX, "k256").public_key
    summary = verify_car(car, did=recipe.FIXTURE_DID, key=key)
    assert summary.records == fixture["n"] and str(summary.data_cid) == fixture["data_cid"]


def test_sample_records(built: tuple[dict, Repo]) -> None:
    fixture, repo = built
    samples = fixture.get("sample_records", [])
    assert samples or fixture["n"] == 0
    for path, cid in samples:
        assert str(repo.tree.get(path)) == cid


def test_mutations_match_reference() -> None:
    path = FIXTURES / "recipe-10000.json"
    fixture = load(path)
    mutations = fixture["mutations"]
    repo = build(fixture["n"])
    tree = repo.tree
    deleted = 0
    for i in range(fixture["n"]):
        if recipe.is_deleted(i):
            tree = tree.delete(recipe.recipe_path(i))
            deleted += 1
    assert deleted == mutations["deleted_count"]
    assert str(tree.cid) == mutations["data_cid_after_deletes"]
    updated = 0
    for i in range(fixture["n"]):
        if recipe.is_updated(i):
            record = cbor.from_json(recipe.edited_record(i))
            tree = tree.set(recipe.recipe_path(i), CID.for_cbor(record))
            updated += 1
    assert updated == mutations["updated_count"]
    assert str(tree.cid) == mutations["data_cid_after_updates"]
    for path, cid in mutations["sample_records_after_updates"]:
        assert (str(tree.get(path)) if tree.get(path) else None) == cid
    # the same end state, built in one pass, has the same root
    rebuilt = MST.build(NodeStore(MemoryBlockStore()), sorted(tree))
    assert rebuilt.cid == tree.cid


def test_incremental_commits_reach_reference_root() -> None:
    fixture = load(FIXTURES / "recipe-1000.json")
    key = PrivateKey.from_hex(recipe.FIXTURE_KEY_HEX, "k256")
    repo, _ = Repo.create(MemoryBlockStore(), recipe.FIXTURE_DID, key)
    records = list(recipe.recipe_records(fixture["n"]))
    for start in range(0, len(records), 200):
        writes = [Write.create(*p.split("/"), cbor.from_json(r)) for p, r in records[start : start + 200]]
        repo, _ = repo.apply_writes(writes, key)
    assert str(repo.tree.cid) == fixture["data_cid"]
