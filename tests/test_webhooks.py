"""Signed webhooks end to end: a real HTTP receiver in the test verifies every request with the
`standardwebhooks` package; the relay, the pixel server and the store (SQLite, PostgreSQL) are
the real ones. Retries after a 500, a new runner taking over the ledger, two runners racing,
and targets refused for request forgery."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
import tornado.httpserver
import tornado.web
from sqlalchemy import select
from standardwebhooks import Webhook

from pixelserver.config import WebhooksConfig
from pixelserver.store import erasure, webhookledger, webhooks
from pixelserver.store.schema import make_engine, make_sessionmaker
from pixelserver.store.webhookschema import WebhookAttempt, WebhookMessage
from relay import service, tracking
from relay.webhooks import GuardedResolver, RefusedTarget, WebhookRunner
from tests.conftest import SHOTS, capture_upstream, free_port, make_config, start_pixelserver
from tests.helpers import eventually, smtp_send
from tests.test_api import token_for
from tests.test_classify import THUNDERBIRD
from tests.test_pixel import fetch
from tests.test_web import login


def soon() -> dt.datetime:
    """ "Now" for the runners: a minute ahead of the clock, so rows the test queued are due."""
    return dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server answering each POST with the next status of `answers` (200 once
    they run out), after `delay` seconds."""

    port: int = 0
    got: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    delay: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


def receiver_app(rx: Receiver) -> tornado.web.Application:
    class Hook(tornado.web.RequestHandler):
        async def post(self, path: str) -> None:
            rx.got.append(Received(path, dict(self.request.headers), self.request.body))
            await asyncio.sleep(rx.delay)
            status = rx.answers.pop(0) if rx.answers else 200
            self.set_status(status)
            if status in (301, 302):
                self.set_header("Location", f"http://127.0.0.1:{rx.port}/elsewhere")
            self.finish("ok " + "x" * 5000 if status == 200 else f"status {status}")

    return tornado.web.Application([(r"/(.*)", Hook)])


@pytest.fixture
async def receiver():
    rx = Receiver(port=free_port())
    server = tornado.httpserver.HTTPServer(receiver_app(rx))
    server.listen(rx.port, "127.0.0.1")
    yield rx
    server.stop()


def verified(secret: str, r: Received) -> dict:
    """The body as the standardwebhooks package verifies it (raises on a bad signature)."""
    return Webhook(secret).verify(r.body, r.headers)


async def a_failed_delivery(store, user: str = "me@example.com") -> tuple[int, str]:
    """A message whose one copy the upstream refused, recorded as the relay records it;
    with the user's endpoint in place first so the failure is queued."""
    rec = await tracking.record_message(
        store,
        user=user,
        envelope_from=user,
        recipients=["gone@example.net"],
        subject="Quarterly numbers",
        message_id_header="<q@x>",
        size=100,
        untracked_reason=None,
    )
    (d,) = rec.deliveries
    await tracking.record_outcomes(store, [(d.id, "rejected", "550 5.1.1 no such user")])
    return d.id, d.token


async def add(store, url: str, user: str = "me@example.com", **kw) -> str:
    async with store.begin() as s:
        _, secret = await webhooks.add_endpoint(s, user, url, allow_private=True, **kw)
    return secret


