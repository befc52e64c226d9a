"""Clicks on the live report, in Debian's Chromium: a person's click on a rewritten link shows
as "Read · clicked" with its link, time (in the user's zone) and reasons without a reload,
raises the first-read notification when no image was fetched, and a scanner's click appears
labelled too."""

from __future__ import annotations

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import expect
from sqlalchemy import select, update

from pixelserver.store.clickrecords import Click, set_click_choice
from pixelserver.store.schema import Message
from tests.test_clicks import LINKS, click, click_links, html_of
from tests.test_clicks_pages import send_links
from tests.test_localtime import SPY, as_berlin
from tests.test_web import login

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BERLIN = ZoneInfo("Europe/Berlin")


async def test_a_click_appears_live_and_notifies_in_chromium(site, browser, store) -> None:
    cfg, _ids, upstream = site
    base = cfg.pixelserver.public_url
    port = int(cfg.relay.listen.rsplit(":", 1)[1])
    async with store.begin() as s:
        await set_click_choice(s, "ana@example.org", True)
    await as_berlin(store, "ana@example.org")
    before = len(upstream.messages)
    await asyncio.to_thread(send_links, port, "ana@example.org", ["zoe@example.com"])
    for _ in range(200):
        if len(upstream.messages) > before:
            break
        await asyncio.sleep(0.05)
    links = click_links(html_of(upstream.messages[before].data), base)
    assert len(links) == 2
    async with store.begin() as s:
        await s.execute(
            update(Message)
            .where(Message.subject == "Links inside")
            .values(accepted_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        )
        message_id = (
            await s.execute(select(Message.id).where(Message.subject == "Links inside"))
        ).scalar_one()

    context = await browser.new_context(viewport={"width": 1000, "height": 900})
    await context.grant_permissions(["notifications"], origin=base)
    await context.add_init_script(SPY)
    page = await context.new_page()
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    listing = await context.new_page()
    await listing.goto(base + "/")
    await page.goto(f"{base}/messages/{message_id}")
    await page.evaluate("window.__loaded = 'once'")  # gone if the page were reloaded
    section = page.locator("section.recipient", has_text="zoe@example.com")
    await expect(section.locator(".chip").first).to_have_text("Not opened yet")
    await page.wait_for_timeout(1500)  # the event stream is open

    # A person clicks the offer link; no image is fetched (images blocked).
    assert (await click(links[0], "73.15.20.9")).headers["Location"] == LINKS["shop"]
    await expect(section.locator(".chip").first).to_have_text("Read · clicked", timeout=8000)
    await expect(section.locator("tr.link-clicks")).to_have_count(1)
    await expect(section.locator("tr.link-clicks").first).to_contain_text(LINKS["shop"])
    person = section.locator('tr.click[data-verdict="human"]')
    await expect(person).to_contain_text("Clicked")
    async with store() as s:
        at = (await s.execute(select(Click.at))).scalar_one()
    # The click's time in Ana's zone, as every other time on the page.
    await expect(person).to_contain_text(at.astimezone(BERLIN).strftime("%H:%M:%S %Z"))
    row = listing.locator("tr.delivery", has_text="zoe@example.com")
    await expect(row.locator(".chip")).to_have_text("Read · clicked", timeout=8000)

    # A gateway follows the guide link: labelled, not counted, still live.
    await click(links[1], "40.107.22.5")
    scanner = section.locator('tr.click[data-verdict="scanner"]')
    await expect(scanner).to_contain_text("Link scanner", timeout=8000)
    await expect(section.locator("tr.link-clicks")).to_have_count(2)
    await expect(section.locator(".chip").first).to_have_text("Read · clicked")
    assert await page.evaluate("window.__loaded") == "once"

    # The click was the first read of this copy: one notification, naming the click.
    await asyncio.sleep(2.5)
    notes = await page.evaluate("window.__notes") + await listing.evaluate("window.__notes")
    assert len(notes) == 2, notes  # one per open page, none for the scanner
    for note in notes:
        assert note["title"] == "Clicked: Links inside", note
        assert "zoe@example.com" in note["body"] and "Read · clicked" in note["body"], note
        assert f"at {at.astimezone(BERLIN).strftime('%H:%M %Z')}" in note["body"], note
    await context.close()
