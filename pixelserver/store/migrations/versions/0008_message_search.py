"""Substring search over subjects and recipients that stays fast with a long history.

`ILIKE '%…%'` cannot use a b-tree, so searching 100,000 messages read all of them (250–350 ms).
Each message now carries its subject and recipients in one `search_text` column, indexed by
trigrams: a pg_trgm GIN index on PostgreSQL, an FTS5 trigram table (kept in step by triggers)
on SQLite. One column rather than two indexes, because "subject or any recipient" over two
tables made both planners read every candidate before applying the limit.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger("mailping.store")

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE message_search USING fts5("
    "search_text, content='message', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER message_search_ai AFTER INSERT ON message BEGIN "
    "INSERT INTO message_search(rowid, search_text) VALUES (new.id, new.search_text); END",
    "CREATE TRIGGER message_search_ad AFTER DELETE ON message BEGIN "
    "INSERT INTO message_search(message_search, rowid, search_text) "
    "VALUES ('delete', old.id, old.search_text); END",
    "CREATE TRIGGER message_search_au AFTER UPDATE OF search_text ON message BEGIN "
    "INSERT INTO message_search(message_search, rowid, search_text) "
    "VALUES ('delete', old.id, old.search_text); "
    "INSERT INTO message_search(rowid, search_text) VALUES (new.id, new.search_text); END",
    "INSERT INTO message_search(message_search) VALUES ('rebuild')",
]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("search_text", sa.Text(), nullable=False, server_default=""))
    joined = "group_concat(d.recipient, char(10))" if sqlite else "string_agg(d.recipient, E'\\n')"
    op.execute(
        "UPDATE message SET search_text = subject || "
        + ("char(10)" if sqlite else "E'\\n'")
        + f" || coalesce((SELECT {joined} FROM delivery d WHERE d.message_id = message.id), '')"
    )
    if sqlite:
        for statement in SQLITE_FTS:
            op.execute(statement)
    else:
        _pg_trigram_index()


def _pg_trigram_index() -> None:
    """pg_trgm is a trusted extension (PostgreSQL 13+): a database owner may create it. Where
    it cannot be created, search still works, by reading every message."""
    bind = op.get_bind()
    savepoint = bind.begin_nested()
    try:
        bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        log.warning("pg_trgm is not available (%s): searches will read every message", exc.orig)
        return
    savepoint.commit()
    op.execute(
        "CREATE INDEX ix_message_search_trgm ON message USING gin (search_text gin_trgm_ops)"
    )
    # Every row was just rewritten: fresh statistics let the planner choose between the new
    # index (rare text) and reading newest first (common text) from the first search on.
    op.execute("ANALYZE message")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("message_search_ai", "message_search_ad", "message_search_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS message_search")
    else:
        op.execute("DROP INDEX IF EXISTS ix_message_search_trgm")
    with op.batch_alter_table("message") as batch:
        batch.drop_column("search_text")
