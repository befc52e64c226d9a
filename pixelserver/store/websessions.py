"""Web sessions of the report pages: random keys stored hashed, idle and absolute limits,
and the ways a session ends (logout, other devices, password change, erasure).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import (
    delete,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import (
    AsyncSession,
)

from pixelserver.store.accounts import get_or_create_user, token_hash, user_id_of
from pixelserver.store.schema import User, WebSession, utcnow

SEEN_EVERY = dt.timedelta(seconds=60)  # last_seen_at is written at most once a minute


@dataclass(frozen=True)
class SessionLimits:
    """How long a web session lives: `idle` without a request, `absolute` since login."""

    idle: dt.timedelta = dt.timedelta(minutes=30)
    absolute: dt.timedelta = dt.timedelta(hours=12)


async def start_web_session(session: AsyncSession, user_address: str) -> str:
    """A new session for the user; returns its key (for the cookie), which is not stored."""
    user = await get_or_create_user(session, user_address)
    key = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        WebSession(user_id=user.id, key_hash=token_hash(key), created_at=now, last_seen_at=now)
    )
    await session.flush()
    return key


async def web_session_user(
    session: AsyncSession, key: str, limits: SessionLimits, now: dt.datetime | None = None
) -> str | None:
    """The address of the user whose live session `key` is, or None. A session past either
    lifetime is deleted on sight; a live one has its last use noted (once a minute, so that
    reading pages is not a write per request)."""
    now = now or utcnow()
    row = (
        await session.execute(
            select(WebSession.id, WebSession.created_at, WebSession.last_seen_at, User.address)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.key_hash == token_hash(key))
        )
    ).first()
    if row is None:
        return None
    if now - row.created_at > limits.absolute or now - row.last_seen_at > limits.idle:
        await session.execute(delete(WebSession).where(WebSession.id == row.id))
        return None
    if now - row.last_seen_at > SEEN_EVERY:
        await session.execute(
            update(WebSession).where(WebSession.id == row.id).values(last_seen_at=now)
        )
    return row.address


async def end_web_session(session: AsyncSession, key: str) -> None:
    await session.execute(delete(WebSession).where(WebSession.key_hash == token_hash(key)))


async def end_user_sessions(session: AsyncSession, user_address: str) -> int:
    """End every web session of a user (an administrator's action, or part of removing
    them); returns how many there were."""
    result = await session.execute(
        delete(WebSession).where(WebSession.user_id == user_id_of(user_address))
    )
    return result.rowcount or 0


async def count_user_sessions(
    session: AsyncSession, user_address: str, limits: SessionLimits
) -> int:
    """The user's sessions still within both lifetimes."""
    now = utcnow()
    return (
        await session.execute(
            select(func.count(WebSession.id)).where(
                WebSession.user_id == user_id_of(user_address),
                WebSession.created_at >= now - limits.absolute,
                WebSession.last_seen_at >= now - limits.idle,
            )
        )
    ).scalar_one()


async def end_other_sessions(session: AsyncSession, user_address: str, keep_key: str) -> int:
    """End every session of the user but the one with `keep_key` (theirs, in use)."""
    result = await session.execute(
        delete(WebSession).where(
            WebSession.user_id == user_id_of(user_address),
            WebSession.key_hash != token_hash(keep_key),
        )
    )
    return result.rowcount or 0


async def purge_web_sessions(
    session: AsyncSession, limits: SessionLimits, now: dt.datetime | None = None
) -> int:
    """Delete sessions past either lifetime (they would be refused anyway)."""
    now = now or utcnow()
    result = await session.execute(
        delete(WebSession).where(
            (WebSession.created_at < now - limits.absolute)
            | (WebSession.last_seen_at < now - limits.idle)
        )
    )
    return result.rowcount or 0
