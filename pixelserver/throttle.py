"""Login throttling, one implementation for the report pages and the relay.

Each attempt is counted before the slow check (an argon2 hash or a login at the user's
provider), so guesses sent all at once cannot slip past the limit while the first are still
being checked. Attempts are counted per username (whatever network they come from) and per
network (/24 or /48, whatever usernames it tries), in the store, so every process on it
counts together. A successful login clears its username and takes its own attempt back from
its network. Keys never hold a full address or a plain username.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

from sqlalchemy import case, delete, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.networks import mask
from pixelserver.storage import LoginAttempt, UTCDateTime, utcnow

LIMIT = 5
WINDOW = 600.0


def user_key(username: str) -> str:
    return "u:" + hashlib.sha256(username.strip().lower().encode()).hexdigest()[:64]


def network_key(ip: str) -> str:
    return "n:" + (mask(ip) or ip)[:70]


class LoginThrottle:
    """Attempts per key within `window` seconds; more than `limit` are refused. Without a
    store (`sessions` None) it counts in this process only."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession] | None,
        *,
        limit: int = LIMIT,
        window: float = WINDOW,
    ) -> None:
        self.sessions = sessions
        self.limit = limit
        self.window = window
        self._local: dict[str, tuple[float, int]] = {}

    async def attempt(self, *keys: str) -> int:
        """Count one attempt against every key; returns the highest count (the caller refuses
        when it is over `limit`)."""
        if self.sessions is None:
            return max((self._bump(k) for k in keys), default=0)
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=self.window)
        highest = 0
        async with self.sessions.begin() as session:
            for key in keys:
                highest = max(highest, await _bump(session, key, now, cutoff))
        return highest

    async def attempts(self, key: str) -> int:
        """The count so far for `key`, without adding to it."""
        if self.sessions is None:
            start, n = self._local.get(key, (0.0, 0))
            return n if time.monotonic() - start < self.window else 0
        cutoff = utcnow() - dt.timedelta(seconds=self.window)
        async with self.sessions() as session:
            n = (
                await session.execute(
                    select(LoginAttempt.attempts).where(
                        LoginAttempt.key == key, LoginAttempt.window_start >= cutoff
                    )
                )
            ).scalar_one_or_none()
        return n or 0

    async def passed(self, user: str | None = None, network: str | None = None) -> None:
        """A login succeeded: its username starts afresh, its network loses this attempt."""
        if self.sessions is None:
            if user:
                self._local.pop(user, None)
            if network and network in self._local:
                start, n = self._local[network]
                self._local[network] = (start, max(0, n - 1))
            return
        async with self.sessions.begin() as session:
            if user:
                await session.execute(delete(LoginAttempt).where(LoginAttempt.key == user))
            if network:
                await session.execute(
                    update(LoginAttempt)
                    .where(LoginAttempt.key == network, LoginAttempt.attempts > 0)
                    .values(attempts=LoginAttempt.attempts - 1)
                )

    def _bump(self, key: str) -> int:
        now = time.monotonic()
        start, n = self._local.get(key, (now, 0))
        if now - start >= self.window:
            start, n = now, 0
        self._local[key] = (start, n + 1)
        return n + 1


async def _bump(session: AsyncSession, key: str, now: dt.datetime, cutoff: dt.datetime) -> int:
    """One atomic upsert: a new window, or one more attempt in the current one."""
    table = LoginAttempt.__table__
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    stale = table.c.window_start < literal(cutoff, UTCDateTime())
    stmt = (
        insert(table)
        .values(key=key, window_start=now, attempts=1)
        .on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "attempts": case((stale, 1), else_=table.c.attempts + 1),
                "window_start": case(
                    (stale, literal(now, UTCDateTime())), else_=table.c.window_start
                ),
            },
        )
        .returning(table.c.attempts)
    )
    return (await session.execute(stmt)).scalar_one()


async def purge(session: AsyncSession, window: float = WINDOW) -> int:
    """Forget windows that have passed (retention)."""
    cutoff = utcnow() - dt.timedelta(seconds=window)
    result = await session.execute(delete(LoginAttempt).where(LoginAttempt.window_start < cutoff))
    return result.rowcount or 0
