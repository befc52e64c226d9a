"""The store's schema: typed models, the UTC column type, the engine and the session factory.

SQLite (WAL) is the embedded default and PostgreSQL the scale-out store; everything is written
once for both, and what is dialect-specific (idempotent inserts) is chosen here by dialect, so
the modules that read and write rows never test which database they talk to.
"""

from __future__ import annotations

import datetime as dt
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
    event,
    false,
    text,
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

from pixelserver.vocabulary import Outcome, Source, State, Tracking, Verdict

# BigInteger primary keys that still autoincrement on SQLite (which only does so for INTEGER).
BigId = BigInteger().with_variant(Integer(), "sqlite")


OUTCOMES = tuple(Outcome)
TRACKING = tuple(Tracking)


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
    # Click tracking for this user's mail; NULL: the [clicks] default of the config (0016).
    clicks_enabled: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


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
    # Source.RELAY: sent through MailPing; Source.MANUAL: a tracking link made on the web page.
    source: Mapped[str] = mapped_column(
        String(16), default=Source.RELAY, server_default=Source.RELAY.value
    )

    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="message", order_by="Delivery.id", lazy="raise"
    )

    __table_args__ = (
        Index("ix_message_user_accepted", "user_id", "accepted_at"),
        Index("ix_message_user_id", "user_id", "id"),
    )


# Built by migration 0008 in each dialect's own way, so they are not in the models.
SEARCH_INDEXES = ("message_search", "ix_message_search_trgm")


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
    outcome: Mapped[str] = mapped_column(String(16), default=Outcome.PENDING)
    upstream_reply: Mapped[str] = mapped_column(Text, default="")
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Derived from outcome and hits (pixelserver/verdicts/state.py), stored so lists can filter by
    # it; rewritten whenever a hit arrives or a verdict changes (refresh_states).
    state: Mapped[str] = mapped_column(
        String(20), default=State.NOT_OPENED, server_default=State.NOT_OPENED.value
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
    # Clicks judged a person's (pixelserver/store/clickrecords.py keeps it current; 0016).
    human_clicks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

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
    verdict: Mapped[str] = mapped_column(String(24), default=Verdict.UNKNOWN)
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


def insert_ignore(session: AsyncSession, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for either backend."""
    dialect = session.bind.dialect.name
    ins = pg_insert(table) if dialect == "postgresql" else sqlite_insert(table)
    return ins.on_conflict_do_nothing()
