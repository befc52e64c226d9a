"""The relay's records: a message, its deliveries (one per recipient copy) and their outcomes,
and the text a search looks in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    bindparam,
    case,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import (
    AsyncSession,
)

from pixelserver.store.accounts import get_or_create_user
from pixelserver.store.hitrecords import delivery_ids_for_tokens
from pixelserver.store.schema import OUTCOMES, Delivery, Message, User, utcnow
from pixelserver.store.states import refresh_states
from pixelserver.verdicts.state import (
    WAITING_OUTCOMES,
    outcome_state,
)
from pixelserver.vocabulary import Outcome, Source, State, Tracking


def search_text(subject: str, recipients: Iterable[str]) -> str:
    return "\n".join([subject, *recipients])


# --- writes from the relay -----------------------------------------------------------------


@dataclass(frozen=True)
class NewDelivery:
    recipient: str
    token: str
    tracking: str
    untracked_reason: str | None


async def add_message(
    session: AsyncSession,
    *,
    user_address: str,
    sender_prefix: str = "",
    envelope_from: str,
    subject: str,
    message_id_header: str,
    size: int,
    deliveries: Sequence[NewDelivery],
    source: str = Source.RELAY,
    owner: User | None = None,
    accepted_at: dt.datetime | None = None,
    outcome: str = Outcome.PENDING,
) -> tuple[Message, list[Delivery]]:
    """`owner`: the user row when the caller has read it already (one query less);
    `accepted_at`: when the relay took the message, if it is recorded later than that."""
    user = owner or await get_or_create_user(session, user_address)
    message = Message(
        user_id=user.id,
        envelope_from=envelope_from,
        subject=subject,
        message_id_header=message_id_header,
        size=size,
        accepted_at=accepted_at or utcnow(),
        sender_prefix=sender_prefix,
        search_text=search_text(subject, (d.recipient for d in deliveries)),
        source=source,
    )
    session.add(message)
    await session.flush()
    rows = [
        Delivery(
            message_id=message.id,
            recipient=d.recipient,
            token=d.token,
            tracking=d.tracking,
            untracked_reason=d.untracked_reason,
            outcome=outcome,
            state=State.UNTRACKED if d.tracking == Tracking.UNTRACKED else State.NOT_OPENED,
        )
        for d in deliveries
    ]
    session.add_all(rows)
    await session.flush()
    return message, rows


async def set_outcomes(session: AsyncSession, outcomes: Iterable[tuple[int, str, str]]) -> None:
    """(delivery id, outcome, upstream reply) for each copy that was tried, in one statement."""
    now = utcnow()
    rows = []
    for delivery_id, outcome, reply in outcomes:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        rows.append(
            {
                "b_id": delivery_id,
                "outcome": outcome,
                "upstream_reply": reply[:2000],
                "finished_at": None if outcome in WAITING_OUTCOMES else now,
            }
        )
    if rows:
        await session.execute(
            update(Delivery.__table__).where(Delivery.__table__.c.id == bindparam("b_id")),
            rows,
        )
        await refresh_states(session, [r["b_id"] for r in rows])


async def set_outcomes_by_token(
    session: AsyncSession, outcomes: Iterable[tuple[str, str, str]]
) -> None:
    """(token, outcome, upstream reply): what the relay's spool says of each copy, written
    as it is (idempotent, so a catch-up after an outage can repeat it), in one executemany.

    The state follows from the outcome alone, without reading hits: until a copy is accepted
    nobody has it, so it has no hits, and once accepted its outcome never changes again. Only
    an uncertain copy (it may have arrived, and been fetched, before we knew) is recomputed."""
    now = utcnow()
    rows, uncertain = [], []
    for token, outcome, reply in outcomes:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        if outcome == Outcome.UNCERTAIN:
            uncertain.append(token)
        rows.append(
            {
                "b_token": token,
                "b_outcome": outcome,
                "b_reply": reply[:2000],
                "b_finished": None if outcome in WAITING_OUTCOMES else now,
                "b_state": outcome_state(outcome),
            }
        )
    if not rows:
        return
    t = Delivery.__table__
    opened_state = case(
        (t.c.tracking == Tracking.UNTRACKED, State.UNTRACKED.value), else_=State.NOT_OPENED.value
    )
    await session.execute(
        update(t)
        .where(t.c.token == bindparam("b_token"))
        .values(
            outcome=bindparam("b_outcome"),
            upstream_reply=bindparam("b_reply"),
            finished_at=bindparam("b_finished"),
            state=func.coalesce(bindparam("b_state"), opened_state),
            state_changed_at=now,
        ),
        rows,
    )
    if uncertain:
        ids = await delivery_ids_for_tokens(session, uncertain)
        await refresh_states(session, ids.values())


async def insert_spooled_message(
    session: AsyncSession,
    *,
    user_id: int,
    envelope_from: str,
    subject: str,
    message_id_header: str,
    size: int,
    accepted_at: dt.datetime,
    sender_prefix: str,
    deliveries: Sequence[NewDelivery],
    outcome: str = Outcome.QUEUED,
) -> None:
    """A relayed message and its deliveries, below the ORM: one INSERT and one executemany
    (the ORM's unit of work cost the relay most of its time per message)."""
    mt = Message.__table__
    message_id = (
        await session.execute(
            mt.insert()
            .values(
                user_id=user_id,
                envelope_from=envelope_from,
                subject=subject,
                message_id_header=message_id_header,
                size=size,
                accepted_at=accepted_at,
                sender_prefix=sender_prefix,
                search_text=search_text(subject, (d.recipient for d in deliveries)),
                source=Source.RELAY,
            )
            .returning(mt.c.id)
        )
    ).scalar_one()
    waiting = outcome_state(outcome)
    await session.execute(
        Delivery.__table__.insert(),
        [
            {
                "message_id": message_id,
                "recipient": d.recipient,
                "token": d.token,
                "tracking": d.tracking,
                "untracked_reason": d.untracked_reason,
                "outcome": outcome,
                "state": waiting
                or (State.UNTRACKED if d.tracking == Tracking.UNTRACKED else State.NOT_OPENED),
            }
            for d in deliveries
        ],
    )


async def tokens_recorded(session: AsyncSession, tokens: Sequence[str]) -> bool:
    """Whether a spooled message's deliveries are in the store already (catch-up is
    idempotent: tokens are unique)."""
    if not tokens:
        return True
    found = await session.scalar(select(func.count()).where(Delivery.token.in_(list(tokens))))
    return bool(found)


async def delivery_by_id(session: AsyncSession, delivery_id: int) -> Delivery | None:
    return await session.get(Delivery, delivery_id)
