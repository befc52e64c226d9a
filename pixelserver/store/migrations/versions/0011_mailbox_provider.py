"""The recipient's mailbox provider (from the MX of its domain), per delivery; and the history
of re-judged verdicts (verdict_change).

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-02

NULL until the background MX lookup has answered; a partial index keeps finding the deliveries
still to look up cheap however many there are. ADD COLUMN on both backends (no table copy).
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PENDING = sa.text("mailbox_provider IS NULL")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("delivery", sa.Column("mailbox_provider", sa.String(32), nullable=True))
    op.create_index(
        "ix_delivery_mailbox_pending",
        "delivery",
        ["id"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )
    op.create_table(
        "verdict_change",
        sa.Column("id", ID, primary_key=True),
        sa.Column("hit_id", ID, sa.ForeignKey("hit.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("old_verdict", sa.String(24), nullable=False),
        sa.Column("old_rule", sa.String(40), nullable=False),
        sa.Column("old_confidence", sa.Float(), nullable=False),
        sa.Column("new_verdict", sa.String(24), nullable=False),
        sa.Column("new_rule", sa.String(40), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
    )
    op.create_index("ix_verdict_change_hit_id", "verdict_change", ["hit_id"])


def downgrade() -> None:
    op.drop_index("ix_verdict_change_hit_id", "verdict_change")
    op.drop_table("verdict_change")
    op.drop_index("ix_delivery_mailbox_pending", "delivery")
    op.execute("ALTER TABLE delivery DROP COLUMN mailbox_provider")
