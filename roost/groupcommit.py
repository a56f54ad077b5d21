"""The loop behind every single-writer queue: take what is waiting, commit it as one.

The PDS's writer and the relay's event-log writer both own one task that
drains a queue of submissions; each round takes the first submission (waiting
for it) and whatever else is already queued, up to a limit, and hands the batch
to one transaction. ``None`` on the queue means stop once what came before it
has been committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["run_group_commits"]

_T = TypeVar("_T")


async def run_group_commits(
    queue: asyncio.Queue[_T | None], limit: int, commit: Callable[[list[_T]], Awaitable[None]]
) -> None:
    """Commit batches of at most ``limit`` items from ``queue`` until a ``None``."""
    stopping = False
    while not stopping:
        first = await queue.get()
        if first is None:
            break
        batch = [first]
        while len(batch) < limit and not queue.empty():
            item = queue.get_nowait()
            if item is None:
                stopping = True
                break
            batch.append(item)
        await commit(batch)
