"""Erasure on request (GDPR art. 17): a user forgets a recipient from the recipient page or the
API, an administrator with `mailping forget ADDRESS` or erases a whole user with `mailping
user erase NAME`. Afterwards the store (every row, and on SQLite the file's bytes) and the data
folder hold no trace of them, and a "never track" rule still holds, through a keyed hash."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import select, text
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from pixelserver.store.accounts import create_api_token, get_or_create_user
from pixelserver.store.appsecrets import token_key
from pixelserver.store.schema import Base, Delivery, Message, User
from relay import cli
from tests.conftest import USERS, send_as
from tests.test_pixel import fetch, wait_for_hits
from tests.test_sessions import Visitor, _config_file


async def store_text(store) -> str:
    """Every row of every table, as text (what a database dump would show)."""
    parts = []
    async with store() as s:
        for table in Base.metadata.sorted_tables:
            rows = await s.execute(select(table))
            parts += [repr(tuple(r)) for r in rows]
    return "\n".join(parts).lower()


def folder_holding(folder: Path, needle: str) -> list[str]:
    """Files under `folder` whose bytes hold `needle` (any case), SQLite's own files included."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if needle.lower().encode() in path.read_bytes().lower():
            found.append(str(path.relative_to(folder)))
    return found


async def traces(store, cfg, needle: str) -> list[str]:
    where = folder_holding(cfg.data_dir, needle)
    if cfg.database.url.startswith("sqlite"):
        db_file = Path(cfg.database.url.split("///", 1)[1])
        where += [f"sqlite file {p}" for p in folder_holding(db_file.parent, needle)]
    if needle.lower() in await store_text(store):
        where.append("store rows")
    return where


def pixel_urls(upstream, rcpt: str) -> list[str]:
    return [
        re.search(rb'src="(http://[^"]+\.gif)"', m.data).group(1).decode()
        for m in upstream.messages
        if m.rcpt_tos == [rcpt]
    ]


async def test_a_user_forgets_a_recipient_from_the_page_and_the_api(site, store) -> None:
    cfg, ids, upstream = site
    base = cfg.pixelserver.public_url
    for url in pixel_urls(upstream, "carol@gmail.com") + pixel_urls(upstream, "dan@example.net"):
        await fetch(url, headers={"X-Forwarded-For": "73.15.20.9"}, network_interface="127.0.0.2")
    ana = Visitor(base)
    await ana.login("ana@example.org", "ana-password-1")
    # Ana never wants Carol tracked again: a plain "never track" rule, to be kept hashed.
    token = await ana.xsrf()
    saved = await ana.fetch(
        "/settings",
        method="POST",
        body=f"_xsrf={quote(token)}&action=preferences&exclusions=carol%40gmail.com"
        "&digest_enabled=on&digest_hour=8&digest_timezone=UTC",
    )
    assert saved.code in (200, 302), saved.body[:500]
    async with store() as s:
        user = (await s.execute(select(User).where(User.address == "ana@example.org"))).scalar_one()
        assert user.exclusions == ["carol@gmail.com"]
        carol = await _delivery(s, "carol@gmail.com")
    # The hit pipeline writes in batches: under load the fetch above may not be stored yet.
    assert len(await wait_for_hits(store, carol, 1)) == 1

    page = await ana.fetch("/recipients/carol%40gmail.com")
    assert (
        page.code == 200 and 'action="/recipients/carol%40gmail.com/forget"' in page.body.decode()
    )
    token = await ana.xsrf()
    unconfirmed = await ana.fetch(
        "/recipients/Carol%40Gmail.com/forget", method="POST", body=f"_xsrf={quote(token)}"
    )
    assert unconfirmed.code == 400  # the page's "Erase it all" box was not ticked
    gone = await ana.fetch(
        "/recipients/Carol%40Gmail.com/forget",
        method="POST",
        body=f"_xsrf={quote(token)}&confirm=yes",
    )
    assert gone.code == 302
    assert await traces(store, cfg, "carol@gmail.com") == []
    assert (await ana.fetch("/recipients/carol%40gmail.com")).code == 404
    # Ana's message and her other recipient are untouched.
    async with store() as s:
        assert await _delivery(s, "dan@example.net") is not None

    # The API does the same with a personal token.
    async with store.begin() as s:
        api_token = await create_api_token(s, "ana@example.org", "script")
    resp = await AsyncHTTPClient().fetch(
        HTTPRequest(
            base + "/api/v1/recipients/dan%40example.net",
            method="DELETE",
            headers={"Authorization": f"Bearer {api_token}"},
        ),
        raise_error=False,
    )
    assert resp.code == 200, resp.body
    assert await traces(store, cfg, "dan@example.net") == []
    # The message had no recipient left: it went too.
    async with store() as s:
        subjects = set((await s.execute(select(Message.subject))).scalars())
    assert subjects == {"Bob's private plans"}

    # The rule still holds: a new message to Carol is not tracked, although her address is
    # nowhere in Ana's rules any more.
    await asyncio.to_thread(
        send_as,
        int(cfg.relay.listen.rsplit(":", 1)[1]),
        "ana@example.org",
        "Again",
        ["carol@gmail.com", "frank@example.net"],
    )
    async with store() as s:
        rows = (
            await s.execute(select(Delivery.recipient, Delivery.tracking).order_by(Delivery.id))
        ).all()
    assert ("carol@gmail.com", "untracked") in rows and ("frank@example.net", "tracked") in rows


