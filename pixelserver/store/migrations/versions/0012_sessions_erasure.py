"""Server-side web sessions (keyed by the SHA-256 of the cookie's session key), and the keyed
hashes of recipients forgotten on request (GDPR art. 17). (Login attempts are counted in
login_throttle, from 0010.)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "web_session",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "user_id",
            BigId,
            sa.ForeignKey("user_account.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_web_session_user_id", "web_session", ["user_id"])
    op.create_table(
        "forgotten_recipient",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "user_id",
            BigId,
            sa.ForeignKey("user_account.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_forgotten_recipient_user_id", "forgotten_recipient", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_forgotten_recipient_user_id", table_name="forgotten_recipient")
    op.drop_table("forgotten_recipient")
    op.drop_index("ix_web_session_user_id", table_name="web_session")
    op.drop_table("web_session")
