"""Delivery states in the store: recomputed for the deliveries a batch of hits or a verdict
change touched. The judging itself is pure (pixelserver/verdicts/state.py); this module only
reads what it needs and writes the result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
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

from pixelserver.store.schema import Delivery, Hit, utcnow
from pixelserver.verdicts.state import (
    CERTAIN_CONFIDENCE,
    HitSummary,
    HitView,
    state_of,
)
from pixelserver.vocabulary import MACHINE_VERDICTS, PERSON_VERDICTS, Verdict


async def refresh_states(session: AsyncSession, delivery_ids: Iterable[int]) -> None:
    """Recompute and store the state of these deliveries from their outcome and hits, with
    aggregates (a delivery fetched ten thousand times costs no more than one fetched once).

    Two reads and one write per 2,000 deliveries: the per-verdict counts, first open, latest
    person's hit and distinct networks all come from one grouped query with FILTER clauses
    (SQLite 3.30+, PostgreSQL), then the latest hits' facts, then one executemany."""
    ids = sorted(set(delivery_ids))
    person = Hit.verdict.in_(PERSON_VERDICTS)
    human = Hit.verdict == Verdict.HUMAN
    for i in range(0, len(ids), 2000):
        chunk = ids[i : i + 2000]
        summary = (
            await session.execute(
                select(
                    Delivery.id,
                    Delivery.outcome,
                    Delivery.tracking,
                    func.count(Hit.id).filter(person),
                    func.count(Hit.id).filter(Hit.verdict.in_(MACHINE_VERDICTS)),
                    func.count(Hit.id).filter(Hit.verdict == Verdict.PRIVACY_PREFETCH),
                    func.count(Hit.id).filter(Hit.verdict == Verdict.SENDER),
                    func.min(Hit.at).filter(person),
                    func.max(Hit.id).filter(person),
                    func.count(func.distinct(Hit.ip_prefix)).filter(human),
                    func.count(func.distinct(func.nullif(Hit.client, ""))).filter(human),
                    # as state.is_certain: 0 is a hit from before confidences were stored
                    func.count(Hit.id).filter(
                        person, (Hit.confidence >= CERTAIN_CONFIDENCE) | (Hit.confidence == 0)
                    ),
                )
                .outerjoin(Hit, Hit.delivery_id == Delivery.id)
                .where(Delivery.id.in_(chunk))
                .group_by(Delivery.id, Delivery.outcome, Delivery.tracking)
            )
        ).all()
        last_ids = [r[8] for r in summary if r[8] is not None]
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


def _aware(value: Any) -> dt.datetime:
    """Aggregates bypass the column type on SQLite and come back naive or as text."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
