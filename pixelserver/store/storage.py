"""The store: SQLAlchemy 2.x typed models and query functions (session first).

SQLite (WAL) is the embedded default and PostgreSQL the scale-out store; everything here is
written once for both, and anything dialect-specific (idempotent inserts) is chosen by dialect.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    case,
    delete,
    event,
    false,
    func,
    select,
    text,
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

from pixelserver.verdicts.state import (
    CERTAIN_CONFIDENCE,
    WAITING_OUTCOMES,
    HitSummary,
    HitView,
    outcome_state,
    state_of,
)

# BigInteger primary keys that still autoincrement on SQLite (which only does so for INTEGER).
BigId = BigInteger().with_variant(Integer(), "sqlite")

# pending: recorded before the durable queue existed, never tried. queued: spooled, not tried
# yet; deferred: tried, will be retried; uncertain: the upstream took the whole copy but its
# reply was lost (never re-sent); expired: given up; dropped: removed from the queue by hand.
OUTCOMES = (
    "pending",
    "queued",
    "accepted",
    "rejected",
    "deferred",
    "uncertain",
    "expired",
    "dropped",
)
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
    # Digest settings made in Settings; None: the [digest] default from the config file.
    digest_enabled: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    digest_hour: Mapped[int | None] = mapped_column(Integer, nullable=True)
    digest_timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    digest_empty: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Recipients never tracked: addresses and domains (pixelserver/verdicts/exclusions.py).
    exclusions: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")


class LocalUser(Base):
    """A relay login for auth = "local" (argon2id hash; the password itself is never kept)."""

    __tablename__ = "local_user"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UserNetwork(Base):
    """A /24 or /48 a user logged in to MailPing from: their own views there are not opens."""

    __tablename__ = "user_network"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("user_id", "prefix", name="uq_user_network"),)


class LoginThrottle(Base):
    """Login attempts in the current window for one user (a hash of the name: a password typed
    into the name field is not kept) or one client network. Shared by all relay processes."""

    __tablename__ = "login_throttle"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # "user" | "network"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[int] = mapped_column(BigInteger, index=True)  # Unix seconds


async def count_login_attempt(
    session: AsyncSession, scope: str, key: str, now: int, window: int
) -> int:
    """One more attempt for (scope, key); returns the attempts in its window, this one included.
    One statement (an upsert), so attempts made at the same moment by any number of processes
    are all counted. A window older than `window` seconds starts again at 1."""
    table = LoginThrottle.__table__
    dialect = session.bind.dialect.name
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).values(
        scope=scope, key=key, attempts=1, window_start=now
    )
    expired = table.c.window_start <= now - window
    stmt = ins.on_conflict_do_update(
        index_elements=[table.c.scope, table.c.key],
        set_={
            "attempts": case((expired, 1), else_=table.c.attempts + 1),
            "window_start": case((expired, now), else_=table.c.window_start),
        },
    ).returning(table.c.attempts)
    return int((await session.execute(stmt)).scalar_one())


async def forgive_login_attempt(session: AsyncSession, scope: str, key: str, *, all_: bool) -> None:
    """A login succeeded: take back its attempt (or, `all_`, the key's whole count)."""
    cond = (LoginThrottle.scope == scope) & (LoginThrottle.key == key)
    if all_:
        await session.execute(delete(LoginThrottle).where(cond))
    else:
        await session.execute(
            update(LoginThrottle)
            .where(cond & (LoginThrottle.attempts > 0))
            .values(attempts=LoginThrottle.attempts - 1)
        )


async def prune_login_attempts(session: AsyncSession, before: int) -> int:
    """Drop windows that ended: the table holds only keys seen in the last window."""
    result = await session.execute(
        delete(LoginThrottle).where(LoginThrottle.window_start <= before)
    )
    return result.rowcount or 0


class ApiToken(Base):
    """A personal API token: only its SHA-256 is kept (the token is 256 random bits, so a
    plain hash cannot be reversed or guessed)."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_api_token(session: AsyncSession, user_address: str, name: str) -> str:
    """Returns the token itself, which is shown once and never stored."""
    user = await get_or_create_user(session, user_address)
    token = "mp_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name[:100] or "token", token_hash=token_hash(token)))
    await session.flush()
    return token


async def api_token_user(session: AsyncSession, token: str) -> str | None:
    row = (
        await session.execute(
            select(ApiToken.id, User.address)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == token_hash(token))
        )
    ).first()
    if row is None:
        return None
    await session.execute(
        update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=utcnow())
    )
    return row.address


async def api_tokens(session: AsyncSession, user_address: str) -> list[ApiToken]:
    return list(
        (
            await session.execute(
                select(ApiToken)
                .join(User, User.id == ApiToken.user_id)
                .where(User.address == user_address.lower())
                .order_by(ApiToken.id)
            )
        ).scalars()
    )


async def revoke_api_token(session: AsyncSession, user_address: str, token_id: int) -> bool:
    owner = select(User.id).where(User.address == user_address.lower()).scalar_subquery()
    result = await session.execute(
        delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == owner)
    )
    return bool(result.rowcount)


class WebSession(Base):
    """A logged-in browser. The cookie carries a random session key; only its SHA-256 is
    kept here, so that logging out, removing a user or an administrator's `mailping user
    logout` ends the session on the server, whatever copies of the cookie exist."""

    __tablename__ = "web_session"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


SEEN_EVERY = dt.timedelta(seconds=60)  # last_seen_at is written at most once a minute


@dataclass(frozen=True)
class SessionLimits:
    """How long a web session lives: `idle` without a request, `absolute` since login."""

    idle: dt.timedelta = dt.timedelta(minutes=30)
    absolute: dt.timedelta = dt.timedelta(hours=12)


async def start_web_session(session: AsyncSession, user_address: str) -> str:
    """A new session for the user; returns its key (for the cookie), which is not stored."""
    user = await get_or_create_user(session, user_address)
    key = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        WebSession(user_id=user.id, key_hash=token_hash(key), created_at=now, last_seen_at=now)
    )
    await session.flush()
    return key


async def web_session_user(
    session: AsyncSession, key: str, limits: SessionLimits, now: dt.datetime | None = None
) -> str | None:
    """The address of the user whose live session `key` is, or None. A session past either
    lifetime is deleted on sight; a live one has its last use noted (once a minute, so that
    reading pages is not a write per request)."""
    now = now or utcnow()
    row = (
        await session.execute(
            select(WebSession.id, WebSession.created_at, WebSession.last_seen_at, User.address)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.key_hash == token_hash(key))
        )
    ).first()
    if row is None:
        return None
    if now - row.created_at > limits.absolute or now - row.last_seen_at > limits.idle:
        await session.execute(delete(WebSession).where(WebSession.id == row.id))
        return None
    if now - row.last_seen_at > SEEN_EVERY:
        await session.execute(
            update(WebSession).where(WebSession.id == row.id).values(last_seen_at=now)
        )
    return row.address


async def user_exists(session: AsyncSession, user_address: str) -> bool:
    return (await session.execute(select(_user_id(user_address)))).scalar() is not None


async def end_web_session(session: AsyncSession, key: str) -> None:
    await session.execute(delete(WebSession).where(WebSession.key_hash == token_hash(key)))


def _user_id(user_address: str) -> Any:
    return select(User.id).where(User.address == user_address.strip().lower()).scalar_subquery()


async def end_user_sessions(session: AsyncSession, user_address: str) -> int:
    """End every web session of a user (an administrator's action, or part of removing
    them); returns how many there were."""
    result = await session.execute(
        delete(WebSession).where(WebSession.user_id == _user_id(user_address))
    )
    return result.rowcount or 0


async def count_user_sessions(
    session: AsyncSession, user_address: str, limits: SessionLimits
) -> int:
    """The user's sessions still within both lifetimes."""
    now = utcnow()
    return (
        await session.execute(
            select(func.count(WebSession.id)).where(
                WebSession.user_id == _user_id(user_address),
                WebSession.created_at >= now - limits.absolute,
                WebSession.last_seen_at >= now - limits.idle,
            )
        )
    ).scalar_one()


async def end_other_sessions(session: AsyncSession, user_address: str, keep_key: str) -> int:
    """End every session of the user but the one with `keep_key` (theirs, in use)."""
    result = await session.execute(
        delete(WebSession).where(
            WebSession.user_id == _user_id(user_address),
            WebSession.key_hash != token_hash(keep_key),
        )
    )
    return result.rowcount or 0


async def revoke_user_tokens(session: AsyncSession, user_address: str) -> int:
    result = await session.execute(
        delete(ApiToken).where(ApiToken.user_id == _user_id(user_address))
    )
    return result.rowcount or 0


async def purge_web_sessions(
    session: AsyncSession, limits: SessionLimits, now: dt.datetime | None = None
) -> int:
    """Delete sessions past either lifetime (they would be refused anyway)."""
    now = now or utcnow()
    result = await session.execute(
        delete(WebSession).where(
            (WebSession.created_at < now - limits.absolute)
            | (WebSession.last_seen_at < now - limits.idle)
        )
    )
    return result.rowcount or 0


class ForgottenRecipient(Base):
    """A recipient erased on request: only a keyed hash (HMAC-SHA256 with a secret kept in
    app_secret) of the address stays, so that they are never tracked again without the
    address being kept. user_id NULL: forgotten for every user (an administrator's erasure)."""

    __tablename__ = "forgotten_recipient"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), nullable=True, index=True
    )
    address_hash: Mapped[str] = mapped_column(String(64))
    forgotten_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AppSecret(Base):
    """Secrets every MailPing process must share (the session-cookie key), kept in the store."""

    __tablename__ = "app_secret"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class Message(Base):
    __tablename__ = "message"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    envelope_from: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text, default="")
    message_id_header: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(Integer, default=0)
    accepted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The /24 or /48 the sender submitted from: their own later views are not a recipient's.
    sender_prefix: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Subject and recipients, one per line: what the messages page searches, through a trigram
    # index that is not a model object (SEARCH_INDEXES; migration 0008).
    search_text: Mapped[str] = mapped_column(Text, default="", server_default="")
    # "relay": sent through MailPing; "manual": a tracking link made on the web page.
    source: Mapped[str] = mapped_column(String(16), default="relay", server_default="relay")

    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="message", order_by="Delivery.id", lazy="raise"
    )

    __table_args__ = (
        Index("ix_message_user_accepted", "user_id", "accepted_at"),
        Index("ix_message_user_id", "user_id", "id"),
    )


# Built by migration 0008 in each dialect's own way, so they are not in the models.
SEARCH_INDEXES = ("message_search", "ix_message_search_trgm")


def search_text(subject: str, recipients: Iterable[str]) -> str:
    return "\n".join([subject, *recipients])


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
    # Derived from outcome and hits (pixelserver/verdicts/state.py), stored so lists can filter by
    # it; rewritten whenever a hit arrives or a verdict changes (refresh_states).
    state: Mapped[str] = mapped_column(
        String(20), default="not_opened", server_default="not_opened"
    )
    human_hits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    machine_hits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sender_hits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    first_open: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_open: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    client: Mapped[str] = mapped_column(String(60), default="", server_default="")
    place: Mapped[str] = mapped_column(String(200), default="", server_default="")
    forwarded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    state_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # From the MX of the recipient's domain (pixelserver/verdicts/mailbox.py): a provider key, ""
    # when none is known, NULL until the background lookup has answered.
    mailbox_provider: Mapped[str | None] = mapped_column(String(32), nullable=True)

    message: Mapped[Message] = relationship(back_populates="deliveries", lazy="raise")

    __table_args__ = (
        Index("ix_delivery_recipient", "recipient"),
        Index("ix_delivery_state", "state"),
        Index("ix_delivery_state_changed_at", "state_changed_at"),
        Index(
            "ix_delivery_mailbox_pending",
            "id",
            sqlite_where=text("mailbox_provider IS NULL"),
            postgresql_where=text("mailbox_provider IS NULL"),
        ),
    )


class VerdictChange(Base):
    """One re-judgement of a hit (`mailping reclassify`): what it was, what it became, when
    and why, so the report can say "changed on ... from ... because ..."."""

    __tablename__ = "verdict_change"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    hit_id: Mapped[int] = mapped_column(ForeignKey("hit.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    old_verdict: Mapped[str] = mapped_column(String(24))
    old_rule: Mapped[str] = mapped_column(String(40), default="")
    old_confidence: Mapped[float] = mapped_column(Float, default=0.0)
    new_verdict: Mapped[str] = mapped_column(String(24))
    new_rule: Mapped[str] = mapped_column(String(40), default="")
    why: Mapped[str] = mapped_column(Text, default="")


class DigestRun(Base):
    """One user's digest for one local day. The unique (user, day) row is claimed before
    sending, so however many MailPing processes share the store, one of them sends it."""

    __tablename__ = "digest_run"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    day: Mapped[dt.date] = mapped_column(Date)
    period_start: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))  # sending | sent | failed | skipped
    claimed_by: Mapped[str] = mapped_column(String(100), default="", server_default="")
    claimed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_try_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")

    __table_args__ = (UniqueConstraint("user_id", "day", name="uq_digest_run_user_day"),)


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
    # What the verdict was judged from, kept so it can be judged again (mailping reclassify).
    confidence: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    rule: Mapped[str] = mapped_column(String(40), default="", server_default="")
    seconds_after_send: Mapped[float | None] = mapped_column(Float, nullable=True)
    asn: Mapped[int | None] = mapped_column(Integer, nullable=True)
    org: Mapped[str] = mapped_column(String(200), default="", server_default="")
    net_lists: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    hosting: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    country: Mapped[str] = mapped_column(String(2), default="", server_default="")
    region: Mapped[str] = mapped_column(String(100), default="", server_default="")
    city: Mapped[str] = mapped_column(String(100), default="", server_default="")
    client: Mapped[str] = mapped_column(String(60), default="", server_default="")

    __table_args__ = (
        Index("ix_hit_delivery_at", "delivery_id", "at"),
        Index("ix_hit_at", "at"),
    )


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
            # Deleted rows are overwritten, not left in free pages: erasure means erased.
            cur.execute("PRAGMA secure_delete=ON")
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
        ins = insert_ignore(session, User.__table__).values(address=address, created_at=utcnow())
        await session.execute(ins)
        user = (await session.execute(select(User).where(User.address == address))).scalar_one()
    return user


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
    source: str = "relay",
    owner: User | None = None,
    accepted_at: dt.datetime | None = None,
    outcome: str = "pending",
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
            state="untracked" if d.tracking == "untracked" else "not_opened",
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
        if outcome == "uncertain":
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
    opened_state = case((t.c.tracking == "untracked", "untracked"), else_="not_opened")
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
    outcome: str = "queued",
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
                source="relay",
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
                "state": waiting or ("untracked" if d.tracking == "untracked" else "not_opened"),
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


async def refresh_states(session: AsyncSession, delivery_ids: Iterable[int]) -> None:
    """Recompute and store the state of these deliveries from their outcome and hits, with
    aggregates (a delivery fetched ten thousand times costs no more than one fetched once).

    Two reads and one write per 2,000 deliveries: the per-verdict counts, first open, latest
    person's hit and distinct networks all come from one grouped query with FILTER clauses
    (SQLite 3.30+, PostgreSQL), then the latest hits' facts, then one executemany."""
    ids = sorted(set(delivery_ids))
    person = Hit.verdict.in_(PERSON_VERDICTS)
    human = Hit.verdict == "human"
    for i in range(0, len(ids), 2000):
        chunk = ids[i : i + 2000]
        summary = (
            await session.execute(
                select(
                    Delivery.id,
                    Delivery.outcome,
                    Delivery.tracking,
                    func.count(Hit.id).filter(person),
                    func.count(Hit.id).filter(Hit.verdict.in_(MACHINE_VERDICTS)),
                    func.count(Hit.id).filter(Hit.verdict == "privacy_prefetch"),
                    func.count(Hit.id).filter(Hit.verdict == "sender"),
                    func.min(Hit.at).filter(person),
                    func.max(Hit.id).filter(person),
                    func.count(func.distinct(Hit.ip_prefix)).filter(human),
                    func.count(func.distinct(func.nullif(Hit.client, ""))).filter(human),
                    # as state.is_certain: 0 is a hit from before confidences were stored
                    func.count(Hit.id).filter(
                        person, (Hit.confidence >= CERTAIN_CONFIDENCE) | (Hit.confidence == 0)
                    ),
                )
                .outerjoin(Hit, Hit.delivery_id == Delivery.id)
                .where(Delivery.id.in_(chunk))
                .group_by(Delivery.id, Delivery.outcome, Delivery.tracking)
            )
        ).all()
        last_ids = [r[8] for r in summary if r[8] is not None]
        lasts = {
            h.delivery_id: HitView(
                h.at, h.verdict, h.rule, h.ip_prefix, h.client, h.country, h.region, h.city
            )
            for h in (
                await session.execute(
                    select(
                        Hit.delivery_id,
                        Hit.at,
                        Hit.verdict,
                        Hit.rule,
                        Hit.ip_prefix,
                        Hit.client,
                        Hit.country,
                        Hit.region,
                        Hit.city,
                    ).where(Hit.id.in_(last_ids))
                )
            ).all()
        }
        now = utcnow()
        values = []
        for (
            delivery_id,
            outcome,
            tracking,
            people,
            machines,
            prefetches,
            senders,
            first,
            _last_id,
            nets,
            clients,
            certain,
        ) in summary:
            st = state_of(
                outcome,
                tracking,
                HitSummary(
                    people=people,
                    machines=machines,
                    prefetches=prefetches,
                    senders=senders,
                    first_open=_aware(first) if first is not None else None,
                    last_open=lasts.get(delivery_id),
                    direct_networks=nets,
                    direct_clients=clients,
                    certain=certain,
                ),
            )
            values.append(
                {
                    "b_id": delivery_id,
                    "state": st.state,
                    "human_hits": st.human_hits,
                    "machine_hits": st.machine_hits,
                    "sender_hits": st.sender_hits,
                    "first_open": st.first_open,
                    "last_open": st.last_open,
                    "client": st.client[:60],
                    "place": st.place[:200],
                    "forwarded": st.possibly_forwarded,
                    "state_changed_at": now,
                }
            )
        if values:
            # One statement, many parameter sets: a batch touching 2,000 deliveries is one
            # executemany, not 2,000 ORM updates (which made ingest 15x slower).
            table = Delivery.__table__
            await session.execute(update(table).where(table.c.id == bindparam("b_id")), values)


MACHINE_VERDICTS = ("privacy_prefetch", "scanner", "bot")
PERSON_VERDICTS = ("human", "human_via_proxy")


def _aware(value: Any) -> dt.datetime:
    """Aggregates bypass the column type on SQLite and come back naive or as text."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def add_user_network(session: AsyncSession, user_address: str, prefix: str) -> None:
    """Remember a network the user logged in from (idempotent)."""
    if not prefix:
        return
    user = await get_or_create_user(session, user_address)
    await session.execute(
        insert_ignore(session, UserNetwork.__table__).values(
            user_id=user.id, prefix=prefix, seen_at=utcnow()
        )
    )


_SECRETS: dict[tuple[str, str], str] = {}


async def cached_secret(session: AsyncSession, name: str) -> str:
    """app_secret, read once per process and store: shared secrets never change."""
    where = (str(session.bind.url), name)
    if where not in _SECRETS:
        _SECRETS[where] = await app_secret(session, name)
    return _SECRETS[where]


async def token_key(session: AsyncSession) -> bytes:
    """The key tokens are tagged with (pixelserver/tokens.py), shared by every process."""
    return (await cached_secret(session, "token_key")).encode()


async def has_untagged_tokens(session: AsyncSession) -> bool:
    """Whether any delivery still has a token minted before tags (last character with its
    four low bits clear: A, Q, g or w)."""
    row = await session.execute(
        select(Delivery.id)
        .where(func.substr(Delivery.token, 22, 1).in_(("A", "Q", "g", "w")))
        .limit(1)
    )
    return row.first() is not None


async def app_secret(session: AsyncSession, name: str) -> str:
    """A shared secret, made once by whichever process asks first."""
    await session.execute(
        insert_ignore(session, AppSecret.__table__).values(
            name=name, value=secrets.token_urlsafe(48)
        )
    )
    return (
        await session.execute(select(AppSecret.value).where(AppSecret.name == name))
    ).scalar_one()


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
    confidence: float = 0.0
    rule: str = ""
    seconds_after_send: float | None = None
    asn: int | None = None
    org: str = ""
    net_lists: tuple[str, ...] = ()
    hosting: bool = False
    country: str = ""
    region: str = ""
    city: str = ""
    client: str = ""
    delivery_id: int | None = None  # known already when judged; else looked up by token


def insert_ignore(session: AsyncSession, table: Any) -> Any:
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


@dataclass
class HitContext:
    """What the classifier needs to know about the copy a token belongs to."""

    delivery_id: int
    recipient: str
    accepted_at: dt.datetime
    sender_prefixes: frozenset[str]
    prior: list[tuple[str, str, float]]  # (prefix, ua, seconds after send) of earlier hits
    mailbox_provider: str = ""  # from the recipient domain's MX; "" when not known


SENDER_NETWORK_DAYS = 30


class SenderNetworks:
    """The networks each user sent from or logged in from in the last 30 days, remembered
    for `ttl` seconds: every batch of hits needs them, and reading a month of a busy user's
    messages for each batch of 200 hits cost more than storing the hits."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._known: dict[int, tuple[float, set[str]]] = {}

    async def get(self, session: AsyncSession, user_ids: set[int]) -> dict[int, set[str]]:
        now = time.monotonic()
        stale = {u for u in user_ids if u not in self._known or self._known[u][0] < now}
        if stale:
            since = utcnow() - dt.timedelta(days=SENDER_NETWORK_DAYS)
            fresh: dict[int, set[str]] = {u: set() for u in stale}
            for user_id, prefix in await session.execute(
                select(Message.user_id, Message.sender_prefix)
                .where(
                    Message.user_id.in_(stale),
                    Message.accepted_at >= since,
                    Message.sender_prefix != "",
                )
                .distinct()
            ):
                fresh[user_id].add(prefix)
            for user_id, prefix in await session.execute(
                select(UserNetwork.user_id, UserNetwork.prefix).where(
                    UserNetwork.user_id.in_(stale), UserNetwork.seen_at >= since
                )
            ):
                fresh[user_id].add(prefix)
            for u, found in fresh.items():
                self._known[u] = (now + self.ttl, found)
        return {u: self._known[u][1] for u in user_ids}


async def hit_contexts(
    session: AsyncSession,
    tokens: Iterable[str],
    prior_since: dt.datetime | None = None,
    networks: SenderNetworks | None = None,
) -> dict[str, HitContext]:
    """Per known token: its delivery, when its message was accepted, the networks its sender
    used recently, and its earlier hits from `prior_since` on (three queries for a batch)."""
    tokens = list(set(tokens))
    rows = []
    for i in range(0, len(tokens), 500):
        rows += (
            await session.execute(
                select(
                    Delivery.token,
                    Delivery.id,
                    Delivery.recipient,
                    Message.accepted_at,
                    Message.user_id,
                    Message.sender_prefix,
                    Delivery.mailbox_provider,
                )
                .join(Message, Message.id == Delivery.message_id)
                .where(Delivery.token.in_(tokens[i : i + 500]))
            )
        ).all()
    if not rows:
        return {}
    nets = await (networks or SenderNetworks(ttl=0)).get(session, {r.user_id for r in rows})
    prior: dict[int, list[tuple[str, str, float]]] = {r.id: [] for r in rows}
    earlier = select(Hit.delivery_id, Hit.ip_prefix, Hit.user_agent, Hit.seconds_after_send).where(
        Hit.delivery_id.in_(prior.keys())
    )
    if prior_since is not None:
        earlier = earlier.where(Hit.at >= prior_since)
    for delivery_id, prefix, ua, seconds in await session.execute(earlier.order_by(Hit.at)):
        if seconds is not None:
            prior[delivery_id].append((prefix, ua, seconds))
    return {
        r.token: HitContext(
            r.id,
            r.recipient,
            r.accepted_at,
            # The copy's own sending network counts at once, whatever the cache says.
            frozenset(nets[r.user_id] | ({r.sender_prefix} if r.sender_prefix else set())),
            prior[r.id],
            r.mailbox_provider or "",
        )
        for r in rows
    }


async def add_hits(session: AsyncSession, hits: Sequence[NewHit]) -> tuple[int, int]:
    """Store hits whose token is known; returns (stored or already stored, unknown tokens).

    Hits are inserted with ON CONFLICT DO NOTHING on their uid so that replaying a journal
    after a crash never stores one fetch twice.
    """
    ids = {h.token: h.delivery_id for h in hits if h.delivery_id is not None}
    missing = [h.token for h in hits if h.delivery_id is None]
    if missing:
        ids.update(await delivery_ids_for_tokens(session, missing))
    known = [h for h in hits if h.token in ids]
    from pixelserver.store.bulk import insert_hits  # it needs the Hit model defined here

    await insert_hits(session, known, ids)
    return len(known), len(hits) - len(known)


def hit_row(h: NewHit, delivery_id: int) -> dict[str, Any]:
    """A judged hit as a row of the hit table (lengths cut to the columns)."""
    return {
        "uid": h.uid,
        "delivery_id": delivery_id,
        "at": h.at,
        "method": h.method,
        "ip_prefix": h.ip_prefix,
        "user_agent": h.user_agent[:1000],
        "headers": h.headers,
        "verdict": h.verdict,
        "reasons": list(h.reasons),
        "confidence": h.confidence,
        "rule": h.rule,
        "seconds_after_send": h.seconds_after_send,
        "asn": h.asn,
        "org": h.org[:200],
        "net_lists": sorted(h.net_lists),
        "hosting": h.hosting,
        "country": h.country[:2],
        "region": h.region[:100],
        "city": h.city[:100],
        "client": h.client[:60],
    }


async def purge_before(session: AsyncSession, cutoff: dt.datetime) -> tuple[int, int]:
    """Delete messages accepted before `cutoff` (with their deliveries and hits) and any hit
    older than it; returns (messages, hits) deleted."""
    hits = (await session.execute(delete(Hit).where(Hit.at < cutoff))).rowcount or 0
    old = select(Message.id).where(Message.accepted_at < cutoff)
    await session.execute(
        delete(Hit).where(
            Hit.delivery_id.in_(select(Delivery.id).where(Delivery.message_id.in_(old)))
        )
    )
    await session.execute(delete(Delivery).where(Delivery.message_id.in_(old)))
    messages = (
        await session.execute(delete(Message).where(Message.accepted_at < cutoff))
    ).rowcount or 0
    return messages, hits


async def purge_people_data(
    session: AsyncSession, cutoff: dt.datetime, now: dt.datetime
) -> dict[str, int]:
    """What retention deletes beside messages and hits: digest ledger rows claimed before
    `cutoff`, and networks users logged in from that are older than `cutoff` or than the
    30 days they serve for (SenderNetworks), whichever is sooner."""
    networks_cutoff = max(cutoff, now - dt.timedelta(days=SENDER_NETWORK_DAYS))
    networks = await session.execute(
        delete(UserNetwork).where(UserNetwork.seen_at < networks_cutoff)
    )
    digests = await session.execute(delete(DigestRun).where(DigestRun.claimed_at < cutoff))
    return {"user networks": networks.rowcount or 0, "digest ledger rows": digests.rowcount or 0}


# --- reads for the report ------------------------------------------------------------------


async def hits_for_delivery(session: AsyncSession, delivery_id: int) -> list[Hit]:
    rows = await session.execute(select(Hit).where(Hit.delivery_id == delivery_id).order_by(Hit.at))
    return list(rows.scalars())


async def delivery_by_id(session: AsyncSession, delivery_id: int) -> Delivery | None:
    return await session.get(Delivery, delivery_id)
