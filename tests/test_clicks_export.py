"""Clicks in the report's export (CSV and JSON), end to end: the relay rewrites the links over
SMTP, a person and a gateway follow them over HTTP, and the export lists each recipient's
clicks (link, time in the user's zone, verdict and reasons) beside the rows it always had."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from pixelserver.config import DigestConfig
from pixelserver.store.clickrecords import Click, ClickLink
from relay import service
from relay.config import ClicksConfig
from tests.conftest import CaptureUpstream, make_config, start_pixelserver
from tests.test_clicks import LINKS, backdate, click, click_links, html_of, message, send
from tests.test_pixel import fetch

BERLIN = ZoneInfo("Europe/Berlin")
# The export's columns before clicks were added: a spreadsheet built on them keeps working.
OLD_COLUMNS = [
    "message_id",
    "sent_at",
    "subject",
    "source",
    "recipient",
    "outcome",
    "state",
    "summary",
    "opens",
    "machine_fetches",
    "first_open",
    "last_open",
    "client",
    "place",
]


@pytest.fixture
async def berlin_stack(tmp_path: Path, db_url: str, store, upstream: CaptureUpstream):
    """Clicks on; the report (the loopback demo) shown in Berlin time."""
    cfg = make_config(tmp_path, db_url, upstream.port)
    cfg = dataclasses.replace(
        cfg, clicks=ClicksConfig(enabled=True), digest=DigestConfig(timezone="Europe/Berlin")
    )
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    relay = await service.start_relay(cfg, store)
    pixel = await start_pixelserver(cfg, store)
    yield cfg, store, upstream
    await relay.close()
    await pixel.close()


async def export_csv(base: str, path: str) -> tuple[list[str], list[dict[str, str]]]:
    resp = await fetch(base + path)
    assert resp.code == 200 and resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    reader = csv.DictReader(io.StringIO(resp.body.decode()))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


async def test_the_export_lists_each_recipients_clicks(berlin_stack) -> None:
    cfg, store, upstream = berlin_stack
    base = cfg.pixelserver.public_url
    await send(cfg, upstream, message(), ["ana@example.org", "bob@example.net"])
    links = {m.rcpt_tos[0]: click_links(html_of(m.data), base) for m in upstream.messages}
    await backdate(store, 3600)
    assert (await click(links["ana@example.org"][0], "73.15.20.9")).code == 302  # a person
    await click(links["ana@example.org"][1], "40.107.22.5")  # Exchange Online Protection
    async with store() as s:
        clicks = (await s.execute(select(Click).order_by(Click.id))).scalars().all()
    assert [c.verdict for c in clicks] == ["human", "scanner"]

    for path in ("/api/v1/export?format=csv", "/export.csv"):
        columns, rows = await export_csv(base, path)
        assert columns[: len(OLD_COLUMNS)] == OLD_COLUMNS, columns  # added, never renamed
        assert [(r["kind"], r["recipient"]) for r in rows] == [
            ("delivery", "ana@example.org"),
            ("click", "ana@example.org"),
            ("click", "ana@example.org"),
            ("delivery", "bob@example.net"),
        ], rows  # each delivery's clicks right under it, oldest first
        by_kind = {(r["kind"], r["recipient"], r["link"]): r for r in rows}
        ana_row = by_kind[("delivery", "ana@example.org", "")]
        assert (ana_row["state"], ana_row["clicks"], ana_row["summary"]) == (
            "opened",
            "1",
            "Read · clicked",
        )
        assert by_kind[("delivery", "bob@example.net", "")]["clicks"] == "0"
        person = by_kind[("click", "ana@example.org", LINKS["shop"])]
        scanner = by_kind[("click", "ana@example.org", LINKS["docs"])]
        assert person["clicked_at"] == clicks[0].at.astimezone(BERLIN).isoformat()
        assert scanner["clicked_at"] == clicks[1].at.astimezone(BERLIN).isoformat()
        assert person["clicked_at"].endswith(("+01:00", "+02:00"))  # Berlin, not UTC
        assert (person["link_number"], person["click_verdict"], person["click_summary"]) == (
            "1",
            "human",
            "Clicked",
        )
        assert (scanner["link_number"], scanner["click_verdict"], scanner["click_summary"]) == (
            "2",
            "scanner",
            "Link scanner",
        )
        assert person["click_reasons"] and "Exchange Online" in scanner["click_reasons"]
        # A click row names its message and recipient; the per-delivery counts stay on the
        # delivery's row, so summing a column over the sheet does not count a copy twice.
        assert person["message_id"] == ana_row["message_id"]
        assert person["subject"] == "Spring" and person["sent_at"] == ana_row["sent_at"]
        assert (person["state"], person["opens"], person["clicks"]) == ("", "", "")

    # JSON: each delivery carries its clicks.
    resp = await fetch(base + "/api/v1/export")
    deliveries = {d["recipient"]: d for d in json.loads(resp.body)["deliveries"]}
    assert deliveries["bob@example.net"]["clicks"] == 0
    assert deliveries["bob@example.net"]["click_events"] == []
    events = deliveries["ana@example.org"]["click_events"]
    assert [(e["link_number"], e["url"], e["verdict"], e["summary"]) for e in events] == [
        (1, LINKS["shop"], "human", "Clicked"),
        (2, LINKS["docs"], "scanner", "Link scanner"),
    ]
    assert events[0]["at"] == clicks[0].at.astimezone(BERLIN).isoformat()
    assert all(e["reasons"] and all(isinstance(t, str) for t in e["reasons"]) for e in events)

    # A link whose stored address reads as a formula (written by an older version, or by
    # hand) is exported as text, like a subject would be.
    async with store.begin() as s:
        await s.execute(
            update(ClickLink).where(ClickLink.n == 0).values(url='=HYPERLINK("http://evil.test")')
        )
    _, rows = await export_csv(base, "/api/v1/export?format=csv")
    (evil,) = [r for r in rows if r["kind"] == "click" and r["link_number"] == "1"]
    assert evil["link"] == '\'=HYPERLINK("http://evil.test")'
