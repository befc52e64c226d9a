"""The hit pipeline's records: what it reads to judge a fetch (the delivery, its message and
the sender's networks) and the judged hits it writes.

Hit rows go in below the ORM: the one write that must keep up with a burst.
SQLAlchemy's executemany spends more time building parameters than the database spends
storing them. Below it: on PostgreSQL, one INSERT ... SELECT FROM unnest(one array per column)
... ON CONFLICT (uid) DO NOTHING per batch, a single round trip; on SQLite, the driver's
executemany of INSERT OR IGNORE with values encoded by the columns' own type processors (JSON
by orjson), so what is stored is what the ORM would store. The encoding is pure Python over
every row and runs on a worker thread, so a batch never holds up the loop that answers pixels.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from sqlalchemy import (
    Integer,
    cast,
    func,
    select,
)
from sqlalchemy.ext.asyncio import (
    AsyncSession,
)

from pixelserver.store.schema import Delivery, Hit, Message, UserNetwork, utcnow

# --- writes from the hit pipeline ----------------------------------------------------------


@dataclass(frozen=True)
class NewHit:
    uid: str
    token: str
    at: dt.datetime
    method: str
    ip_prefix: str
    user_agent: str
    headers: dict[str, str]
    verdict: str = "unknown"
    reasons: tuple[Any, ...] = ()
    confidence: float = 0.0
    rule: str = ""
    seconds_after_send: float | None = None
    asn: int | None = None
    org: str = ""
    net_lists: tuple[str, ...] = ()
    hosting: bool = False
    country: str = ""
    region: str = ""
    city: str = ""
    client: str = ""
    delivery_id: int | None = None  # known already when judged; else looked up by token


async def delivery_ids_for_tokens(session: AsyncSession, tokens: Iterable[str]) -> dict[str, int]:
    tokens = list(set(tokens))
    found: dict[str, int] = {}
    for i in range(0, len(tokens), 500):
        chunk = tokens[i : i + 500]
        rows = await session.execute(
            select(Delivery.token, Delivery.id).where(Delivery.token.in_(chunk))
        )
        found.update({t: d for t, d in rows.all()})
    return found


@dataclass
class HitContext:
    """What the classifier needs to know about the copy a token belongs to."""

    delivery_id: int
    recipient: str
    accepted_at: dt.datetime
    sender_prefixes: frozenset[str]
    prior: list[tuple[str, str, float]]  # (prefix, ua, seconds after send) of earlier hits
    mailbox_provider: str = ""  # from the recipient domain's MX; "" when not known


SENDER_NETWORK_DAYS = 30


class SenderNetworks:
    """The networks each user sent from or logged in from in the last 30 days, remembered
    for `ttl` seconds: every batch of hits needs them, and reading a month of a busy user's
    messages for each batch of 200 hits cost more than storing the hits."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._known: dict[int, tuple[float, set[str]]] = {}

    async def get(self, session: AsyncSession, user_ids: set[int]) -> dict[int, set[str]]:
        now = time.monotonic()
        stale = {u for u in user_ids if u not in self._known or self._known[u][0] < now}
        if stale:
            since = utcnow() - dt.timedelta(days=SENDER_NETWORK_DAYS)
            fresh: dict[int, set[str]] = {u: set() for u in stale}
            for user_id, prefix in await session.execute(
                select(Message.user_id, Message.sender_prefix)
                .where(
                    Message.user_id.in_(stale),
                    Message.accepted_at >= since,
                    Message.sender_prefix != "",
                )
                .distinct()
            ):
                fresh[user_id].add(prefix)
            for user_id, prefix in await session.execute(
                select(UserNetwork.user_id, UserNetwork.prefix).where(
                    UserNetwork.user_id.in_(stale), UserNetwork.seen_at >= since
                )
            ):
                fresh[user_id].add(prefix)
            for u, found in fresh.items():
                self._known[u] = (now + self.ttl, found)
        return {u: self._known[u][1] for u in user_ids}


