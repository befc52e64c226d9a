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

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.store import appsecrets, erasure, webhooks
from pixelserver.store.accounts import get_or_create_user
from pixelserver.store.messages import (
    NewDelivery,
    add_message,
    insert_spooled_message,
    sender_facts,
    set_outcomes,
    set_outcomes_by_token,
    tokens_recorded,
)
from pixelserver.tokens import mint_token, pixel_url
from pixelserver.verdicts.exclusions import excluded
from pixelserver.verdicts.state import FAILED_OUTCOMES
from pixelserver.vocabulary import Tracking, UntrackedReason

__all__ = [
    "STORE_ERRORS",
    "RecordedMessage",
    "record_message",
    "record_outcomes",
    "ExclusionCache",
    "TrackingFacts",
    "plan_deliveries",
    "SpooledDelivery",
    "mint_token",
    "pixel_url",
    "record_spooled",
    "sync_outcomes",
]

EXCLUDED = (
    UntrackedReason.EXCLUDED
)  # the untracked reason of a recipient on the user's exclusion list
# The untracked reason when the store could not be asked whom the user never tracks: the mail
# goes out at once, untracked, rather than waiting for our database (or breaking a promise).
STORE_UNAVAILABLE = UntrackedReason.STORE_UNAVAILABLE


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


@dataclass(frozen=True)
class TrackingFacts:
    """What the relay must know from the store before it can mint a message's tokens: whom the
    user never tracks (their exclusions, and the recipients forgotten on request, as keyed
    hashes), and the key tokens are tagged with."""

    exclusions: list[str]
    forgotten_hashes: frozenset[str] = frozenset()
    erasure_key: str = ""
    token_key: bytes | None = None

    def never_track(self, recipient: str) -> bool:
        if excluded(recipient, self.exclusions):
            return True
        return bool(self.forgotten_hashes) and (
            erasure.address_hash(self.erasure_key, recipient) in self.forgotten_hashes
        )


class ExclusionCache:
    """Each user's "never track" list (exclusions and forgotten recipients) and the token key,
    read fresh for every message (a change in Settings or a `mailping forget` holds for the
    very next mail) with a short deadline, in one store read. What was last read is kept only
    for when the store is slow or away: then the last known list (at most `ttl` seconds old)
    still holds, and without one the copies go out untracked. The token key never changes,
    so once read it is kept for good."""

    def __init__(self, ttl: float = 600.0, timeout: float = 3.0) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, TrackingFacts]] = {}
        self.token_key: bytes | None = None

    async def get(
        self, sessions: async_sessionmaker[AsyncSession], user: str
    ) -> TrackingFacts | None:
        """The user's facts, or None when the store cannot say."""
        now = time.monotonic()
        try:
            value = await asyncio.wait_for(_read_facts(sessions, user), self.timeout)
        except STORE_ERRORS:
            hit = self._cache.get(user)
            return hit[1] if hit is not None and now - hit[0] < self.ttl else None
        self.token_key = value.token_key
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[user] = (now, value)
        return value


async def _read_facts(sessions: async_sessionmaker[AsyncSession], user: str) -> TrackingFacts:
    async with sessions.begin() as session:  # begin: the first read of a secret makes it
        facts = await sender_facts(session, user)
        return TrackingFacts(
            exclusions=facts.exclusions,
            forgotten_hashes=facts.forgotten_hashes,
            erasure_key=await appsecrets.cached_secret(session, erasure.ERASURE_KEY)
            if facts.forgotten_hashes
            else "",
            token_key=await appsecrets.token_key(session),
        )


def plan_deliveries(
    recipients: Sequence[str],
    untracked_reason: str | None,
    exclusions: TrackingFacts | list[str] | None,
    token_key: bytes | None = None,
) -> list[SpooledDelivery]:
    """One token per recipient, and whether its copy carries a pixel. Tokens are tagged with
    the token key (the pixel admits only tagged ones); without a key (the store away and never
    read) a copy can only go out untracked, with an untagged token that no pixel carries."""
    facts = TrackingFacts(list(exclusions)) if isinstance(exclusions, list) else exclusions
    key = facts.token_key if facts is not None and facts.token_key else token_key
    out = []
    for r in recipients:
        if untracked_reason:
            reason: str | None = untracked_reason
        elif facts is None or key is None:
            reason = STORE_UNAVAILABLE
        else:
            reason = EXCLUDED if facts.never_track(r) else None
        out.append(SpooledDelivery(r, mint_token(key), reason))
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
        if maybe_recorded and await tokens_recorded(session, [d.token for d in deliveries]):
            return
        await insert_spooled_message(
            session,
            user_address=user,
            envelope_from=envelope_from,
            subject=subject[:1000],
            message_id_header=message_id_header[:1000],
            size=size,
            accepted_at=accepted_at,
            sender_prefix=sender_prefix,
            deliveries=[
                NewDelivery(
                    recipient=d.recipient,
                    token=d.token,
                    tracking=Tracking.UNTRACKED if d.untracked_reason else Tracking.TRACKED,
                    untracked_reason=d.untracked_reason,
                )
                for d in deliveries
            ],
        )
        await webhooks.enqueue_untracked(
            session, [d.token for d in deliveries if d.untracked_reason]
        )


async def sync_outcomes(
    sessions: async_sessionmaker[AsyncSession], outcomes: Sequence[tuple[str, str, str]]
) -> None:
    """(token, outcome, reply) as the spool has them."""
    async with sessions.begin() as session:
        await set_outcomes_by_token(session, outcomes)
        await webhooks.enqueue_failures_by_token(
            session, [token for token, outcome, _ in outcomes if outcome in FAILED_OUTCOMES]
        )


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
        owner = await get_or_create_user(session, user)
        exclusions = owner.exclusions or []
        # Recipients erased on request are never tracked again (only a keyed hash is kept).
        forgotten = await erasure.forgotten_among(session, owner.id, recipients)
        key = await appsecrets.token_key(session)
        new = []
        for r in recipients:
            never = r in forgotten or excluded(r, exclusions)
            reason = untracked_reason or (EXCLUDED if never else None)
            new.append(
                NewDelivery(
                    recipient=r,
                    token=mint_token(key),
                    tracking=Tracking.UNTRACKED if reason else Tracking.TRACKED,
                    untracked_reason=reason,
                )
            )
        message, rows = await add_message(
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
        await webhooks.enqueue_untracked(session, [d.token for d in rows if d.untracked_reason])
        return RecordedMessage(
            id=message.id,
            deliveries=tuple(
                RecordedDelivery(d.id, d.recipient, d.token, d.tracking == Tracking.TRACKED)
                for d in rows
            ),
        )


async def record_outcomes(
    sessions: async_sessionmaker[AsyncSession], outcomes: Sequence[tuple[int, str, str]]
) -> None:
    async with sessions.begin() as session:
        await set_outcomes(session, outcomes)
        await webhooks.enqueue_failures(
            session, [d for d, outcome, _ in outcomes if outcome in FAILED_OUTCOMES]
        )
