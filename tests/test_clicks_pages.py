"""Click tracking in the pages (Chromium), the API and the digest: a user turns it on in
Settings, the relay rewrites their next mail, a person's click shows as "Read · clicked" with
clicks per link per recipient; a scanner's click is shown with its reasons and not counted."""

from __future__ import annotations

import asyncio
import datetime as dt
import smtplib
from email.message import EmailMessage

import pytest
from playwright.async_api import expect
from sqlalchemy import select, update

from pixelserver.store.schema import Message, User
from tests.conftest import USERS
from tests.test_api import api, token_for
from tests.test_clicks import LINKS, click, click_links, html_of
from tests.test_web import login

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def send_links(port: int, user: str, to: list[str]) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = user, ", ".join(to), "Links inside"
    msg.set_content("plain")
    msg.add_alternative(
        f'<html><body><p><a href="{LINKS["shop"].replace("&", "&amp;")}">Offers</a> and '
        f'<a href="{LINKS["docs"]}">the guide</a></p></body></html>',
        subtype="html",
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.login(user, USERS[user])
        c.send_message(msg)


async def test_turned_on_in_settings_then_clicks_shown_per_link_in_chromium(site, browser, store):
    cfg, _ids, upstream = site
    base = cfg.pixelserver.public_url
    port = int(cfg.relay.listen.rsplit(":", 1)[1])
    page = await browser.new_page()
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.goto(base + "/settings")
    await expect(page.get_by_label("As the server is set up (now off)")).to_be_checked()
    await page.get_by_label("On for my mail").check()
    await page.get_by_role("button", name="Save click tracking").click()
    await expect(page.get_by_text("Saved.")).to_be_visible()
    await expect(page.get_by_label("On for my mail")).to_be_checked()
    async with store() as s:
        choices = dict((await s.execute(select(User.address, User.clicks_enabled))).all())
    assert choices == {"ana@example.org": True, "bob@example.org": None}

    before = len(upstream.messages)
    await asyncio.to_thread(send_links, port, "ana@example.org", ["zoe@example.com"])
    await asyncio.to_thread(send_links, port, "bob@example.org", ["yan@example.com"])
    for _ in range(200):
        if len(upstream.messages) >= before + 2:
            break
        await asyncio.sleep(0.05)
    ana_copy, bob_copy = upstream.messages[before : before + 2]
    assert click_links(html_of(bob_copy.data), base) == []  # Bob never turned it on
    links = click_links(html_of(ana_copy.data), base)
    assert len(links) == 2
    async with store.begin() as s:
        await s.execute(
            update(Message)
            .where(Message.subject == "Links inside")
            .values(accepted_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        )
        message_id = (
            await s.execute(
                select(Message.id)
                .join(User)
                .where(User.address == "ana@example.org")
                .where(Message.subject == "Links inside")
            )
        ).scalar_one()
    assert (await click(links[0], "73.15.20.9")).headers["Location"] == LINKS["shop"]
    await click(links[1], "40.107.22.5")  # Exchange Online Protection checks the guide

    await page.goto(f"{base}/messages/{message_id}")
    section = page.locator("section.recipient", has_text="zoe@example.com")
    await expect(section.locator(".chip").first).to_have_text("Read · clicked")
    rows = section.locator("tr.link-clicks")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text(LINKS["shop"])
    await expect(rows.nth(0).locator("td").nth(1)).to_have_text("1")
    await expect(rows.nth(1).locator("td").nth(2)).to_have_text("1")
    scanner = section.locator('tr.click[data-verdict="scanner"]')
    await expect(scanner).to_contain_text("Link scanner")
    await expect(scanner).to_contain_text("Exchange Online Protection")

    token = await token_for(store, "ana@example.org")
    code, body = await api(base, f"/api/v1/messages/{message_id}", token)
    assert code == 200
    (d,) = body["message"]["deliveries"]
    assert d["state"] == "opened" and d["clicks"] == 1 and d["summary"] == "Read · clicked"
    assert [(c["url"], c["people"], c["machines"]) for c in d["links"]] == [
        (LINKS["shop"], 1, 0),
        (LINKS["docs"], 0, 1),
    ]
    code, body = await api(base, f"/api/v1/deliveries/{d['id']}/clicks", token)
    assert [(c["url"], c["verdict"], c["rule"]) for c in body["clicks"]] == [
        (LINKS["shop"], "human", "click-person"),
        (LINKS["docs"], "scanner", "click-gateway-network"),
    ]
    bob = await token_for(store, "bob@example.org")
    assert (await api(base, f"/api/v1/deliveries/{d['id']}/clicks", bob))[0] == 404
