"""The relay's own XRPC errors (names from the ``com.atproto.sync`` lexicons and indigo).

Each is a subclass of the matching :mod:`roost.errors` class, with the
status indigo's relay answers with::

    HostBanned            400  requestCrawl for a banned host or domain
    UnreachableHost       400  HostNotFound: describeServer did not answer (requestCrawl)
    UnknownHost           404  HostNotFound: getHostStatus for a host never seen
    RelayRepoNotFound     404  RepoNotFound
    RepoNotSynchronized   404  getLatestCommit before any commit was seen
    InactiveRepo          403  RepoTakendown / RepoSuspended / RepoDeactivated /
                               RepoDeleted / RepoInactive, by the account's status
"""

from __future__ import annotations

from roost.errors import AccountError, NotFound, RepoNotFound, RoostError

__all__ = [
    "HostBanned",
    "InactiveRepo",
    "RelayRepoNotFound",
    "RepoNotSynchronized",
    "UnknownHost",
    "UnreachableHost",
    "inactive_repo",
]


class HostBanned(RoostError):
    error = "HostBanned"


class UnreachableHost(RoostError):
    error = "HostNotFound"


class UnknownHost(NotFound):
    error = "HostNotFound"


class RelayRepoNotFound(RepoNotFound):
    status = 404


class RepoNotSynchronized(NotFound):
    error = "RepoNotSynchronized"


class InactiveRepo(AccountError):
    status = 403


_INACTIVE_NAMES = {
    "takendown": "RepoTakendown",
    "suspended": "RepoSuspended",
    "deactivated": "RepoDeactivated",
    "deleted": "RepoDeleted",
}


def inactive_repo(did: str, status: str | None) -> InactiveRepo:
    """The 403 error for an account that is not active (by its public status)."""
    exc = InactiveRepo(f"Repo is not active: {did} ({status or 'inactive'})")
    exc.error = _INACTIVE_NAMES.get(status or "", "RepoInactive")
    return exc
