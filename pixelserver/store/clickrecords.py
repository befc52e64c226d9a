"""Clicks on rewritten links: the links of each message, every click with its verdict, and the
delivery's count of a person's clicks that makes it read.

A message's links are stored once (not once per copy): every copy carries the same links,
told apart by its delivery's token in the URL. A click is judged when it arrives and the
clicks around it are judged again with it, because some signals only show afterwards: the
second link of a burst makes the first one a scanner's too, and the third recipient clicked
from one network makes the first two a gateway's.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from pixelserver.store import webhooks
from pixelserver.store.accounts import get_or_create_user
from pixelserver.store.schema import (
    Base,
    BigId,
    Delivery,
    Message,
    User,
    UserNetwork,
    UTCDateTime,
    insert_ignore,
)
from pixelserver.store.states import refresh_states
from pixelserver.verdicts import clickjudge
from pixelserver.verdicts.networks import NetworkFacts
from pixelserver.vocabulary import Verdict

MAX_URL = 8000  # longer href values are left as they are by the relay
SENDER_NETWORK_DAYS = 30


class ClickLink(Base):
    """Link `n` of a message, as the sender wrote it (the address a click is sent on to)."""

    __tablename__ = "click_link"

    message_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("message.id", ondelete="CASCADE"), primary_key=True
    )
    n: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)


class Click(Base):
    """One request for a rewritten link, with what it was judged from (never the address: its
    /24 or /48 and the lists it was in, as for pixel fetches)."""

    __tablename__ = "click"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(BigId, ForeignKey("delivery.id", ondelete="CASCADE"))
    n: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    method: Mapped[str] = mapped_column(String(8))
    ip_prefix: Mapped[str] = mapped_column(String(64))
    user_agent: Mapped[str] = mapped_column(Text)
    seconds_after_send: Mapped[float | None] = mapped_column(Float, nullable=True)
    net_lists: Mapped[list[str]] = mapped_column(JSON)
    asn: Mapped[int | None] = mapped_column(Integer, nullable=True)
    org: Mapped[str] = mapped_column(String(200))
    hosting: Mapped[bool] = mapped_column(Boolean)
    verdict: Mapped[str] = mapped_column(String(24))
    rule: Mapped[str] = mapped_column(String(40))
    confidence: Mapped[float] = mapped_column(Float)
    reasons: Mapped[list[Any]] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_click_delivery_at", "delivery_id", "at"),
        Index("ix_click_prefix_at", "ip_prefix", "at"),
    )


# --- the relay's side ---------------------------------------------------------------------------


async def add_links(session: AsyncSession, message_id: int, urls: Sequence[str]) -> None:
    """The links of a message, numbered as its copies name them (idempotent)."""
    if not urls:
        return
    await session.execute(
        insert_ignore(session, ClickLink.__table__),
        [{"message_id": message_id, "n": n, "url": url} for n, url in enumerate(urls)],
    )


async def original_urls(
    session: AsyncSession, wanted: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], str]:
    """(token, n) -> the address link n of that copy led to, for the links of this MailPing
    that a forward or a reply quotes (the relay puts the original address back)."""
    pairs = sorted(set(wanted))
    if not pairs:
        return {}
    tokens = sorted({t for t, _ in pairs})
    rows = await session.execute(
        select(Delivery.token, ClickLink.n, ClickLink.url)
        .join(ClickLink, ClickLink.message_id == Delivery.message_id)
        .where(Delivery.token.in_(tokens))
    )
    want = set(pairs)
    return {(t, n): url for t, n, url in rows if (t, n) in want}


# --- the user's choice ----------------------------------------------------------------------


async def click_choice(session: AsyncSession, address: str) -> bool | None:
    """True or False as the user chose in Settings; None: the [clicks] default."""
    return (
        await session.execute(
            select(User.clicks_enabled).where(User.address == address.strip().lower())
        )
    ).scalar_one_or_none()


async def set_click_choice(session: AsyncSession, address: str, choice: bool | None) -> None:
    user = await get_or_create_user(session, address)
    await session.execute(update(User).where(User.id == user.id).values(clicks_enabled=choice))


# --- the pixel server's side --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a rewritten link names, found by its token and number."""

    delivery_id: int
    message_id: int
    url: str
    accepted_at: dt.datetime
    sender_prefix: str
    user_id: int


