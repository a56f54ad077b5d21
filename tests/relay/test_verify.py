"""Commit verification as the relay's workers run it: verdicts, not exceptions."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from relay.verify import Verifier, check_repo, verify_one
from roost.blockstore import MemoryBlockStore
from roost.car import car_bytes
from roost.cid import CID
from roost.crypto import PrivateKey
from roost.errors import RoostError
from roost.frames import encode_frame
from roost.repo import Repo, Write
from roost.tid import TidClock
from tests.relay.helpers import POST, commit_event

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
KEY = PrivateKey.generate("k256")
SPEC = (KEY.public_key.curve, KEY.public_key.compressed)


def commits(count: int, key: PrivateKey = KEY) -> tuple[Repo, list[dict[str, Any]]]:
    clock = TidClock()
    repo, data = Repo.create(MemoryBlockStore(), DID, key, [], clock=clock)
    bodies = [commit_event(DID, data)]
    for i in range(count - 1):
        write = Write.create(POST, clock.next_str(), {"$type": POST, "text": str(i), "createdAt": "2024-01-01T00:00:00.000Z"})
        repo, data = repo.apply_writes([write], key, clock=clock)
        bodies.append(commit_event(DID, data))
    return repo, bodies


def frame(body: dict[str, Any], t: str = "#commit") -> bytes:
    return encode_frame(t, {"seq": 1, "time": "2024-01-01T00:00:00.000Z", **body})


def test_a_valid_commit_gives_its_data_cid() -> None:
    repo, bodies = commits(3)
    error, value = verify_one(frame(bodies[-1]), SPEC)
    assert error is None and value == repo.commit.data.bytes


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"prevData": CID.for_cbor({"not": "the old tree"})}, "InvertError"),
        ({"repo": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"}, "WrongDid"),
        ({"rev": "3l3qo2vutsw2b"}, "InvalidCommit"),
        ({"time": "yesterday"}, "InvalidCommit"),
        ({"ops": []}, "InvertError"),
        ({"ops": [{"action": "explode", "path": "x/y", "cid": None}]}, "InvertError"),
        ({"blocks": b"not a car"}, "Car"),
        ({"commit": CID.for_cbor({"x": 1})}, "InvalidCommit"),
    ],
)
def test_tampered_commits_are_rejected(change: dict[str, Any], expected: str) -> None:
    _, bodies = commits(3)
    error, message = verify_one(frame({**bodies[-1], **change}), SPEC)
    assert error is not None and (error == expected or expected in error), (error, message)
    assert isinstance(message, str) and message


def test_a_forged_signature_is_rejected() -> None:
    _, bodies = commits(2, key=PrivateKey.generate("k256"))
    assert verify_one(frame(bodies[-1]), SPEC)[0] == "BadCommitSignature"


def test_sync_events() -> None:
    repo, _ = commits(2)
    commit = repo.commit
    body = {"did": DID, "rev": commit.rev, "blocks": car_bytes([commit.cid], {commit.cid: commit.block})}
    assert verify_one(frame(body, "#sync"), SPEC) == (None, commit.data.bytes)
    assert verify_one(frame({**body, "rev": "3l3qo2vutsw2b"}, "#sync"), SPEC)[0] == "InvalidCommit"
    assert verify_one(frame({**body, "did": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"}, "#sync"), SPEC)[0] == "WrongDid"
    assert verify_one(frame(body, "#identity"), SPEC)[0] == "UnexpectedFrame"
    assert verify_one(b"\xa1\x62op\x01", SPEC)[0] == "CborDecodeError"


def test_whole_repo_check_for_a_resync() -> None:
    repo, _ = commits(5)
    car = b"".join(repo.export_car())
    rev, commit, data, block = check_repo(car, DID, SPEC)
    assert (rev, commit, data, block) == (repo.rev, repo.cid.bytes, repo.commit.data.bytes, repo.commit.block)
    other = PrivateKey.generate("k256").public_key
    with pytest.raises(RoostError):
        check_repo(car, DID, (other.curve, other.compressed))


async def test_inline_verifier_keeps_the_order() -> None:
    _, bodies = commits(4)
    forged = commits(2, key=PrivateKey.generate("k256"))[1][-1]
    jobs = [(frame(b), SPEC) for b in bodies[1:]] + [(frame(forged), SPEC)]
    verdicts = await Verifier(0).verify(jobs)
    assert [v[0] for v in verdicts] == [None, None, None, "BadCommitSignature"]
    with pytest.raises(ValueError):
        Verifier(-1)


async def test_a_dead_worker_is_replaced() -> None:
    _, bodies = commits(2)
    verifier = Verifier(1)
    try:
        await verifier.start()
        pids = verifier.worker_pids()
        assert len(pids) == 1
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        verdicts = await verifier.verify([(frame(bodies[-1]), SPEC)])
        assert verdicts[0][0] is None and verifier.restarts == 1
        assert verifier.worker_pids() != pids
    finally:
        verifier.close()


async def test_worker_calls_share_messages_and_keep_their_order() -> None:
    repo, bodies = commits(12)
    forged = commits(2, key=PrivateKey.generate("k256"))[1][-1]
    good = [(frame(b), SPEC) for b in bodies[1:]]
    calls = [good[i::3] + [(frame(forged), SPEC)] for i in range(3)] * 8
    verifier = Verifier(2)
    try:
        await verifier.start()
        results = await asyncio.gather(*(verifier.verify(jobs) for jobs in calls))
        for jobs, verdicts in zip(calls, results):
            assert len(verdicts) == len(jobs)
            assert [v[0] for v in verdicts] == [None] * (len(jobs) - 1) + ["BadCommitSignature"]
        assert results[0][:-1] == [verify_one(f, k) for f, k in calls[0][:-1]]
        # queued together: fewer round trips than calls
        assert verifier.batches == len(calls) and verifier.messages < len(calls)
        # a caller that goes away does not disturb the others
        lost = asyncio.ensure_future(verifier.verify(good))
        kept = asyncio.ensure_future(verifier.verify(good[:2]))
        await asyncio.sleep(0)
        lost.cancel()
        assert [v[0] for v in await kept] == [None, None]
        # a resync's whole-repo check runs in a worker too, errors and all
        car = b"".join(repo.export_car())
        rev, _, data, _ = await verifier.check_repo(car, DID, KEY.public_key)
        assert (rev, data) == (repo.rev, repo.commit.data.bytes)
        with pytest.raises(RoostError):
            await verifier.check_repo(car, DID, PrivateKey.generate("k256").public_key)
        processes = [w.process for w in verifier._workers]
    finally:
        verifier.close()
    # the workers saw the end of their socket and left on their own (not killed)
    assert [p.exitcode for p in processes] == [0, 0]
    with pytest.raises(RoostError):
        await verifier.verify(good)


async def test_jobs_held_by_a_dying_worker_are_verified_again() -> None:
    _, bodies = commits(6)
    jobs = [(frame(b), SPEC) for b in bodies[1:]] * 40
    verifier = Verifier(1)
    try:
        await verifier.start()
        pids = verifier.worker_pids()
        pending = asyncio.ensure_future(verifier.verify(jobs))
        await asyncio.sleep(0)  # sent, not answered yet
        assert not pending.done()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        verdicts = await pending
        assert [v[0] for v in verdicts] == [None] * len(jobs)
        assert verifier.restarts == 1
    finally:
        verifier.close()
