"""The dashboard as HTML, and as the JSON view its script polls.

Every figure that changes while the page is open is an element with a
``data-live`` key; :func:`live_texts` gives the text of each key, used both
when the page is rendered and in the JSON view, so the script only copies
texts into place and the page reads the same with or without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from roost.web import CsrfToken, Markup, Templates, join, render

from relay.web.stats import (
    CHART_HEIGHT,
    CHART_SPAN_S,
    CHART_WIDTH,
    ConsumerView,
    HostView,
    Snapshot,
)

__all__ = [
    "MAX_DID_CHARS",
    "MAX_REASON_CHARS",
    "POLL_MS",
    "as_json",
    "dashboard_body",
    "live_texts",
    "login_body",
]

#: How often the page's script asks for fresh figures.
POLL_MS: Final = 2000
#: Longest DID and takedown reason the forms take.
MAX_DID_CHARS: Final = 2048
MAX_REASON_CHARS: Final = 500
#: Failure reasons listed per host before "and N more".
FAILURES_SHOWN: Final = 8

_templates = Templates("relay.web")
_STATUS_BADGE: Final = {"active": "good", "idle": "", "offline": "warn", "banned": "bad"}


def _count(n: int) -> str:
    return f"{n:,}"


def _rate(rate: float | None) -> str:
    if rate is None:
        return "–"
    return f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}"


def _time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _failures(host: HostView) -> str:
    if not host.failures:
        return "none"
    shown = [f"{reason} {n:,}" for reason, n in host.failures[:FAILURES_SHOWN]]
    rest = len(host.failures) - FAILURES_SHOWN
    return " · ".join(shown) + (f" · and {rest} more" if rest > 0 else "")


def _link(host: HostView) -> str:
    return "connected" if host.connected else "not connected"


def _position(consumer: ConsumerView) -> str:
    return "–" if consumer.position is None else _count(consumer.position)


def live_texts(snap: Snapshot) -> dict[str, str]:
    """The text of every ``data-live`` element of the page."""
    texts = {
        "head": _count(snap.head),
        "rate": _rate(snap.rate),
        "connected": f"{sum(h.connected for h in snap.hosts)} of {len(snap.hosts)}",
        "consumers": _count(len(snap.consumers)),
        "dropped": _count(snap.dropped_consumers),
        "chart-top": _rate(snap.chart.top),
    }
    for h in snap.hosts:
        texts[f"host:{h.id}:link"] = _link(h)
        texts[f"host:{h.id}:cursor"] = _count(h.cursor)
        texts[f"host:{h.id}:accounts"] = _count(h.accounts)
        texts[f"host:{h.id}:rate"] = _rate(h.rate)
        texts[f"host:{h.id}:accepted"] = _count(h.accepted)
        texts[f"host:{h.id}:failures"] = _failures(h)
    for c in snap.consumers:
        texts[f"consumer:{c.id}:lag"] = _count(c.lag)
        texts[f"consumer:{c.id}:position"] = _position(c)
        texts[f"consumer:{c.id}:sent"] = _count(c.events_sent)
    return texts


def as_json(snap: Snapshot, *, admin: bool) -> dict[str, Any]:
    """The JSON view: the figures, the chart, and the page's live texts."""
    hosts = [
        {
            "hostname": h.name, "status": h.status, "connected": h.connected, "seq": h.cursor,
            "accountCount": h.accounts, "eventsAccepted": h.accepted, "eventsPerSecond": h.rate,
            "failures": dict(h.failures),
        }
        for h in snap.hosts
    ]
    consumers = [
        {
            "id": c.id, "userAgent": c.user_agent, "connectedAt": c.connected_at,
            "seq": c.position, "lag": c.lag, "eventsSent": c.events_sent,
            **({"remoteAddr": c.remote} if admin else {}),
        }
        for c in snap.consumers
    ]
    return {
        "seq": snap.head,
        "eventsPerSecond": snap.rate,
        "hosts": hosts,
        "consumers": consumers,
        "droppedConsumers": snap.dropped_consumers,
        "chart": {"points": snap.chart.points, "area": snap.chart.area, "top": snap.chart.top},
        "layout": snap.layout,
        "live": live_texts(snap),
    }


# -- HTML ----------------------------------------------------------------------------------


def _host_actions(host: HostView, csrf: CsrfToken) -> Markup:
    if host.status == "banned":
        action, label, extra = "unban", f"Unban {host.name}", Markup("")
    else:
        action, label = "ban", f"Ban {host.name}"
        extra = render(' data-confirm="$q"',
                       q=f"Ban {host.name}? The relay drops its connection and its events.")
    return render(
        '<div class="actions"><form method="post" action="/dashboard/host"$extra>$csrf'
        '<input type="hidden" name="host" value="$host">'
        '<input type="hidden" name="action" value="$action">'
        '<button type="submit"$cls>$label</button></form></div>',
        extra=extra, csrf=csrf.field(), host=host.name, action=action, label=label,
        cls=Markup(' class="danger"' if action == "ban" else ' class="secondary"'),
    )


