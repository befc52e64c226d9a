"""Index messages by (user, id): the lists page newest-first per user with id keysets.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_message_user_id", "message", ["user_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_message_user_id", "message")
