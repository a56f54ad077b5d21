"""``app.bsky.actor.getPreferences`` / ``putPreferences``: private per-account preferences.

The PDS keeps the preferences itself (the AppView never sees them). Only
``app.bsky.*`` preference types are accepted; ``putPreferences`` replaces the
whole set the caller may see.

Full-access-only preferences (as in the reference PDS):
``app.bsky.actor.defs#personalDetailsPref`` (the birth date). App-password
sessions do not see it in ``getPreferences``, may not send it to
``putPreferences`` (``InvalidRequest``), and their ``putPreferences`` leaves the
stored one in place.

``app.bsky.actor.defs#declaredAgePref`` is read-only (derived by the AppView
from the birth date); this PDS does not compute it, and drops it from
``putPreferences`` input rather than storing a client-supplied value.
"""

from __future__ import annotations

import json
from typing import Any

from roost.auth import FULL_ACCESS_SCOPES, SessionCredentials
from roost.errors import RoostError
from roost.xrpc import XrpcContext, XrpcRouter

from pds.api.server import ACCESS
from pds.context import pds
from pds.sqlite import PdsDatabase
from pds.writer import WriteContext

__all__ = ["FULL_ACCESS_PREFS", "READ_ONLY_PREFS", "register"]

#: Preference types only a main-password session may read or write.
FULL_ACCESS_PREFS = frozenset({"app.bsky.actor.defs#personalDetailsPref"})
#: Preference types clients may not set.
READ_ONLY_PREFS = frozenset({"app.bsky.actor.defs#declaredAgePref"})
#: Namespace of the preferences kept here.
PREF_NAMESPACE = "app.bsky."


def register(router: XrpcRouter) -> None:
    router.query("app.bsky.actor.getPreferences", auth=ACCESS)(get_preferences)
    router.procedure("app.bsky.actor.putPreferences", auth=ACCESS)(put_preferences)


def _full_access(ctx: XrpcContext) -> bool:
    creds = ctx.auth
    return isinstance(creds, SessionCredentials) and creds.scope in FULL_ACCESS_SCOPES


def _pref_type(value: str) -> str:
    try:
        pref = json.loads(value)
    except ValueError:
        return ""
    kind = pref.get("$type") if isinstance(pref, dict) else None
    return kind if isinstance(kind, str) else ""


async def get_preferences(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    full = _full_access(ctx)
    prefs = []
    for value in p.db.preferences(ctx.auth.did):  # type: ignore[arg-type]
        kind = _pref_type(value)
        if not kind.startswith(PREF_NAMESPACE) or (not full and kind in FULL_ACCESS_PREFS):
            continue
        prefs.append(json.loads(value))
    return {"preferences": prefs}


async def put_preferences(ctx: XrpcContext) -> None:
    p = pds(ctx)
    did: str = ctx.auth.did  # type: ignore[assignment]
    full = _full_access(ctx)
    values: list[str] = []
    for pref in ctx.input["preferences"]:
        kind = pref.get("$type") if isinstance(pref, dict) else None
        if not isinstance(kind, str) or not kind:
            raise RoostError("Preference is missing a $type")
        if not kind.startswith(PREF_NAMESPACE):
            raise RoostError("Some preferences are not in the app.bsky namespace")
        if kind in FULL_ACCESS_PREFS and not full:
            raise RoostError("Do not have authorization to set preferences.")
        if kind in READ_ONLY_PREFS:
            continue
        values.append(json.dumps(pref, ensure_ascii=False, separators=(",", ":")))

    def job(w: WriteContext) -> None:
        kept = []
        if not full:
            # what the caller cannot see stays as it is
            kept = [v for v in w.db.preferences(did) if _pref_type(v) in FULL_ACCESS_PREFS]
        for sql, params in PdsDatabase.replace_preferences_sql(did, values + kept):
            w.execute(sql, *params)

    await p.writer.submit(job)
