"""Retention: what is older than [privacy] retention_days is deleted, checked every hour.

With several processes on one PostgreSQL each purges; the deletes are idempotent, so that is
only repeated work, never wrong.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import storage

log = logging.getLogger("mailping.retention")
INTERVAL = 3600.0


async def purge_once(sessions: async_sessionmaker[AsyncSession], days: int) -> tuple[int, int]:
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    async with sessions.begin() as session:
        messages, hits = await storage.purge_before(session, cutoff)
    if messages or hits:
        log.info(
            "retention: deleted %d messages and %d hits older than %d days", messages, hits, days
        )
    return messages, hits


async def purge_forever(
    sessions: async_sessionmaker[AsyncSession], days: int, interval: float = INTERVAL
) -> None:
    while True:
        try:
            await purge_once(sessions, days)
        except (SQLAlchemyError, OSError) as exc:  # the store is unreachable: try next time
            log.warning("retention purge failed (%s); will try again", exc)
        await asyncio.sleep(interval)