def _host_row(host: HostView, texts: dict[str, str], csrf: CsrfToken | None) -> Markup:
    error = ""
    if host.last_error:
        error = render('<dt>Last error</dt><dd class="mono small">$e</dd>', e=host.last_error)
    return _templates.render(
        "host_row.html",
        id=host.id,
        name=host.name,
        status=host.status,
        status_class=_STATUS_BADGE.get(host.status, ""),
        link=texts[f"host:{host.id}:link"],
        cursor=texts[f"host:{host.id}:cursor"],
        accounts=texts[f"host:{host.id}:accounts"],
        rate=texts[f"host:{host.id}:rate"],
        accepted=texts[f"host:{host.id}:accepted"],
        failures=texts[f"host:{host.id}:failures"],
        error=error,
        actions=_host_actions(host, csrf) if csrf is not None else "",
    )


def _consumer_row(consumer: ConsumerView, texts: dict[str, str], admin: bool) -> Markup:
    remote = render("<dt>Address</dt><dd><code>$r</code></dd>", r=consumer.remote) if admin else ""
    return _templates.render(
        "consumer_row.html",
        id=consumer.id,
        agent=consumer.user_agent or "no user agent",
        lag=texts[f"consumer:{consumer.id}:lag"],
        position=texts[f"consumer:{consumer.id}:position"],
        sent=texts[f"consumer:{consumer.id}:sent"],
        since=_time(consumer.connected_at),
        remote=remote,
    )


def _chart(snap: Snapshot, texts: dict[str, str]) -> Markup:
    return _templates.render(
        "chart.html",
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        half=CHART_HEIGHT // 2,
        minutes=f"{CHART_SPAN_S / 60:g}",
        area=snap.chart.area,
        points=snap.chart.points,
        top=texts["chart-top"],
    )


def _takedown_row(did: str, csrf: CsrfToken) -> Markup:
    return render(
        '<li><div class="row-head"><code class="name">$did</code></div>'
        '<div class="actions"><form method="post" action="/dashboard/repo">$csrf'
        '<input type="hidden" name="did" value="$did">'
        '<input type="hidden" name="action" value="restore">'
        '<button type="submit" class="secondary">Restore $did</button></form></div></li>',
        did=did, csrf=csrf.field(),
    )


def _log_row(entry: Mapping[str, Any]) -> Markup:
    return render(
        '<li><div class="row-head"><span class="name">$action</span><code>$subject</code>'
        '<span class="muted small">$time</span></div><div class="small mono">$detail</div></li>',
        action=entry["action"], subject=entry["subject"], time=entry["time"],
        detail=entry["detail"],
    )


def _admin(csrf: CsrfToken, takedowns: Sequence[str], log: Sequence[Mapping[str, Any]]) -> Markup:
    empty_takedowns = render('<li class="muted">$t</li>', t="No repo is taken down.")
    return _templates.render(
        "admin.html",
        csrf=csrf.field(),
        max_did=MAX_DID_CHARS,
        max_reason=MAX_REASON_CHARS,
        takedown_count=len(takedowns),
        takedowns=join(_takedown_row(did, csrf) for did in takedowns) or empty_takedowns,
        log=join(_log_row(entry) for entry in log)
        or render('<li class="muted">$t</li>', t="Nothing yet."),
    )


def dashboard_body(
    snap: Snapshot,
    *,
    firehose: str,
    csrf: CsrfToken | None,
    takedowns: Sequence[str] = (),
    log: Sequence[Mapping[str, Any]] = (),
) -> Markup:
    """The whole dashboard; ``csrf`` (an admin's) adds the buttons and the admin cards."""
    texts = live_texts(snap)
    admin = csrf is not None
    hosts = join(_host_row(h, texts, csrf) for h in snap.hosts)
    consumers = join(_consumer_row(c, texts, admin) for c in snap.consumers)
    return _templates.render(
        "dashboard.html",
        poll_ms=POLL_MS,
        layout=snap.layout,
        firehose=firehose,
        head=texts["head"],
        rate=texts["rate"],
        connected=texts["connected"],
        consumers_now=texts["consumers"],
        dropped=texts["dropped"],
        chart=_chart(snap, texts),
        host_count=len(snap.hosts),
        hosts=render('<ul class="rows">$r</ul>', r=hosts) if snap.hosts
        else render('<p class="muted">$t</p>', t="No host yet: a PDS asks to be crawled "
                    "(com.atproto.sync.requestCrawl), or the operator adds one."),
        consumer_count=len(snap.consumers),
        consumers=render('<ul class="rows">$r</ul>', r=consumers) if snap.consumers
        else render('<p class="muted">$t</p>', t="Nobody is subscribed to the firehose."),
        admin=_admin(csrf, takedowns, log) if csrf is not None else "",
    )


def login_body(csrf: CsrfToken) -> Markup:
    return _templates.render("login.html", csrf=csrf.field())
