"""Manual tracking links, per-user settings (digest, exclusions) and the digest ledger.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27

Columns are added with ALTER TABLE ADD COLUMN on both backends (no table copy on SQLite: a
copied `message` table would lose the search triggers of 0008).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column(
        "message", sa.Column("source", sa.String(16), nullable=False, server_default="relay")
    )
    op.add_column("user_account", sa.Column("digest_enabled", sa.Boolean(), nullable=True))
    op.add_column("user_account", sa.Column("digest_hour", sa.Integer(), nullable=True))
    op.add_column("user_account", sa.Column("digest_timezone", sa.String(64), nullable=True))
    op.add_column("user_account", sa.Column("digest_empty", sa.Boolean(), nullable=True))
    op.add_column(
        "user_account",
        sa.Column("exclusions", sa.JSON(), nullable=False, server_default="[]"),
    )
    op.create_table(
        "digest_run",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "user_id",
            ID,
            sa.ForeignKey("user_account.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(100), nullable=False, server_default=""),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=""),
        sa.UniqueConstraint("user_id", "day", name="uq_digest_run_user_day"),
    )


def downgrade() -> None:
    op.drop_table("digest_run")
    for column in ("exclusions", "digest_empty", "digest_timezone", "digest_hour"):
        op.drop_column("user_account", column)
    op.drop_column("user_account", "digest_enabled")
    op.drop_column("message", "source")
