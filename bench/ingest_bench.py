"""Hits per second taken from the journal into the store, on SQLite and PostgreSQL.

A journal of 100,000 fetches (the realistic mix of bench/classify_bench.py: proxies, Apple,
scanners, consumer networks; network data warm, as in a running server) over 5,000 deliveries
is drained by the real pipeline (`HitPipeline.flush`: resolve tokens, judge, bulk insert,
move each delivery's state by the batch's new rows), in its own batches (MAX_BATCH), on one
core. Target (issue 7): 20,000/s on PostgreSQL, 10,000/s on SQLite. The baseline is the bare
bulk INSERT of the same number of hit rows, already judged, in batches of the same size: what
the database alone costs. Besides hits per second of wall time, the bench prints hits per
second of this process's CPU time (all its threads): on a machine shared with other work the
wall time moves with the neighbours, the CPU time much less (PostgreSQL's own work is in its
server processes and not counted there).

Run: .venv/bin/python bench/ingest_bench.py [--hits 100000] [--pg postgresql+asyncpg://…]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import fresh_pg_database, machine  # noqa: E402
from classify_bench import workload  # noqa: E402
from sqlalchemy import delete, insert, select  # noqa: E402

from pixelserver.hits import MAX_BATCH, HitPipeline, Journal, Judge  # noqa: E402
from pixelserver.store import migrate  # noqa: E402
from pixelserver.store.schema import Delivery, Hit, Message, User, make_engine, make_sessionmaker  # noqa: E402
from relay import service  # noqa: E402
from relay.config import load_config  # noqa: E402

DELIVERIES = 5000


async def seed(engine, now: dt.datetime) -> list[str]:
    tokens = [secrets.token_urlsafe(16) for _ in range(DELIVERIES)]
    async with engine.begin() as conn:
        await conn.execute(
            insert(User.__table__),
            [{"id": 1, "address": "b@example.com", "created_at": now}],
        )
        await conn.execute(
            insert(Message.__table__),
            [
                {
                    "id": m,
                    "user_id": 1,
                    "envelope_from": "b@example.com",
                    "subject": f"Newsletter {m}",
                    "accepted_at": now - dt.timedelta(hours=2),
                    "search_text": f"Newsletter {m}",
                }
                for m in range(1, DELIVERIES // 5 + 1)
            ],
        )
        await conn.execute(
            insert(Delivery.__table__),
            [
                {
                    "id": i + 1,
                    "message_id": i // 5 + 1,
                    "recipient": f"r{i}@example.org",
                    "token": t,
                    "tracking": "tracked",
                    "outcome": "accepted",
                }
                for i, t in enumerate(tokens)
            ],
        )
    return tokens


def write_journal(path: Path, tokens: list[str], n: int, now: dt.datetime) -> None:
    rnd = random.Random(3)
    start = (now - dt.timedelta(hours=1)).timestamp()
    with open(path, "w") as f:
        for i, (ip, ua, _) in enumerate(workload(n, 2000)):
            record = {
                "u": secrets.token_hex(12),
                "t": rnd.choice(tokens),
                "at": start + i * 0.01,
                "m": "GET",
                "ip": ip,
                "ua": ua,
                "h": {"Accept": "image/*"},
            }
            f.write(json.dumps(record, separators=(",", ":")) + "\n")


async def measure(url: str, judge: Judge, hits: int, tmp: Path) -> tuple[float, float, float]:
    engine = make_engine(url)
    await migrate.upgrade(engine)
    now = dt.datetime.now(dt.UTC)
    tokens = await seed(engine, now)
    journal_path = tmp / f"{engine.dialect.name}.journal"
    write_journal(journal_path, tokens, hits, now)
    sessions = make_sessionmaker(engine)
    pipeline = HitPipeline(Journal(journal_path, fsync="batch"), sessions, judge)
    start, cpu = time.perf_counter(), time.process_time()
    taken = await pipeline.flush()
    pipeline_rate = taken / (time.perf_counter() - start)
    cpu_rate = taken / (time.process_time() - cpu)
    assert pipeline.stored == hits, (pipeline.stored, hits)

    # Baseline: the same rows, already judged, inserted bare (after emptying the table).
    async with engine.begin() as conn:
        rows = [
            {c.name: getattr(h, c.name) for c in Hit.__table__.columns if c.name != "id"}
            for h in (await conn.execute(select(Hit))).all()
        ]
        await conn.execute(delete(Hit.__table__))
    for r in rows:
        r["uid"] = secrets.token_hex(12)
    start = time.perf_counter()
    for i in range(0, len(rows), MAX_BATCH):
        async with engine.begin() as conn:
            await conn.execute(insert(Hit.__table__), rows[i : i + MAX_BATCH])
    bare_rate = len(rows) / (time.perf_counter() - start)
    pipeline.journal.close()
    await engine.dispose()
    return pipeline_rate, bare_rate, cpu_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hits", type=int, default=100_000)
    ap.add_argument("--pg", default=os.environ.get("MAILPING_TEST_PG_URL", ""))
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    cfg = load_config(None)
    networks = service.make_networks(cfg)
    for ip, _, _ in workload(args.hits, 2000):
        networks.facts(ip)  # warm, as in a server that has been running
    judge = Judge(networks)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite"] = asyncio.run(
            measure(f"sqlite+aiosqlite:///{tmp}/ingest.sqlite3", judge, args.hits, Path(tmp))
        )
        if args.pg:

            async def on_pg() -> tuple[float, float, float]:
                async with fresh_pg_database(args.pg, "mailping_ingest_bench") as url:
                    return await measure(url, judge, args.hits, Path(tmp))

            results["PostgreSQL"] = asyncio.run(on_pg())
    targets = {"SQLite": 10_000, "PostgreSQL": 20_000}
    print(f"ingest: {args.hits:,} journaled hits over {DELIVERIES:,} deliveries, one core")
    print(f"machine: {machine()}")
    for backend, (pipeline, bare, cpu) in results.items():
        verdict = "meets" if pipeline >= targets[backend] else "BELOW"
        print(
            f"  {backend:<11} pipeline {pipeline:9,.0f} hits/s ({verdict} target "
            f"{targets[backend]:,})   bare INSERT baseline {bare:9,.0f} rows/s   "
            f"pipeline per CPU second {cpu:9,.0f} hits"
        )


if __name__ == "__main__":
    main()
