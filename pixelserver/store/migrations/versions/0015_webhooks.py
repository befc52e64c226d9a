"""Signed webhooks: endpoints per user, the delivery ledger and its attempts.

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhook_endpoint",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "user_id", BigId, sa.ForeignKey("user_account.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_webhook_endpoint_user_id", "webhook_endpoint", ["user_id"])
    op.create_table(
        "webhook_message",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "endpoint_id",
            BigId,
            sa.ForeignKey("webhook_endpoint.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("msg_id", sa.String(40), nullable=False, unique=True),
        sa.Column("event_type", sa.String(40), nullable=False),
        sa.Column("event_key", sa.String(200), nullable=False),
        sa.Column(
            "message_id", BigId, sa.ForeignKey("message.id", ondelete="CASCADE"), nullable=True
        ),
        sa.Column(
            "delivery_id", BigId, sa.ForeignKey("delivery.id", ondelete="CASCADE"), nullable=True
        ),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(100), nullable=False, server_default=""),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=""),
        sa.UniqueConstraint("endpoint_id", "event_key", name="uq_webhook_message_event"),
    )
    op.create_index("ix_webhook_message_due", "webhook_message", ["status", "next_try_at"])
    op.create_index("ix_webhook_message_message_id", "webhook_message", ["message_id"])
    op.create_index("ix_webhook_message_delivery_id", "webhook_message", ["delivery_id"])
    op.create_table(
        "webhook_attempt",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "webhook_message_id",
            BigId,
            sa.ForeignKey("webhook_message.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response", sa.Text(), nullable=False, server_default=""),
        sa.Column("error", sa.Text(), nullable=False, server_default=""),
        sa.Column("seconds", sa.Float(), nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_webhook_attempt_webhook_message_id", "webhook_attempt", ["webhook_message_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_attempt_webhook_message_id", table_name="webhook_attempt")
    op.drop_table("webhook_attempt")
    op.drop_index("ix_webhook_message_delivery_id", table_name="webhook_message")
    op.drop_index("ix_webhook_message_message_id", table_name="webhook_message")
    op.drop_index("ix_webhook_message_due", table_name="webhook_message")
    op.drop_table("webhook_message")
    op.drop_index("ix_webhook_endpoint_user_id", table_name="webhook_endpoint")
    op.drop_table("webhook_endpoint")
