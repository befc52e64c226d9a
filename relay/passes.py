"""Background work done in passes (digests, webhooks): one loop for all of it.

A pass that fails (the store away: asyncpg's connection errors are OSErrors, not
SQLAlchemy's) is logged once, not every interval, and the next pass tries again; the loop
outlives any one failure, and what fell due meanwhile is done by the next pass that works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def run_passes(
    tick: Callable[[], Awaitable[object]], what: str, interval: float, log: logging.Logger
) -> None:
    failing = False
    while True:
        try:
            await tick()
            if failing:
                log.info("%s passes work again", what)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the loop must outlive any one failure
            if not failing:
                log.exception("%s pass failed; trying again every %g s", what, interval)
            failing = True
        await asyncio.sleep(interval)
