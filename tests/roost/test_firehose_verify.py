"""roost.firehose verification: forged and tampered events are reported, never passed on.

Keys come from a small in-memory resolver (the PLC-backed path is covered in
``tests/e2e/test_firehose_verify.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.websockets import WebSocket

from roost.crypto import PrivateKey, PublicKey
from roost.errors import BadCommitSignature, DidNotFound, InvertError
from roost.firehose import (
    Commit,
    FirehoseDecoder,
    Identity,
    Info,
    Invalid,
    InvalidEvent,
    Sync,
    Verifier,
    subscribe,
)
from roost.repo import Write
from tests.roost.test_firehose import ALICE, BOB, FAST, collect
from tests.roost.test_firehose_support import Connection, FakeRepo, post, scripted_host


class Keys:
    """DID -> key; ``rotated`` answers only a forced refresh (a key changed since cached)."""

    def __init__(self, keys: dict[str, PublicKey]) -> None:
        self.keys = keys
        self.rotated: dict[str, PublicKey] = {}
        self.lookups: list[tuple[str, bool]] = []
        self.purged: list[str] = []

    async def resolve_key(self, did: str, *, force_refresh: bool = False) -> PublicKey:
        self.lookups.append((did, force_refresh))
        if force_refresh and did in self.rotated:
            return self.rotated[did]
        if did not in self.keys:
            raise DidNotFound(f"no such DID: {did}")
        return self.keys[did]

    def purge(self, did: str) -> None:
        self.purged.append(did)


async def check(verifier: Verifier, frame: bytes) -> Any:
    decoder = FirehoseDecoder()
    raw = decoder.read(frame)
    assert raw is not None and not isinstance(raw, Info)
    problem = await verifier.check(raw)
    if problem is not None:
        return Invalid(raw.seq, raw.did, raw.type, problem)
    return decoder.build(raw)


def create(rkey: str, text: str) -> list[Write]:
    return [Write.create("app.bsky.feed.post", rkey, post(text))]


async def test_valid_commits_and_syncs_pass() -> None:
    alice = FakeRepo(ALICE)
    verifier = Verifier(Keys({ALICE: alice.key.public_key}))
    first = await check(verifier, alice.commit(1, create("3kaaaaaaaaa22", "one")))
    second = await check(verifier, alice.commit(2, create("3kaaaaaaaaa23", "two")))
    sync = await check(verifier, alice.sync(3))
    assert isinstance(first, Commit) and isinstance(second, Commit) and isinstance(sync, Sync)
    assert verifier.checked == 3 and verifier.failed == 0


async def test_forged_signature_is_reported() -> None:
    alice = FakeRepo(ALICE)
    keys = Keys({ALICE: alice.key.public_key})
    verifier = Verifier(keys)
    await check(verifier, alice.commit(1, create("3kaaaaaaaaa22", "one")))
    forged = alice.commit(2, create("3kaaaaaaaaa23", "not from alice"),
                          forge_with=PrivateKey.generate())
    event = await check(verifier, forged)
    assert isinstance(event, Invalid) and isinstance(event.error, BadCommitSignature)
    assert event.seq == 2 and event.did == ALICE and event.type == "#commit"
    # a failed signature looks the key up again once, with a forced refresh
    assert keys.lookups[-2:] == [(ALICE, False), (ALICE, True)]


async def test_rotated_key_is_picked_up_on_the_refresh() -> None:
    alice = FakeRepo(ALICE)
    old_key = alice.key
    keys = Keys({ALICE: old_key.public_key})
    verifier = Verifier(keys)
    await check(verifier, alice.commit(1, create("3kaaaaaaaaa22", "one")))
    alice.key = PrivateKey.generate()  # the account rotated its signing key
    keys.rotated[ALICE] = alice.key.public_key
    event = await check(verifier, alice.commit(2, create("3kaaaaaaaaa23", "two")))
    assert isinstance(event, Commit)


async def test_tampered_ops_fail_the_inversion() -> None:
    alice = FakeRepo(ALICE)
    verifier = Verifier(Keys({ALICE: alice.key.public_key}))
    await check(verifier, alice.commit(1, create("3kaaaaaaaaa22", "one")))

    def hide_an_op(body: dict[str, Any], data: Any) -> None:
        body["ops"] = body["ops"][:1]  # two records were written, one is announced

    frame = alice.commit(2, [*create("3kaaaaaaaaa23", "two"), *create("3kaaaaaaaaa24", "three")],
                         edit=hide_an_op)
    event = await check(verifier, frame)
    assert isinstance(event, Invalid) and isinstance(event.error, InvertError)
    # without verification the same frame is a plausible commit
    assert isinstance(FirehoseDecoder().decode(frame), Commit)


async def test_unknown_did_and_forged_sync_are_reported() -> None:
    alice, bob = FakeRepo(ALICE), FakeRepo(BOB)
    keys = Keys({ALICE: alice.key.public_key, BOB: alice.key.public_key})  # bob's key is wrong
    verifier = Verifier(keys)
    bob.commit(1, create("3kaaaaaaaaa22", "bob"))
    sync = await check(verifier, bob.sync(2))
    assert isinstance(sync, Invalid) and isinstance(sync.error, BadCommitSignature)
    stranger = FakeRepo("did:plc:strangerstrangerstranger")
    event = await check(verifier, stranger.commit(3, create("3kaaaaaaaaa22", "who?")))
    assert isinstance(event, Invalid) and isinstance(event.error, DidNotFound)
    identity = await check(verifier, alice.identity(4, "alice.test"))
    assert isinstance(identity, Identity) and keys.purged == [ALICE]


async def test_subscription_reports_or_raises() -> None:
    alice = FakeRepo(ALICE)
    keys = Keys({ALICE: alice.key.public_key})
    frames = [
        alice.commit(1, create("3kaaaaaaaaa22", "one")),
        alice.commit(2, create("3kaaaaaaaaa23", "forged"), forge_with=PrivateKey.generate()),
        alice.commit(3, create("3kaaaaaaaaa24", "three")),
    ]

    async def serve(ws: WebSocket, conn: Connection) -> None:
        await ws.accept()
        for frame in frames[conn.cursor or 0:]:
            await ws.send_bytes(frame)
        await ws.receive()

    with scripted_host(serve) as host:
        async with subscribe(host.url, cursor=0, verify=True, identity=keys, backoff=FAST) as sub:
            events = await collect(sub, 3)
            assert sub.invalid == 1 and sub.cursor == 3
        assert [type(e).__name__ for e in events] == ["Commit", "Invalid", "Commit"]
        assert "BadCommitSignature" in events[1].reason
        async with subscribe(host.url, cursor=0, verify=True, identity=keys, backoff=FAST,
                             on_invalid="raise") as sub:
            with pytest.raises(InvalidEvent) as caught:
                await collect(sub, 3)
            assert caught.value.event.seq == 2
            sub.ack(2)  # acknowledged: the cursor may move past the bad event
            assert [e.seq for e in await collect(sub, 1)] == [3]
