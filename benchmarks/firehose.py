"""Firehose decoding: roost.firehose vs the atproto Python SDK, on the same recorded stream.

The stream is synthesized with roost's own repo engine, exactly as a PDS
emits it: ``--accounts`` repos of ``--records`` records each, then
``--events`` events (about 2% #identity/#account, the rest single-op
#commits: posts, likes, follows, a few updates and deletes; frames carry
``blocks`` with the commit, the new and covering MST nodes and the record).

Each decoder runs over the whole stream in this one process, best of
``--rounds``:

- frames: the frame parsed into typed events (roost: ``FirehoseDecoder``
  with ``decode_records=False``; SDK: ``Frame.from_bytes`` +
  ``parse_subscribe_repos_message``, the models its firehose client hands
  out);
- + records: the records of creates and updates decoded too (roost:
  ``FirehoseDecoder()``; SDK: ``CAR.from_bytes(commit.blocks)`` and the
  record dict looked up by op CID: the cheapest SDK path, without building
  record models);
- + verify: roost checks each commit's signature against the DID's key and
  the sync v1.1 inversion of its ops to ``prevData``
  (``Verifier`` over an in-memory key table); the SDK has no commit
  verification, so its row re-encodes the unsigned commit and checks the
  signature only (``atproto_crypto.verify_signature``), a lighter job.

Target (issue "Subscribing to the firehose"): roost >= 1.5x the SDK's rate
without verification.

    python benchmarks/firehose.py [--events 5000] [--accounts 50] [--records 300]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers import ensure_pip  # noqa: E402
from roost.blockstore import MemoryBlockStore  # noqa: E402
from roost.cid import CID  # noqa: E402
from roost.crypto import PrivateKey, PublicKey  # noqa: E402
from roost.firehose import Commit, FirehoseDecoder, Info, Invalid, Verifier  # noqa: E402
from roost.frames import encode_frame  # noqa: E402
from roost.repo import Repo, Write  # noqa: E402
from roost.tid import TidClock  # noqa: E402

TARGET = 1.5
_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


# -- the recorded stream ---------------------------------------------------------------------


def _time(i: int) -> str:
    when = _START + timedelta(milliseconds=i)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _post(rng: random.Random, i: int) -> dict[str, Any]:
    words = " ".join(rng.choice(("bird", "roost", "feather", "sky", "wing", "nest", "song"))
                     for _ in range(rng.randint(4, 30)))
    return {"$type": "app.bsky.feed.post", "text": f"{words} #{i}", "langs": ["en"],
            "createdAt": _time(i)}


def _subject(rng: random.Random, dids: list[str]) -> dict[str, Any]:
    did = rng.choice(dids)
    return {"uri": f"at://{did}/app.bsky.feed.post/3kabc{rng.randrange(10**6):06d}",
            "cid": str(CID.for_cbor({"n": rng.randrange(10**9)}))}


def _account_frame(seq: int, did: str, i: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return encode_frame("#identity", {"seq": seq, "did": did, "time": _time(i),
                                          "handle": f"u{seq}.example.com"})
    return encode_frame("#account", {"seq": seq, "did": did, "time": _time(i), "active": True})


def record_stream(events: int, accounts: int, records: int, seed: int = 7) -> tuple[
    list[bytes], dict[str, PublicKey]
]:
    """Frames of a synthetic firehose and the signing key of every DID in it."""
    rng = random.Random(seed)
    clock = TidClock()
    keys: dict[str, PublicKey] = {}
    repos: list[tuple[Repo, PrivateKey, list[str]]] = []
    dids = [f"did:plc:{i:024d}".replace("0", "a")[:32] for i in range(accounts)]
    for n, did in enumerate(dids):
        key = PrivateKey.generate()
        keys[did] = key.public_key
        writes = []
        for r in range(records):
            rkey = clock.next_str()
            writes.append((f"app.bsky.feed.post/{rkey}", _post(rng, n * records + r)))
        repo = Repo.create_from_records(MemoryBlockStore(), did, key, writes, clock=clock)
        repos.append((repo, key, [p.partition("/")[2] for p, _ in writes]))
    frames: list[bytes] = []
    for seq in range(1, events + 1):
        index = rng.randrange(accounts)
        repo, key, rkeys = repos[index]
        if rng.random() < 0.02:
            frames.append(_account_frame(seq, repo.did, seq, rng))
            continue
        roll = rng.random()
        if roll < 0.55:
            write = Write.create("app.bsky.feed.post", clock.next_str(), _post(rng, seq))
        elif roll < 0.85:
            write = Write.create("app.bsky.feed.like", clock.next_str(),
                                 {"$type": "app.bsky.feed.like", "subject": _subject(rng, dids),
                                  "createdAt": _time(seq)})
        elif roll < 0.95:
            write = Write.create("app.bsky.graph.follow", clock.next_str(),
                                 {"$type": "app.bsky.graph.follow",
                                  "subject": rng.choice(dids), "createdAt": _time(seq)})
        elif roll < 0.98 and rkeys:
            write = Write.update("app.bsky.feed.post", rng.choice(rkeys), _post(rng, seq))
        elif rkeys:
            write = Write.delete("app.bsky.feed.post", rkeys.pop(rng.randrange(len(rkeys))))
        else:
            write = Write.create("app.bsky.feed.post", clock.next_str(), _post(rng, seq))
        if write.action == "create" and write.collection == "app.bsky.feed.post":
            rkeys.append(write.rkey)
        repo, data = repo.apply_writes([write], key, clock=clock)
        repos[index] = (repo, key, rkeys)
        body: dict[str, Any] = {
            "seq": seq, "time": _time(seq), "repo": repo.did, "rev": data.rev,
            "since": data.since, "commit": data.cid, "blocks": data.car(),
            "ops": [{"action": op.action, "path": op.path, "cid": op.cid,
                     **({"prev": op.prev} if op.prev is not None else {})} for op in data.ops],
            "blobs": [], "rebase": False, "tooBig": False,
        }
        if data.prev_data is not None:
            body["prevData"] = data.prev_data
        frames.append(encode_frame("#commit", body))
    return frames, keys


# -- roost --------------------------------------------------------------------------------


class _Keys:
    def __init__(self, keys: dict[str, PublicKey]) -> None:
        self.keys = keys

    async def resolve_key(self, did: str, *, force_refresh: bool = False) -> PublicKey:
        return self.keys[did]


def roost_decode(frames: list[bytes], records: bool) -> int:
    decoder = FirehoseDecoder(decode_records=records)
    decode = decoder.decode
    ops = 0
    for frame in frames:
        event = decode(frame)
        if isinstance(event, Commit):
            ops += len(event.ops)
        elif isinstance(event, Invalid):
            raise AssertionError(event.reason)
    return ops


def roost_verify(frames: list[bytes], keys: dict[str, PublicKey]) -> int:
    decoder = FirehoseDecoder()
    verifier = Verifier(_Keys(keys))

    async def run() -> int:
        ops = 0
        for frame in frames:
            raw = decoder.read(frame)
            if raw is None or isinstance(raw, Info) or not raw.wanted:
                continue
            problem = await verifier.check(raw)
            if problem is not None:
                raise AssertionError(problem.message)
            event = decoder.build(raw)
            if isinstance(event, Commit):
                ops += len(event.ops)
        return ops

    return asyncio.run(run())


# -- the atproto SDK ------------------------------------------------------------------------


def sdk_decoders() -> dict[str, Callable[..., int]] | None:
    if not ensure_pip("atproto", ">=0.0.60"):
        return None
    import libipld
    from atproto_client import models
    from atproto_core.car import CAR
    from atproto_crypto.verify import verify_signature
    from atproto_firehose import parse_subscribe_repos_message
    from atproto_subscription.frames import Frame, MessageFrame

    commit_type = models.ComAtprotoSyncSubscribeRepos.Commit

    def parse(frame: bytes) -> Any:
        message = Frame.from_bytes(frame)
        assert isinstance(message, MessageFrame)
        return parse_subscribe_repos_message(message)

    def frames_only(frames: list[bytes]) -> int:
        ops = 0
        for frame in frames:
            event = parse(frame)
            if isinstance(event, commit_type):
                ops += len(event.ops)
        return ops

    def with_records(frames: list[bytes], verify_keys: dict[str, str] | None = None) -> int:
        ops = 0
        for frame in frames:
            event = parse(frame)
            if not isinstance(event, commit_type):
                continue
            car = CAR.from_bytes(event.blocks)
            if verify_keys is not None:
                signed = car.blocks[event.commit]
                unsigned = {k: v for k, v in signed.items() if k != "sig"}
                data = libipld.encode_dag_cbor(unsigned)
                if not verify_signature(verify_keys[event.repo], data, signed["sig"]):
                    raise AssertionError("SDK: bad signature")
            for op in event.ops:
                if op.cid is not None:
                    record = car.blocks.get(op.cid)
                    assert isinstance(record, dict)
                ops += 1
        return ops

    return {"frames": frames_only, "records": with_records}


# -- the run ----------------------------------------------------------------------------------


def best_rates(runs: dict[str, Callable[[], int]], count: int, rounds: int) -> dict[str, float]:
    """Events/s of each run, best of ``rounds``; the runs alternate within each round,
    so a change in machine load hits every decoder alike."""
    best = {name: float("inf") for name in runs}
    results: dict[str, int] = {}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    if len(set(results.values())) != 1:  # every decoder must have seen the same ops
        raise AssertionError(f"decoders disagree on the op count: {results}")
    return {name: count / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--records", type=int, default=300, help="records per repo before the stream")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    t0 = time.perf_counter()
    frames, keys = record_stream(args.events, args.accounts, args.records)
    size = sum(len(f) for f in frames)
    print(f"stream: {len(frames)} events, {size / len(frames):.0f} bytes/frame on average, "
          f"{args.accounts} repos of {args.records}+ records (built in {time.perf_counter() - t0:.1f}s)")

    n = len(frames)
    runs: dict[str, Callable[[], int]] = {
        "roost frames": lambda: roost_decode(frames, False),
        "roost records": lambda: roost_decode(frames, True),
        "roost verify": lambda: roost_verify(frames, keys),
    }
    sdk = sdk_decoders()
    if sdk is not None:
        did_keys = {did: key.did_key() for did, key in keys.items()}
        runs["sdk frames"] = lambda: sdk["frames"](frames)
        runs["sdk records"] = lambda: sdk["records"](frames)
        runs["sdk verify"] = lambda: sdk["records"](frames, did_keys)
    rate = best_rates(runs, n, args.rounds)
    rows = [
        ("frames -> typed events", rate["roost frames"], rate.get("sdk frames"), ""),
        ("+ records decoded", rate["roost records"], rate.get("sdk records"), ""),
        ("+ verification", rate["roost verify"], rate.get("sdk verify"),
         "roost: signature + sync 1.1 inversion; SDK: signature only"),
    ]
    sdk_frames, sdk_records = rate.get("sdk frames"), rate.get("sdk records")
    roost_frames, roost_records = rate["roost frames"], rate["roost records"]

    print()
    print(f"{'events/s (best of ' + str(args.rounds) + ')':<26} {'roost':>10} {'atproto SDK':>12} "
          f"{'ratio':>7}")
    for name, ours, theirs, note in rows:
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        peer = f"{theirs:>12,.0f}" if theirs else f"{'n/a':>12}"
        print(f"{name:<26} {ours:>10,.0f} {peer} {ratio:>7}  {note}".rstrip())
    if sdk_frames and sdk_records:
        worst = min(roost_frames / sdk_frames, roost_records / sdk_records)
        verdict = "met" if worst >= TARGET else "NOT met"
        print(f"\ntarget >= {TARGET}x the SDK without verification: {verdict} "
              f"(lowest ratio {worst:.2f}x)")


if __name__ == "__main__":
    main()
