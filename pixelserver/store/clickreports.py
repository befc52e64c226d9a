"""Clicks as the report shows them: per recipient and link, every click with its reasons, and
a person's clicks for the digest. Read-only; the writing is in clickrecords.py."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.store.clickrecords import Click, ClickLink
from pixelserver.store.schema import Delivery, Message, User
from pixelserver.vocabulary import PERSON_VERDICTS


def _aware(value: dt.datetime | str) -> dt.datetime:
    """UTC-aware (an aggregate on SQLite may come back naive, or as text)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class LinkClicks:
    """The clicks of one recipient on one link."""

    n: int
    url: str
    people: int
    machines: int
    first_person: dt.datetime | None
    last_verdict: str
    last_rule: str


async def message_links(session: AsyncSession, message_id: int) -> list[tuple[int, str]]:
    rows = await session.execute(
        select(ClickLink.n, ClickLink.url)
        .where(ClickLink.message_id == message_id)
        .order_by(ClickLink.n)
    )
    return [(n, url) for n, url in rows]


async def links_of_delivery(session: AsyncSession, delivery_id: int) -> list[tuple[int, str]]:
    rows = await session.execute(
        select(ClickLink.n, ClickLink.url)
        .join(Delivery, Delivery.message_id == ClickLink.message_id)
        .where(Delivery.id == delivery_id)
        .order_by(ClickLink.n)
    )
    return [(n, url) for n, url in rows]


async def clicks_by_delivery(
    session: AsyncSession, delivery_ids: Sequence[int]
) -> dict[int, list[LinkClicks]]:
    """Per delivery, per link clicked: how many clicks a person made and how many machines."""
    if not delivery_ids:
        return {}
    rows = (
        await session.execute(
            select(
                Click.delivery_id,
                Click.n,
                ClickLink.url,
                Click.verdict,
                Click.rule,
                Click.at,
            )
            .join(Delivery, Delivery.id == Click.delivery_id)
            .join(
                ClickLink,
                and_(ClickLink.message_id == Delivery.message_id, ClickLink.n == Click.n),
            )
            .where(Click.delivery_id.in_(sorted(set(delivery_ids))))
            .order_by(Click.delivery_id, Click.n, Click.at)
        )
    ).all()
    grouped: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for r in rows:
        grouped[(r.delivery_id, r.n)].append(r)
    out: dict[int, list[LinkClicks]] = defaultdict(list)
    for (delivery_id, n), clicks in grouped.items():
        people = [c for c in clicks if c.verdict in PERSON_VERDICTS]
        out[delivery_id].append(
            LinkClicks(
                n=n,
                url=clicks[0].url,
                people=len(people),
                machines=len(clicks) - len(people),
                first_person=_aware(people[0].at) if people else None,
                last_verdict=clicks[-1].verdict,
                last_rule=clicks[-1].rule,
            )
        )
    return dict(out)


async def clicks_of_deliveries(
    session: AsyncSession, delivery_ids: Sequence[int]
) -> dict[int, list[Click]]:
    """Every click of these deliveries, oldest first, with its verdict and reasons."""
    out: dict[int, list[Click]] = defaultdict(list)
    if not delivery_ids:
        return {}
    rows = await session.execute(
        select(Click).where(Click.delivery_id.in_(sorted(set(delivery_ids)))).order_by(Click.at)
    )
    for c in rows.scalars():
        out[c.delivery_id].append(c)
    return dict(out)


async def first_person_clicks(
    session: AsyncSession, delivery_ids: Sequence[int]
) -> dict[int, dt.datetime]:
    """Per delivery, when a person first clicked one of its links (for the live report: a
    click is a first read when no image was fetched before it)."""
    if not delivery_ids:
        return {}
    rows = await session.execute(
        select(Click.delivery_id, func.min(Click.at))
        .where(Click.delivery_id.in_(sorted(set(delivery_ids))), Click.verdict.in_(PERSON_VERDICTS))
        .group_by(Click.delivery_id)
    )
    return {d: _aware(at) for d, at in rows if at is not None}


@dataclass(frozen=True)
class ClickWithLink:
    """One click with the address of the link it followed, for the export."""

    delivery_id: int
    n: int
    url: str
    at: dt.datetime
    verdict: str
    reasons: list[Any]


EXPORT_CHUNK = 1000  # delivery ids per query (SQLite's bound-parameter limit is far above)


async def clicks_with_links(
    session: AsyncSession, delivery_ids: Sequence[int]
) -> dict[int, list[ClickWithLink]]:
    """Every click of these deliveries, oldest first, with its link's original address: the
    rows the export adds under each delivery."""
    out: dict[int, list[ClickWithLink]] = defaultdict(list)
    ids = sorted(set(delivery_ids))
    for i in range(0, len(ids), EXPORT_CHUNK):
        rows = await session.execute(
            select(
                Click.delivery_id, Click.n, ClickLink.url, Click.at, Click.verdict, Click.reasons
            )
            .join(Delivery, Delivery.id == Click.delivery_id)
            .join(
                ClickLink,
                and_(ClickLink.message_id == Delivery.message_id, ClickLink.n == Click.n),
            )
            .where(Click.delivery_id.in_(ids[i : i + EXPORT_CHUNK]))
            .order_by(Click.delivery_id, Click.at, Click.id)
        )
        for d, n, url, at, verdict, reasons in rows:
            out[d].append(ClickWithLink(d, n, url, _aware(at), verdict, list(reasons or [])))
    return dict(out)


@dataclass(frozen=True)
class PersonClick:
    """A person's click, for the digest."""

    message_id: int
    subject: str
    recipient: str
    url: str
    at: dt.datetime


async def person_clicks_between(
    session: AsyncSession, user: str | None, start: dt.datetime, end: dt.datetime, limit: int = 100
) -> list[PersonClick]:
    """A person's clicks in [start, end) on the mail of `user` (None: everyone's)."""
    q = (
        select(Message.id, Message.subject, Delivery.recipient, ClickLink.url, Click.at)
        .join(Delivery, Delivery.id == Click.delivery_id)
        .join(Message, Message.id == Delivery.message_id)
        .join(
            ClickLink,
            and_(ClickLink.message_id == Delivery.message_id, ClickLink.n == Click.n),
        )
        .where(Click.verdict.in_(PERSON_VERDICTS), Click.at >= start, Click.at < end)
        .order_by(Click.at)
        .limit(limit)
    )
    if user is not None:
        owner = select(User.id).where(User.address == user.lower()).scalar_subquery()
        q = q.where(Message.user_id == owner)
    rows = await session.execute(q)
    return [PersonClick(i, subj, r, url, _aware(at)) for i, subj, r, url, at in rows]
