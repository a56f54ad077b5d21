"""Forged commits from a test host are reported when verification is on.

A real did:plc directory holds the account's signing key; a small fake host
serves crafted ``subscribeRepos`` frames for that DID: honest commits,
one signed by a stranger's key, one whose announced ops do not match the
tree, and (after the account rotates its key in the directory) one signed
with the new key. Keys are resolved through roost.identity.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.websockets import WebSocket

from plc.app import create_app as create_plc_app
from plc.config import PlcConfig
from roost.crypto import PrivateKey
from roost.errors import BadCommitSignature, InvertError
from roost.firehose import Commit, Invalid, Subscription, subscribe
from roost.identity import IdentityDirectory, IdentityResolver
from roost.plc import PlcClient
from roost.repo import Write
from tests.roost.test_firehose import FAST
from tests.roost.test_firehose_support import Connection, FakeRepo, post, scripted_host
from tests.servers import ServerThread


@pytest.fixture(scope="module")
def plc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ServerThread(create_plc_app(PlcConfig(data_dir=tmp_path_factory.mktemp("plc"))))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def create(rkey: str, text: str) -> list[Write]:
    return [Write.create("app.bsky.feed.post", rkey, post(text))]


async def next_event(sub: Subscription) -> Any:
    event = await anext(sub)
    sub.ack(event.seq)
    return event


async def test_forged_commits_are_reported(plc_url: str, tmp_path: Path) -> None:
    signing, rotation = PrivateKey.generate(), PrivateKey.generate()
    async with PlcClient(plc_url) as plc:
        did, _ = await plc.create_did(signing, [rotation], "forge.test", "https://pds.example")
    account = FakeRepo(did, signing)
    new_key = PrivateKey.generate()

    def hide_an_op(body: dict[str, Any], data: Any) -> None:
        body["ops"] = body["ops"][1:]

    frames = [
        account.commit(1, create("3kaaaaaaaaa22", "honest")),
        account.commit(2, create("3kaaaaaaaaa23", "forged"), forge_with=PrivateKey.generate()),
        account.commit(3, create("3kaaaaaaaaa24", "honest again")),
        account.commit(4, [*create("3kaaaaaaaaa25", "shown"), *create("3kaaaaaaaaa26", "hidden")],
                       edit=hide_an_op),
    ]
    account.repo = None  # the tampered commit was not kept: rebuild the honest chain
    account.commit(1, create("3kaaaaaaaaa22", "honest"))
    account.commit(3, create("3kaaaaaaaaa24", "honest again"))
    account.key = new_key
    frames.append(account.commit(5, create("3kaaaaaaaaa27", "after the rotation")))

    async def serve(ws: WebSocket, conn: Connection) -> None:
        await ws.accept()
        for frame in frames[conn.cursor or 0:]:
            await ws.send_bytes(frame)
        await ws.receive()

    now = [1_000.0]
    resolver = IdentityResolver.create(plc_url=plc_url, allow_local=True)
    directory = IdentityDirectory(resolver, clock=lambda: now[0])
    try:
        with scripted_host(serve) as host:
            async with subscribe(host.url, cursor=0, verify=True, identity=directory,
                                 backoff=FAST) as sub:
                first = [await next_event(sub) for _ in range(4)]
                # the account rotates its signing key; our cached copy is now stale
                async with PlcClient(plc_url) as plc:
                    await plc.update(did, rotation, signing_key=new_key)
                now[0] += 60.0
                rotated = await next_event(sub)
                assert sub.invalid == 2
            async with subscribe(host.url, cursor=0, backoff=FAST) as unverified:
                trusting = [await next_event(unverified) for _ in range(5)]
    finally:
        await directory.aclose()
        await resolver.aclose()

    assert [type(e).__name__ for e in first] == ["Commit", "Invalid", "Commit", "Invalid"]
    assert isinstance(first[1], Invalid) and isinstance(first[1].error, BadCommitSignature)
    assert first[1].seq == 2 and first[1].did == did
    assert isinstance(first[3], Invalid) and isinstance(first[3].error, InvertError)
    assert isinstance(rotated, Commit) and rotated.ops[0].record == post("after the rotation")
    # without verification every one of them looks like an ordinary commit
    assert all(isinstance(e, Commit) for e in trusting)
