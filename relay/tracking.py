"""Tokens and the record of what was sent: the relay's only access to the store.

Deliveries are written before the client is told 250, so that an open can never arrive for a
copy the store does not know.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import storage

TOKEN_BYTES = 16  # 128 bits: unguessable, so a token alone proves which copy was opened


def mint_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def pixel_url(public_url: str, path: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/{path}/{token}.gif"


@dataclass(frozen=True)
class RecordedDelivery:
    id: int
    recipient: str
    token: str


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
    new = [
        storage.NewDelivery(
            recipient=r,
            token=mint_token(),
            tracking="untracked" if untracked_reason else "tracked",
            untracked_reason=untracked_reason,
        )
        for r in recipients
    ]
    async with sessions.begin() as session:
        message, rows = await storage.add_message(
            session,
            user_address=user,
            envelope_from=envelope_from,
            subject=subject[:1000],
            message_id_header=message_id_header[:1000],
            size=size,
            deliveries=new,
            sender_prefix=sender_prefix,
        )
        return RecordedMessage(
            id=message.id,
            deliveries=tuple(RecordedDelivery(d.id, d.recipient, d.token) for d in rows),
        )


async def record_outcomes(
    sessions: async_sessionmaker[AsyncSession], outcomes: Sequence[tuple[int, str, str]]
) -> None:
    async with sessions.begin() as session:
        await storage.set_outcomes(session, outcomes)
