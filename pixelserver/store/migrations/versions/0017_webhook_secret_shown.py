"""When each webhook's signing secret was shown: the Settings page shows it once, on the page
its form redirects to, and marks it shown in the same statement (so a reload or a replayed
cookie, in any process, never shows it twice). Endpoints made before: shown when made.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoint") as batch:
        batch.add_column(sa.Column("secret_shown_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE webhook_endpoint SET secret_shown_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoint") as batch:
        batch.drop_column("secret_shown_at")