async def _delivery(s, recipient: str) -> int | None:
    return (
        await s.execute(select(Delivery.id).where(Delivery.recipient == recipient))
    ).scalar_one_or_none()


async def test_an_administrator_forgets_an_address_and_erases_a_user(
    site, store, tmp_path: Path, db_url: str
) -> None:
    cfg, _, _ = site
    config = _config_file(tmp_path, db_url)
    code = await asyncio.to_thread(cli.main, ["--config", config, "forget", "EVE@example.com"])
    assert code == 0
    assert await traces(store, cfg, "eve@example.com") == []

    bob = Visitor(cfg.pixelserver.public_url)
    await bob.login("bob@example.org", USERS["bob@example.org"])
    code = await asyncio.to_thread(
        cli.main, ["--config", config, "user", "erase", "bob@example.org"]
    )
    assert code == 0
    assert await traces(store, cfg, "bob@example.org") == []
    assert await traces(store, cfg, "Bob's private plans") == []
    assert not await bob.sees_report()
    async with store() as s:
        left = (await s.execute(text("select address from user_account"))).scalars().all()
    assert left == ["ana@example.org"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_forget_button_in_chromium(site, store, browser) -> None:
    from tests.test_web import login

    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    page = await browser.new_page()
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    await page.goto(f"{base}/recipients/dan%40example.net")
    await page.get_by_label("Erase it all, for good").check()
    await page.get_by_role("button", name="Forget this recipient").click()
    await page.wait_for_url(base + "/")
    assert "dan@example.net" not in await page.content()
    assert "carol@gmail.com" in await page.content()
    assert await traces(store, cfg, "dan@example.net") == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_addresses_with_plus_and_percent_are_forgotten_exactly(site, store) -> None:
    """Tornado decodes a path argument once; decoding it again turned `+` into a space."""
    cfg, _, _ = site
    port = int(cfg.relay.listen.rsplit(":", 1)[1])
    await asyncio.to_thread(send_as, port, "ana@example.org", "Tagged", ["eve+news@example.com"])
    ana = Visitor(cfg.pixelserver.public_url)
    await ana.login("ana@example.org", "ana-password-1")
    page = await ana.fetch("/recipients/eve%2Bnews%40example.com")
    assert page.code == 200
    token = await ana.xsrf()
    gone = await ana.fetch(
        "/recipients/eve%2Bnews%40example.com/forget",
        method="POST",
        body=f"_xsrf={quote(token)}&confirm=yes",
    )
    assert gone.code == 302
    assert await traces(store, cfg, "eve+news@example.com") == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_forgetting_removes_the_copies_in_the_local_outbox(
    tmp_path: Path, db_url: str, store
) -> None:
    import smtplib
    from email.message import EmailMessage

    from relay import service
    from tests.conftest import make_config, start_pixelserver

    cfg = make_config(tmp_path, db_url, None)  # no upstream: copies go to data_dir/outbox
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    relay = await service.start_relay(cfg, store, with_digests=False)
    pixel = await start_pixelserver(cfg, store)
    try:
        msg = EmailMessage()
        msg["From"], msg["Subject"] = "me@example.com", "Two of them"
        msg["To"] = "gina@example.org, hal@example.org"
        msg.set_content("plain")
        msg.add_alternative("<html><body><p>Hi</p></body></html>", subtype="html")

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", int(cfg.relay.listen.rsplit(":", 1)[1])) as c:
                c.send_message(msg)

        await asyncio.to_thread(send)
        assert len(list(cfg.outbox_dir.glob("*.eml"))) == 2
        config = _config_file(tmp_path, db_url)
        code = await asyncio.to_thread(cli.main, ["--config", config, "forget", "gina@example.org"])
        assert code == 0
        # Hal's copy goes too: its To: names Gina. Hal's delivery stays in the report.
        assert list(cfg.outbox_dir.glob("*.eml")) == []
        assert await traces(store, cfg, "gina@example.org") == []
        async with store() as s:
            left = list((await s.execute(select(Delivery.recipient))).scalars())
        assert left == ["hal@example.org"]
    finally:
        await relay.close()
        await pixel.close()


async def test_the_relay_plans_forgotten_recipients_untracked_with_tagged_tokens(store) -> None:
    """The relay mints tokens before the store is written (the spool comes first): one short
    read gives it the user's exclusions, the forgotten recipients' hashes and the token key."""
    from pixelserver.store import erasure
    from pixelserver.tokens import is_untagged, tag_ok
    from relay import tracking

    async with store.begin() as s:
        owner = await get_or_create_user(s, "ana@example.org")
        owner.exclusions = ["internal.example"]
    await erasure.forget_recipient(store, "Carol@Gmail.com", user="ana@example.org")
    await erasure.forget_recipient(store, "zed@example.net", user=None)  # for everyone
    cache = tracking.ExclusionCache()
    facts = await cache.get(store, "ana@example.org")
    assert facts is not None and facts.token_key is not None
    async with store.begin() as s:
        assert facts.token_key == await token_key(s)
    rcpts = ["carol@gmail.com", "zed@example.net", "x@internal.example", "dan@example.net"]
    plan = tracking.plan_deliveries(rcpts, None, facts)
    assert [d.untracked_reason for d in plan] == ["excluded", "excluded", "excluded", None]
    assert all(tag_ok(d.token, facts.token_key) for d in plan)
    # A user the store does not know yet: only what was forgotten for everyone holds.
    new = await cache.get(store, "newcomer@example.org")
    assert new is not None
    plan = tracking.plan_deliveries(["zed@example.net", "carol@gmail.com"], None, new)
    assert [d.untracked_reason for d in plan] == ["excluded", None]

    # The store away and never read: copies go out untracked, with untagged tokens (no pixel
    # carries them); with the key known from an earlier read, even those are tagged.
    plan = tracking.plan_deliveries(["dan@example.net"], None, None)
    assert plan[0].untracked_reason == "store_unavailable" and is_untagged(plan[0].token)
    plan = tracking.plan_deliveries(["dan@example.net"], "text_only", None, cache.token_key)
    assert plan[0].untracked_reason == "text_only" and tag_ok(plan[0].token, facts.token_key)
    # A tracked copy never gets an untagged token: without a key it is not tracked.
    no_key = tracking.TrackingFacts([])
    plan = tracking.plan_deliveries(["dan@example.net"], None, no_key)
    assert plan[0].untracked_reason == "store_unavailable"
