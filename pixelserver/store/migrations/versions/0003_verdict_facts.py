"""Verdict facts on hits, and the network each message was submitted from.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.add_column(
            sa.Column("sender_prefix", sa.String(64), nullable=False, server_default="")
        )
    with op.batch_alter_table("hit") as batch:
        batch.add_column(sa.Column("confidence", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("rule", sa.String(40), nullable=False, server_default=""))
        batch.add_column(sa.Column("seconds_after_send", sa.Float(), nullable=True))
        batch.add_column(sa.Column("asn", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("org", sa.String(200), nullable=False, server_default=""))
        batch.add_column(sa.Column("net_lists", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(
            sa.Column("hosting", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("country", sa.String(2), nullable=False, server_default=""))
        batch.add_column(sa.Column("region", sa.String(100), nullable=False, server_default=""))
        batch.add_column(sa.Column("city", sa.String(100), nullable=False, server_default=""))
        batch.add_column(sa.Column("client", sa.String(60), nullable=False, server_default=""))
    op.create_index("ix_hit_at", "hit", ["at"])


def downgrade() -> None:
    op.drop_index("ix_hit_at", "hit")
    with op.batch_alter_table("hit") as batch:
        for column in (
            "client",
            "city",
            "region",
            "country",
            "hosting",
            "net_lists",
            "org",
            "asn",
            "seconds_after_send",
            "rule",
            "confidence",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("message") as batch:
        batch.drop_column("sender_prefix")
