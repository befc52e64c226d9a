"""The recipient's mailbox provider (from the MX of its domain), per delivery.

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-02

NULL until the background MX lookup has answered; a partial index keeps finding the deliveries
still to look up cheap however many there are. ADD COLUMN on both backends (no table copy).
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None

PENDING = sa.text("mailbox_provider IS NULL")


def upgrade() -> None:
    op.add_column("delivery", sa.Column("mailbox_provider", sa.String(32), nullable=True))
    op.create_index(
        "ix_delivery_mailbox_pending",
        "delivery",
        ["id"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_mailbox_pending", "delivery")
    op.execute("ALTER TABLE delivery DROP COLUMN mailbox_provider")
