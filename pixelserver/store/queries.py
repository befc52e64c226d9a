"""Report queries, each for one user (None: everyone, the loopback demo), session first.

Lists read the state stored on each delivery (refreshed as hits arrive), so a page costs a
few indexed queries however many hits there are; only a single message's page reads its hits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Row, Select, column, exists, false, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.store.links import MANUAL
from pixelserver.store.schema import Delivery, Hit, Message, User, VerdictChange
from pixelserver.verdicts.mailbox import provider_words
from pixelserver.verdicts.state import STATES, DeliveryState, chip
from pixelserver.vocabulary import Source

PAGE_SIZE = 50


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    message_id: int
    recipient: str
    tracking: str
    untracked_reason: str | None
    outcome: str
    upstream_reply: str
    state: DeliveryState
    mailbox_provider: str | None = None  # from the MX of the recipient's domain

    @property
    def chip(self) -> str:
        return chip(self.state, self.untracked_reason, self.outcome)

    @property
    def mailbox(self) -> str:
        """The recipient's mailbox provider in words ("–" until the MX lookup answered)."""
        return provider_words(self.mailbox_provider)


@dataclass(frozen=True)
class MessageRow:
    id: int
    user_address: str
    subject: str
    accepted_at: dt.datetime
    deliveries: tuple[DeliveryRow, ...]
    source: str = Source.RELAY


@dataclass(frozen=True)
class Filters:
    q: str = ""
    state: str = ""
    since: dt.date | None = None
    until: dt.date | None = None

    @property
    def active(self) -> bool:
        return bool(self.q or self.state or self.since or self.until)


def delivery_row(d: Delivery) -> DeliveryRow:
    return DeliveryRow(
        d.id,
        d.message_id,
        d.recipient,
        d.tracking,
        d.untracked_reason,
        d.outcome,
        d.upstream_reply,
        DeliveryState(
            d.state,
            d.human_hits,
            d.machine_hits,
            d.sender_hits,
            d.first_open,
            d.last_open,
            d.client,
            d.place,
            d.forwarded,
        ),
        d.mailbox_provider,
    )


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


SEARCH = table("message_search", column("rowid"), column("message_search"))


def _search(session: AsyncSession, q: Select, text: str) -> tuple[Select, ColumnElement[int]]:
    """Subject or any recipient containing `text`, case-insensitively, through the trigram
    index of migration 0008; returns the query and the id column to page on.

    pg_trgm serves ILIKE itself and the planner picks index or newest-first scan. SQLite's FTS5
    trigram table is asked with MATCH (a quoted phrase, so every character is literal) and must
    drive the query, ordered by its own rowid: then it yields matches newest first and stops
    after one page, whether the text is rare or everywhere (ordered by message id instead,
    SQLite probed the index once per message: 90 s for a rare address). Under three
    characters there is no trigram, and messages are read newest first until the page fills.
    """
    if "\n" in text:  # no subject or address holds a line break; search_text's separator
        return q.where(false()), Message.id
    if session.bind.dialect.name == "sqlite" and len(text) >= 3:
        phrase = '"' + text.replace('"', '""') + '"'
        q = q.join(SEARCH, SEARCH.c.rowid == Message.id).where(
            SEARCH.c.message_search.op("MATCH")(phrase)
        )
        return q, SEARCH.c.rowid
    return q.where(Message.search_text.ilike(_like(text), escape="\\")), Message.id


MESSAGE_COLUMNS = (Message.id, User.address, Message.subject, Message.accepted_at, Message.source)


def owned(q: Select, user: str | None) -> Select:
    if user is None:
        return q
    return q.where(
        Message.user_id == select(User.id).where(User.address == user.lower()).scalar_subquery()
    )


async def list_messages(
    session: AsyncSession,
    user: str | None,
    filters: Filters = Filters(),
    *,
    before_id: int | None = None,
    limit: int = PAGE_SIZE,
) -> list[MessageRow]:
    """Newest first; keyset pages (before_id), so page 1,000 costs what page 1 does."""
    q = owned(
        select(*MESSAGE_COLUMNS).join(User, User.id == Message.user_id),
        user,
    )
    key: ColumnElement[int] = Message.id
    if filters.q:
        q, key = _search(session, q, filters.q)
    if filters.state in STATES:
        q = q.where(
            exists().where(Delivery.message_id == Message.id, Delivery.state == filters.state)
        )
    if filters.since:
        q = q.where(Message.accepted_at >= _start_of(filters.since))
    if filters.until and filters.until < dt.date.max:
        q = q.where(Message.accepted_at < _start_of(filters.until + dt.timedelta(days=1)))
    if before_id is not None:
        q = q.where(key < before_id)
    messages = (await session.execute(q.order_by(key.desc()).limit(limit))).all()
    return await with_deliveries(session, messages)


