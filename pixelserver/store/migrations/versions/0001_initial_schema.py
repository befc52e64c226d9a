"""Initial schema: user, message, delivery, hit.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "user_account",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("address", sa.String(320), nullable=False, unique=True),
        sa.Column("created_at", When, nullable=False),
    )
    op.create_table(
        "message",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "user_id", BigId, sa.ForeignKey("user_account.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("envelope_from", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("message_id_header", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("accepted_at", When, nullable=False),
    )
    op.create_index("ix_message_user_accepted", "message", ["user_id", "accepted_at"])
    op.create_table(
        "delivery",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "message_id", BigId, sa.ForeignKey("message.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("token", sa.String(32), nullable=False, unique=True),
        sa.Column("tracking", sa.String(16), nullable=False),
        sa.Column("untracked_reason", sa.String(32), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("upstream_reply", sa.Text(), nullable=False),
        sa.Column("finished_at", When, nullable=True),
    )
    op.create_index("ix_delivery_message_id", "delivery", ["message_id"])
    op.create_table(
        "hit",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("uid", sa.String(32), nullable=False, unique=True),
        sa.Column(
            "delivery_id", BigId, sa.ForeignKey("delivery.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("at", When, nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("ip_prefix", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.String(24), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
    )
    op.create_index("ix_hit_delivery_at", "hit", ["delivery_id", "at"])


def downgrade() -> None:
    op.drop_table("hit")
    op.drop_table("delivery")
    op.drop_table("message")
    op.drop_table("user_account")
