"""Three consumers on one relay: one reads at full speed, one lags, one stops reading.

The relay keeps 8 events per consumer queue and calls a consumer stalled
after 1 s without progress. A host pushes a few hundred large commits. The
reader that keeps up and the one that lags (it is sent back to replay from
the log whenever its queue overflows) both get every event, in order, with
no gap; the one that stopped reading is dropped, and at no point does the
relay queue more than 8 events per consumer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import websockets.sync.client
from websockets.sync.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from plc.app import create_app as create_plc_app
from plc.config import PlcConfig
from roost.frames import decode_frame
from tests.relay.helpers import (
    SUBSCRIBE,
    FakeAccount,
    FakeHost,
    RelayHandle,
    running_relay,
    wait_for,
)
from tests.servers import ServerThread

EVENTS = 300
RECORD_BYTES = 40_000
BUFFER = 8


class Reader(threading.Thread):
    """Reads the relay's live firehose, pausing ``delay`` seconds per message."""

    def __init__(self, url: str, delay: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.delay = delay
        self.connected = threading.Event()
        self.seqs: list[int] = []
        self.errors: list[str] = []
        self.start()
        assert self.connected.wait(10)

    def run(self) -> None:
        try:
            with websockets.sync.client.connect(self.url, max_size=None, close_timeout=1) as ws:
                self.connected.set()
                while len(self.seqs) < EVENTS:
                    message = ws.recv(timeout=30)
                    assert isinstance(message, bytes)
                    header, body = decode_frame(message)
                    if header["op"] == -1:
                        self.errors.append(body["error"])
                        return
                    self.seqs.append(body["seq"])
                    time.sleep(self.delay)
        except (ConnectionClosed, TimeoutError) as exc:
            self.errors.append(repr(exc))


def test_a_stalled_consumer_is_dropped_others_get_everything(tmp_path: Path) -> None:
    plc = ServerThread(create_plc_app(PlcConfig(data_dir=tmp_path / "plc")))
    plc_url = plc.start()
    fake = FakeHost(plc_url).start()
    try:
        account = fake.account()
        with running_relay(
            tmp_path,
            plc_url,
            crawl=(fake.url,),
            trusted_hosts=("127.0.0.1:*",),
            consumer_buffer=BUFFER,
            consumer_stall_s=1.0,
        ) as relay:
            sequencer = relay.relay.sequencer
            url = relay.url.replace("http://", "ws://") + SUBSCRIBE
            fast = Reader(url, 0.0)
            lagging = Reader(url, 0.01)
            # stops reading at once: at most one message is taken off its socket
            with websockets.sync.client.connect(url, max_size=None, max_queue=1, close_timeout=1) as stalled:
                wait_for(lambda: sequencer.live_subscriber_count == 3, what="three live consumers")
                run_the_load(relay, fake, account, fast, lagging, stalled)
    finally:
        fake.stop()
        plc.stop()


def run_the_load(
    relay: RelayHandle,
    fake: FakeHost,
    account: FakeAccount,
    fast: Reader,
    lagging: Reader,
    stalled: ClientConnection,
) -> None:
    sequencer = relay.relay.sequencer
    for i in range(EVENTS):
        fake.send("#commit", account.post(f"{i} ", size=RECORD_BYTES))
    most_queued = 0
    deadline = time.monotonic() + 60
    while fast.is_alive() or lagging.is_alive():
        assert time.monotonic() < deadline, "readers did not finish"
        most_queued = max(most_queued, sequencer.queued_events)
        time.sleep(0.005)

    for reader in (fast, lagging):
        assert reader.errors == []
        first = reader.seqs[0]
        assert reader.seqs == list(range(first, first + EVENTS))  # in order, no gap
    assert sequencer.sent_back_to_replay >= 1  # the lagging one caught up from the log
    wait_for(
        lambda: relay.relay.fanout.stalled_dropped + sequencer.dropped_too_slow == 1,
        what="the stalled consumer to be dropped",
    )
    wait_for(lambda: not relay.relay.fanout.consumers, what="every stream to end")
    assert most_queued <= 3 * BUFFER  # bounded: at most a full queue per consumer
    received = 0
    try:
        while True:
            stalled.recv(timeout=5)
            received += 1
    except (ConnectionClosed, TimeoutError):
        pass
    assert received < EVENTS
