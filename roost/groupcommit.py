"""The loop behind every single-writer queue: take what is waiting, commit it as one.

The PDS's writer and the relay's event-log writer both own one task that
drains a queue of submissions; each round takes the first submission (waiting
for it) and whatever else is already queued, up to a limit, and hands the batch
to one transaction. ``None`` on the queue means stop once what came before it
has been committed. The relay's per-host reader uses the same loop to group
frames for verification, with its own end marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["run_group_commits"]


async def run_group_commits(
    queue: asyncio.Queue[Any],
    limit: int,
    commit: Callable[[list[Any]], Awaitable[bool | None]],
    *,
    end: object = None,
) -> None:
    """Commit batches of at most ``limit`` items from ``queue`` until ``end`` is taken
    (after committing what came before it) or ``commit`` returns True."""
    stopping = False
    while not stopping:
        first = await queue.get()
        if first is end:
            break
        batch = [first]
        while len(batch) < limit and not queue.empty():
            item = queue.get_nowait()
            if item is end:
                stopping = True
                break
            batch.append(item)
        if await commit(batch):
            break