async def hit_contexts(
    session: AsyncSession,
    tokens: Iterable[str],
    prior_since: dt.datetime | None = None,
    networks: SenderNetworks | None = None,
) -> dict[str, HitContext]:
    """Per known token: its delivery, when its message was accepted, the networks its sender
    used recently, and its earlier hits from `prior_since` on (three queries for a batch)."""
    tokens = list(set(tokens))
    rows = []
    for i in range(0, len(tokens), 500):
        rows += (
            await session.execute(
                select(
                    Delivery.token,
                    Delivery.id,
                    Delivery.recipient,
                    Message.accepted_at,
                    Message.user_id,
                    Message.sender_prefix,
                    Delivery.mailbox_provider,
                )
                .join(Message, Message.id == Delivery.message_id)
                .where(Delivery.token.in_(tokens[i : i + 500]))
            )
        ).all()
    if not rows:
        return {}
    nets = await (networks or SenderNetworks(ttl=0)).get(session, {r.user_id for r in rows})
    prior: dict[int, list[tuple[str, str, float]]] = {r.id: [] for r in rows}
    # The rules ask one thing of earlier hits: is there one from the same network within
    # BURST_WINDOW seconds of this one. A pixel fetched thousands of times in the window would
    # read thousands of rows per batch for that, so they are read grouped: per network and
    # tenth of a second, the earliest and latest time. Exact: an interval of 2 x BURST_WINDOW
    # holding some time of a group narrower than itself holds the group's first or last.
    seconds = Hit.seconds_after_send
    bucket = cast(seconds * 10, Integer)
    earlier = (
        select(Hit.delivery_id, Hit.ip_prefix, func.min(seconds), func.max(seconds))
        .where(Hit.delivery_id.in_(prior.keys()), seconds.is_not(None))
        .group_by(Hit.delivery_id, Hit.ip_prefix, bucket)
    )
    if prior_since is not None:
        earlier = earlier.where(Hit.at >= prior_since)
    for delivery_id, prefix, first, last in await session.execute(earlier):
        prior[delivery_id].append((prefix, "", first))
        if last != first:
            prior[delivery_id].append((prefix, "", last))
    for times in prior.values():
        times.sort(key=lambda p: p[2])  # oldest first, as the rules scan them
    return {
        r.token: HitContext(
            r.id,
            r.recipient,
            r.accepted_at,
            # The copy's own sending network counts at once, whatever the cache says.
            frozenset(nets[r.user_id] | ({r.sender_prefix} if r.sender_prefix else set())),
            prior[r.id],
            r.mailbox_provider or "",
        )
        for r in rows
    }


async def add_hits(session: AsyncSession, hits: Sequence[NewHit]) -> tuple[int, int]:
    """Store hits whose token is known; returns (stored or already stored, unknown tokens).

    Hits are inserted with ON CONFLICT DO NOTHING on their uid so that replaying a journal
    after a crash never stores one fetch twice.
    """
    known, _ = await add_new_hits(session, hits)
    return known, len(hits) - known


async def add_new_hits(
    session: AsyncSession, hits: Sequence[NewHit], encoded: Encoded | None = None
) -> tuple[int, list[NewHit]]:
    """Store hits whose token is known; returns how many were known and the hits that are new
    rows (not stored before, each uid once, in insertion order, with their delivery ids):
    what the delivery states are moved by. `encoded`: the rows as `encoder` made them, for
    hits that all carry their delivery id and each uid once (the pipeline encodes on its
    worker thread, with the judging)."""
    if encoded is not None:
        inserted = await insert_encoded(session, hits, encoded)
        return len(hits), [h for h in hits if h.uid in inserted]
    ids = {h.token: h.delivery_id for h in hits if h.delivery_id is not None}
    missing = [h.token for h in hits if h.delivery_id is None]
    if missing:
        ids.update(await delivery_ids_for_tokens(session, missing))
    known = [h for h in hits if h.token in ids]
    inserted = await insert_hits(session, known, ids)
    fresh = []
    for h in known:
        if h.uid in inserted:
            inserted.discard(h.uid)  # a uid twice in one batch is one row
            fresh.append(h if h.delivery_id is not None else replace(h, delivery_id=ids[h.token]))
    return len(known), fresh


def hit_row(h: NewHit, delivery_id: int) -> dict[str, Any]:
    """A judged hit as a row of the hit table (lengths cut to the columns)."""
    return {
        "uid": h.uid,
        "delivery_id": delivery_id,
        "at": h.at,
        "method": h.method,
        "ip_prefix": h.ip_prefix,
        "user_agent": h.user_agent[:1000],
        "headers": h.headers,
        "verdict": h.verdict,
        "reasons": list(h.reasons),
        "confidence": h.confidence,
        "rule": h.rule,
        "seconds_after_send": h.seconds_after_send,
        "asn": h.asn,
        "org": h.org[:200],
        "net_lists": sorted(h.net_lists),
        "hosting": h.hosting,
        "country": h.country[:2],
        "region": h.region[:100],
        "city": h.city[:100],
        "client": h.client[:60],
    }


# --- reads for the report ------------------------------------------------------------------


async def hits_for_delivery(session: AsyncSession, delivery_id: int) -> list[Hit]:
    rows = await session.execute(select(Hit).where(Hit.delivery_id == delivery_id).order_by(Hit.at))
    return list(rows.scalars())


COLUMNS = [c for c in Hit.__table__.columns if c.name != "id"]
NAMES = [c.name for c in COLUMNS]
JSON_COLUMNS = {"headers", "reasons", "net_lists"}
_LIST = ", ".join(NAMES)


