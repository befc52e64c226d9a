"""Click tracking (issue 16): the links of each message whose copies had them rewritten, every
click on them with its verdict, each user's choice, and a delivery's count of a person's clicks.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("user_account") as batch:
        batch.add_column(sa.Column("clicks_enabled", sa.Boolean(), nullable=True))
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(
            sa.Column("human_clicks", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "click_link",
        sa.Column(
            "message_id",
            BigId,
            sa.ForeignKey("message.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("n", sa.Integer(), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
    )
    op.create_table(
        "click",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "delivery_id",
            BigId,
            sa.ForeignKey("delivery.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("ip_prefix", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=False),
        sa.Column("seconds_after_send", sa.Float(), nullable=True),
        sa.Column("net_lists", sa.JSON(), nullable=False),
        sa.Column("asn", sa.Integer(), nullable=True),
        sa.Column("org", sa.String(200), nullable=False),
        sa.Column("hosting", sa.Boolean(), nullable=False),
        sa.Column("verdict", sa.String(24), nullable=False),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
    )
    op.create_index("ix_click_delivery_at", "click", ["delivery_id", "at"])
    op.create_index("ix_click_prefix_at", "click", ["ip_prefix", "at"])


def downgrade() -> None:
    op.drop_index("ix_click_prefix_at", table_name="click")
    op.drop_index("ix_click_delivery_at", table_name="click")
    op.drop_table("click")
    op.drop_table("click_link")
    with op.batch_alter_table("delivery") as batch:
        batch.drop_column("human_clicks")
    with op.batch_alter_table("user_account") as batch:
        batch.drop_column("clicks_enabled")
