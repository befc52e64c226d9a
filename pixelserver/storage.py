"""The store: SQLAlchemy 2.x typed models and query functions (session first).

SQLite (WAL) is the embedded default and PostgreSQL the scale-out store; everything here is
written once for both, and anything dialect-specific (idempotent inserts) is chosen by dialect.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    bindparam,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# BigInteger primary keys that still autoincrement on SQLite (which only does so for INTEGER).
BigId = BigInteger().with_variant(Integer(), "sqlite")

OUTCOMES = ("pending", "accepted", "rejected", "deferred")
TRACKING = ("tracked", "untracked")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both backends (SQLite keeps no offset: store UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
            value = value.astimezone(dt.UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LocalUser(Base):
    """A relay login for auth = "local" (argon2id hash; the password itself is never kept)."""

    __tablename__ = "local_user"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Message(Base):
    __tablename__ = "message"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    envelope_from: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text, default="")
    message_id_header: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(Integer, default=0)
    accepted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="message", order_by="Delivery.id", lazy="raise"
    )

    __table_args__ = (Index("ix_message_user_accepted", "user_id", "accepted_at"),)


class Delivery(Base):
    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("message.id", ondelete="CASCADE"), index=True
    )
    recipient: Mapped[str] = mapped_column(String(320))
    token: Mapped[str] = mapped_column(String(32), unique=True)
    tracking: Mapped[str] = mapped_column(String(16))
    untracked_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default="pending")
    upstream_reply: Mapped[str] = mapped_column(Text, default="")
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    message: Mapped[Message] = relationship(back_populates="deliveries", lazy="raise")


class Hit(Base):
    __tablename__ = "hit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Minted when the request is answered; makes journal replays idempotent.
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("delivery.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    method: Mapped[str] = mapped_column(String(8), default="GET")
    ip_prefix: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(Text, default="")
    headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    verdict: Mapped[str] = mapped_column(String(24), default="unknown")
    reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)

    __table_args__ = (Index("ix_hit_delivery_at", "delivery_id", "at"),)


# --- engine and sessions -----------------------------------------------------------------


def make_engine(url: str) -> AsyncEngine:
    """One engine per process; SQLite gets WAL so the pixel writer and report readers coexist."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# --- writes from the relay -----------------------------------------------------------------


@dataclass(frozen=True)
class NewDelivery:
    recipient: str
    token: str
    tracking: str
    untracked_reason: str | None


async def get_or_create_user(session: AsyncSession, address: str) -> User:
    address = address.strip().lower()
    user = (await session.execute(select(User).where(User.address == address))).scalar_one_or_none()
    if user is None:
        ins = _insert_ignore(session, User.__table__).values(address=address, created_at=utcnow())
        await session.execute(ins)
        user = (await session.execute(select(User).where(User.address == address))).scalar_one()
    return user


async def add_message(
    session: AsyncSession,
    *,
    user_address: str,
    envelope_from: str,
    subject: str,
    message_id_header: str,
    size: int,
    deliveries: Sequence[NewDelivery],
) -> tuple[Message, list[Delivery]]:
    user = await get_or_create_user(session, user_address)
    message = Message(
        user_id=user.id,
        envelope_from=envelope_from,
        subject=subject,
        message_id_header=message_id_header,
        size=size,
        accepted_at=utcnow(),
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
            outcome="pending",
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
                "finished_at": now,
            }
        )
    if rows:
        await session.execute(
            update(Delivery.__table__).where(Delivery.__table__.c.id == bindparam("b_id")),
            rows,
        )


async def local_user_hash(session: AsyncSession, username: str) -> str | None:
    return (
        await session.execute(
            select(LocalUser.password_hash).where(LocalUser.username == username.lower())
        )
    ).scalar_one_or_none()


async def set_local_user(session: AsyncSession, username: str, password_hash: str) -> bool:
    """Create or replace; True when the user is new."""
    user = (
        await session.execute(select(LocalUser).where(LocalUser.username == username.lower()))
    ).scalar_one_or_none()
    if user is None:
        session.add(LocalUser(username=username.lower(), password_hash=password_hash))
        return True
    user.password_hash = password_hash
    return False


async def remove_local_user(session: AsyncSession, username: str) -> bool:
    user = (
        await session.execute(select(LocalUser).where(LocalUser.username == username.lower()))
    ).scalar_one_or_none()
    if user is None:
        return False
    await session.delete(user)
    return True


async def local_usernames(session: AsyncSession) -> list[str]:
    return list((await session.execute(select(LocalUser.username).order_by("username"))).scalars())


# --- writes from the hit pipeline ----------------------------------------------------------


