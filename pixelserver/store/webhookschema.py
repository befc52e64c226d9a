"""Tables of the signed webhooks: each user's endpoints, the delivery ledger (one row per
event and endpoint) and every attempt with its answer.

The ledger row is the unit of work: created once per (endpoint, event) (a unique key, so two
processes noticing the same first open add one row), claimed by a compare-and-set on its status
before it is sent (so two processes never send it at once), and kept with its attempts so that
Settings can show what the receiver answered.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pixelserver.store.schema import Base, BigId, UTCDateTime, utcnow


class WebhookEndpoint(Base):
    """A URL a user's events are posted to. The signing secret is kept as it is (it must sign
    every request) and shown to the user once: `secret_shown_at` says when (None: made on the
    Settings page, whose next page view shows it and sets this)."""

    __tablename__ = "webhook_endpoint"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(100))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    secret_shown_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebhookMessage(Base):
    """One event for one endpoint. `msg_id` is the `webhook-id` header, the same on every
    retry so a receiver can tell a retry from a new event."""

    __tablename__ = "webhook_message"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoint.id", ondelete="CASCADE"))
    msg_id: Mapped[str] = mapped_column(String(40), unique=True)
    event_type: Mapped[str] = mapped_column(String(40))
    event_key: Mapped[str] = mapped_column(String(200))
    # The message and delivery it is about: erased or purged with them (the body names them).
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("message.id", ondelete="CASCADE"), nullable=True, index=True
    )
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("delivery.id", ondelete="CASCADE"), nullable=True, index=True
    )
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status: Mapped[str] = mapped_column(String(16))  # pending|sending|retry|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_try_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claimed_by: Mapped[str] = mapped_column(String(100), default="", server_default="")
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")

    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_key", name="uq_webhook_message_event"),
        Index("ix_webhook_message_due", "status", "next_try_at"),
    )


class WebhookAttempt(Base):
    """One POST of a ledger row and what came back (status and the start of the body, or the
    error when nothing did)."""

    __tablename__ = "webhook_attempt"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    webhook_message_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_message.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response: Mapped[str] = mapped_column(Text, default="", server_default="")
    error: Mapped[str] = mapped_column(Text, default="", server_default="")
    seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
