"""The deterministic record recipe behind ``tests/fixtures/repo/*.json`` ("roost-recipe-v1").

The same rules are implemented in JavaScript in ``benchmarks/node/recipe.mjs``
(used with ``@atproto/repo`` to generate the fixtures); both sides must agree
byte for byte, so change them together and regenerate the fixtures with
``python benchmarks/gen_repo_fixtures.py``.

Record ``i`` of a set of ``n`` (``0 <= i < n``):

- collection: ``app.bsky.feed.post``, ``app.bsky.feed.like``,
  ``app.bsky.graph.follow`` for ``i % 3`` = 0, 1, 2;
- record key: the TID with ``timestamp_us = 1_700_000_000_000_000 + i * 1_000``
  and ``clock_id = i % 32``;
- ``createdAt``: ``1_700_000_000 + i`` seconds after the epoch, written
  ``YYYY-MM-DDTHH:MM:SS.000Z``;
- post: ``{"$type", "text": "post number <i>", "createdAt"}``;
- like: ``{"$type", "subject": {"uri", "cid"}, "createdAt"}``, a strong ref
  to record ``i - 1`` (always a post, since ``i % 3 == 1``):
  ``at://<FIXTURE_DID>/app.bsky.feed.post/<rkey of i-1>`` and the CID string
  of that record;
- follow: ``{"$type", "subject": <follow_did(i)>, "createdAt"}`` where
  ``follow_did(i)`` is ``did:plc:follow`` followed by ``i`` written in the
  sortable base32 alphabet (the TID alphabet ``234567a-z``), left-padded with
  ``2`` (the zero digit) to 18 characters, so the method-specific part is 24
  valid did:plc characters (``[a-z2-7]``). (Decimal digits would not do:
  0, 1, 8 and 9 are not in the did:plc alphabet.)

Mutations of the 10,000 set (fixture ``recipe-10000.json``):

1. delete every record with ``i % 7 == 0``;
2. then update every *remaining* record with ``i % 11 == 0`` (records with
   ``i % 77 == 0`` are gone and stay gone) to ``edited_record(i)``, at the same
   path whatever its collection.

Only the stdlib and roost's CID/DAG-CBOR primitives are used here.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from typing import Any, Final

from roost import cbor
from roost.cid import CID

__all__ = [
    "RECIPE",
    "COLLECTIONS",
    "FIXTURE_DID",
    "FIXTURE_REV",
    "FIXTURE_KEY_HEX",
    "BASE_TIMESTAMP_US",
    "BASE_CREATED_AT_S",
    "DELETE_EVERY",
    "UPDATE_EVERY",
    "tid_string",
    "recipe_rkey",
    "recipe_path",
    "created_at",
    "follow_did",
    "recipe_record",
    "recipe_records",
    "record_cid",
    "edited_record",
    "is_deleted",
    "is_updated",
    "mutated_records",
]

#: Name of this recipe, stored in every fixture as ``"recipe"``.
RECIPE: Final = "roost-recipe-v1"

COLLECTIONS: Final = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow")

#: The repo's DID: ``did:plc:`` + 24 characters of ``[a-z2-7]``.
FIXTURE_DID: Final = "did:plc:fixture22222222222222222"
#: The fixed commit ``rev``: ``tid_string(1_710_000_000_000_000, 0)``.
FIXTURE_REV: Final = "3knblnd3s2222"
#: k256 private key: SHA-256 of the ASCII bytes ``roost fixture key``.
FIXTURE_KEY_HEX: Final = "6b296a2e2255f18046fe3a48522afda61b9a58ba29973a931fa23a1b16f806ee"

BASE_TIMESTAMP_US: Final = 1_700_000_000_000_000
BASE_CREATED_AT_S: Final = 1_700_000_000
DELETE_EVERY: Final = 7
UPDATE_EVERY: Final = 11

_S32: Final = "234567abcdefghijklmnopqrstuvwxyz"


def tid_string(timestamp_us: int, clock_id: int) -> str:
    """A TID: ``(timestamp_us << 10) | clock_id`` as 13 sortable-base32 characters.

    Most significant 5 bits first; the 65th (top) bit is always 0, so the
    first character is one of ``234567abcdefghij``.
    """
    if not 0 <= timestamp_us < 1 << 53:
        raise ValueError(f"TID timestamp out of range: {timestamp_us}")
    if not 0 <= clock_id < 1 << 10:
        raise ValueError(f"TID clock id out of range: {clock_id}")
    value = (timestamp_us << 10) | clock_id
    return "".join(_S32[(value >> (5 * k)) & 31] for k in range(12, -1, -1))


def _s32_int(value: int, width: int) -> str:
    out = []
    while value:
        out.append(_S32[value & 31])
        value >>= 5
    return "".join(reversed(out)).rjust(width, "2")


def recipe_rkey(i: int) -> str:
    return tid_string(BASE_TIMESTAMP_US + i * 1_000, i % 32)


def recipe_path(i: int) -> str:
    """The repo path ``<collection>/<rkey>`` of record ``i``."""
    return f"{COLLECTIONS[i % 3]}/{recipe_rkey(i)}"


def created_at(i: int) -> str:
    t = _dt.datetime.fromtimestamp(BASE_CREATED_AT_S + i, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def follow_did(i: int) -> str:
    return "did:plc:follow" + _s32_int(i, 18)


def _post(i: int) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": f"post number {i}", "createdAt": created_at(i)}


def record_cid(record: dict[str, Any]) -> CID:
    """The CID of a record given in JSON form."""
    return CID.for_cbor_bytes(cbor.encode(cbor.from_json(record)))


def recipe_record(i: int) -> tuple[str, dict[str, Any]]:
    """(path, record in JSON form) of record ``i``; independent of ``n``."""
    kind = i % 3
    if kind == 0:
        record = _post(i)
    elif kind == 1:
        record = {
            "$type": "app.bsky.feed.like",
            "subject": {
                "uri": f"at://{FIXTURE_DID}/{recipe_path(i - 1)}",
                "cid": str(record_cid(_post(i - 1))),
            },
            "createdAt": created_at(i),
        }
    else:
        record = {
            "$type": "app.bsky.graph.follow",
            "subject": follow_did(i),
            "createdAt": created_at(i),
        }
    return recipe_path(i), record


def recipe_records(n: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, record JSON) for ``i`` in ``0..n-1``, in index order (not path order)."""
    for i in range(n):
        yield recipe_record(i)


def edited_record(i: int) -> dict[str, Any]:
    """The value written by the update mutation at ``recipe_path(i)``."""
    return {
        "$type": "app.bsky.feed.post",
        "text": f"edited {i}",
        "createdAt": "2024-01-01T00:00:00.000Z",
    }


def is_deleted(i: int) -> bool:
    return i % DELETE_EVERY == 0


def is_updated(i: int) -> bool:
    return i % UPDATE_EVERY == 0 and not is_deleted(i)


def mutated_records(
    n: int, *, updates: bool = True
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The record set after the deletes (and, with ``updates``, the updates)."""
    for i in range(n):
        if is_deleted(i):
            continue
        if updates and is_updated(i):
            yield recipe_path(i), edited_record(i)
        else:
            yield recipe_record(i)