@dataclass(frozen=True)
class NewHit:
    uid: str
    token: str
    at: dt.datetime
    method: str
    ip_prefix: str
    user_agent: str
    headers: dict[str, str]
    verdict: str = "unknown"
    reasons: tuple[Any, ...] = ()


def _insert_ignore(session: AsyncSession, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for either backend."""
    dialect = session.bind.dialect.name
    ins = pg_insert(table) if dialect == "postgresql" else sqlite_insert(table)
    return ins.on_conflict_do_nothing()


async def delivery_ids_for_tokens(session: AsyncSession, tokens: Iterable[str]) -> dict[str, int]:
    tokens = list(set(tokens))
    found: dict[str, int] = {}
    for i in range(0, len(tokens), 500):
        chunk = tokens[i : i + 500]
        rows = await session.execute(
            select(Delivery.token, Delivery.id).where(Delivery.token.in_(chunk))
        )
        found.update({t: d for t, d in rows.all()})
    return found


async def add_hits(session: AsyncSession, hits: Sequence[NewHit]) -> tuple[int, int]:
    """Store hits whose token is known; returns (stored or already stored, unknown tokens).

    Hits are inserted with ON CONFLICT DO NOTHING on their uid so that replaying a journal
    after a crash never stores one fetch twice.
    """
    ids = await delivery_ids_for_tokens(session, (h.token for h in hits))
    rows = [
        {
            "uid": h.uid,
            "delivery_id": ids[h.token],
            "at": h.at,
            "method": h.method,
            "ip_prefix": h.ip_prefix,
            "user_agent": h.user_agent[:1000],
            "headers": h.headers,
            "verdict": h.verdict,
            "reasons": list(h.reasons),
        }
        for h in hits
        if h.token in ids
    ]
    if rows:
        await session.execute(_insert_ignore(session, Hit.__table__), rows)
    return len(rows), len(hits) - len(rows)


# --- reads for the report ------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    recipient: str
    tracking: str
    untracked_reason: str | None
    outcome: str
    upstream_reply: str
    hit_count: int
    first_hit: dt.datetime | None
    last_hit: dt.datetime | None


@dataclass(frozen=True)
class MessageRow:
    id: int
    user_address: str
    subject: str
    accepted_at: dt.datetime
    deliveries: tuple[DeliveryRow, ...]


async def recent_messages(
    session: AsyncSession, *, limit: int = 50, before_id: int | None = None
) -> list[MessageRow]:
    """Newest messages first, each with per-recipient hit counts, in two queries."""
    q = (
        select(Message.id, User.address, Message.subject, Message.accepted_at)
        .join(User, User.id == Message.user_id)
        .order_by(Message.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        q = q.where(Message.id < before_id)
    messages = (await session.execute(q)).all()
    if not messages:
        return []
    ids = [m.id for m in messages]
    stats = (
        select(
            Hit.delivery_id,
            func.count(Hit.id).label("n"),
            func.min(Hit.at).label("first"),
            func.max(Hit.at).label("last"),
        )
        .group_by(Hit.delivery_id)
        .subquery()
    )
    drows = (
        await session.execute(
            select(Delivery, stats.c.n, stats.c.first, stats.c.last)
            .outerjoin(stats, stats.c.delivery_id == Delivery.id)
            .where(Delivery.message_id.in_(ids))
            .order_by(Delivery.id)
        )
    ).all()
    by_message: dict[int, list[DeliveryRow]] = {i: [] for i in ids}
    for d, n, first, last in drows:
        by_message[d.message_id].append(
            DeliveryRow(
                id=d.id,
                recipient=d.recipient,
                tracking=d.tracking,
                untracked_reason=d.untracked_reason,
                outcome=d.outcome,
                upstream_reply=d.upstream_reply,
                hit_count=n or 0,
                first_hit=_aware(first),
                last_hit=_aware(last),
            )
        )
    return [
        MessageRow(
            id=m.id,
            user_address=m.address,
            subject=m.subject,
            accepted_at=m.accepted_at,
            deliveries=tuple(by_message[m.id]),
        )
        for m in messages
    ]


def _aware(value: Any) -> dt.datetime | None:
    """Aggregates bypass the column type on SQLite and come back naive or as text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def hits_for_delivery(session: AsyncSession, delivery_id: int) -> list[Hit]:
    rows = await session.execute(select(Hit).where(Hit.delivery_id == delivery_id).order_by(Hit.at))
    return list(rows.scalars())


async def delivery_by_id(session: AsyncSession, delivery_id: int) -> Delivery | None:
    return await session.get(Delivery, delivery_id)
