"""The record of what was sent: the relay's only access to the store.

The spool is the source of truth for delivery; the store follows it. Tokens are minted when a
message is spooled, and the message with its deliveries is written under those tokens, which
are unique, so writing it again after an outage or a crash finds it there and adds nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import storage
from pixelserver.exclusions import excluded
from pixelserver.tokens import mint_token, pixel_url

__all__ = [
    "STORE_ERRORS",
    "RecordedMessage",
    "record_message",
    "record_outcomes",
    "ExclusionCache",
    "SpooledDelivery",
    "mint_token",
    "pixel_url",
    "record_spooled",
    "sync_outcomes",
]

EXCLUDED = "excluded"  # the untracked reason of a recipient on the user's exclusion list
# The untracked reason when the store could not be asked whom the user never tracks: the mail
# goes out at once, untracked, rather than waiting for our database (or breaking a promise).
STORE_UNAVAILABLE = "store_unavailable"


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a store that is away raises: SQLAlchemy wraps most of it, but asyncpg's
    connection errors (refused, reset, protocol) can arrive as they are."""
    errors: list[type[BaseException]] = [SQLAlchemyError, OSError, TimeoutError]
    try:
        import asyncpg

        errors += [asyncpg.PostgresError, asyncpg.InterfaceError]
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    return tuple(errors)


STORE_ERRORS = _store_errors()


@dataclass(frozen=True)
class SpooledDelivery:
    recipient: str
    token: str
    untracked_reason: str | None


class ExclusionCache:
    """Each user's "never track" list, read fresh for every message (a change in Settings
    holds for the very next mail) with a short deadline. What was last read is kept only for
    when the store is slow or away: then the last known list (at most `ttl` seconds old)
    still holds, and without one the copies go out untracked."""

    def __init__(self, ttl: float = 600.0, timeout: float = 3.0) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, list[str]]] = {}

    async def get(self, sessions: async_sessionmaker[AsyncSession], user: str) -> list[str] | None:
        """The user's exclusions, or None when the store cannot say."""
        now = time.monotonic()
        try:
            value = await asyncio.wait_for(_read_exclusions(sessions, user), self.timeout)
        except STORE_ERRORS:
            hit = self._cache.get(user)
            return hit[1] if hit is not None and now - hit[0] < self.ttl else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[user] = (now, value)
        return value


async def _read_exclusions(sessions: async_sessionmaker[AsyncSession], user: str) -> list[str]:
    async with sessions() as session:
        row = await session.scalar(
            select(storage.User.exclusions).where(storage.User.address == user.strip().lower())
        )
    return list(row or [])


def plan_deliveries(
    recipients: Sequence[str], untracked_reason: str | None, exclusions: list[str] | None
) -> list[SpooledDelivery]:
    """One token per recipient, and whether its copy carries a pixel."""
    out = []
    for r in recipients:
        if untracked_reason:
            reason: str | None = untracked_reason
        elif exclusions is None:
            reason = STORE_UNAVAILABLE
        else:
            reason = EXCLUDED if excluded(r, exclusions) else None
        out.append(SpooledDelivery(r, mint_token(), reason))
    return out


async def record_spooled(
    sessions: async_sessionmaker[AsyncSession],
    *,
    user: str,
    envelope_from: str,
    deliveries: Sequence[SpooledDelivery],
    subject: str,
    message_id_header: str,
    size: int,
    sender_prefix: str,
    accepted_at: dt.datetime,
    maybe_recorded: bool = True,
) -> None:
    """Write the message and its deliveries unless they are there already (`maybe_recorded`
    False: a message this process spooled a moment ago, which cannot be)."""
    async with sessions.begin() as session:
        if maybe_recorded and await storage.tokens_recorded(session, [d.token for d in deliveries]):
            return
        owner = await storage.get_or_create_user(session, user)
        await storage.insert_spooled_message(
            session,
            user_id=owner.id,
            envelope_from=envelope_from,
            subject=subject[:1000],
            message_id_header=message_id_header[:1000],
            size=size,
            accepted_at=accepted_at,
            sender_prefix=sender_prefix,
            deliveries=[
                storage.NewDelivery(
                    recipient=d.recipient,
                    token=d.token,
                    tracking="untracked" if d.untracked_reason else "tracked",
                    untracked_reason=d.untracked_reason,
                )
                for d in deliveries
            ],
        )


async def sync_outcomes(
    sessions: async_sessionmaker[AsyncSession], outcomes: Sequence[tuple[str, str, str]]
) -> None:
    """(token, outcome, reply) as the spool has them."""
    async with sessions.begin() as session:
        await storage.set_outcomes_by_token(session, outcomes)


# Recording without the spool: the deliveries of a message made elsewhere (benchmarks and
# tests that need stored mail without relaying it). The relay itself records through
# record_spooled, after the spool.


@dataclass(frozen=True)
class RecordedDelivery:
    id: int
    recipient: str
    token: str
    tracked: bool


@dataclass(frozen=True)
class RecordedMessage:
    id: int
    deliveries: tuple[RecordedDelivery, ...]


async def record_message(
    sessions: async_sessionmaker[AsyncSession],
    *,
    user: str,
    envelope_from: str,
    recipients: Sequence[str],
    subject: str,
    message_id_header: str,
    size: int,
    untracked_reason: str | None,
    sender_prefix: str = "",
) -> RecordedMessage:
    async with sessions.begin() as session:
        owner = await storage.get_or_create_user(session, user)
        exclusions = owner.exclusions or []
        new = []
        for r in recipients:
            reason = untracked_reason or (EXCLUDED if excluded(r, exclusions) else None)
            new.append(
                storage.NewDelivery(
                    recipient=r,
                    token=mint_token(),
                    tracking="untracked" if reason else "tracked",
                    untracked_reason=reason,
                )
            )
        message, rows = await storage.add_message(
            session,
            user_address=user,
            envelope_from=envelope_from,
            subject=subject[:1000],
            message_id_header=message_id_header[:1000],
            size=size,
            deliveries=new,
            sender_prefix=sender_prefix,
            owner=owner,
        )
        return RecordedMessage(
            id=message.id,
            deliveries=tuple(
                RecordedDelivery(d.id, d.recipient, d.token, d.tracking == "tracked") for d in rows
            ),
        )


async def record_outcomes(
    sessions: async_sessionmaker[AsyncSession], outcomes: Sequence[tuple[int, str, str]]
) -> None:
    async with sessions.begin() as session:
        await storage.set_outcomes(session, outcomes)
