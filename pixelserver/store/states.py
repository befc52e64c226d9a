"""Delivery states in the store, kept two ways. The hit pipeline moves them by each batch's new
rows only (`advance_states`: counters added, first/last open compared, the state raised by
rank), so a batch costs the same whether its deliveries have one earlier hit or ten thousand.
A verdict change or an outcome recomputes them from all their hits (`refresh_states`). Both give
the same result (tests/test_incremental_state.py). The judging itself is pure
(pixelserver/verdicts/state.py); this module only reads what it needs and writes the result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import (
    AsyncSession,
)
from sqlalchemy.orm import aliased

from pixelserver.store.schema import Delivery, Hit, UTCDateTime, utcnow
from pixelserver.verdicts.state import (
    BY_HITS,
    CERTAIN_CONFIDENCE,
    FAILED,
    NOT_OPENED,
    QUEUED,
    RANK,
    UNTRACKED,
    HitSummary,
    HitView,
    hits_state,
    place_of,
    state_of,
    summarize,
)
from pixelserver.vocabulary import (
    FAILED_OUTCOMES,
    MACHINE_VERDICTS,
    PERSON_VERDICTS,
    WAITING_OUTCOMES,
    Tracking,
    Verdict,
)


async def refresh_states(session: AsyncSession, delivery_ids: Iterable[int]) -> None:
    """Recompute and store the state of these deliveries from their outcome and hits, with
    aggregates (a delivery fetched ten thousand times costs no more than one fetched once).

    Two reads and one write per 2,000 deliveries: the per-verdict counts, first open, latest
    person's hit and distinct networks all come from one grouped query with FILTER clauses
    (SQLite 3.30+, PostgreSQL), then the latest hits' facts, then one executemany."""
    ids = sorted(set(delivery_ids))
    person = Hit.verdict.in_(PERSON_VERDICTS)
    human = Hit.verdict == Verdict.HUMAN
    # The latest person's hit by time (then by id among equal times), as advance_states keeps
    # it: hits can arrive out of order (two workers, a journal replayed after an outage).
    latest = aliased(Hit)
    last_person = (
        select(latest.id)
        .where(latest.delivery_id == Delivery.id, latest.verdict.in_(PERSON_VERDICTS))
        .order_by(latest.at.desc(), latest.id.desc())
        .limit(1)
        .correlate(Delivery)
        .scalar_subquery()
    )
    for i in range(0, len(ids), 2000):
        chunk = ids[i : i + 2000]
        summary = (
            await session.execute(
                select(
                    Delivery.id,
                    Delivery.outcome,
                    Delivery.tracking,
                    Delivery.human_clicks,
                    func.count(Hit.id).filter(person),
                    func.count(Hit.id).filter(Hit.verdict.in_(MACHINE_VERDICTS)),
                    func.count(Hit.id).filter(Hit.verdict == Verdict.PRIVACY_PREFETCH),
                    func.count(Hit.id).filter(Hit.verdict == Verdict.SENDER),
                    func.min(Hit.at).filter(person),
                    last_person,
                    func.count(func.distinct(Hit.ip_prefix)).filter(human),
                    func.count(func.distinct(func.nullif(Hit.client, ""))).filter(human),
                    # as state.is_certain: 0 is a hit from before confidences were stored
                    func.count(Hit.id).filter(
                        person, (Hit.confidence >= CERTAIN_CONFIDENCE) | (Hit.confidence == 0)
                    ),
                )
                .outerjoin(Hit, Hit.delivery_id == Delivery.id)
                .where(Delivery.id.in_(chunk))
                .group_by(Delivery.id, Delivery.outcome, Delivery.tracking, Delivery.human_clicks)
            )
        ).all()
        last_ids = [r[9] for r in summary if r[9] is not None]
        lasts = {
            h.delivery_id: HitView(
                h.at, h.verdict, h.rule, h.ip_prefix, h.client, h.country, h.region, h.city
            )
            for h in (
                await session.execute(
                    select(
                        Hit.delivery_id,
                        Hit.at,
                        Hit.verdict,
                        Hit.rule,
                        Hit.ip_prefix,
                        Hit.client,
                        Hit.country,
                        Hit.region,
                        Hit.city,
                    ).where(Hit.id.in_(last_ids))
                )
            ).all()
        }
        now = utcnow()
        values = []
        for (
            delivery_id,
            outcome,
            tracking,
            clicks,
            people,
            machines,
            prefetches,
            senders,
            first,
            _last_id,
            nets,
            clients,
            certain,
        ) in summary:
            st = state_of(
                outcome,
                tracking,
                HitSummary(
                    people=people,
                    machines=machines,
                    prefetches=prefetches,
                    senders=senders,
                    first_open=_aware(first) if first is not None else None,
                    last_open=lasts.get(delivery_id),
                    direct_networks=nets,
                    direct_clients=clients,
                    certain=certain,
                    clicks=clicks,
                ),
            )
            values.append(
                {
                    "b_id": delivery_id,
                    "state": st.state,
                    "human_hits": st.human_hits,
                    "machine_hits": st.machine_hits,
                    "sender_hits": st.sender_hits,
                    "first_open": st.first_open,
                    "last_open": st.last_open,
                    "client": st.client[:60],
                    "place": st.place[:200],
                    "forwarded": st.possibly_forwarded,
                    "state_changed_at": now,
                }
            )
        if values:
            # One statement, many parameter sets: a batch touching 2,000 deliveries is one
            # executemany, not 2,000 ORM updates (which made ingest 15x slower).
            table = Delivery.__table__
            await session.execute(update(table).where(table.c.id == bindparam("b_id")), values)


