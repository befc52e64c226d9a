"""Users' own accounts (relay.auth = "local" with [connect]): the authorization-code flow with
PKCE over real HTTP against a local authorization server, the refresh token sealed in the
store, mail sent as the user (Microsoft: SMTP with XOAUTH2 to an upstream that takes nothing
else; Google: an HTTP stand-in for the Gmail API checking the bearer token and the raw
message), a refresh token that stops working, disconnecting, and the mail-program password."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import re
import smtplib
import urllib.parse
from email.message import EmailMessage

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from pixelserver.config import ConnectConfig
from pixelserver.store.accounts import set_local_user
from pixelserver.store.mailaccounts import MailAccount, Sealer
from pixelserver.store.schema import Delivery
from relay import auth, queue_admin, service
from relay.spool import Spool
from tests.conftest import capture_upstream, make_config, start_pixelserver
from tests.helpers import PIXEL_RE, eventually
from tests.oauth_servers import AuthServer, auth_server, oauth_smtp
from tests.test_links_settings import WebSession

pytestmark = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)

ANA, ANA_PW = "ana@contoso.example", "ana-password-1"
CLIENTS = {"ms-app": "ms-secret", "g-app": "g-secret"}
KEY = Fernet.generate_key().decode()


def connect_config(a: AuthServer, smtp_port: int) -> ConnectConfig:
    return ConnectConfig(
        key_env="MP_KEY",
        microsoft_client_id="ms-app",
        microsoft_client_secret_env="MS",
        microsoft_login_url=a.base,
        microsoft_smtp_host="127.0.0.1",
        microsoft_smtp_port=smtp_port,
        microsoft_smtp_tls="none",
        google_client_id="g-app",
        google_client_secret_env="G",
        google_authorize_url=f"{a.base}/google/authorize",
        google_token_url=f"{a.base}/google/token",
        google_revoke_url=f"{a.base}/google/revoke",
        gmail_api_url=a.base,
    )


@dataclasses.dataclass
class Site:
    cfg: object
    relay_port: int
    web: WebSession
    auth: AuthServer
    smtp: object  # the users' Microsoft upstream (XOAUTH2 only)
    relay_upstream: object  # the relay's own account


@pytest.fixture
async def site(tmp_path, db_url, store):
    async with store.begin() as s:
        await set_local_user(s, ANA, auth.hash_password(ANA_PW))
    async with (
        auth_server(CLIENTS) as a,
        oauth_smtp(a) as ms,
        capture_upstream(logins={"relay@example.com": "x"}) as own,
    ):
        cfg = make_config(
            tmp_path,
            db_url,
            own.port,
            relay={"auth": "local"},
            upstream={"username": "relay@example.com"},
            upstream_password="x",
        )
        cfg = dataclasses.replace(
            cfg,
            connect=connect_config(a, ms.port),
            connect_key=KEY,
            connect_secrets={"microsoft": "ms-secret", "google": "g-secret"},
        )
        relay = await service.start_relay(cfg, store, with_digests=False)
        pixel = await start_pixelserver(cfg, store)
        web = await WebSession.logged_in(cfg.pixelserver.public_url, ANA, ANA_PW)
        try:
            yield Site(cfg, int(cfg.relay.listen.rsplit(":", 1)[1]), web, a, ms, own)
        finally:
            await relay.close()
            await pixel.close()


async def connect(site: Site, provider: str) -> str:
    """Settings → the provider (which signs the user in and consents) → back; returns where
    the callback sent the browser."""
    start = await site.web.request(f"/settings/connect/{provider}")
    assert start.code == 302, start.code
    authorize = start.headers["Location"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    scope = query["scope"][0].split()
    assert "https://mail.google.com/" not in scope, "never the scope that reads the mailbox"
    consent = await AsyncHTTPClient().fetch(
        HTTPRequest(authorize, follow_redirects=False), raise_error=False
    )
    assert consent.code == 302
    back = urllib.parse.urlsplit(consent.headers["Location"])
    done = await site.web.request(f"{back.path}?{back.query}")
    assert done.code == 302, done.body
    return done.headers["Location"]


def message(to: list[str], subject: str, bcc_only: list[str] = ()) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ANA, ", ".join(to), subject
    msg.set_content("plain")
    msg.add_alternative("<html><body><p>Hello</p></body></html>", subtype="html")
    return msg


def send(site: Site, msg: EmailMessage, rcpts: list[str] | None = None, pw: str = ANA_PW) -> None:
    with smtplib.SMTP("127.0.0.1", site.relay_port, timeout=30) as c:
        c.login(ANA, pw)
        c.send_message(msg, to_addrs=rcpts)


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


async def stored_row(store) -> MailAccount | None:
    async with store() as s:
        return (await s.execute(select(MailAccount))).scalar_one_or_none()


async def test_microsoft_user_connects_and_mail_goes_out_as_them(site: Site, store) -> None:
    assert await connect(site, "microsoft") == "/settings?connected=microsoft"
    page = (await site.web.request("/settings")).body.decode()
    assert "MailPing sends your mail as <strong>ana@contoso.example</strong>" in page
    row = await stored_row(store)
    assert row is not None and row.provider == "microsoft" and row.status == "ok"
    [refresh_token] = site.auth.refresh
    assert refresh_token not in row.refresh_token, "sealed, never in clear"
    assert Sealer(KEY).open(row.refresh_token) == refresh_token
    async with store() as s:
        dump = repr((await s.execute(text("SELECT * FROM mail_account"))).all())
    assert not [t for t in [*site.auth.refresh, *site.auth.access] if t in dump]

    await asyncio.to_thread(send, site, message(["bob@example.net"], "As Ana"))
    await eventually(lambda: len(site.smtp.messages) == 2)
    guard, tracked = site.smtp.messages
    assert {m.login for m in site.smtp.messages} == {ANA}, "XOAUTH2 as Ana's own mailbox"
    assert guard.rcpt_tos == [ANA] and not PIXEL_RE.search(guard.data.decode())
    assert tracked.rcpt_tos == ["bob@example.net"] and PIXEL_RE.search(tracked.data.decode())
    assert site.relay_upstream.messages == [], "not through the relay's own account"
    assert site.auth.refreshes == 1 and site.smtp.logins == ["ok"]


async def test_a_refresh_token_that_stops_working_shows_and_mail_waits(
    site: Site, store, caplog
) -> None:
    await connect(site, "microsoft")
    site.auth.revoke_everything()  # Ana changed her password at Microsoft
    await asyncio.to_thread(send, site, message(["bob@example.net"], "Waits"))
    spool = Spool(site.cfg.spool_dir)
    await eventually(lambda: "after 1 try" in "\n".join(queue_admin.list_queue(spool)))
    listing = "\n".join(queue_admin.list_queue(spool))
    assert "your Microsoft 365 account stopped working for MailPing" in listing
    assert "invalid_grant" in listing and "connect it again in MailPing's Settings" in listing
    assert site.smtp.messages == [] and site.relay_upstream.messages == []
    row = await stored_row(store)
    assert row.status == "broken" and "invalid_grant" in row.problem
    page = (await site.web.request("/settings")).body.decode()
    assert 'id="account-broken"' in page and "Connect your Microsoft 365 account again" in page
    _data, digest = await service.make_digest_runner(site.cfg, store).preview(ANA)
    assert "ACTION NEEDED: Your Microsoft 365 account (ana@contoso.example) stopped" in digest.text
    # Connecting again mends it; the waiting copies go out at their next try.
    assert await connect(site, "microsoft") == "/settings?connected=microsoft"
    assert (await stored_row(store)).status == "ok"
    queue_admin.retry_now(spool, [])
    await eventually(lambda: len(site.smtp.messages) == 2)
    assert not [r for r in caplog.records if r.exc_info]


async def test_google_sends_through_the_gmail_api_with_send_scope_only(site: Site, store) -> None:
    assert await connect(site, "google") == "/settings?connected=google"
    gmail = site.auth.gmail  # type: ignore[attr-defined]
    # One recipient: the guard copy (to Ana alone, no pixel) first, then Bob's tracked copy.
    await asyncio.to_thread(send, site, message(["bob@example.net"], "One"))
    await eventually(lambda: len(gmail.sent) == 2)
    guard, tracked = (
        email.message_from_bytes(s.raw, policy=email.policy.default) for s in gmail.sent
    )
    assert {s.owner for s in gmail.sent} == {ANA}
    assert guard["To"] == ANA and not PIXEL_RE.search(gmail.sent[0].raw.decode())
    assert tracked["To"] == "bob@example.net" and PIXEL_RE.search(gmail.sent[1].raw.decode())
    assert guard["Message-ID"] == tracked["Message-ID"]
    # Two recipients and one only in the envelope: one send reaches all, untracked, Bcc added.
    await asyncio.sleep(0.3)
    assert len(gmail.sent) == 2
    await asyncio.to_thread(
        send,
        site,
        message(["bob@example.net", "cy@example.org"], "Two"),
        ["bob@example.net", "cy@example.org", "dee@example.com"],
    )
    await eventually(lambda: len(gmail.sent) == 3)
    shared = gmail.sent[2].raw  # no guard copy: there is no pixel to keep out of Sent Mail
    parsed = parse(shared)
    assert parsed["To"] == "bob@example.net, cy@example.org" and parsed["Bcc"] == "dee@example.com"
    assert not PIXEL_RE.search(shared.decode())
    assert site.smtp.messages == [] and site.relay_upstream.messages == []
    async with store() as s:
        q = select(Delivery.recipient, Delivery.untracked_reason).order_by(Delivery.id)
        rows = (await s.execute(q)).all()
    shared_reason = "one_gmail_send_for_all"
    assert [tuple(r) for r in rows] == [
        ("bob@example.net", None),
        ("bob@example.net", shared_reason),
        ("cy@example.org", shared_reason),
        ("dee@example.com", shared_reason),
    ]


async def test_disconnect_revokes_at_google_and_mail_returns_to_the_relay_account(
    site: Site, store
) -> None:
    await connect(site, "google")
    [refresh_token] = site.auth.refresh
    resp = await site.web.request("/settings", {"action": "disconnect"})
    assert resp.code == 200 and "Google has revoked MailPing" in resp.body.decode()
    assert site.auth.revoked == [refresh_token] and await stored_row(store) is None
    await asyncio.to_thread(send, site, message(["bob@example.net"], "Own account"))
    await eventually(lambda: len(site.relay_upstream.messages) == 1)


async def test_a_mail_program_password_is_shown_once_and_works(site: Site) -> None:
    resp = await site.web.request("/settings", {"action": "mail_password"})
    assert resp.code == 303  # the page it leads to shows the password, once
    page = (await site.web.request(resp.headers["Location"].split("#")[0])).body.decode()
    new = re.search(r'id="mail-password">([^<]+)<', page).group(1)
    assert len(new) == 23
    assert new not in (await site.web.request("/settings")).body.decode(), "shown only once"
    await asyncio.to_thread(send, site, message(["bob@example.net"], "New pw"), None, new)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        await asyncio.to_thread(send, site, message(["bob@example.net"], "Old pw"))


async def test_a_callback_without_this_browsers_state_is_refused(site: Site, store) -> None:
    resp = await site.web.request("/settings/connect/callback?code=abc&state=forged")
    assert resp.code == 302 and "connect_error" in resp.headers["Location"]
    assert await stored_row(store) is None


async def test_connecting_in_chromium(site: Site, browser, store) -> None:
    from playwright.async_api import expect

    from tests.conftest import SHOTS
    from tests.test_web import login

    base = site.cfg.pixelserver.public_url
    page = await browser.new_page()
    await login(page, base, ANA, ANA_PW)
    await page.wait_for_url(base + "/")
    await page.goto(base + "/settings")
    await page.get_by_role("link", name="Connect your Microsoft 365 account").click()
    # Off to the provider (which signs Ana in and consents at once) and back to Settings.
    await page.wait_for_url(base + "/settings?connected=microsoft")
    await expect(page.locator("#notice")).to_contain_text("Microsoft 365 account is connected")
    await expect(page.locator("#account-status")).to_contain_text("ana@contoso.example")
    await page.get_by_role("button", name="Make a new MailPing password").click()
    password = await page.locator("#mail-password").inner_text()
    await page.screenshot(path=str(SHOTS / "settings-connected.png"), full_page=True)
    await asyncio.to_thread(
        send, site, message(["bob@example.net"], "From Chromium"), None, password
    )
    await eventually(lambda: len(site.smtp.messages) == 2)
    assert {m.login for m in site.smtp.messages} == {ANA}
    await page.get_by_role("button", name="Disconnect").click()
    await expect(page.locator("#notice")).to_contain_text("Disconnected")
    assert await stored_row(store) is None


async def test_another_mailbox_than_the_login_is_not_connected(site: Site, store) -> None:
    site.auth.signed_in = "mallory@contoso.example"  # signed in at the provider as someone else
    where = await connect(site, "microsoft")
    assert where.startswith("/settings?connect_error=")
    assert "mallory%40contoso.example" in where and await stored_row(store) is None


async def test_access_tokens_are_renewed_and_rotated_refresh_tokens_kept(site: Site, store) -> None:
    site.auth.lifetime = 2  # access tokens live two seconds; each refresh rotates the refresh token
    await connect(site, "microsoft")
    await asyncio.to_thread(send, site, message(["bob@example.net"], "First"))
    await eventually(lambda: len(site.smtp.messages) == 2)
    await asyncio.sleep(2.1)
    await asyncio.to_thread(send, site, message(["bob@example.net"], "Second"))
    await eventually(lambda: len(site.smtp.messages) == 4)
    assert site.auth.refreshes == 2 and set(site.smtp.logins) == {"ok"}
    [current] = site.auth.refresh  # the old ones were given up at each rotation
    row = await stored_row(store)
    assert row.status == "ok" and Sealer(KEY).open(row.refresh_token) == current


async def test_a_new_key_first_in_key_env_reseals_tokens_at_their_next_refresh(
    site: Site, store
) -> None:
    from pixelserver import oauthcode
    from relay.useraccounts import UserTokens

    site.auth.rotate = False  # Google keeps one refresh token: it is sealed again all the same
    await connect(site, "microsoft")
    new = Fernet.generate_key().decode()
    provider = oauthcode.providers(site.cfg.connect, site.cfg.connect_secrets)["microsoft"]
    tokens = UserTokens(ANA, provider, store, Sealer(f"{new},{KEY}"))
    assert site.auth.valid(await tokens.token())
    row = await stored_row(store)
    [refresh_token] = site.auth.refresh
    assert Sealer(new).open(row.refresh_token) == refresh_token, "sealed with the new key"
    assert Sealer(new).current(row.refresh_token) and not Sealer(KEY).current(row.refresh_token)
