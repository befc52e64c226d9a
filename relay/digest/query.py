"""What one user's digest reports, read from the stored states (no hit is read).

Kept beside the other report queries so the digest and the web page can never disagree on
what a state means: both show DeliveryRow.chip.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.oauthcode import LABELS
from pixelserver.store import mailaccounts
from pixelserver.store.queries import (
    MESSAGE_COLUMNS,
    DeliveryRow,
    MessageRow,
    delivery_row,
    owned,
    with_deliveries,
)
from pixelserver.store.schema import Delivery, Message, User
from pixelserver.verdicts.state import FAILED, OPENED
from pixelserver.vocabulary import Tracking

MAX_MESSAGES = 100  # in one digest; the rest are counted and linked
UNOPENED_DAYS = 30


@dataclass(frozen=True)
class LateOpen:
    """A recipient of older mail who read it during the period."""

    message_id: int
    subject: str
    sent_at: dt.datetime
    delivery: DeliveryRow


@dataclass(frozen=True)
class DigestData:
    user: str
    start: dt.datetime
    end: dt.datetime
    sent: list[MessageRow]
    more_sent: int  # beyond MAX_MESSAGES
    late_opens: list[LateOpen]
    unopened: int  # messages of the last UNOPENED_DAYS days that nobody has read yet
    # The user's connected mail account stopped working (their mail waits): words, or "".
    account_problem: str = ""

    @property
    def failed(self) -> list[tuple[MessageRow, DeliveryRow]]:
        return [(m, d) for m in self.sent for d in m.deliveries if d.state.state == FAILED]

    @property
    def empty(self) -> bool:
        """Nothing sent and nothing opened: a day worth no email unless asked for."""
        return not self.sent and not self.late_opens and not self.account_problem


async def collect(
    session: AsyncSession, user: str, start: dt.datetime, end: dt.datetime
) -> DigestData:
    in_period = and_(Message.accepted_at >= start, Message.accepted_at < end)
    q = owned(select(*MESSAGE_COLUMNS).join(User, User.id == Message.user_id), user)
    rows = (
        await session.execute(q.where(in_period).order_by(Message.id).limit(MAX_MESSAGES))
    ).all()
    total = (
        await session.execute(owned(select(func.count(Message.id)), user).where(in_period))
    ).scalar_one()
    late = await session.execute(
        owned(
            select(Message.id, Message.subject, Message.accepted_at, Delivery)
            .join(Delivery, Delivery.message_id == Message.id)
            .where(
                Message.accepted_at < start,
                Delivery.last_open >= start,
                Delivery.last_open < end,
            ),
            user,
        )
        .order_by(Delivery.last_open)
        .limit(MAX_MESSAGES)
    )
    opened_somewhere = select(Delivery.id).where(
        Delivery.message_id == Message.id, Delivery.state == OPENED
    )
    unopened = (
        await session.execute(
            owned(select(func.count(Message.id)), user).where(
                Message.accepted_at >= end - dt.timedelta(days=UNOPENED_DAYS),
                Message.accepted_at < end,
                ~opened_somewhere.exists(),
                select(Delivery.id)
                .where(Delivery.message_id == Message.id, Delivery.tracking == Tracking.TRACKED)
                .exists(),
            )
        )
    ).scalar_one()
    return DigestData(
        user=user,
        start=start,
        end=end,
        sent=await with_deliveries(session, rows),
        more_sent=max(0, total - len(rows)),
        late_opens=[
            LateOpen(i, subject, sent, delivery_row(d)) for i, subject, sent, d in late.all()
        ],
        unopened=unopened,
        account_problem=await _account_problem(session, user),
    )


async def _account_problem(session: AsyncSession, user: str) -> str:
    found = await mailaccounts.connection(session, user)
    if found is None or found.status != mailaccounts.BROKEN:
        return ""
    label = LABELS.get(found.provider, found.provider)
    return (
        f"Your {label} account ({found.address}) stopped working for MailPing: {found.problem}. "
        "Your mail waits in the queue until you connect it again in Settings."
    )
