"""The relay dashboard: its figures, the JSON view, sign-in, and the admin forms.

The rates and the chart are checked with a scripted clock; the pages against a
real relay subscribed to a scriptable host (tests/relay/helpers.FakeHost), over
HTTP as a browser without JavaScript would use them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client

from plc.app import create_app as create_plc_app
from plc.config import PlcConfig
from relay.fanout import Consumer
from relay.registry import HostRuntime
from relay.storage import HostRow
from relay.web.stats import (
    CHART_HEIGHT,
    CHART_WIDTH,
    RATE_WINDOW_S,
    Sampler,
    chart,
    consumer_view,
    failures,
)
from roost.frames import encode_error_frame, encode_frame
from tests.relay.helpers import (
    ADMIN_PASSWORD,
    SUBSCRIBE,
    FakeHost,
    RelayHandle,
    running_relay,
    wait_for,
)
from tests.servers import ServerThread

# -- figures ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _host(host_id: int, **stats: int) -> HostRuntime:
    row = HostRow(id=host_id, hostname=f"pds{host_id}.test", no_ssl=False, status="active",
                  account_limit=100, trusted=False, created_at="2024-01-01T00:00:00Z")
    host = HostRuntime(row)
    host.stats.update(stats)
    return host


def test_rates_come_from_readings_over_time() -> None:
    clock = Clock()
    sampler = Sampler(clock=clock, wall=clock)
    a, b = _host(1), _host(2)
    sampler.take(100, [a, b])
    assert sampler.rate() is None and sampler.host_rate(1) is None and sampler.history() == []

    clock.now += 0.5  # too soon: the same reading again
    a.stats["accepted:#commit"] = 7
    assert sampler.take(150, [a, b]) is sampler.samples[-1] and len(sampler.samples) == 1

    clock.now += 1.5  # 2 s after the first
    sampler.take(160, [a, b])
    assert sampler.rate() == 30.0  # 60 events in 2 s
    assert sampler.host_rate(1) == 3.5 and sampler.host_rate(2) == 0.0
    assert sampler.host_rate(3) is None  # not a host at the last reading

    clock.now += 2.0
    a.stats["accepted:#identity"] = 1  # every accepted type counts
    sampler.take(200, [a, b])
    assert sampler.rate() == 25.0  # (200 - 100) / 4 s: the window reaches the first reading
    assert sampler.host_rate(1) == 2.0  # 8 events / 4 s
    assert sampler.history() == [(1002.0, 30.0), (1004.0, 20.0)]

    clock.now += RATE_WINDOW_S + 5  # a long pause: the rate averages over it
    sampler.take(200 + 3 * int(RATE_WINDOW_S + 5), [a, b])
    assert sampler.rate() == 3.0


def test_failures_leave_out_accepted_events_and_normal_life() -> None:
    stats = {"accepted:#commit": 50, "connects": 3, "resyncs_done": 1, "stale_rev": 2,
             "invalid:BadCommitSignature": 5, "dial_failures": 2, "disconnects": 0}
    assert failures(stats) == [("invalid:BadCommitSignature", 5), ("dial_failures", 2),
                               ("stale_rev", 2)]


def test_chart_scales_to_its_box() -> None:
    now = 5000.0
    empty = chart([], now)
    assert empty.points == "" and empty.area == "" and empty.top == 1.0
    laid = chart([(now - 500, 99.0), (now - 180, 0.0), (now - 90, 30.0), (now, 15.0)], now)
    assert laid.top == 50.0  # 30 rounded up to 1, 2 or 5 times a power of ten; 99 is too old
    assert laid.points == f"0,{CHART_HEIGHT} 300,{CHART_HEIGHT * 0.4:g} {CHART_WIDTH},{CHART_HEIGHT * 0.7:g}"
    assert laid.area.startswith(f"0,{CHART_HEIGHT} 0,") and laid.area.endswith(f" {CHART_WIDTH},{CHART_HEIGHT}")


def test_consumer_lag_is_counted_from_the_last_frame_written() -> None:
    consumer = Consumer(1, "10.0.0.1", "agent", cursor=None)
    assert consumer_view(consumer, head=40).lag == 0  # live, nothing sent yet: at the head
    replaying = Consumer(2, "10.0.0.1", "agent", cursor=10)
    view = consumer_view(replaying, head=40)
    assert (view.position, view.lag) == (10, 30)
    replaying.last_frame = encode_frame("#identity", {"seq": 25, "did": "did:plc:x", "time": "t"})
    view = consumer_view(replaying, head=40)
    assert (view.position, view.lag) == (25, 15)
    replaying.last_frame = encode_error_frame("FutureCursor")  # no seq in it: the cursor counts
    assert consumer_view(replaying, head=40).position == 10


# -- the pages ----------------------------------------------------------------------------


@dataclass
class Setup:
    relay: RelayHandle
    fake: FakeHost
    web: httpx.Client


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    plc = ServerThread(create_plc_app(PlcConfig(data_dir=tmp_path / "plc")))
    plc_url = plc.start()
    fake = FakeHost(plc_url).start()
    try:
        with running_relay(tmp_path, plc_url, crawl=(fake.url,)) as relay:
            with httpx.Client(base_url=relay.url, timeout=30) as web:
                yield Setup(relay, fake, web)
    finally:
        fake.stop()
        plc.stop()


def _form_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match[1]


def _sign_in(web: httpx.Client) -> str:
    """Sign ``web`` in; the CSRF token of its forms."""
    page = web.get("/dashboard/login")
    assert page.status_code == 200
    token = _form_token(page.text)
    wrong = web.post("/dashboard/login", data={"csrf": token, "password": "nope"})
    assert wrong.status_code == 401 and "Wrong password." in wrong.text
    signed = web.post("/dashboard/login", data={"csrf": token, "password": ADMIN_PASSWORD})
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    return token


def _host_json(setup: Setup) -> dict[str, Any]:
    hosts = setup.web.get("/dashboard.json").json()["hosts"]
    assert [h["hostname"] for h in hosts] == [setup.fake.hostname]
    return hosts[0]  # type: ignore[no-any-return]


def test_public_dashboard_shows_hosts_failures_and_consumers(setup: Setup) -> None:
    fake, web = setup.fake, setup.web
    alice = fake.account()
    first = alice.post("one")
    fake.send("#commit", first)
    fake.send("#commit", alice.post("two"))
    fake.send("#commit", first)  # an older rev again: dropped, counted by reason
    wait_for(lambda: _host_json(setup)["eventsAccepted"] == 2
             and bool(_host_json(setup)["failures"]), what="two commits and one drop")
    counters = setup.relay.host_counters(fake.hostname)
    host = _host_json(setup)
    assert host["failures"] == dict(failures(counters)) and host["status"] == "active"
    assert host["connected"] and host["seq"] == 3

    agent = 'probe <script>alert("x")</script>'
    target = setup.relay.url.replace("http://", "ws://") + SUBSCRIBE + "?cursor=0"
    with websockets.sync.client.connect(target, user_agent_header=agent) as consumer:
        got = [consumer.recv(timeout=10) for _ in range(2)]
        assert len(got) == 2
        wait_for(lambda: [c["lag"] for c in web.get("/dashboard.json").json()["consumers"]] == [0],
                 what="the consumer to catch up")
        page = web.get("/")
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["content-security-policy"]
        html = page.text
        assert f'<span class="name">{fake.hostname}</span>' in html
        assert 'data-live="host:1:accepted">2<' in html
        reason, count = failures(counters)[0]
        assert f"{reason} {count}" in html
        assert "Consumer 1" in html and "probe &lt;script&gt;alert(&quot;x&quot;)" in html
        assert "<script>alert" not in html
        assert "127.0.0.1" not in html.split('id="consumers"')[1]  # addresses: admins only
        assert '<svg class="chart"' in html and 'src="/static/relay.js"' in html
        assert "<form" not in html.replace('action="/dashboard/logout"', "")  # read-only
        view = web.get("/dashboard.json").json()
        assert "remoteAddr" not in view["consumers"][0]
        assert view["live"]["host:1:accepted"] == "2" and view["live"]["consumer:1:lag"] == "0"
        assert set(view["live"]) >= {"head", "rate", "connected", "chart-top"}
        assert web.get("/static/relay.js").headers["content-type"].startswith("text/javascript")

        _sign_in(web)
        admin_view = web.get("/dashboard.json").json()
        assert admin_view["consumers"][0]["remoteAddr"] == "127.0.0.1"


def test_admin_forms_ban_hosts_and_take_down_repos_through_the_admin_api(setup: Setup) -> None:
    fake, web, relay = setup.fake, setup.web, setup.relay
    wait_for(lambda: _host_json(setup)["connected"], what="the subscription")
    public = web.get("/")
    assert "Ban " not in public.text and 'href="/dashboard/login"' in public.text

    # without a session, or without the form's token, nothing happens
    refused = web.post("/dashboard/host", data={"host": fake.hostname, "action": "ban"})
    assert refused.status_code == 401
    token = _sign_in(web)
    forged = web.post("/dashboard/host", data={"host": fake.hostname, "action": "ban"})
    assert forged.status_code == 403
    assert _host_json(setup)["status"] == "active"

    html = web.get("/").text
    assert f"Ban {fake.hostname}" in html and "No repo is taken down." in html
    banned = web.post("/dashboard/host", data={"csrf": token, "host": fake.hostname,
                                              "action": "ban"})
    assert banned.status_code == 303
    page = web.get(banned.headers["location"])
    assert f"Banned {fake.hostname}" in page.text and f"Unban {fake.hostname}" in page.text
    assert _host_json(setup)["status"] == "banned"
    listed = relay.admin("pds/list").json()["hosts"]
    assert [h["status"] for h in listed] == ["banned"]

    unbanned = web.post("/dashboard/host", data={"csrf": token, "host": fake.hostname,
                                                "action": "unban"})
    assert unbanned.status_code == 303 and _host_json(setup)["status"] == "active"

    did = fake.account().did
    taken = web.post("/dashboard/repo", data={"csrf": token, "did": did, "action": "takedown",
                                             "reason": "spam <b>everywhere</b>"})
    assert taken.status_code == 303
    page = web.get("/")
    assert f"Restore {did}" in page.text
    assert relay.admin("repo/takedowns").json()["dids"] == [did]
    restored = web.post("/dashboard/repo", data={"csrf": token, "did": did, "action": "restore"})
    assert restored.status_code == 303 and relay.admin("repo/takedowns").json()["dids"] == []

    # every action is in the admin log, as if made through the API
    log = relay.admin("log").json()["actions"]
    assert [(a["action"], a["subject"]) for a in log[:4]] == [
        ("repo.restore", did), ("repo.takedown", did),
        ("host.unban", fake.hostname), ("host.ban", fake.hostname),
    ]
    assert "spam <b>everywhere</b>" in log[1]["detail"]
    html = web.get("/").text
    assert "repo.takedown" in html and "spam &lt;b&gt;everywhere&lt;/b&gt;" in html

    # bad input comes back as a message on the dashboard, never a crash
    unknown = web.post("/dashboard/host", data={"csrf": token, "host": "nowhere.test",
                                               "action": "ban"})
    assert unknown.status_code == 404 and "unknown host: nowhere.test" in unknown.text
    bad_did = web.post("/dashboard/repo", data={"csrf": token, "did": "not-a-did",
                                               "action": "takedown"})
    assert bad_did.status_code == 400 and 'class="msg bad"' in bad_did.text
    odd = web.post("/dashboard/repo", data={"csrf": token, "did": did, "action": "delete"})
    assert odd.status_code == 400 and "unknown repo action" in odd.text

    out = web.post("/dashboard/logout", data={"csrf": token})
    assert out.status_code == 303
    assert web.post("/dashboard/host", data={"csrf": token, "host": fake.hostname,
                                             "action": "ban"}).status_code == 401


def test_sign_in_is_off_without_an_admin_password(tmp_path: Path) -> None:
    plc = ServerThread(create_plc_app(PlcConfig(data_dir=tmp_path / "plc")))
    plc_url = plc.start()
    try:
        with running_relay(tmp_path, plc_url, admin_password=None) as relay:
            with httpx.Client(base_url=relay.url) as web:
                assert web.get("/dashboard/login").status_code == 403
                home = web.get("/")
                assert home.status_code == 200 and "No host yet" in home.text
                assert web.post("/dashboard/login", data={"password": ""}).status_code == 403
    finally:
        plc.stop()
