"""Manual tracking links and Settings: made in Chromium and over HTTP, judged like relayed mail,
marked "manual"; digest settings and "never track" saved per user and obeyed by the relay."""

from __future__ import annotations

import asyncio
import re
import urllib.parse

import pytest
from playwright.async_api import expect
from sqlalchemy import select
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from pixelserver.store.accounts import create_api_token
from pixelserver.store.schema import Delivery, Message, User
from tests.conftest import SHOTS, XSS, send_as
from tests.test_classify import THUNDERBIRD
from tests.test_pixel import fetch, wait_for_hits
from tests.test_web import login

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


class WebSession:
    """A logged-in person over plain HTTP: their cookies and the form token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}
        self.xsrf = ""

    async def request(self, path: str, form: dict[str, str] | None = None, **headers: str):
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), **headers}
        resp = await AsyncHTTPClient().fetch(
            HTTPRequest(
                self.base + path,
                method="POST" if form is not None else "GET",
                body=urllib.parse.urlencode({"_xsrf": self.xsrf, **form}) if form else None,
                headers=headers,
                follow_redirects=False,
                request_timeout=30,
                network_interface="127.0.0.2" if "X-Forwarded-For" in headers else None,
            ),
            raise_error=False,
        )
        for value in resp.headers.get_list("Set-Cookie"):
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        found = re.search(r'name="_xsrf" value="([^"]+)"', resp.body.decode(errors="replace"))
        if found:
            self.xsrf = found.group(1)
        return resp

    @classmethod
    async def logged_in(cls, base: str, user: str, password: str) -> WebSession:
        s = cls(base)
        await s.request("/login")
        resp = await s.request("/login", {"username": user, "password": password})
        assert resp.code == 302, resp.code
        await s.request("/settings")  # a fresh form token for this session
        return s


async def delivery_of(store, message_id: int) -> Delivery:
    async with store() as s:
        return (
            await s.execute(select(Delivery).where(Delivery.message_id == message_id))
        ).scalar_one()


async def test_a_manual_link_is_made_copied_opened_and_marked_in_chromium(site, browser, store):
    cfg, ids, _ = site
    base = cfg.pixelserver.public_url
    page = await browser.new_page()
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    await page.get_by_role("link", name="New tracking link").click()
    await page.get_by_label("Name").fill("Proposal <b>Lyon</b> from my phone")
    await page.get_by_label("Recipient (optional)").fill("gil@example.com")
    await page.get_by_role("button", name="Make the link").click()
    await page.wait_for_url(re.compile(r".*/messages/\d+#link"))
    message_id = int(re.search(r"/messages/(\d+)", page.url).group(1))
    url = await page.get_by_label("Image address").input_value()
    snippet = await page.get_by_label("HTML snippet").input_value()
    assert re.fullmatch(rf"{re.escape(base)}/p/[A-Za-z0-9_-]{{22}}\.gif", url)
    assert snippet.startswith(f'<img src="{url}" width="1" height="1" alt=""')
    assert "Lyon" not in snippet  # the name is the user's, not something the recipient sees
    await page.get_by_role("button", name="Copy").first.click()
    await expect(page.get_by_role("button", name="Copied")).to_have_count(1)
    await page.screenshot(path=str(SHOTS / "new-link.png"), full_page=True)

    # The recipient's Thunderbird at home opens the mail the link was pasted into.
    await fetch(
        url,
        network_interface="127.0.0.2",
        headers={"X-Forwarded-For": "73.15.20.9", "User-Agent": THUNDERBIRD},
    )
    d = await delivery_of(store, message_id)
    (h,) = await wait_for_hits(store, d.id, 1)
    assert h.verdict == "human"
    await page.goto(base + "/")
    row = page.locator(f"#message-{message_id}")
    await expect(row.locator('tr[data-recipient="gil@example.com"]')).to_have_attribute(
        "data-state", "opened"
    )
    assert await row.locator(".chip.manual").inner_text() == "manual"
    assert await row.locator("h2 a").inner_text() == "Proposal <b>Lyon</b> from my phone"
    # Relayed mail has no such mark; the other user never sees the link.
    assert await page.locator(f"#message-{ids[XSS]} .chip.manual").count() == 0
    bob = await WebSession.logged_in(base, "bob@example.org", "bob-password-2")
    assert (await bob.request(f"/messages/{message_id}")).code == 404


async def test_a_link_seen_from_the_makers_network_is_the_sender_and_needs_a_name(site, store):
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    ana = await WebSession.logged_in(base, "ana@example.org", "ana-password-1")
    refused = await ana.request("/links/new", {"label": "  ", "recipient": "not an address"})
    assert refused.code == 400 and "Give the link a name" in refused.body.decode()
    refused = await ana.request("/links/new", {"label": "x", "recipient": "not an address"})
    assert refused.code == 400 and "is not an email address" in refused.body.decode()

    # Made from the office network (through the trusted proxy), no recipient named.
    made = await ana.request(
        "/links/new",
        {"label": "Webmail note", "recipient": ""},
        **{"X-Forwarded-For": "81.2.69.160"},
    )
    assert made.code == 302
    message_id = int(re.search(r"/messages/(\d+)", made.headers["Location"]).group(1))
    page = (await ana.request(f"/messages/{message_id}")).body.decode()
    url = re.search(r'id="url-\d+" class="copy-source" readonly value="([^"]+)"', page).group(1)
    assert "Anyone with the link" in page
    # The compose window shows the image from that network: the sender, not an open.
    await fetch(
        url,
        network_interface="127.0.0.2",
        headers={"X-Forwarded-For": "81.2.69.171", "User-Agent": CHROME},
    )
    d = await delivery_of(store, message_id)
    (h,) = await wait_for_hits(store, d.id, 1)
    assert h.verdict == "sender"
    assert (d.recipient, d.outcome, d.tracking) == ("", "accepted", "tracked")
    # The API and export say where the message came from.
    async with store.begin() as s:
        token = await create_api_token(s, "ana@example.org", "t")
    resp = await fetch(
        f"{base}/api/v1/messages/{message_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert b'"source": "manual"' in resp.body


async def test_demo_mode_links_belong_to_the_address_given(stack) -> None:
    base = stack.pixel_base
    web = WebSession(base)
    form = (await web.request("/links/new")).body.decode()
    assert "Your address" in form
    refused = await web.request("/links/new", {"label": "Note", "sender": ""})
    assert refused.code == 400 and "Give your own address" in refused.body.decode()
    made = await web.request("/links/new", {"label": "Note", "sender": "me@example.com"})
    assert made.code == 302
    async with stack.store() as s:
        m = (await s.execute(select(Message))).scalar_one()
        owner = await s.get(User, m.user_id)
    assert (m.subject, m.source, owner.address) == ("Note", "manual", "me@example.com")


async def test_settings_are_saved_checked_and_the_relay_skips_excluded_recipients(
    site, browser, store
):
    cfg, _, upstream = site
    base = cfg.pixelserver.public_url
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    await page.get_by_role("link", name="Settings").click()
    assert await page.get_by_label("Send me the daily digest").is_checked()  # the default
    assert await page.get_by_label("At").input_value() == "8"
    await page.get_by_label("At").select_option("7")
    await page.get_by_label("Time zone").fill("Europe/Paris")
    await page.locator("textarea[name=exclusions]").fill("Lawyer@Firm.example\n@example.net\n")
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.get_by_role("status")).to_have_text("Saved.")
    assert await page.get_by_label("At").input_value() == "7"
    assert await page.get_by_label("Time zone").input_value() == "Europe/Paris"
    assert (
        await page.locator("textarea[name=exclusions]").input_value()
        == "lawyer@firm.example\nexample.net"
    )
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await page.screenshot(path=str(SHOTS / "settings-phone.png"), full_page=True)

    await page.get_by_label("Time zone").fill("Mars/Olympus")
    await page.get_by_role("button", name="Save settings").click()
    assert (
        "Time zone: 'Mars/Olympus' is not a time zone"
        in await page.get_by_role("alert").inner_text()
    )
    async with store() as s:
        user = (await s.execute(select(User).where(User.address == "ana@example.org"))).scalar_one()
    assert (user.digest_hour, user.digest_timezone) == (7, "Europe/Paris")  # kept

    port = int(cfg.relay.listen.rsplit(":", 1)[1])
    await asyncio.to_thread(
        send_as, port, "ana@example.org", "Contract", ["x@sub.example.net", "zoe@example.org"]
    )
    copies = {m.rcpt_tos[0]: m.data for m in upstream.messages if b"Contract" in m.data}
    assert b"/p/" not in copies["x@sub.example.net"]
    assert b"/p/" in copies["zoe@example.org"]
    async with store() as s:
        rows = {
            d.recipient: (d.state, d.untracked_reason)
            for d in (await s.execute(select(Delivery))).scalars()
        }
    assert rows["x@sub.example.net"] == ("untracked", "excluded")
    assert rows["zoe@example.org"] == ("not_opened", None)
