"""The relay's records: a message, its deliveries (one per recipient copy) and their outcomes,
and the text a search looks in.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import (
    AsyncSession,
)

from pixelserver.store.accounts import get_or_create_user
from pixelserver.store.hitrecords import delivery_ids_for_tokens
from pixelserver.store.schema import OUTCOMES, Delivery, Message, User, utcnow
from pixelserver.store.states import refresh_states
from pixelserver.verdicts.state import (
    WAITING_OUTCOMES,
    outcome_state,
)
from pixelserver.vocabulary import Outcome, Source, State, Tracking


def search_text(subject: str, recipients: Iterable[str]) -> str:
    return "\n".join([subject, *recipients])


# --- writes from the relay -----------------------------------------------------------------


@dataclass(frozen=True)
class NewDelivery:
    recipient: str
    token: str
    tracking: str
    untracked_reason: str | None


async def add_message(
    session: AsyncSession,
    *,
    user_address: str,
    sender_prefix: str = "",
    envelope_from: str,
    subject: str,
    message_id_header: str,
    size: int,
    deliveries: Sequence[NewDelivery],
    source: str = Source.RELAY,
    owner: User | None = None,
    accepted_at: dt.datetime | None = None,
    outcome: str = Outcome.PENDING,
) -> tuple[Message, list[Delivery]]:
    """`owner`: the user row when the caller has read it already (one query less);
    `accepted_at`: when the relay took the message, if it is recorded later than that."""
    user = owner or await get_or_create_user(session, user_address)
    message = Message(
        user_id=user.id,
        envelope_from=envelope_from,
        subject=subject,
        message_id_header=message_id_header,
        size=size,
        accepted_at=accepted_at or utcnow(),
        sender_prefix=sender_prefix,
        search_text=search_text(subject, (d.recipient for d in deliveries)),
        source=source,
    )
    session.add(message)
    await session.flush()
    rows = [
        Delivery(
            message_id=message.id,
            recipient=d.recipient,
            token=d.token,
            tracking=d.tracking,
            untracked_reason=d.untracked_reason,
            outcome=outcome,
            state=State.UNTRACKED if d.tracking == Tracking.UNTRACKED else State.NOT_OPENED,
        )
        for d in deliveries
    ]
    session.add_all(rows)
    await session.flush()
    return message, rows


async def set_outcomes(session: AsyncSession, outcomes: Iterable[tuple[int, str, str]]) -> None:
    """(delivery id, outcome, upstream reply) for each copy that was tried, in one statement."""
    now = utcnow()
    rows = []
    for delivery_id, outcome, reply in outcomes:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        rows.append(
            {
                "b_id": delivery_id,
                "outcome": outcome,
                "upstream_reply": reply[:2000],
                "finished_at": None if outcome in WAITING_OUTCOMES else now,
            }
        )
    if rows:
        await session.execute(
            update(Delivery.__table__).where(Delivery.__table__.c.id == bindparam("b_id")),
            rows,
        )
        await refresh_states(session, [r["b_id"] for r in rows])


async def set_outcomes_by_token(
    session: AsyncSession,
    outcomes: Iterable[tuple[str, str, str]],
    *,
    now: dt.datetime | None = None,
) -> None:
    """(token, outcome, upstream reply): what the relay's spool says of each copy, written
    as it is (idempotent, so a catch-up after an outage can repeat it), in one statement,
    below the ORM (PostgreSQL: one UPDATE ... FROM unnest; SQLite: the driver's executemany).
    `now`: when the outcomes were heard (their finished_at and state_changed_at).

    The state follows from the outcome alone, without reading hits: until a copy is accepted
    nobody has it, so it has no hits, and once accepted its outcome never changes again. Only
    an uncertain copy (it may have arrived, and been fetched, before we knew) is recomputed."""
    now = now or utcnow()
    tokens: list[str] = []
    words: list[str] = []
    replies: list[str] = []
    finished: list[dt.datetime | None] = []
    states: list[str | None] = []
    uncertain = []
    for token, outcome, reply in outcomes:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        if outcome == Outcome.UNCERTAIN:
            uncertain.append(token)
        tokens.append(token)
        words.append(outcome)
        replies.append(reply[:2000])
        finished.append(None if outcome in WAITING_OUTCOMES else now)
        states.append(outcome_state(outcome))
    if not tokens:
        return
    driver, dialect = await _driver(session)
    if dialect.name == "postgresql":
        await driver.execute(_PG_OUTCOMES, tokens, words, replies, finished, states, now)
    else:
        stamp = _sqlite_time(dialect)
        at = stamp(now)
        rows = [
            (w, r, stamp(f), s, at, t)
            for t, w, r, f, s in zip(tokens, words, replies, finished, states, strict=True)
        ]
        await driver.executemany(_SQLITE_OUTCOMES, rows)
    if uncertain:
        ids = await delivery_ids_for_tokens(session, uncertain)
        await refresh_states(session, ids.values())


# The state an outcome leaves when it decides none: the copy's tracking says (as in
# verdicts/state.py: an untracked copy is "untracked", a tracked one not opened yet).
_OPENED_STATE = (
    f"CASE WHEN tracking = '{Tracking.UNTRACKED.value}' THEN '{State.UNTRACKED.value}' "
    f"ELSE '{State.NOT_OPENED.value}' END"
)
_PG_OUTCOMES = (
    "UPDATE delivery SET outcome = v.outcome, upstream_reply = v.reply, "
    "finished_at = v.finished, state = COALESCE(v.state, "
    + _OPENED_STATE.replace("tracking", "delivery.tracking")
    + "), state_changed_at = $6 "
    "FROM unnest($1::varchar[], $2::varchar[], $3::text[], $4::timestamptz[], "
    "$5::varchar[]) AS v(token, outcome, reply, finished, state) WHERE delivery.token = v.token"
)
_SQLITE_OUTCOMES = (
    "UPDATE delivery SET outcome = ?, upstream_reply = ?, finished_at = ?, "
    f"state = COALESCE(?, {_OPENED_STATE}), state_changed_at = ? WHERE token = ?"
)


async def _driver(session: AsyncSession) -> tuple[Any, Any]:
    """The database driver's own connection under the session's (asyncpg or aiosqlite), for
    the relay's few statements per message (SQLAlchemy's execution path cost more than the
    database's work), and the dialect."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    return raw.driver_connection, conn.dialect


@functools.cache
def _sqlite_time(dialect: Any) -> Any:
    """How SQLite stores a UTC timestamp (the UTCDateTime column type's own encoding)."""
    encode = Delivery.__table__.c.finished_at.type.bind_processor(dialect)
    return lambda value: None if value is None else encode(value)


@dataclass(frozen=True)
class SenderFacts:
    """What the relay reads of a sender before it mints a message's tokens."""

    user_id: int | None  # None: a sender the store does not know yet
    exclusions: list[str]
    forgotten_hashes: frozenset[str]


_FACTS = (
    "SELECT u.id, u.exclusions, f.address_hash FROM (SELECT 1 AS one) AS o "
    "LEFT JOIN user_account AS u ON u.address = {a} "
    "LEFT JOIN forgotten_recipient AS f ON f.user_id IS NULL OR f.user_id = u.id"
)


async def sender_facts(session: AsyncSession, address: str) -> SenderFacts:
    """The sender's id and exclusions, and the keyed hashes of the recipients they (or an
    administrator, for everyone) forgot, in one statement below the ORM."""
    address = address.strip().lower()
    driver, dialect = await _driver(session)
    if dialect.name == "postgresql":
        rows = await driver.fetch(_FACTS.format(a="$1"), address)
    else:
        rows = await driver.execute_fetchall(_FACTS.format(a="?"), (address,))
    user_id, exclusions = rows[0][0], rows[0][1]
    if isinstance(exclusions, str | bytes):
        exclusions = json.loads(exclusions)
    return SenderFacts(
        user_id=user_id,
        exclusions=list(exclusions or []),
        forgotten_hashes=frozenset(r[2] for r in rows if r[2] is not None),
    )


async def insert_spooled_message(
    session: AsyncSession,
    *,
    user_address: str,
    envelope_from: str,
    subject: str,
    message_id_header: str,
    size: int,
    accepted_at: dt.datetime,
    sender_prefix: str,
    deliveries: Sequence[NewDelivery],
    outcome: str = Outcome.QUEUED,
) -> int:
    """A relayed message and its deliveries, below the ORM, in as few statements as the
    database allows: on PostgreSQL one (INSERT of the message feeding an INSERT ... SELECT
    FROM unnest of the deliveries), on SQLite an INSERT ... RETURNING and one executemany.
    The sender's row is found by address in the same statement (created first, the ORM way,
    only for a sender's first message). Returns the message's id."""
    address = user_address.strip().lower()
    waiting = outcome_state(outcome)
    message = (
        envelope_from,
        subject,
        message_id_header,
        size,
        accepted_at,
        sender_prefix,
        search_text(subject, (d.recipient for d in deliveries)),
        address,
    )
    rows = [
        (
            d.recipient,
            d.token,
            d.tracking,
            d.untracked_reason,
            waiting or (State.UNTRACKED if d.tracking == Tracking.UNTRACKED else State.NOT_OPENED),
        )
        for d in deliveries
    ]
    driver, dialect = await _driver(session)
    record = _pg_record if dialect.name == "postgresql" else _sqlite_record
    for _ in range(2):
        message_id = await record(driver, dialect, message, rows, outcome)
        if message_id is not None:
            return message_id
        await get_or_create_user(session, address)  # a sender's first message
    raise RuntimeError(f"the sender {address!r} is not in the store after adding it")


async def _pg_record(
    driver: Any, dialect: Any, message: tuple, rows: list[tuple], outcome: str
) -> int | None:
    """One statement; None when the sender has no row yet (then nothing was written)."""
    if not rows:
        return await driver.fetchval(_PG_MESSAGE, *message)
    columns = [list(c) for c in zip(*rows, strict=True)]
    return await driver.fetchval(_PG_RECORD, *message, outcome, *columns)


async def _sqlite_record(
    driver: Any, dialect: Any, message: tuple, rows: list[tuple], outcome: str
) -> int | None:
    """Two statements: the message (INSERT ... SELECT ... RETURNING) and its deliveries."""
    stamp = _sqlite_time(dialect)
    values = (*message[:4], stamp(message[4]), *message[5:])
    found = await driver.execute_fetchall(_SQLITE_MESSAGE, values)
    if not found:
        return None
    message_id = int(found[0][0])
    if rows:
        await driver.executemany(
            _SQLITE_DELIVERY, [(message_id, *r[:4], outcome, r[4]) for r in rows]
        )
    return message_id


_MESSAGE_COLUMNS = (
    "user_id, envelope_from, subject, message_id_header, size, accepted_at, sender_prefix, "
    "search_text, source"
)
_DELIVERY_COLUMNS = (
    "message_id, recipient, token, tracking, untracked_reason, outcome, upstream_reply, state"
)
# Parameters: the message's values and search text ($1-$7), the sender's address ($8); then the
# outcome ($9) and one array per delivery column ($10-$14).
_PG_MESSAGE = (
    f"INSERT INTO message ({_MESSAGE_COLUMNS}) "
    "SELECT u.id, $1::varchar, $2::text, $3::text, $4::integer, $5::timestamptz, $6::varchar, "
    f"$7::text, '{Source.RELAY.value}' FROM user_account AS u WHERE u.address = $8::varchar "
    "RETURNING id"
)
_PG_RECORD = (
    f"WITH m AS ({_PG_MESSAGE}) "
    f"INSERT INTO delivery ({_DELIVERY_COLUMNS}) "
    "SELECT m.id, d.recipient, d.token, d.tracking, d.untracked_reason, $9::varchar, '', "
    "d.state "
    "FROM m, unnest($10::varchar[], $11::varchar[], $12::varchar[], $13::varchar[], "
    "$14::varchar[]) WITH ORDINALITY AS d(recipient, token, tracking, untracked_reason, state, n) "
    "ORDER BY d.n RETURNING message_id"
)
_SQLITE_MESSAGE = (
    f"INSERT INTO message ({_MESSAGE_COLUMNS}) "
    f"SELECT id, ?, ?, ?, ?, ?, ?, ?, '{Source.RELAY.value}' FROM user_account "
    "WHERE address = ? RETURNING id"
)
_SQLITE_DELIVERY = f"INSERT INTO delivery ({_DELIVERY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, '', ?)"


async def tokens_recorded(session: AsyncSession, tokens: Sequence[str]) -> bool:
    """Whether a spooled message's deliveries are in the store already (catch-up is
    idempotent: tokens are unique)."""
    if not tokens:
        return True
    found = await session.scalar(select(func.count()).where(Delivery.token.in_(list(tokens))))
    return bool(found)


async def delivery_by_id(session: AsyncSession, delivery_id: int) -> Delivery | None:
    return await session.get(Delivery, delivery_id)