async def find_target(session: AsyncSession, token: str, n: int) -> Target | None:
    row = (
        await session.execute(
            select(
                Delivery.id,
                Delivery.message_id,
                ClickLink.url,
                Message.accepted_at,
                Message.sender_prefix,
                Message.user_id,
            )
            .join(Message, Message.id == Delivery.message_id)
            .join(
                ClickLink,
                and_(ClickLink.message_id == Delivery.message_id, ClickLink.n == n),
            )
            .where(Delivery.token == token)
        )
    ).first()
    return Target(*row) if row is not None else None


@dataclass(frozen=True)
class NewClick:
    n: int
    at: dt.datetime
    method: str
    network: NetworkFacts
    user_agent: str


@dataclass(frozen=True)
class ClickResult:
    verdict: str
    # A person's first click on this link of this copy (what a `delivery.clicked` event is).
    first_by_person: bool


async def add_click(session: AsyncSession, target: Target, click: NewClick) -> ClickResult:
    """Store one click, judge it and the clicks its arrival sheds light on, and bring the
    deliveries concerned up to date."""
    # Clicks on one copy are judged one after another: a gateway follows all links at once,
    # and two transactions that cannot see each other's click would each judge theirs alone.
    # (PostgreSQL: this row lock, across processes; SQLite serialises writers anyway, and the
    # handler serialises its own transactions.)
    await session.execute(
        select(Delivery.id).where(Delivery.id == target.delivery_id).with_for_update()
    )
    seconds = max(0.0, (click.at - target.accepted_at).total_seconds())
    net = click.network
    new_id = (
        await session.execute(
            Click.__table__.insert()
            .values(
                delivery_id=target.delivery_id,
                n=click.n,
                at=click.at,
                method=click.method[:8],
                ip_prefix=net.prefix,
                user_agent=click.user_agent[:512],
                seconds_after_send=seconds,
                net_lists=sorted(net.lists),
                asn=net.asn,
                org=net.org[:200],
                hosting=net.hosting,
                verdict=Verdict.UNKNOWN,
                rule="",
                confidence=0.0,
                reasons=[],
            )
            .returning(Click.__table__.c.id)
        )
    ).scalar_one()
    senders = await _sender_prefixes(session, target)
    rows = await _related(session, target)
    verdicts = _judge(rows, senders)
    changed = [
        {"c_id": r.id, "verdict": v.kind, "rule": v.rule, "confidence": v.confidence,
         "reasons": v.as_json()["reasons"]}
        for r in rows
        if (v := verdicts[r.id]).kind != r.verdict or v.rule != r.rule or r.id == new_id
    ]  # fmt: skip
    if changed:
        table = Click.__table__
        await session.execute(update(table).where(table.c.id == bindparam("c_id")), changed)
    touched = {r.delivery_id for r in rows if r.id in {c["c_id"] for c in changed}}
    await _count_person_clicks(session, touched | {target.delivery_id})
    await refresh_states(session, touched | {target.delivery_id})
    kind = verdicts[new_id].kind
    earlier = [
        r
        for r in rows
        if r.delivery_id == target.delivery_id and r.n == click.n and r.id != new_id
        and verdicts[r.id].kind == Verdict.HUMAN
    ]  # fmt: skip
    result = ClickResult(kind, kind == Verdict.HUMAN and not earlier)
    if result.first_by_person:  # delivery.clicked, once per link, in this transaction
        await webhooks.enqueue_click(
            session, target.delivery_id, link=str(click.n), url=target.url, at=click.at,
            verdict=kind,
        )  # fmt: skip
    return result


