"""Settings → Make a token and Make a new MailPing password answer with a redirect (303) and
show the new value once, on the page they lead to: reloading that page (in Chromium too)
neither posts the form again (no second token, no second password) nor shows the value again;
the value is in no URL, no cookie and no row of the store in clear; another user's session
with the one-time cookie gets nothing, and a copy of the cookie replayed later gets nothing.
Real HTTP against the pixel server, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import column, func, select, table, update
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from pixelserver.store.accounts import local_user_hash
from pixelserver.store.schema import ApiToken, UTCDateTime
from tests.test_erasure import store_text
from tests.test_links_settings import WebSession
from tests.test_web import login

# The held values' table, named here so these tests fail (not error) before it exists.
HELD = table("shown_once", column("expires_at", UTCDateTime()))
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
ANA, ANA_PW = "ana@example.org", "ana-password-1"
BOB, BOB_PW = "bob@example.org", "bob-password-2"
TOKEN = re.compile(r'id="new-token">([^<]+)<')
PASSWORD = re.compile(r'id="mail-password">([^<]+)<')
# The two forms: what the post sends, how the page shows the new value, and its words.
FORMS = {
    "create": ({"action": "create", "name": "export"}, TOKEN, "Your new token"),
    "mail_password": ({"action": "mail_password"}, PASSWORD, "Your new MailPing password"),
}


async def token_count(store) -> int:
    async with store() as s:
        return (await s.execute(select(func.count()).select_from(ApiToken))).scalar_one()


async def ana_hash(store) -> str | None:
    async with store() as s:
        return await local_user_hash(s, ANA)


async def api_status(base: str, token: str) -> int:
    resp = await AsyncHTTPClient().fetch(
        HTTPRequest(base + "/api/v1/messages", headers={"Authorization": f"Bearer {token}"}),
        raise_error=False,
    )
    return resp.code


async def works(base: str, action: str, value: str) -> bool:
    """The value shown is the live one: the token opens the API, the password logs in."""
    if action == "create":
        return await api_status(base, value) == 200
    await WebSession.logged_in(base, ANA, value)  # asserts the login's 302
    return True


@pytest.mark.parametrize("action", sorted(FORMS))
async def test_the_form_redirects_and_the_new_value_is_shown_once(site, store, action) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    form, shown_as, words = FORMS[action]
    ana = await WebSession.logged_in(base, ANA, ANA_PW)
    hash_before = await ana_hash(store)
    posted = await ana.request("/settings", form)
    assert posted.code == 303, posted.code
    location = posted.headers["Location"]
    assert location.startswith("/settings")
    set_cookies = posted.headers.get_list("Set-Cookie")
    assert set_cookies and all("HttpOnly" in c for c in set_cookies), set_cookies
    assert all("SameSite=Strict" in c for c in set_cookies), set_cookies
    assert words not in posted.body.decode()
    stored_after_post = await store_text(store)  # every row of every table, as a dump shows
    flash = dict(ana.cookies)  # the browser's cookies right after the post
    made = await token_count(store), await ana_hash(store)

    # Bob with Ana's one-time cookie, before she sees her page: nothing of Ana's, and hers
    # is still to be shown.
    bob = await WebSession.logged_in(base, BOB, BOB_PW)
    bob.cookies = {**flash, **bob.cookies}
    theirs = await bob.request("/settings")
    assert theirs.code == 200 and words not in theirs.body.decode()
    assert not shown_as.search(theirs.body.decode())

    shown = await ana.request(location.split("#")[0])
    assert shown.code == 200
    page = shown.body.decode()
    assert page.count(words) == 1
    (value,) = shown_as.findall(page)  # shown exactly once
    assert value not in location and not any(value in c for c in set_cookies)
    assert value.lower() not in stored_after_post, "held sealed, never in clear"
    assert await works(base, action, value)
    if action == "create":
        assert made[0] == 1
    else:
        assert made[1] != hash_before

    again = await ana.request("/settings")  # a reload: nothing shown, nothing made
    assert again.code == 200 and words not in again.body.decode()
    assert await token_count(store) == made[0]
    if action == "mail_password":
        assert await ana_hash(store) == made[1]  # the password shown is still the live one

    ana.cookies = flash  # the one-time cookie, saved before it was cleared, sent again
    replayed = await ana.request("/settings")
    assert replayed.code == 200 and words not in replayed.body.decode()
    async with store() as s:  # shown: nothing is held any more
        assert (await s.execute(select(func.count()).select_from(HELD))).scalar_one() == 0
    assert value.lower() not in await store_text(store)


async def test_a_value_not_seen_within_two_minutes_is_gone(site, store) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    ana = await WebSession.logged_in(base, ANA, ANA_PW)
    posted = await ana.request("/settings", FORMS["create"][0])
    assert posted.code == 303
    async with store.begin() as s:  # as if the page were opened three minutes later
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        await s.execute(update(HELD).values(expires_at=past))
    late = await ana.request("/settings")
    assert late.code == 200 and not TOKEN.search(late.body.decode())
    # Anything held past its time is dropped when the next value is held.
    await ana.request("/settings", FORMS["create"][0])
    async with store() as s:
        held = (await s.execute(select(HELD.c.expires_at))).scalars().all()
    assert len(held) == 1 and held[0] > dt.datetime.now(dt.UTC)


@SQLITE
async def test_reloading_after_making_a_token_and_a_password_in_chromium(
    site, browser, store
) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    page = await browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    await login(page, base, ANA, ANA_PW)
    await page.wait_for_url(base + "/")
    await page.goto(base + "/settings")
    await page.get_by_label("Name").fill("spreadsheet")
    await page.get_by_role("button", name="Make a token").click()
    token = await page.locator("#new-token").inner_text()
    assert token.startswith("mp_") and token not in page.url
    assert await api_status(base, token) == 200
    await page.reload()
    assert await page.locator("#new-token").count() == 0
    assert await token_count(store) == 1 and dialogs == []
    await page.go_back()
    await page.go_forward()
    assert await token_count(store) == 1

    await page.get_by_role("button", name="Make a new MailPing password").click()
    password = await page.locator("#mail-password").inner_text()
    hashed = await ana_hash(store)
    await page.reload()
    assert await page.locator("#mail-password").count() == 0
    assert await ana_hash(store) == hashed and dialogs == []
    await WebSession.logged_in(base, ANA, password)
