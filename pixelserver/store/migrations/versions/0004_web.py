"""Web: stored per-delivery state, networks users logged in from, and the app's secret.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(
            sa.Column("state", sa.String(20), nullable=False, server_default="not_opened")
        )
        batch.add_column(sa.Column("human_hits", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("machine_hits", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("sender_hits", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("first_open", When, nullable=True))
        batch.add_column(sa.Column("last_open", When, nullable=True))
        batch.add_column(sa.Column("client", sa.String(60), nullable=False, server_default=""))
        batch.add_column(sa.Column("place", sa.String(200), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("forwarded", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index("ix_delivery_recipient", "delivery", ["recipient"])
    op.create_index("ix_delivery_state", "delivery", ["state"])
    op.create_table(
        "user_network",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "user_id", BigId, sa.ForeignKey("user_account.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("prefix", sa.String(64), nullable=False),
        sa.Column("seen_at", When, nullable=False),
        sa.UniqueConstraint("user_id", "prefix", name="uq_user_network"),
    )
    op.create_table(
        "app_secret",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("app_secret")
    op.drop_table("user_network")
    op.drop_index("ix_delivery_state", "delivery")
    op.drop_index("ix_delivery_recipient", "delivery")
    with op.batch_alter_table("delivery") as batch:
        for column in (
            "forwarded",
            "place",
            "client",
            "last_open",
            "first_open",
            "sender_hits",
            "machine_hits",
            "human_hits",
            "state",
        ):
            batch.drop_column(column)
