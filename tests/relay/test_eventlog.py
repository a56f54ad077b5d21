"""The relay's store and event log: group commit, seqs, cursors, replay filtering, retention.

Every test runs against both back-ends: a SQLite file and a fresh database
on the session's PostgreSQL server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from relay.eventlog import EventLogReader, EventWriter, OutEvent, Submission
from relay.postgres import PostgresStore
from relay.sqlite import SqliteStore
from relay.storage import AccountState, HostRow, Store, WriteSet
from roost.cid import CID
from roost.frames import decode_frame
from roost.sequencer import Sequencer

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"

Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the test's relay database (again, after a close: the same data)."""
    database = (
        str(request.getfixturevalue("postgres_dsn")) if engine == "postgres"
        else str(tmp_path / "relay.sqlite")
    )
    opened: list[Store] = []

    def opener() -> Store:
        store: Store = PostgresStore(database) if engine == "postgres" else SqliteStore(database)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


class Recorder:
    """Stands in for the sequencer: records what is published, checking it is on disk first."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.published: list[tuple[int, bytes]] = []

    def publish(self, events: Sequence[tuple[int, bytes]]) -> None:
        stored = {seq for seq, _, _ in self.store.events_after(0, 10_000)}
        assert all(seq in stored for seq, _ in events), "published before it was durable"
        self.published.extend(events)


def identity(did: str = DID) -> OutEvent:
    return OutEvent("#identity", {"did": did, "time": "2024-01-01T00:00:00.000Z"}, 1)


def host(store: Store) -> HostRow:
    row = HostRow(1, "pds.example.com", False, "active", 100, False, created_at="now")
    store.commit(WriteSet(statements=[store.insert_host_sql(row)]))
    return row


async def test_events_get_seqs_and_land_with_their_cursor(open_store: Opener) -> None:
    store = open_store()
    recorder = Recorder(store)
    writer = EventWriter(store, recorder, initial_seq=100)  # type: ignore[arg-type]
    await writer.start()
    host(store)
    acct = AccountState(1, DID, 1, rev="3l3qo2vutsw2b", commit_cid=CID.for_cbor({"a": 1}),
                        data_cid=CID.for_cbor({"b": 2}))
    first = Submission(events=[identity(), identity()], cursor=(1, 41))
    first.account(acct)
    submitted = writer.submit(first)
    acct.rev = "3l3qo2vutsw2c"  # a change after submission belongs to a later one
    second = Submission(events=[identity()], cursor=(1, 42))
    results = await asyncio.gather(submitted, writer.submit(second))
    assert list(results) == [[100, 101], [102]]
    assert [s for s, _ in recorder.published] == [100, 101, 102]
    assert decode_frame(recorder.published[0][1])[1]["seq"] == 100
    assert store.hosts()[0].last_seq == 42
    stored = store.account(DID)
    assert stored is not None and stored.rev == "3l3qo2vutsw2b" and stored.data_cid == acct.data_cid
    assert writer.committed_seq == 102 and store.last_seq() == 102
    await writer.stop()
    store.close()

    # a restart continues above the highest seq ever used
    store = open_store()
    assert EventWriter(store, recorder, initial_seq=1).last_seq == 102  # type: ignore[arg-type]
    store.close()


async def test_a_failed_transaction_fails_its_submissions(engine: str, open_store: Opener) -> None:
    """SQLite never reuses the failed seq (a gap); PostgreSQL numbers in the transaction (none)."""
    store = open_store()
    recorder = Recorder(store)
    failures: list[BaseException] = []
    writer = EventWriter(store, recorder, on_failure=failures.append)  # type: ignore[arg-type]
    await writer.start()
    host(store)
    assert await writer.submit(Submission(events=[identity()])) == [1]
    # a host row that already exists makes the whole transaction fail
    broken = Submission(events=[identity()], statements=[store.insert_host_sql(host_row())])
    with pytest.raises(Exception, match="(?i)unique"):
        await writer.submit(broken)
    assert failures and len(recorder.published) == 1
    expected = [1, 3] if engine == "sqlite" else [1, 2]
    assert await writer.submit(Submission(events=[identity()])) == expected[1:]
    assert [s for s, _, _ in store.events_after(0, 10)] == expected
    assert [s for s, _ in recorder.published] == expected
    await writer.stop()
    store.close()


def host_row() -> HostRow:
    return HostRow(1, "pds.example.com", False, "active", 100, False, created_at="now")


async def test_replay_hides_taken_down_accounts_without_short_pages(open_store: Opener) -> None:
    store = open_store()
    sequencer_log = EventLogReader()
    writer = EventWriter(store, Sequencer(sequencer_log))
    takendown = {7}
    sequencer_log.bind(store, writer, takendown)
    await writer.start()
    # 12 events of a taken-down account, then 5 of another
    await writer.submit(Submission(events=[OutEvent("#identity", {"did": DID, "time": "t"}, 7) for _ in range(12)]))
    await writer.submit(Submission(events=[identity() for _ in range(5)]))
    page = await sequencer_log.read_after(0, 5)
    assert [seq for seq, _ in page] == [13, 14, 15, 16, 17]  # a full page, past the hidden ones
    assert await sequencer_log.latest_seq() == 17
    await writer.stop()
    store.close()


async def test_pruning_by_age_then_by_size(open_store: Opener) -> None:
    store = open_store()
    now = [1_000_000.0]
    writer = EventWriter(store, Recorder(store), clock=lambda: now[0])  # type: ignore[arg-type]
    await writer.start()
    await writer.submit(Submission(events=[identity() for _ in range(3)]))  # old
    now[0] += 7200
    await writer.submit(Submission(events=[identity() for _ in range(4)]))  # recent
    assert await writer.prune(window_s=3600, max_bytes=10**9) == 3
    assert [s for s, _, _ in store.events_after(0, 10)] == [4, 5, 6, 7]
    assert store.oldest_seq_since(0) == 4
    size = len(store.events_after(0, 1)[0][2])
    assert await writer.prune(window_s=3600, max_bytes=2 * size) == 2  # keep the newest two
    assert [s for s, _, _ in store.events_after(0, 10)] == [6, 7]
    assert store.oldest_seq_since(int(now[0] * 1000)) == 6
    await writer.stop()
    store.close()


def test_store_reads(open_store: Opener) -> None:
    store = open_store()
    row = host_row()
    data = CID.for_cbor({"d": 1})
    accounts = [
        AccountState(1, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", 1, rev="3l3qo2vutsw2b", commit_cid=data, data_cid=data),
        AccountState(2, "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", 1, status="takendown", rev="3l3qo2vutsw2b",
                     commit_cid=data, data_cid=data),
        AccountState(3, "did:plc:cccccccccccccccccccccccc", 1, status="host-throttled"),
        AccountState(4, "did:plc:dddddddddddddddddddddddd", 1, rev="3l3qo2vutsw2b", commit_cid=data,
                     data_cid=data, desync=True),
    ]
    store.commit(WriteSet(
        statements=[store.insert_host_sql(row), store.ban_domain_sql("evil.example", "now"),
                    store.admin_action_sql("now", "repo.takedown", accounts[1].did, "{}")],
        accounts={a.uid: a.row() for a in accounts},
    ))
    assert [a.uid for a in store.list_repos(0, 10)] == [1]  # active, synchronized, with a repo
    assert store.takendown_uids() == {2}
    assert [a.uid for a in store.takedowns(0, 10)] == [2]
    assert [a.uid for a in store.throttled_accounts(1, 10)] == [3]
    assert store.domain_bans() == ["evil.example"]
    assert store.admin_actions(None, 10)[0]["action"] == "repo.takedown"
    assert store.max_uid() == 4
    assert store.account(accounts[3].did) == accounts[3]
    store.close()
