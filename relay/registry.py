"""The relay's working state in memory: hosts, accounts, bans, takedowns.

The store is the durable copy; this is the copy the hot path reads and
changes. A change is made here first (synchronously, so two tasks never
interleave inside one check-and-update) and the new row goes into the same
writer submission as the events it explains. Accounts are cached in LRU
order and loaded from the store on a miss; an account whose latest change is
not durable yet is never evicted, so a reload can never see an older state.

Per host, :class:`HostRuntime` also keeps the operator-visible counters:
events accepted and dropped by reason, rate-limit waits, throttled
accounts, reconnects, resyncs (shown by ``getHostStatus``/``listHosts`` and
the admin API, and logged).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from roost.ratelimit import RateLimit, RateLimiter

from relay.storage import AccountState, HostRow, Store

__all__ = ["HostRuntime", "Registry", "host_rate_limits"]

#: Trusted hosts' event limits (indigo): per second, hour, day.
TRUSTED_RATES = (5_000, 50_000_000, 500_000_000)


def host_rate_limits(row: HostRow) -> tuple[RateLimit, RateLimit, RateLimit]:
    """The three sliding budgets of a host (``spec/relay.md`` section 4)."""
    if row.trusted:
        second, hour, day = TRUSTED_RATES
    else:
        second = 50 + row.account_limit // 1000
        hour = 2_500 + row.account_limit
        day = 20_000 + row.account_limit * 10
    return (
        RateLimit("relay-host-second", second, 1),
        RateLimit("relay-host-hour", hour, 3600),
        RateLimit("relay-host-day", day, 86400),
    )


@dataclass(slots=True)
class HostRuntime:
    """A host row plus what only exists while the relay runs."""

    row: HostRow
    stats: Counter[str] = field(default_factory=Counter)
    limits: tuple[RateLimit, RateLimit, RateLimit] = field(init=False)
    task: asyncio.Task[None] | None = None
    connected: bool = False
    connected_at: float | None = None
    last_error: str | None = None
    #: The cursor durably stored (advanced when a submission commits).
    cursor: int = -1

    def __post_init__(self) -> None:
        self.limits = host_rate_limits(self.row)
        self.cursor = self.row.last_seq

    @property
    def id(self) -> int:
        return self.row.id

    @property
    def name(self) -> str:
        return self.row.hostname

    def refresh_limits(self) -> None:
        self.limits = host_rate_limits(self.row)

    def describe(self) -> dict[str, Any]:
        """The public ``#host`` view (``listHosts`` / ``getHostStatus``)."""
        row = self.row
        out: dict[str, Any] = {
            "hostname": row.hostname,
            "seq": self.cursor,
            "accountCount": row.account_count,
            "status": row.status,
        }
        out["roostLimits"] = {
            "accountLimit": row.account_limit,
            "eventsPerSecond": self.limits[0].points,
            "eventsPerHour": self.limits[1].points,
            "eventsPerDay": self.limits[2].points,
            "trusted": row.trusted,
            "throttledAccounts": self.stats["accounts_throttled"],
            "rateLimitWaits": self.stats["rate_limit_waits"],
        }
        return out

    def details(self) -> dict[str, Any]:
        """The admin view: everything, counters included."""
        return {
            **self.describe(),
            "id": self.row.id,
            "noSsl": self.row.no_ssl,
            "createdAt": self.row.created_at,
            "connected": self.connected,
            "lastError": self.last_error,
            "counters": dict(sorted(self.stats.items())),
        }


class Registry:
    """Hosts and accounts in memory, backed by the store."""

    def __init__(self, store: Store, *, account_cache: int) -> None:
        self.store = store
        self.account_cache = account_cache
        self.hosts: dict[int, HostRuntime] = {}
        self.by_name: dict[str, HostRuntime] = {}
        self.accounts: OrderedDict[str, AccountState] = OrderedDict()
        self.domain_bans: set[str] = set(store.domain_bans())
        self.takendown: set[int] = store.takendown_uids()
        self.rate_limiter = RateLimiter(clock=time.monotonic)
        self._next_uid = store.max_uid()
        for row in store.hosts():
            self.add_host(row)
        self._next_host_id = max(self.hosts, default=0)

    # -- hosts ------------------------------------------------------------------------

    def add_host(self, row: HostRow) -> HostRuntime:
        host = HostRuntime(row)
        self.hosts[row.id] = host
        self.by_name[row.hostname] = host
        return host

    def new_host_id(self) -> int:
        self._next_host_id += 1
        return self._next_host_id

    def host(self, name: str) -> HostRuntime | None:
        return self.by_name.get(name)

    # -- accounts -----------------------------------------------------------------------

    def account(self, did: str) -> AccountState | None:
        """The account (cached, else loaded), or None if the relay has never seen it."""
        acct = self.accounts.get(did)
        if acct is not None:
            self.accounts.move_to_end(did)
            return acct
        acct = self.store.account(did)
        if acct is not None:
            self.accounts[did] = acct
        return acct

    def new_account(self, did: str, host_id: int, status: str, created_at: str) -> AccountState:
        """A new account with the next uid (stored when the caller's submission is)."""
        self._next_uid += 1
        acct = AccountState(self._next_uid, did, host_id, status=status, created_at=created_at)
        self.accounts[did] = acct
        return acct

    def trim(self, durable_number: int) -> None:
        """Evict least recently used accounts whose state is durable (past the cache size)."""
        accounts = self.accounts
        excess = len(accounts) - self.account_cache
        if excess <= 0:
            return
        for did in list(accounts)[: excess * 2]:
            if excess <= 0:
                break
            if accounts[did].dirty_batch <= durable_number:
                del accounts[did]
                excess -= 1