async def advance_states(session: AsyncSession, fresh: Mapping[int, Sequence[HitView]]) -> None:
    """Move the states of deliveries by their new hits only (`fresh`: delivery id -> the hits
    just inserted, each stored once, in insertion order), in one executemany.

    In SQL, so two writers moving the same delivery add up rather than overwrite each other:
    counters +=, first open the earlier, last open (with its client and place) the later or
    equal (a new row's id is higher than any stored), state raised to the batch's rank unless
    the outcome or untracking decides it. "Forwarded" (several networks or programs of the
    recipient's own) needs all of a delivery's direct hits: it is counted only for deliveries
    with new direct hits and not already forwarded, and never goes back."""
    if not fresh:
        return
    forwarded = await _forwarded(
        session, [d for d, views in fresh.items() if any(v.verdict == Verdict.HUMAN for v in views)]
    )
    now = utcnow()
    rows = []
    for delivery_id, views in fresh.items():
        s = summarize(views)
        last = s.last_open
        state = hits_state(s)
        rows.append(
            (
                delivery_id,
                s.people,
                s.machines,
                s.senders,
                s.first_open,
                last.at if last else None,
                last.client[:60] if last else "",
                place_of(last)[:200] if last else "",
                delivery_id in forwarded,
                RANK[state],
                state,
            )
        )
    conn = await session.connection()
    driver = (await conn.get_raw_connection()).driver_connection
    if conn.dialect.name == "postgresql":
        # One statement for the whole batch: the rows as arrays, joined to the table.
        columns = [list(c) for c in zip(*rows, strict=True)]
        await driver.execute(_PG_ADVANCE, *columns, now)
        return
    when = UTCDateTime().bind_processor(conn.dialect)
    assert when is not None
    stamp = when(now)
    await driver.executemany(
        _SQLITE_ADVANCE,
        [
            (*r[1:4], when(r[4]), when(r[5]), *r[6:8], int(r[8]), r[9], r[10], stamp, r[0])
            for r in rows
        ],
    )


def _quoted(words: Iterable[str]) -> str:
    return ", ".join(f"'{w}'" for w in words)