async def test_first_open_through_relay_and_pixel_is_posted_once_and_verifies(
    tmp_path: Path, db_url: str, store, receiver: Receiver
) -> None:
    """Mail through the relay, a person's open on the pixel server, and the relay's own
    webhook runner posts delivery.opened once; a message sent untracked posts
    message.untracked; a copy the upstream refuses posts delivery.failed."""
    secret = await add(store, receiver.url)
    async with capture_upstream() as upstream:
        upstream.refuse["nobody@example.org"] = "550 5.1.1 No such user"
        cfg = make_config(tmp_path, db_url, upstream.port)
        cfg = dataclasses.replace(cfg, webhooks=WebhooksConfig(allow_private=True))
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        relay = await service.start_relay(cfg, store, with_digests=False)
        pixel = await start_pixelserver(cfg, store)
        try:
            port = int(cfg.relay.listen.rsplit(":", 1)[1])
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "me@example.com", "ann@example.org", "Plan"
            msg.set_content("plain")
            msg.add_alternative("<html><body><p>Hello</p></body></html>", subtype="html")
            reply = await asyncio.to_thread(
                smtp_send, port, "me@example.com", ["ann@example.org"], msg.as_bytes()
            )
            assert reply.startswith("250"), reply
            msg.replace_header("Subject", "Not tracked")
            msg["X-MailPing"] = "off"
            await asyncio.to_thread(
                smtp_send, port, "me@example.com", ["bo@example.org"], msg.as_bytes()
            )
            msg.replace_header("Subject", "To nobody")
            del msg["X-MailPing"]
            await asyncio.to_thread(
                smtp_send, port, "me@example.com", ["nobody@example.org"], msg.as_bytes()
            )
            await eventually(lambda: len(upstream.messages) == 2)
            url = re.search(rb'src="(http://[^"]+\.gif)"', upstream.messages[0].data).group(1)
            for _ in range(2):  # the second open is not a first open: no second event
                await fetch(
                    url.decode(),
                    headers={"X-Forwarded-For": "73.15.20.9", "User-Agent": THUNDERBIRD},
                    network_interface="127.0.0.2",
                )
                await asyncio.sleep(0.3)
            await eventually(lambda: len(receiver.got) >= 3, timeout=30)
            await asyncio.sleep(2.5)  # a further pass of the runner would post a repeat
        finally:
            await relay.close()
            await pixel.close()
    bodies = {verified(secret, r)["type"]: verified(secret, r) for r in receiver.got}
    assert len(receiver.got) == 3, [verified(secret, r)["type"] for r in receiver.got]
    assert set(bodies) == {"delivery.opened", "message.untracked", "delivery.failed"}
    failed = bodies["delivery.failed"]["data"]
    assert (failed["recipient"], failed["state"]) == ("nobody@example.org", "failed")
    assert "No such user" in failed["reply"] and failed["subject"] == "To nobody"
    opened = bodies["delivery.opened"]["data"]
    assert opened["recipient"] == "ann@example.org" and opened["subject"] == "Plan"
    assert (opened["state"], opened["verdict"]) == ("opened", "human")
    assert opened["time"].endswith("Z") and opened["message"] and opened["delivery"]
    untracked = bodies["message.untracked"]["data"]
    assert (untracked["recipient"], untracked["state"]) == ("bo@example.org", "untracked")
    assert untracked["reason"]
    r = receiver.got[0]
    assert (
        r.headers["Webhook-Id"].startswith("msg_") and r.headers["Webhook-Signature"][:3] == "v1,"
    )
    # a tampered body does not verify
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(r.body.replace(b"example.org", b"example.com"), r.headers)


async def test_a_500_is_retried_by_a_new_runner_and_every_attempt_is_kept(
    store, receiver: Receiver
) -> None:
    T0 = soon()
    secret = await add(store, receiver.url, events=["delivery.failed"])
    receiver.answers = [500, 302]
    delivery_id, _ = await a_failed_delivery(store)
    first = WebhookRunner(store, allow_private=True, clock=lambda: T0, retry_delays=(30, 60))
    (a,) = await first.tick()
    assert (a.status, a.status_code, a.event_type) == ("retry", 500, "delivery.failed")
    assert await first.tick() == []  # not due yet
    first.close()
    # A restart: a new runner finds the row in the store, due 30 s later.
    second = WebhookRunner(store, allow_private=True, clock=lambda: T0 + dt.timedelta(seconds=31))
    (b,) = await second.tick()
    assert (b.status, b.status_code) == ("retry", 302)  # a redirect is not followed
    third = WebhookRunner(store, allow_private=True, clock=lambda: T0 + dt.timedelta(seconds=92))
    (c,) = await third.tick()
    assert (c.status, c.status_code) == ("sent", 200)
    assert await third.tick() == []
    second.close()
    third.close()
    assert [r.path for r in receiver.got] == ["hook"] * 3  # never /elsewhere
    ids = {r.headers["Webhook-Id"] for r in receiver.got}
    assert len(ids) == 1  # a retry keeps its webhook-id
    body = verified(secret, receiver.got[-1])
    assert body["data"]["delivery"] == delivery_id and "550" in body["data"]["reply"]
    async with store() as s:
        attempts = (await s.execute(select(WebhookAttempt).order_by(WebhookAttempt.id))).scalars()
        kept = [(x.status_code, x.response) for x in attempts]
        views = await webhookledger.recent_attempts(s, "me@example.com")
    assert [k[0] for k in kept] == [500, 302, 200]
    assert len(kept[2][1]) == webhookledger.RESPONSE_KEPT  # a long answer is cut
    assert [v.status_code for v in views] == [200, 302, 500] and views[0].status == "sent"


