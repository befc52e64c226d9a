"""Server time of the messages page with a large history, on SQLite and PostgreSQL.

Seeds 100,000 messages, 300,000 deliveries and 1,000,000 hits for one user (plus another
user's mail, so the per-user filter has work to do), then times the page's handler work —
the query and the template — for the first page, a search and a state filter. Target
(issue 5): each under 200 ms. The baseline is the bare first-page query without the template.

Run: .venv/bin/python bench/report_bench.py [--pg postgresql+asyncpg://…] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tornado.template  # noqa: E402
from _common import fresh_pg_database, machine  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from pixelserver.store import migrate, queries  # noqa: E402
from pixelserver.store.messages import search_text  # noqa: E402
from pixelserver.store.schema import Delivery, Hit, Message, User, make_engine, make_sessionmaker  # noqa: E402
from pixelserver.verdicts.state import STATE_WORDS, STATES  # noqa: E402

USER = "busy@example.com"
PROJECTS = ["Lyon", "Oslo", "Kyoto", "Lima"]
STATES_MIX = ["opened"] * 3 + ["prefetched_only", "scanned_only", "not_opened", "not_opened"]


async def seed(engine, messages: int) -> None:
    rnd = random.Random(1)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(User.__table__),
            [
                {"id": 1, "address": USER, "created_at": start},
                {"id": 2, "address": "other@example.com", "created_at": start},
            ],
        )
        delivery_id = hit_id = 0
        chunk = 5000
        for base in range(0, messages, chunk):
            msgs, dels, hits = [], [], []
            for i in range(base + 1, min(base + chunk, messages) + 1):
                at = start + dt.timedelta(minutes=5 * i)
                msgs.append(
                    {
                        "id": i,
                        "user_id": 1 if i % 10 else 2,
                        "envelope_from": USER,
                        "subject": f"Quote {i} for project {rnd.choice(PROJECTS)}",
                        "message_id_header": f"<{i}@example.com>",
                        "size": 50_000,
                        "accepted_at": at,
                        "sender_prefix": "198.51.100.0/24",
                    }
                )
                for r in range(3):
                    delivery_id += 1
                    state = rnd.choice(STATES_MIX)
                    dels.append(
                        {
                            "id": delivery_id,
                            "message_id": i,
                            "recipient": f"person{rnd.randrange(20000)}@client{r}.example",
                            "token": f"t{delivery_id:021d}",
                            "tracking": "tracked",
                            "untracked_reason": None,
                            "outcome": "accepted",
                            "upstream_reply": "",
                            "state": state,
                            "human_hits": 2 if state == "opened" else 0,
                            "machine_hits": 1,
                            "sender_hits": 0,
                            "first_open": at if state == "opened" else None,
                            "last_open": at if state == "opened" else None,
                            "client": "Thunderbird 128" if state == "opened" else "",
                            "place": "Lyon, France" if state == "opened" else "",
                            "forwarded": False,
                            "state_changed_at": at,
                        }
                    )
            for d in dels:  # 1,000,000 hits over 300,000 deliveries
                for _ in range(3 + (d["id"] % 3 == 0)):
                    hit_id += 1
                    hits.append(
                        {
                            "id": hit_id,
                            "uid": f"u{hit_id}",
                            "delivery_id": d["id"],
                            "at": start,
                            "method": "GET",
                            "ip_prefix": "203.0.113.0/24",
                            "user_agent": "Mozilla/5.0",
                            "headers": {},
                            "verdict": "human",
                            "reasons": [],
                            "confidence": 0.8,
                            "rule": "consumer-network",
                            "seconds_after_send": 60.0,
                            "asn": 64500,
                            "org": "Example",
                            "net_lists": [],
                            "hosting": False,
                            "country": "FR",
                            "region": "",
                            "city": "Lyon",
                            "client": "Thunderbird 128",
                        }
                    )
            recipients: dict[int, list[str]] = {}
            for d in dels:
                recipients.setdefault(d["message_id"], []).append(d["recipient"])
            for m in msgs:
                m["search_text"] = search_text(m["subject"], recipients[m["id"]])
            await conn.execute(insert(Message.__table__), msgs)
            await conn.execute(insert(Delivery.__table__), dels)
            await conn.execute(insert(Hit.__table__), hits)
        counts = (messages, delivery_id, hit_id)
        if engine.dialect.name == "postgresql":
            # What autovacuum does minutes after a bulk load; without it the planner guesses.
            await conn.execute(text("ANALYZE"))
    print(f"  seeded {counts[0]:,} messages, {counts[1]:,} deliveries, {counts[2]:,} hits")


async def measure(url: str, messages: int) -> dict[str, float]:
    engine = make_engine(url)
    await migrate.upgrade(engine)
    t = time.perf_counter()
    await seed(engine, messages)
    print(f"  seeding took {time.perf_counter() - t:.0f} s")
    sessions = make_sessionmaker(engine)
    loader = tornado.template.Loader(
        str(ROOT / "pixelserver" / "web" / "templates"), autoescape="xhtml_escape"
    )
    page = loader.load("messages.html")

    async def render(filters: queries.Filters, template: bool = True) -> float:
        start = time.perf_counter()
        async with sessions() as session:
            rows = await queries.list_messages(session, USER, filters)
        if template:
            page.generate(
                messages=rows,
                more=rows[-1].id if rows else None,
                filters=filters,
                states=[(s, STATE_WORDS[s]) for s in STATES],
                outbox=False,
                query="",
                static_url=lambda p: f"/static/{p}",
                xsrf_form_html=lambda: "",
                current_user=USER,
                url_escape=tornado.escape.url_escape,
                _tt_modules=_Modules(),
            )
        return (time.perf_counter() - start) * 1000

    cases = {
        "bare first-page query (baseline)": (queries.Filters(), False),
        "first page": (queries.Filters(), True),
        "search 'Kyoto'": (queries.Filters(q="Kyoto"), True),
        "search a recipient": (queries.Filters(q="person1234@"), True),
        "filter state=scanned_only": (queries.Filters(state="scanned_only"), True),
        "filter a date range": (
            queries.Filters(since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 31)),
            True,
        ),
    }
    results = {}
    for name, (filters, template) in cases.items():
        await render(filters, template)  # warm
        results[name] = statistics.median([await render(filters, template) for _ in range(7)])
    await engine.dispose()
    return results


class _Modules:
    def xsrf_form_html(self) -> str:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--pg",
        default=os.environ.get("MAILPING_TEST_PG_URL", ""),
        help="a PostgreSQL URL whose database may be created and dropped",
    )
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    messages = int(100_000 * args.scale)
    print(f"report: messages page over {messages:,} messages; median of 7, warm")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite:")
        sqlite = asyncio.run(measure(f"sqlite+aiosqlite:///{tmp}/bench.sqlite3", messages))
    rows = {"SQLite": sqlite}
    if args.pg:
        print("PostgreSQL:")
        rows["PostgreSQL"] = asyncio.run(_on_fresh_pg(args.pg, messages))
    for backend, results in rows.items():
        print(f"{backend}:")
        for name, ms in results.items():
            flag = "" if name.startswith("bare") else ("  ok" if ms < 200 else "  OVER 200 ms")
            print(f"  {name:<36} {ms:8.1f} ms{flag}")


async def _on_fresh_pg(url: str, messages: int) -> dict[str, float]:
    async with fresh_pg_database(url, "mailping_report_bench") as fresh:
        return await measure(fresh, messages)


if __name__ == "__main__":
    main()