def _advance_sql(b: Mapping[str, str], old: str) -> str:
    """The SET clause, for either backend: `b` names each batch value's expression, `old` is
    the table's alias ("" or "d.") for the row's values before this update (every SET
    expression sees the old row, on both backends). Below SQLAlchemy: building each row's
    bound parameters cost more than the database spent on the update."""
    rank = " ".join(f"WHEN '{state}' THEN {r}" for state, r in RANK.items())
    newer = f"{b['last']} IS NOT NULL AND ({old}last_open IS NULL OR {old}last_open <= {b['last']})"
    earlier = (
        f"{b['first']} IS NOT NULL AND ({old}first_open IS NULL OR {old}first_open > {b['first']})"
    )
    return f"""
        human_hits = {old}human_hits + {b["people"]},
        machine_hits = {old}machine_hits + {b["machines"]},
        sender_hits = {old}sender_hits + {b["senders"]},
        first_open = CASE WHEN {earlier} THEN {b["first"]} ELSE {old}first_open END,
        last_open = CASE WHEN {newer} THEN {b["last"]} ELSE {old}last_open END,
        client = CASE WHEN {newer} THEN {b["client"]} ELSE {old}client END,
        place = CASE WHEN {newer} THEN {b["place"]} ELSE {old}place END,
        forwarded = {old}forwarded OR {b["forwarded"]},
        state = CASE
            WHEN {old}outcome IN ({_quoted(FAILED_OUTCOMES)}) THEN '{FAILED}'
            WHEN {old}outcome IN ({_quoted(WAITING_OUTCOMES)}) THEN '{QUEUED}'
            WHEN {old}tracking = '{Tracking.UNTRACKED}' THEN '{UNTRACKED}'
            WHEN (CASE {old}state {rank} ELSE -1 END) >= {b["rank"]} THEN {old}state
            ELSE {b["state"]} END,
        state_changed_at = {b["now"]}"""


_BATCH = ("people", "machines", "senders", "first", "last", "client", "place", "forwarded")
_BATCH += ("rank", "state", "now")
_SQLITE_ADVANCE = (
    "UPDATE delivery SET"
    + _advance_sql({name: f"?{i}" for i, name in enumerate(_BATCH, start=1)}, "")
    + f" WHERE id = ?{len(_BATCH) + 1}"
)
_PG_TYPES = ("bigint", "int", "int", "int", "timestamptz", "timestamptz", "text", "text", "bool")
_PG_TYPES += ("int", "text")
_PG_ADVANCE = (
    "UPDATE delivery AS d SET"
    + _advance_sql({**{name: f"b.{name}" for name in _BATCH}, "now": "$12"}, "d.")
    + " FROM unnest("
    + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_PG_TYPES, start=1))
    + ") AS b(id, "
    + ", ".join(_BATCH[:-1])
    + ") WHERE d.id = b.id"
)
assert BY_HITS[0] == NOT_OPENED  # a delivery with no hits starts at the lowest rank


async def _forwarded(session: AsyncSession, delivery_ids: Sequence[int]) -> set[int]:
    """Of these deliveries (each with new direct hits), those not yet marked forwarded whose
    direct hits now come from more than one network or program."""
    found: set[int] = set()
    for i in range(0, len(delivery_ids), 2000):
        chunk = delivery_ids[i : i + 2000]
        rows = await session.execute(
            select(Hit.delivery_id)
            .where(
                Hit.delivery_id.in_(
                    select(Delivery.id).where(Delivery.id.in_(chunk), Delivery.forwarded.is_(False))
                ),
                Hit.verdict == Verdict.HUMAN,
            )
            .group_by(Hit.delivery_id)
            .having(
                or_(
                    func.count(func.distinct(Hit.ip_prefix)) > 1,
                    func.count(func.distinct(func.nullif(Hit.client, ""))) > 1,
                )
            )
        )
        found.update(rows.scalars())
    return found


def _aware(value: Any) -> dt.datetime:
    """Aggregates bypass the column type on SQLite and come back naive or as text."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