async def test_a_send_interrupted_by_a_crash_is_sent_by_the_next_runner(
    store, receiver: Receiver
) -> None:
    T0 = soon()
    secret = await add(store, receiver.url)
    await a_failed_delivery(store)
    async with store.begin() as s:  # a process claims the row, then dies before posting
        (claim,) = await webhookledger.claim_due(s, "dead:1", T0)
    early = WebhookRunner(store, allow_private=True, clock=lambda: T0 + dt.timedelta(minutes=1))
    assert await early.tick() == []  # the claim is still fresh: nobody else sends it
    later = WebhookRunner(store, allow_private=True, clock=lambda: T0 + dt.timedelta(minutes=6))
    (a,) = await later.tick()
    early.close()
    later.close()
    assert a.status == "sent" and receiver.got[0].headers["Webhook-Id"] == claim.msg_id
    verified(secret, receiver.got[0])


async def test_forgetting_a_recipient_erases_the_events_naming_them(
    store, receiver: Receiver
) -> None:
    T0 = soon()
    await add(store, receiver.url)
    await a_failed_delivery(store)
    runner = WebhookRunner(store, allow_private=True, clock=lambda: T0)
    assert len(await runner.tick()) == 1
    runner.close()
    await erasure.forget_recipient(store, "gone@example.net", user=None, vacuum=False)
    async with store() as s:
        assert (await s.execute(select(WebhookMessage))).all() == []
        assert (await s.execute(select(WebhookAttempt))).all() == []


async def test_retries_stop_after_a_day(store, receiver: Receiver) -> None:
    await add(store, receiver.url)
    receiver.answers = [503] * 100
    await a_failed_delivery(store)
    async with store() as s:
        created = (await s.execute(select(WebhookMessage.created_at))).scalar_one()
    now = created
    statuses = []
    for _ in range(30):
        runner = WebhookRunner(store, allow_private=True, clock=lambda n=now: n)
        done = await runner.tick()
        runner.close()
        statuses += [d.status for d in done]
        if statuses and statuses[-1] == "failed":
            break
        now += dt.timedelta(hours=5, seconds=1)
    assert statuses[-1] == "failed" and statuses.count("failed") == 1
    assert now - created <= dt.timedelta(days=1, hours=5)
    assert len(receiver.got) == len(statuses) > 5


async def test_two_runners_on_one_store_never_post_an_event_twice(
    db_url: str, store, receiver: Receiver
) -> None:
    """Two runners with engines of their own (as two processes have), racing pass after
    pass over 20 events."""
    await add(store, receiver.url)
    receiver.delay = 0.02
    for _ in range(20):
        await a_failed_delivery(store, user="me@example.com")
    engines = [make_engine(db_url) for _ in range(2)]
    runners = [
        WebhookRunner(make_sessionmaker(e), allow_private=True, worker=f"w{i}", batch=7)
        for i, e in enumerate(engines)
    ]
    try:
        for _ in range(4):
            await asyncio.gather(*(r.tick() for r in runners))
    finally:
        for r, e in zip(runners, engines, strict=True):
            r.close()
            await e.dispose()
    ids = [r.headers["Webhook-Id"] for r in receiver.got]
    assert len(ids) == 20 and len(set(ids)) == 20