async def _sender_prefixes(session: AsyncSession, target: Target) -> frozenset[str]:
    since = target.accepted_at - dt.timedelta(days=SENDER_NETWORK_DAYS)
    prefixes = (
        await session.execute(
            select(UserNetwork.prefix).where(
                UserNetwork.user_id == target.user_id, UserNetwork.seen_at >= since
            )
        )
    ).scalars()
    return frozenset({*prefixes, target.sender_prefix} - {""})


async def _related(session: AsyncSession, target: Target) -> list[Any]:
    """This copy's clicks, and the clicks on other copies of the message from the same
    networks around the same time (what the burst and many-recipients signals look at)."""
    cols = (
        Click.id,
        Click.delivery_id,
        Click.n,
        Click.at,
        Click.method,
        Click.ip_prefix,
        Click.user_agent,
        Click.seconds_after_send,
        Click.net_lists,
        Click.asn,
        Click.org,
        Click.hosting,
        Click.verdict,
        Click.rule,
    )
    own = list(await session.execute(select(*cols).where(Click.delivery_id == target.delivery_id)))
    prefixes = sorted({r.ip_prefix for r in own if r.ip_prefix})
    if not prefixes:
        return own
    window = dt.timedelta(seconds=clickjudge.NETWORK_WINDOW)
    start = min(r.at for r in own) - window
    end = max(r.at for r in own) + window
    copies = select(Delivery.id).where(Delivery.message_id == target.message_id)
    others = (
        await session.execute(
            select(*cols).where(
                Click.delivery_id != target.delivery_id,
                Click.delivery_id.in_(copies),
                Click.ip_prefix.in_(prefixes),
                Click.at >= start,
                Click.at <= end,
            )
        )
    ).all()
    return own + list(others)


def _judge(rows: Sequence[Any], senders: frozenset[str]) -> dict[int, Any]:
    """Pure over the loaded rows: each click judged with its copy's other clicks and the
    copies clicked from its network within the window."""
    by_delivery: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        by_delivery[r.delivery_id].append(r)
    window = clickjudge.NETWORK_WINDOW
    out = {}
    for r in rows:
        at = _aware(r.at)
        copies = {
            o.delivery_id
            for o in rows
            if o.ip_prefix == r.ip_prefix and abs((_aware(o.at) - at).total_seconds()) <= window
        }
        facts = clickjudge.ClickFacts(
            network=NetworkFacts(
                prefix=r.ip_prefix,
                asn=r.asn,
                org=r.org,
                hosting=r.hosting,
                lists=frozenset(r.net_lists or ()),
            ),
            ua=r.user_agent,
            method=r.method,
            seconds_after_send=r.seconds_after_send,
            n=r.n,
            others=[
                clickjudge.OtherClick(
                    o.seconds_after_send or 0.0, o.n, o.method, o.ip_prefix, o.user_agent
                )
                for o in by_delivery[r.delivery_id]
                if o.id != r.id
            ],
            recipients_from_network=len(copies) if r.ip_prefix else 1,
            sender_prefixes=senders,
        )
        out[r.id] = clickjudge.judge(facts)
    return out


async def _count_person_clicks(session: AsyncSession, delivery_ids: set[int]) -> None:
    ids = sorted(delivery_ids)
    counts = dict(
        (
            await session.execute(
                select(Click.delivery_id, func.count(Click.id))
                .where(Click.delivery_id.in_(ids), Click.verdict == Verdict.HUMAN)
                .group_by(Click.delivery_id)
            )
        ).all()
    )
    table = Delivery.__table__
    await session.execute(
        update(table).where(table.c.id == bindparam("d_id")),
        [{"d_id": i, "human_clicks": counts.get(i, 0)} for i in ids],
    )


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


__all__ = [
    "Click",
    "ClickLink",
    "ClickResult",
    "NewClick",
    "Target",
    "add_click",
    "add_links",
    "click_choice",
    "set_click_choice",
    "find_target",
    "original_urls",
]
