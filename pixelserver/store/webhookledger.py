"""The webhook ledger: claiming due events, recording each attempt and its answer.

A row is claimed by a compare-and-set on its status, committed before anything is posted, as
digests are (pixelserver/store/digests.py): when two processes race for a row, one update
matches and the other's matches nothing, so no event is posted twice at once. Every attempt is
kept with the start of what the receiver answered, for Settings and the API.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.store.schema import User, utcnow
from pixelserver.store.webhooks import PENDING, RETRY, SENDING, SENT
from pixelserver.store.webhookschema import WebhookAttempt, WebhookEndpoint, WebhookMessage

RESPONSE_KEPT = 500  # characters of a receiver's answer kept per attempt


@dataclass(frozen=True)
class Claim:
    id: int
    msg_id: str
    event_type: str
    url: str
    secret: str
    payload: str
    attempts: int
    created_at: dt.datetime


async def claim_due(
    session: AsyncSession, worker: str, now: dt.datetime, limit: int = 50
) -> list[Claim]:
    """Rows whose (next) try is due, each taken by compare-and-set on its status: when two
    processes race for a row, one update matches and the other's matches nothing."""
    due = (
        await session.execute(
            select(WebhookMessage, WebhookEndpoint.url, WebhookEndpoint.secret)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookMessage.endpoint_id)
            .where(WebhookMessage.status.in_((PENDING, RETRY)), WebhookMessage.next_try_at <= now)
            .order_by(WebhookMessage.next_try_at, WebhookMessage.id)
            .limit(limit)
        )
    ).all()
    claims = []
    for row, url, secret in due:
        taken = await session.execute(
            update(WebhookMessage)
            .where(WebhookMessage.id == row.id, WebhookMessage.status == row.status)
            .values(status=SENDING, claimed_by=worker[:100], claimed_at=now)
        )
        if taken.rowcount == 1:
            claims.append(
                Claim(
                    row.id,
                    row.msg_id,
                    row.event_type,
                    url,
                    secret,
                    row.payload,
                    row.attempts,
                    row.created_at,
                )
            )
    return claims


async def record_attempt(
    session: AsyncSession,
    claim: Claim,
    *,
    at: dt.datetime,
    status: str,
    status_code: int | None,
    response: str,
    error: str,
    seconds: float,
    next_try_at: dt.datetime | None,
) -> None:
    """One attempt and its answer, and the row's new status, in one transaction."""
    session.add(
        WebhookAttempt(
            webhook_message_id=claim.id,
            at=at,
            status_code=status_code,
            response=response[:RESPONSE_KEPT],
            error=error[:1000],
            seconds=round(seconds, 3),
        )
    )
    values: dict[str, Any] = {
        "status": status,
        "attempts": WebhookMessage.attempts + 1,
        "next_try_at": next_try_at,
        "last_error": error[:1000] if error else ("" if status == SENT else f"HTTP {status_code}"),
    }
    if status == SENT:
        values["sent_at"] = at
    await session.execute(
        update(WebhookMessage)
        .where(WebhookMessage.id == claim.id, WebhookMessage.status == SENDING)
        .values(**values)
    )


async def release_interrupted(session: AsyncSession, older_than: dt.datetime) -> int:
    """Rows left "sending" by a process that died: tried again, with the same webhook-id (a
    receiver following Standard Webhooks drops a repeat it already has)."""
    result = await session.execute(
        update(WebhookMessage)
        .where(WebhookMessage.status == SENDING, WebhookMessage.claimed_at < older_than)
        .values(
            status=RETRY,
            next_try_at=utcnow(),
            last_error="interrupted while sending; tried again",
        )
    )
    return result.rowcount or 0


@dataclass(frozen=True)
class AttemptView:
    event_type: str
    msg_id: str
    status: str
    at: dt.datetime
    status_code: int | None
    response: str
    error: str
    url: str


async def recent_attempts(
    session: AsyncSession, address: str, limit: int = 20
) -> list[AttemptView]:
    """The user's latest attempts, newest first, for Settings."""
    rows = (
        await session.execute(
            select(WebhookAttempt, WebhookMessage, WebhookEndpoint.url)
            .join(WebhookMessage, WebhookMessage.id == WebhookAttempt.webhook_message_id)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookMessage.endpoint_id)
            .join(User, User.id == WebhookEndpoint.user_id)
            .where(User.address == address.strip().lower())
            .order_by(WebhookAttempt.id.desc())
            .limit(limit)
        )
    ).all()
    return [
        AttemptView(m.event_type, m.msg_id, m.status, a.at, a.status_code, a.response, a.error, url)
        for a, m, url in rows
    ]