# Rows ready for the driver: PostgreSQL one list per column, SQLite one tuple per row.
Encoded = list[Any]


async def encoder(session: AsyncSession) -> Callable[[Sequence[NewHit]], Encoded]:
    """The pure function turning judged hits (each with its delivery id) into rows for this
    session's database, to run on a worker thread."""
    dialect = (await session.connection()).dialect
    if dialect.name == "postgresql":
        return lambda hits: _as_arrays(hits, {})
    processors = [c.type.bind_processor(dialect) for c in COLUMNS]
    return lambda hits: _encode(hits, {}, processors)


async def insert_hits(
    session: AsyncSession, hits: Sequence[NewHit], ids: dict[str, int]
) -> set[str]:
    """Insert judged hits (`ids`: their tokens' delivery ids), skipping uids already stored;
    returns the uids of the rows inserted now."""
    if not hits:
        return set()
    hits = first_of_each_uid(hits)
    hits = [h if h.delivery_id is not None else replace(h, delivery_id=ids[h.token]) for h in hits]
    encode = await encoder(session)
    return await insert_encoded(session, hits, await asyncio.to_thread(encode, hits))


async def insert_encoded(session: AsyncSession, hits: Sequence[NewHit], rows: Encoded) -> set[str]:
    """Insert encoded rows, skipping uids already stored; returns the uids inserted now
    (PostgreSQL: RETURNING; SQLite: the uids already there are read first; each journal has
    one pipeline, so nothing adds them in between)."""
    if not hits:
        return set()
    conn = await session.connection()
    driver = (await conn.get_raw_connection()).driver_connection
    if conn.dialect.name == "postgresql":
        return {r[0] for r in await driver.fetch(_pg_insert(conn.dialect), *rows)}
    uids = [h.uid for h in hits]
    there: set[str] = set()
    for i in range(0, len(uids), 500):
        chunk = uids[i : i + 500]
        marks = ", ".join("?" for _ in chunk)
        async with driver.execute(f"SELECT uid FROM hit WHERE uid IN ({marks})", chunk) as cur:
            there.update(r[0] for r in await cur.fetchall())
    new = [(h, row) for h, row in zip(hits, rows, strict=True) if h.uid not in there]
    marks = ", ".join("?" for _ in NAMES)
    await driver.executemany(
        f"INSERT OR IGNORE INTO hit ({_LIST}) VALUES ({marks})", [row for _, row in new]
    )
    return {h.uid for h, _ in new}


def first_of_each_uid(hits: Sequence[NewHit]) -> Sequence[NewHit]:
    seen: set[str] = set()
    if len({h.uid for h in hits}) == len(hits):
        return hits
    return [h for h in hits if not (h.uid in seen or seen.add(h.uid))]


def _as_arrays(hits: Sequence[NewHit], ids: dict[str, int]) -> list[list[Any]]:
    """One list per column, as unnest() takes them (JSON as text, cast back in SQL)."""
    rows = [hit_row(h, h.delivery_id or ids[h.token]) for h in hits]
    return [
        [_json(r[n]) for r in rows] if n in JSON_COLUMNS else [r[n] for r in rows] for n in NAMES
    ]


@functools.cache
def _pg_insert(dialect: Any) -> str:
    arrays = []
    for i, c in enumerate(COLUMNS, start=1):
        sql_type = "text" if c.name in JSON_COLUMNS else c.type.compile(dialect=dialect)
        arrays.append(f"${i}::{sql_type}[]")
    picked = ", ".join(f"{n}::json" if n in JSON_COLUMNS else n for n in NAMES)
    # In array order (ids follow it: the latest of equal times is the last inserted).
    return (
        f"INSERT INTO hit ({_LIST}) SELECT {picked} FROM unnest({', '.join(arrays)}) "
        f"WITH ORDINALITY AS t({_LIST}, n) ORDER BY n ON CONFLICT (uid) DO NOTHING RETURNING uid"
    )


def _encode(
    hits: Sequence[NewHit], ids: dict[str, int], processors: list[Any]
) -> list[tuple[Any, ...]]:
    rows = [hit_row(h, h.delivery_id or ids[h.token]) for h in hits]
    # JSON columns written by orjson (compact, UTF-8): the same values the column's own
    # processor would write, at a fraction of json.dumps's cost (the largest part of encoding).
    processors = [_json if n in JSON_COLUMNS else p for n, p in zip(NAMES, processors, strict=True)]
    return [
        tuple(p(r[n]) if p else r[n] for n, p in zip(NAMES, processors, strict=True)) for r in rows
    ]


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # e.g. a lone surrogate, which json.dumps escapes
        return json.dumps(value, separators=(",", ":"))
