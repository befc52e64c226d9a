"""The report pages with logins, in Debian's headless Chromium and over plain HTTP: log in and
out with relay identities, see only your own mail, hostile subjects stay text, forms need their
XSRF token, the message page explains every fetch, and everything fits a phone."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import expect
from tornado.httpclient import HTTPRequest

from tests.conftest import BOB, SHOTS, XSS
from tests.test_classify import GMAIL, THUNDERBIRD
from tests.test_pixel import fetch


async def login(page, base: str, user: str, password: str) -> None:
    await page.goto(base + "/")
    assert page.url.startswith(base + "/login")
    await page.get_by_label("Username").fill(user)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_login_isolation_and_logout_in_chromium(site, browser) -> None:
    cfg, ids, upstream = site
    base = cfg.pixelserver.public_url
    page = await browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))

    await login(page, base, "ana@example.org", "wrong password")
    assert (
        await page.get_by_role("alert").inner_text()
        == "That username and password were not accepted."
    )

    await page.get_by_label("Username").fill("ana@example.org")
    await page.get_by_label("Password").fill("ana-password-1")
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(base + "/")
    subjects = await page.locator("section.message h2").all_inner_texts()
    assert subjects == [XSS]  # Ana's only, and the markup shown as text
    assert "Bob" not in await page.content()
    assert dialogs == []

    # Bob's message by URL is simply not there for Ana.
    resp = await page.goto(f"{base}/messages/{ids[BOB]}")
    assert resp.status == 404
    resp = await page.goto(f"{base}/recipients/eve%40example.com")
    assert resp.status == 404

    await page.goto(base + "/")
    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url(re.compile(r".*/login.*"))
    resp = await page.goto(f"{base}/messages/{ids[XSS]}")
    assert page.url.startswith(base + "/login?next=")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_message_page_explains_each_fetch_and_fits_a_phone(site, browser) -> None:
    cfg, ids, upstream = site
    base = cfg.pixelserver.public_url
    urls = {
        m.rcpt_tos[0]: re.search(rb'src="(http://[^"]+\.gif)"', m.data).group(1).decode()
        for m in upstream.messages
        if m.rcpt_tos[0] in ("carol@gmail.com", "dan@example.net")
    }
    for url, ip, ua in (
        (urls["carol@gmail.com"], "66.249.93.84", GMAIL),
        (urls["dan@example.net"], "172.225.5.1", "Mozilla/5.0"),
        (urls["dan@example.net"], "73.15.20.9", THUNDERBIRD),
    ):
        await fetch(
            url, headers={"X-Forwarded-For": ip, "User-Agent": ua}, network_interface="127.0.0.2"
        )
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    for _ in range(50):
        await page.goto(f"{base}/messages/{ids[XSS]}")
        if await page.locator("tr.hit").count() == 3:
            break
        await asyncio.sleep(0.1)
    dan = page.locator('section.recipient[data-recipient="dan@example.net"]')
    assert await dan.get_attribute("data-state") == "opened"
    assert (
        await dan.locator(".chip").first.inner_text()
        == "Read · Thunderbird 128 · Pinole, California, US"
    )
    verdicts = await dan.locator("tr.hit").evaluate_all("rows => rows.map(r => r.dataset.verdict)")
    assert verdicts == ["privacy_prefetch", "human"]
    assert "Apple iCloud Private Relay egress" in await dan.locator("tr.hit").first.inner_text()
    assert await dan.locator("svg.chart rect").count() == 2
    carol = page.locator('section.recipient[data-recipient="carol@gmail.com"]')
    assert "location hidden by Gmail" in await carol.inner_text()
    for path in (f"/messages/{ids[XSS]}", "/"):
        await page.goto(base + path)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, path
    await page.goto(f"{base}/messages/{ids[XSS]}")
    await page.screenshot(path=str(SHOTS / "message-phone.png"), full_page=True)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_forms_need_their_xsrf_token_and_pages_carry_security_headers(site) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    forged = await fetch(
        f"{base}/login", method="POST", body="username=ana%40example.org&password=ana-password-1"
    )
    assert forged.code == 403
    login_page = await fetch(f"{base}/login")
    csp = login_page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert login_page.headers["X-Content-Type-Options"] == "nosniff"
    assert login_page.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_login_failures_are_slowed_then_refused(site) -> None:
    from tornado.httpclient import AsyncHTTPClient

    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    first = await fetch(f"{base}/login")
    token = re.search(r'name="_xsrf" value="([^"]+)"', first.body.decode()).group(1)
    cookie = first.headers["Set-Cookie"].split(";", 1)[0]
    codes = []
    for _ in range(6):
        r = await AsyncHTTPClient().fetch(
            HTTPRequest(
                f"{base}/login",
                method="POST",
                headers={"Cookie": cookie},
                body=f"_xsrf={token}&username=ana%40example.org&password=guess",
                follow_redirects=False,
                request_timeout=30,
            ),
            raise_error=False,
        )
        codes.append(r.code)
    assert codes == [401] * 5 + [429]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_open_page_updates_live_with_the_right_chips(site, browser) -> None:
    cfg, ids, upstream = site
    base = cfg.pixelserver.public_url
    urls = {
        m.rcpt_tos[0]: re.search(rb'src="(http://[^"]+\.gif)"', m.data).group(1).decode()
        for m in upstream.messages
    }
    page = await browser.new_page()
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    carol = page.locator('tr[data-recipient="carol@gmail.com"] .chip')
    dan = page.locator('tr[data-recipient="dan@example.net"] .chip')
    assert await carol.inner_text() == "Not opened yet"
    await page.wait_for_timeout(300)  # the event stream is open

    await fetch(
        urls["carol@gmail.com"],
        network_interface="127.0.0.2",
        headers={"X-Forwarded-For": "66.249.93.84", "User-Agent": GMAIL},
    )
    # Within 2 s, without a reload (Playwright's expect polls; our CSP forbids eval).
    # Gmail's proxy right after sending: possibly Gmail's own check, so "Probably read".
    await expect(page.locator('tr[data-recipient="carol@gmail.com"]')).to_have_attribute(
        "data-state", "probably_opened", timeout=2000
    )
    assert await carol.inner_text() == "Probably read · Gmail · location hidden by Gmail"

    await fetch(
        urls["dan@example.net"],
        network_interface="127.0.0.2",
        headers={"X-Forwarded-For": "73.15.20.9", "User-Agent": THUNDERBIRD},
    )
    await expect(page.locator('tr[data-recipient="dan@example.net"]')).to_have_attribute(
        "data-state", "opened", timeout=2000
    )
    assert await dan.inner_text() == "Read · Thunderbird 128 · Pinole, California, US"
    assert await page.locator('tr[data-recipient="dan@example.net"] .humans').inner_text() == "1"
    first_open = await page.locator('tr[data-recipient="dan@example.net"] .first-open').inner_text()
    # In the user's zone (UTC by default), with how long after sending.
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC \d+ (s|min) after sending", first_open), (
        first_open
    )
    await page.set_viewport_size({"width": 1000, "height": 600})
    await page.screenshot(path=str(SHOTS / "messages.png"), full_page=True)
    await page.goto(f"{base}/messages/{ids[XSS]}")
    await page.screenshot(path=str(SHOTS / "message.png"), full_page=True)
