"""Tokens and the record of what was sent: the relay's only access to the store.

Deliveries are written before the client is told 250, so that an open can never arrive for a
copy the store does not know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import erasure, storage
from pixelserver.exclusions import excluded
from pixelserver.tokens import mint_token, pixel_url

__all__ = ["mint_token", "pixel_url", "record_message", "record_outcomes"]

EXCLUDED = "excluded"  # the untracked reason of a recipient on the user's exclusion list


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
        # Recipients erased on request are never tracked again (only a keyed hash is kept).
        forgotten = await erasure.forgotten_among(session, owner.id, recipients)
        key = await storage.token_key(session)
        new = []
        for r in recipients:
            never = r in forgotten or excluded(r, exclusions)
            reason = untracked_reason or (EXCLUDED if never else None)
            new.append(
                storage.NewDelivery(
                    recipient=r,
                    token=mint_token(key),
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