async def test_loopback_private_and_http_targets_are_refused_without_allow_private(
    store, receiver: Receiver
) -> None:
    T0 = soon()
    for url, why in (
        ("http://hooks.example.com/x", "only https"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://10.1.2.3/x", "private"),
        ("https://[::1]/x", "loopback"),
        ("https://localhost/x", "loopback"),
        ("https://user:pw@hooks.example.com/x", "login"),
        ("ftp://hooks.example.com/x", "only https"),
    ):
        with pytest.raises(webhooks.WebhookError, match=why):
            async with store.begin() as s:
                await webhooks.add_endpoint(s, "me@example.com", url, allow_private=False)
    # Resolution is checked where the connection is made: a name pointing at loopback.
    with pytest.raises(RefusedTarget, match="loopback"):
        await GuardedResolver(allow_private=False).resolve("localhost", 443)
    assert await GuardedResolver(allow_private=True).resolve("localhost", 443)
    # Endpoints added while private targets were allowed are refused at send time after.
    await add(store, receiver.url)  # http on loopback
    name = socket.gethostname()
    if not any(a[4][0].startswith("127.") for a in socket.getaddrinfo(name, 443)):
        pytest.fail(f"this test needs the host name {name!r} to resolve to loopback")
    await add(store, f"https://{name}:{receiver.port}/hook")  # a name resolving to loopback
    await a_failed_delivery(store)
    strict = WebhookRunner(store, allow_private=False, clock=lambda: T0)
    done = await strict.tick()
    strict.close()
    assert sorted(d.status for d in done) == ["retry", "retry"]
    errors = " | ".join(sorted(d.error for d in done))
    assert "only https" in errors and "resolves to a loopback address" in errors
    assert receiver.got == []


async def test_clicked_event_once_per_link(store, receiver: Receiver) -> None:
    """The click-tracking code calls enqueue_click for a person's click; each link of a copy
    is reported once."""
    T0 = soon()
    secret = await add(store, receiver.url, events=["delivery.clicked"])
    rec = await tracking.record_message(
        store,
        user="me@example.com",
        envelope_from="me@example.com",
        recipients=["ann@example.org"],
        subject="Links",
        message_id_header="<l@x>",
        size=10,
        untracked_reason=None,
    )
    (d,) = rec.deliveries
    async with store.begin() as s:
        for link in ("l1", "l1", "l2"):
            await webhooks.enqueue_click(
                s, d.id, link=link, url=f"https://example.org/{link}?a=1", at=T0, verdict="human"
            )
        await webhooks.enqueue_opens(s, [d.id])  # not opened: nothing
        await webhooks.enqueue_failures(s, [d.id])  # not failed, and not subscribed
    runner = WebhookRunner(store, allow_private=True, clock=lambda: T0)
    done = await runner.tick()
    runner.close()
    assert sorted(a.event_type for a in done) == ["delivery.clicked"] * 2
    bodies = sorted((verified(secret, r)["data"] for r in receiver.got), key=lambda b: b["link"])
    assert [b["url"] for b in bodies] == [
        "https://example.org/l1?a=1",
        "https://example.org/l2?a=1",
    ]
    assert bodies[0]["recipient"] == "ann@example.org" and bodies[0]["verdict"] == "human"


def mailping(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "--config", str(cfg), "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_webhook_command_add_list_remove(tmp_path: Path) -> None:
    cfg = tmp_path / "mailping.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/data"\n')
    assert mailping(cfg, "db", "upgrade").returncode == 0
    refused = mailping(cfg, "webhook", "add", "--user", "me@example.com", "http://10.0.0.1/")
    assert refused.returncode == 2 and "only https" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    added = mailping(
        cfg, "webhook", "add", "--user", "Me@Example.com", "https://hooks.example.com/mp"
    )
    assert added.returncode == 0, added.stderr
    secret = re.search(r"whsec_[A-Za-z0-9+/=]+", added.stdout).group(0)
    Webhook(secret)  # a secret the package accepts
    listed = mailping(cfg, "webhook", "list")
    assert "me@example.com\thttps://hooks.example.com/mp" in listed.stdout
    assert "whsec_" not in listed.stdout  # shown once only
    wid = listed.stdout.split("\t")[0]
    other = mailping(cfg, "webhook", "remove", wid, "--user", "else@example.com")
    assert other.returncode == 2 and "no webhook" in other.stderr
    assert mailping(cfg, "webhook", "remove", wid).returncode == 0
    assert "no webhooks" in mailping(cfg, "webhook", "list").stdout
    described = mailping(cfg, "check-config").stdout
    assert "webhooks: https targets resolving to public addresses only, 10 s" in described


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_settings_page_adds_webhooks_and_shows_each_attempt(
    site, browser, store, receiver: Receiver
) -> None:
    T0 = soon()
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    page = await browser.new_page(viewport={"width": 1000, "height": 900})
    await login(page, base, "ana@example.org", "ana-password-1")
    await page.wait_for_url(base + "/")
    await page.goto(base + "/settings")
    form = page.locator("#webhook-add")
    await form.get_by_label("URL").fill("http://127.0.0.1:9/hook")
    await form.get_by_role("button", name="Add webhook").click()
    assert "only https" in await page.get_by_role("alert").inner_text()
    await form.get_by_label("URL").fill("https://hooks.example.com/mailping")
    await form.get_by_label("delivery.opened").check()
    await form.get_by_role("button", name="Add webhook").click()
    secret = await page.locator("#new-secret").inner_text()
    assert secret.startswith("whsec_")
    Webhook(secret)
    assert "https://hooks.example.com/mailping" in await page.locator("#webhook-list").inner_text()
    await page.goto(base + "/settings")
    assert await page.locator("#new-secret").count() == 0  # shown once

    # Posts of an endpoint an administrator allowed on loopback, one refused then accepted.
    await add(store, receiver.url, user="ana@example.org", events=["delivery.failed"])
    receiver.answers = [500]
    await a_failed_delivery(store, user="ana@example.org")
    for when in (T0, T0 + dt.timedelta(seconds=10)):
        runner = WebhookRunner(store, allow_private=True, clock=lambda w=when: w)
        await runner.tick()
        runner.close()
    await page.goto(base + "/settings")
    rows = page.locator("#webhook-attempts tr.attempt")
    assert await rows.count() == 2
    newest, oldest = await rows.nth(0).inner_text(), await rows.nth(1).inner_text()
    assert "HTTP 200" in newest and "accepted" in newest and "event delivered" in newest
    assert "HTTP 500" in oldest and "not accepted" in oldest
    await page.screenshot(path=str(SHOTS / "settings-webhooks.png"), full_page=True)
    await (
        page.get_by_role("row", name=re.compile("hooks.example.com"))
        .get_by_role("button", name="Remove")
        .click()
    )
    assert "hooks.example.com" not in await page.locator("main").inner_text()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_webhooks_api(site, store) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    ana, bob = await token_for(store, "ana@example.org"), await token_for(store, "bob@example.org")

    async def call(method: str, path: str, token: str, body: object = None):
        resp = await fetch(
            base + path,
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
        )
        text = resp.body.decode()
        return resp.code, json.loads(text) if text else None

    code, made = await call("POST", "/api/v1/webhooks", ana, {"url": "https://hooks.example.com/a"})
    assert code == 201 and made["secret"].startswith("whsec_")
    assert made["webhook"]["events"] == list(webhooks.EVENT_TYPES)
    for bad in ({"url": "http://hooks.example.com/a"}, {"url": "https://10.0.0.1/"}, {"x": 1}):
        code, err = await call("POST", "/api/v1/webhooks", ana, bad)
        assert code == 400 and err["error"]["code"] in ("bad_url", "bad_request"), bad
    code, listed = await call("GET", "/api/v1/webhooks", ana)
    assert [w["url"] for w in listed["webhooks"]] == ["https://hooks.example.com/a"]
    assert "secret" not in json.dumps(listed)
    code, theirs = await call("GET", "/api/v1/webhooks", bob)
    assert theirs == {"webhooks": []}
    wid = made["webhook"]["id"]
    code, _ = await call("DELETE", f"/api/v1/webhooks/{wid}", bob)
    assert code == 404  # not Bob's
    code, _ = await call("DELETE", f"/api/v1/webhooks/{wid}", ana)
    assert code == 204
    code, _ = await call("DELETE", f"/api/v1/webhooks/{wid}", ana)
    assert code == 404
    code, attempts = await call("GET", "/api/v1/webhooks/attempts", ana)
    assert code == 200 and attempts == {"attempts": []}