async def with_deliveries(session: AsyncSession, messages: Sequence[Row]) -> list[MessageRow]:
    """Message rows (id, address, subject, accepted_at, source) with their deliveries, in
    one more query."""
    if not messages:
        return []
    ids = [m.id for m in messages]
    by_message: dict[int, list[DeliveryRow]] = {i: [] for i in ids}
    for d in (
        await session.execute(
            select(Delivery).where(Delivery.message_id.in_(ids)).order_by(Delivery.id)
        )
    ).scalars():
        by_message[d.message_id].append(delivery_row(d))
    return [
        MessageRow(m.id, m.address, m.subject, m.accepted_at, tuple(by_message[m.id]), m.source)
        for m in messages
    ]


def _start_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


async def delivery_owned(session: AsyncSession, user: str | None, delivery_id: int) -> bool:
    """Whether this delivery belongs to one of the user's messages (one indexed query)."""
    q = owned(
        select(Delivery.id)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.id == delivery_id),
        user,
    )
    return (await session.execute(q)).first() is not None


async def owned_delivery_token(
    session: AsyncSession, user: str | None, delivery_id: int
) -> str | None:
    """The token of one of the user's deliveries (local outbox copies are named by it)."""
    q = owned(
        select(Delivery.token)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.id == delivery_id),
        user,
    )
    return (await session.execute(q)).scalar_one_or_none()


@dataclass(frozen=True)
class MessageDetail:
    message: MessageRow
    hits: dict[int, list[Hit]]  # per delivery id, oldest first
    link_tokens: dict[int, str]  # a manual link's token, shown to its owner to copy again
    changes: dict[int, list[VerdictChange]] = field(default_factory=dict)  # per hit id


async def message_detail(
    session: AsyncSession, user: str | None, message_id: int
) -> MessageDetail | None:
    """One message with every hit; None when it is not this user's (the page answers 404, so
    nobody learns that someone else's message exists)."""
    rows = await list_messages(session, user, before_id=message_id + 1, limit=1)
    if not rows or rows[0].id != message_id:
        return None
    ids = [d.id for d in rows[0].deliveries]
    hits: dict[int, list[Hit]] = {i: [] for i in ids}
    for h in (
        await session.execute(select(Hit).where(Hit.delivery_id.in_(ids)).order_by(Hit.at))
    ).scalars():
        hits[h.delivery_id].append(h)
    tokens: dict[int, str] = {}
    if rows[0].source == MANUAL:
        found = await session.execute(
            select(Delivery.id, Delivery.token).where(Delivery.message_id == message_id)
        )
        tokens = {i: t for i, t in found.all()}
    changes: dict[int, list[VerdictChange]] = {}
    for change in (
        await session.execute(
            select(VerdictChange)
            .join(Hit, Hit.id == VerdictChange.hit_id)
            .where(Hit.delivery_id.in_(ids))
            .order_by(VerdictChange.at, VerdictChange.id)
        )
    ).scalars():
        changes.setdefault(change.hit_id, []).append(change)
    return MessageDetail(rows[0], hits, tokens, changes)


@dataclass(frozen=True)
class RecipientDelivery:
    message_id: int
    subject: str
    accepted_at: dt.datetime
    delivery: DeliveryRow


async def recipient_history(
    session: AsyncSession, user: str | None, address: str
) -> list[RecipientDelivery]:
    q = (
        owned(
            select(Delivery, Message.subject, Message.accepted_at)
            .join(Message, Message.id == Delivery.message_id)
            .where(
                Delivery.recipient.ilike(address.replace("%", "").replace("_", "\\_"), escape="\\")
            ),
            user,
        )
        .order_by(Message.id.desc())
        .limit(500)
    )
    return [
        RecipientDelivery(d.message_id, subject, at, delivery_row(d))
        for d, subject, at in (await session.execute(q)).all()
    ]


@dataclass(frozen=True)
class Change:
    delivery: DeliveryRow
    subject: str
    changed_at: dt.datetime
    accepted_at: dt.datetime | None = None  # when the message was sent


async def changes_since(
    session: AsyncSession, user: str | None, since: dt.datetime, limit: int = 200
) -> list[Change]:
    """This user's deliveries whose state changed after `since`, oldest change first."""
    q = (
        owned(
            select(Delivery, Message.subject, Message.accepted_at)
            .join(Message, Message.id == Delivery.message_id)
            .where(Delivery.state_changed_at > since),
            user,
        )
        .order_by(Delivery.state_changed_at)
        .limit(limit)
    )
    return [
        Change(delivery_row(d), subject, d.state_changed_at, sent)
        for d, subject, sent in (await session.execute(q)).all()
    ]
