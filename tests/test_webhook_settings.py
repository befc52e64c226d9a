"""Settings → Add webhook answers with a redirect (303) and shows the signing secret once, on
the page it leads to: reloading that page (in Chromium too) neither posts the form again nor
shows the secret again, the secret never appears in a URL or a cookie, and a copy of the
one-time cookie replayed later shows nothing. Real HTTP against the pixel server."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from pixelserver.store.webhookschema import WebhookEndpoint
from tests.test_links_settings import WebSession
from tests.test_web import login

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]+")


async def endpoint_rows(store) -> list[tuple[str, str]]:
    async with store() as s:
        return list((await s.execute(select(WebhookEndpoint.url, WebhookEndpoint.secret))).all())


async def test_adding_redirects_and_the_secret_is_shown_once(site, store) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    ana = await WebSession.logged_in(base, "ana@example.org", "ana-password-1")
    posted = await ana.request(
        "/settings", {"action": "webhook_add", "url": "https://hooks.example.com/a"}
    )
    assert posted.code == 303, posted.code
    location = posted.headers["Location"]
    assert location.startswith("/settings") and "whsec" not in location
    set_cookies = posted.headers.get_list("Set-Cookie")
    assert set_cookies and not any("whsec" in c for c in set_cookies)
    assert all("HttpOnly" in c for c in set_cookies), set_cookies
    assert "whsec" not in posted.body.decode()
    flash = dict(ana.cookies)  # the browser's cookies right after the post

    # Bob with Ana's one-time cookie, before she sees her page: nothing of Ana's, and hers
    # is still to be shown.
    bob = await WebSession.logged_in(base, "bob@example.org", "bob-password-2")
    bob.cookies = {**flash, **bob.cookies}
    assert "mailping_new_webhook" in bob.cookies
    theirs = await bob.request("/settings")
    assert theirs.code == 200 and "whsec" not in theirs.body.decode()

    shown = await ana.request(location.split("#")[0])
    assert shown.code == 200
    ((url, secret),) = await endpoint_rows(store)
    assert url == "https://hooks.example.com/a"
    assert SECRET.findall(shown.body.decode()) == [secret]  # the real secret, once
    Webhook(secret)  # a secret the standardwebhooks package takes

    again = await ana.request("/settings")  # a reload: the secret is not shown again
    assert again.code == 200 and "whsec" not in again.body.decode()
    assert len(await endpoint_rows(store)) == 1  # and nothing was added

    # The one-time cookie, saved before it was cleared and sent again: nothing.
    ana.cookies = flash
    replayed = await ana.request("/settings")
    assert replayed.code == 200 and "whsec" not in replayed.body.decode()

    # A refused URL still answers the form with what is wrong, and adds nothing.
    refused = await ana.request(
        "/settings", {"action": "webhook_add", "url": "http://127.0.0.1:9/hook"}
    )
    assert refused.code == 400 and "only https" in refused.body.decode()
    assert len(await endpoint_rows(store)) == 1


@SQLITE
async def test_reloading_after_adding_in_chromium_adds_nothing(site, browser, store) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    page = await browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    await page.goto(base + "/settings")
    form = page.locator("#webhook-add")
    await form.get_by_label("URL").fill("https://hooks.example.com/b")
    await form.get_by_role("button", name="Add webhook").click()
    secret = await page.locator("#new-secret").inner_text()
    ((_, stored),) = await endpoint_rows(store)
    assert secret == stored and "whsec" not in page.url
    await page.reload()
    assert await page.locator("#new-secret").count() == 0
    assert "hooks.example.com/b" in await page.locator("#webhook-list").inner_text()
    assert len(await endpoint_rows(store)) == 1 and dialogs == []
    await page.go_back()
    await page.go_forward()
    assert len(await endpoint_rows(store)) == 1
