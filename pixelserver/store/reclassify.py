"""Judge stored hits again after a rule or data change, in small batches.

Each batch is its own short transaction, so a running server keeps writing hits meanwhile
(SQLite in WAL mode, PostgreSQL row locks). Stored hits keep the facts they were judged on
(network prefix, ASN, organisation, lists, hosting flag, seconds after sending); with
`refresh_networks` the prefix is looked up again in the current data instead — coarser than at
ingest, since only the /24 or /48 was kept.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.store.hitrecords import hit_contexts
from pixelserver.store.schema import Delivery, Hit, VerdictChange, utcnow
from pixelserver.store.states import refresh_states
from pixelserver.verdicts import classify
from pixelserver.verdicts.networks import NetworkFacts, Networks, fetcher_table


@dataclass
class Report:
    checked: int = 0
    changed: int = 0
    transitions: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [f"{self.checked} hits checked, {self.changed} verdicts changed"]
        out += [f"  {old} -> {new}: {n}" for (old, new), n in self.transitions.most_common()]
        return out


class Progress:
    """Reports a long reclassification: on a terminal one line rewritten in place (count, rate,
    time left); elsewhere (logs, cron) a line a minute. `clock` is a parameter for tests."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO = sys.stderr,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        every: float = 60.0,
    ) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.every = every
        self.start = clock()
        self._last_line = self.start

    def line(self, report: Report) -> str:
        elapsed = max(1e-9, self.clock() - self.start)
        rate = report.checked / elapsed
        left = (self.total - report.checked) / rate if rate > 0 else 0.0
        return (
            f"{report.checked}/{self.total} hits, {report.changed} changed, "
            f"{rate:,.0f}/s, {_eta(left)} left"
        )

    def __call__(self, report: Report) -> None:
        if self.tty:
            self.stream.write("\r" + self.line(report).ljust(60))
            self.stream.flush()
        elif self.clock() - self._last_line >= self.every:
            self._last_line = self.clock()
            self.stream.write(f"reclassify: {self.line(report)}\n")
            self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _eta(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


async def count_hits(
    sessions: async_sessionmaker[AsyncSession], since: dt.datetime | None = None
) -> int:
    """How many hits a run will check (for the progress line)."""
    async with sessions() as session:
        q = select(func.count(Hit.id))
        if since is not None:
            q = q.where(Hit.at >= since)
        return (await session.execute(q)).scalar_one()


def stored_facts(hit: Hit) -> NetworkFacts:
    """The facts a hit was judged on, plus what the current fetcher table says of its ASN:
    a vendor added to the table since is recognised without looking the network up again."""
    lists = frozenset(hit.net_lists or ()) | fetcher_table().asn_labels(hit.asn)
    return NetworkFacts(
        prefix=hit.ip_prefix,
        asn=hit.asn,
        org=hit.org,
        hosting=hit.hosting or any(x.startswith("cloud:") for x in lists),
        lists=lists,
        country=hit.country,
        region=hit.region,
        city=hit.city,
    )


async def reclassify(
    sessions: async_sessionmaker[AsyncSession],
    *,
    since: dt.datetime | None = None,
    upstream_google: bool = False,
    networks: Networks | None = None,
    batch: int = 200,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    report = Report()
    last_delivery = 0
    while True:
        async with sessions.begin() as session:
            q = (
                select(Hit.delivery_id)
                .where(Hit.delivery_id > last_delivery)
                .distinct()
                .order_by(Hit.delivery_id)
                .limit(batch)
            )
            if since is not None:
                q = q.where(Hit.at >= since)
            delivery_ids = list((await session.execute(q)).scalars())
            if not delivery_ids:
                return report
            last_delivery = delivery_ids[-1]
            await _judge_deliveries(session, delivery_ids, since, upstream_google, networks, report)
        if progress is not None:
            progress(report)


async def _judge_deliveries(
    session: AsyncSession,
    delivery_ids: list[int],
    since: dt.datetime | None,
    upstream_google: bool,
    networks: Networks | None,
    report: Report,
) -> None:
    tokens = dict(
        (
            await session.execute(
                select(Delivery.id, Delivery.token).where(Delivery.id.in_(delivery_ids))
            )
        ).all()
    )
    contexts = await hit_contexts(session, tokens.values())
    hits = (
        (
            await session.execute(
                select(Hit)
                .where(Hit.delivery_id.in_(delivery_ids))
                .order_by(Hit.delivery_id, Hit.at)
            )
        )
        .scalars()
        .all()
    )
    prior: dict[int, list[classify.PriorHit]] = {d: [] for d in delivery_ids}
    changed: set[int] = set()
    history: list[dict] = []
    now = utcnow()
    for hit in hits:
        ctx = contexts[tokens[hit.delivery_id]]
        seconds = hit.seconds_after_send
        if seconds is None:
            seconds = max(0.0, (hit.at - ctx.accepted_at).total_seconds())
        net = networks.facts(hit.ip_prefix.split("/")[0]) if networks else stored_facts(hit)
        verdict = classify.classify(
            classify.HitFacts(
                network=net,
                ua=hit.user_agent,
                method=hit.method,
                headers=hit.headers or {},
                seconds_after_send=seconds,
                prior=list(prior[hit.delivery_id]),
                recipient=ctx.recipient,
                sender_prefixes=ctx.sender_prefixes,
                upstream_google=upstream_google,
                mailbox_provider=ctx.mailbox_provider,
            )
        )
        prior[hit.delivery_id].append(classify.PriorHit(hit.ip_prefix, hit.user_agent, seconds))
        if since is not None and hit.at < since:
            continue  # judged only as an earlier hit of a later one
        report.checked += 1
        if (verdict.kind, verdict.rule) != (hit.verdict, hit.rule):
            report.changed += 1
            changed.add(hit.delivery_id)
            report.transitions[(hit.verdict, verdict.kind)] += 1
            history.append(
                {
                    "hit_id": hit.id,
                    "at": now,
                    "old_verdict": hit.verdict,
                    "old_rule": hit.rule or "",
                    "old_confidence": hit.confidence or 0.0,
                    "new_verdict": verdict.kind,
                    "new_rule": verdict.rule,
                    "why": "; ".join(r.text for r in verdict.reasons[:2])[:1000],
                }
            )
            # A place is kept only for a direct open (the reader's own network): a hit that is
            # no longer one loses it. One that becomes one does not get it back (never kept).
            place = (
                {} if verdict.kind == classify.HUMAN else {"country": "", "region": "", "city": ""}
            )
            await session.execute(
                update(Hit)
                .where(Hit.id == hit.id)
                .values(
                    verdict=verdict.kind,
                    rule=verdict.rule,
                    confidence=verdict.confidence,
                    reasons=verdict.as_json()["reasons"],
                    client=verdict.client,
                    seconds_after_send=seconds,
                    **place,
                )
            )
    if history:  # what each hit was before, so the report can say what changed and why
        await session.execute(insert(VerdictChange), history)
    if changed:
        await refresh_states(session, changed)
