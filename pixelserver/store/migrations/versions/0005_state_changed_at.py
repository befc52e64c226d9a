"""When each delivery's state last changed: what live pages ask for.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_delivery_state_changed_at", "delivery", ["state_changed_at"])


def downgrade() -> None:
    op.drop_index("ix_delivery_state_changed_at", "delivery")
    with op.batch_alter_table("delivery") as batch:
        batch.drop_column("state_changed_at")
