"""The report in the user's own time, in Debian's Chromium: pages, the CSV export and the
browser notification of a first open show the time zone chosen in Settings; the
notification is raised once, for a person's open, with the permission granted."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import re
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from pixelserver.store.schema import Delivery, Message, User
from pixelserver.web.localtime import LocalTime, duration_words
from tests.conftest import SHOTS, XSS
from tests.test_classify import THUNDERBIRD
from tests.test_pixel import fetch
from tests.test_web import login

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BERLIN = ZoneInfo("Europe/Berlin")

# Replaces the Notification constructor with one that records its calls and then makes the
# real one; `permission` is still the browser's own (granted by the context, not faked).
SPY = """
(() => {
  const Real = window.Notification;
  window.__notes = [];
  function Spy(title, options) {
    window.__notes.push({ title: title, body: (options || {}).body || "" });
    try { return new Real(title, options); } catch (e) { return {}; }
  }
  Object.defineProperty(Spy, "permission", { get: () => Real.permission });
  Spy.requestPermission = (...a) => Real.requestPermission(...a);
  window.Notification = Spy;
})();
"""


def test_duration_words_read_as_people_say_them() -> None:
    assert [duration_words(s) for s in (5, 59, 60, 720, 7200, 9000, 40000, 86400 * 3)] == [
        "5 s",
        "59 s",
        "1 min",
        "12 min",
        "2 h",
        "2 h 30 min",
        "11 h",
        "3 days",
    ]
    sent = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)
    berlin = LocalTime("Europe/Berlin")
    # Across the spring change: 00:30 UTC is 01:30 CET, two hours later is 04:30 CEST.
    assert berlin(sent) == "2026-03-29 01:30 CET"
    assert berlin(sent + dt.timedelta(hours=2)) == "2026-03-29 04:30 CEST"
    assert berlin.after_sending(sent + dt.timedelta(hours=2), sent) == "2 h after sending"
    assert berlin.iso(sent) == "2026-03-29T01:30:00+01:00"


async def as_berlin(store, user: str) -> None:
    async with store.begin() as s:
        await s.execute(
            update(User).where(User.address == user).values(digest_timezone="Europe/Berlin")
        )


@SQLITE
async def test_pages_and_export_show_the_users_time_zone(site, browser, store) -> None:
    cfg, ids, upstream = site
    base = cfg.pixelserver.public_url
    await as_berlin(store, "ana@example.org")
    async with store() as s:
        sent = (
            await s.execute(select(Message.accepted_at).where(Message.id == ids[XSS]))
        ).scalar_one()
    berlin = sent.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M %Z")
    utc = sent.strftime("%Y-%m-%d %H:%M")
    assert berlin[:16] != utc  # Berlin is never UTC: the test can tell them apart

    page = await browser.new_page(viewport={"width": 1000, "height": 800})
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    listing = await page.locator("main").inner_text()
    assert berlin in listing and utc not in listing
    await page.goto(f"{base}/messages/{ids[XSS]}")
    assert berlin in await page.locator("main").inner_text()
    await page.goto(f"{base}/settings")
    assert await page.get_by_label("Your time zone").input_value() == "Europe/Berlin"

    # Bob kept the default (UTC): his pages say UTC.
    bob = await browser.new_page()
    await login(bob, base, "bob@example.org", "bob-password-2")
    await bob.wait_for_url(base + "/")
    assert " UTC" in await bob.locator("main").inner_text()

    cookies = "; ".join(f"{c['name']}={c['value']}" for c in await page.context.cookies())
    resp = await fetch(base + "/export.csv", headers={"Cookie": cookies})
    rows = list(csv.DictReader(io.StringIO(resp.body.decode())))
    assert rows and all(r["sent_at"] == sent.astimezone(BERLIN).isoformat() for r in rows)


@SQLITE
async def test_first_open_notification_in_chromium(site, browser, store) -> None:
    cfg, ids, upstream = site
    base = cfg.pixelserver.public_url
    await as_berlin(store, "ana@example.org")
    context = await browser.new_context(viewport={"width": 1000, "height": 800})
    await context.grant_permissions(["notifications"], origin=base)
    await context.add_init_script(SPY)
    page = await context.new_page()
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    assert await page.evaluate("Notification.permission") == "granted"
    await page.wait_for_timeout(1500)  # the event stream is open

    copy = next(m.data for m in upstream.messages if m.rcpt_tos == ["carol@gmail.com"])
    url = re.search(rb'src="(http://[^"]+\.gif)"', copy).group(1).decode()
    for _ in range(2):  # a person opens it twice: one notification
        await fetch(
            url,
            headers={"X-Forwarded-For": "73.15.20.9", "User-Agent": THUNDERBIRD},
            network_interface="127.0.0.2",
        )
        await asyncio.sleep(0.5)
    for _ in range(100):
        notes = await page.evaluate("window.__notes")
        if notes:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.5)  # a repeat would come with the next events
    notes = await page.evaluate("window.__notes")
    assert len(notes) == 1, notes
    (note,) = notes
    assert note["title"] == f"Opened: {XSS}"
    async with store() as s:
        first = (
            await s.execute(
                select(Delivery.first_open).where(Delivery.recipient == "carol@gmail.com")
            )
        ).scalar_one()
    at = first.astimezone(BERLIN).strftime("%H:%M %Z")
    assert "carol@gmail.com" in note["body"] and f"at {at}" in note["body"], note
    assert "after sending" in note["body"]
    # The row on the page follows, in Berlin time too.
    row = page.locator("tr.delivery", has_text="carol@gmail.com")
    assert at[:5] in await row.locator(".first-open").inner_text()
    await page.screenshot(path=str(SHOTS / "report-berlin-time.png"), full_page=True)
    await context.close()
