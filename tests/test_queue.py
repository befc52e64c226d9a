"""The durable queue on a bad day: upstreams that defer, stall, drop and throttle; clients that
vanish after DATA and send again; a store that goes away. Every test counts the copies each
recipient received: exactly one, never two, never none without a report."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from pixelserver.store.schema import Delivery, Message, make_engine, make_sessionmaker
from relay import queue_admin, service
from relay.spool import Spool
from tests.conftest import CaptureUpstream, capture_upstream, make_config
from tests.helpers import eventually, smtp_send
from tests.test_scale import CuttableProxy

A, B, C = "ana@example.org", "bob@example.net", "cy@example.com"
ME = "me@example.com"


def html_message(subject: str = "Quarterly numbers", message_id: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ME, f"{A}, {B}", subject
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="example.com")
    msg.set_content("plain")
    msg.add_alternative("<html><body><p>Hello</p></body></html>", subtype="html")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def copies(up: CaptureUpstream, rcpt: str) -> int:
    return len(up.for_recipient(rcpt))


async def outcomes(store) -> dict[str, str]:
    async with store() as s:
        rows = (await s.execute(select(Delivery.recipient, Delivery.outcome))).all()
    return dict(rows)


async def start(tmp_path: Path, db_url: str, store, port: int | None, **kw):
    cfg = make_config(tmp_path, db_url, port, **kw)
    relay = await service.start_relay(cfg, store, with_digests=False)
    return cfg, relay, int(cfg.relay.listen.rsplit(":", 1)[1])


def reports(up: CaptureUpstream) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(m.data, policy=email.policy.default) for m in up.for_recipient(ME)
    ]


async def test_a_deferred_copy_is_retried_and_sent_once(tmp_path, db_url, store) -> None:
    """The silent loss of the old relay: one recipient deferred while the other is accepted."""
    async with capture_upstream(refuse={B: "451 4.3.0 Try again later"}) as up:
        cfg, relay, port = await start(
            tmp_path, db_url, store, up.port, queue={"retry_seconds": [1]}
        )
        try:
            reply = await asyncio.to_thread(smtp_send, port, ME, [A, B], html_message())
            assert reply.startswith("250 2.0.0") and "1 queued" in reply, reply
            assert (copies(up, A), copies(up, B)) == (1, 0)
            assert (await outcomes(store))[B] == "deferred"
            up.refuse.clear()  # the provider is fine again
            await eventually(lambda: copies(up, B) == 1)
            await eventually(lambda: not Spool(cfg.spool_dir).ids())
        finally:
            await relay.close()
    assert (copies(up, A), copies(up, B)) == (1, 1)
    assert await outcomes(store) == {A: "accepted", B: "accepted"}
    assert reports(up) == []  # nothing failed: no report


async def test_a_stalled_upstream_never_holds_the_reply_past_the_bound(
    tmp_path, db_url, store
) -> None:
    async with capture_upstream(data_delay=3.0) as up:
        cfg, relay, port = await start(tmp_path, db_url, store, up.port, queue={"reply_within": 1})
        try:
            t0 = time.monotonic()
            reply = await asyncio.to_thread(smtp_send, port, ME, [A, B], html_message())
            waited = time.monotonic() - t0
            assert reply.startswith("250 2.0.0") and "queued" in reply, reply
            assert waited < 2.5, waited
            await eventually(lambda: copies(up, A) == 1 and copies(up, B) == 1, timeout=20)
            await eventually(lambda: not Spool(cfg.spool_dir).ids())
        finally:
            await relay.close()
    assert (copies(up, A), copies(up, B)) == (1, 1)
    assert await outcomes(store) == {A: "accepted", B: "accepted"}


def vanish_after_data(port: int, rcpts: list[str], data: bytes) -> None:
    """A client whose connection dies right after the final dot: it never reads the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO client.test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        for cmd in [f"MAIL FROM:<{ME}>", *(f"RCPT TO:<{r}>" for r in rcpts), "DATA"]:
            s.sendall(cmd.encode() + b"\r\n")
            assert f.readline()[:1] in (b"2", b"3")
        s.sendall(data + b".\r\n")
        s.shutdown(socket.SHUT_RDWR)


async def test_a_resubmission_after_a_lost_reply_is_not_sent_twice(tmp_path, db_url, store) -> None:
    async with capture_upstream() as up:
        cfg, relay, port = await start(tmp_path, db_url, store, up.port)
        try:
            raw = html_message()
            await asyncio.to_thread(vanish_after_data, port, [A, B], raw)
            await eventually(lambda: copies(up, A) == 1 and copies(up, B) == 1)
            # The client did not hear 250, so it sends the same message again.
            again = await asyncio.to_thread(smtp_send, port, ME, [A, B], raw)
            assert again.startswith("250") and "not sent again" in again, again
            # A different message, and the same one to another recipient, are sent.
            other = await asyncio.to_thread(smtp_send, port, ME, [A], html_message())
            assert other.startswith("250 2.0.0 Sent")
            bcc = await asyncio.to_thread(smtp_send, port, ME, [C], raw)
            assert bcc.startswith("250 2.0.0 Sent")
            await eventually(lambda: not Spool(cfg.spool_dir).ids())
        finally:
            await relay.close()
    assert (copies(up, A), copies(up, B), copies(up, C)) == (2, 1, 1)
    async with store() as s:
        assert await s.scalar(select(func.count()).select_from(Message)) == 3


async def test_sending_the_same_message_again_after_hearing_250_sends_it(
    tmp_path, db_url, store
) -> None:
    """Heard replies release the Message-ID: a deliberate second send is the user's wish
    (and corpora of fixtures reuse Message-IDs)."""
    async with capture_upstream() as up:
        cfg, relay, port = await start(tmp_path, db_url, store, up.port)
        try:
            raw = html_message()
            for _ in range(2):
                reply = await asyncio.to_thread(smtp_send, port, ME, [A], raw)
                assert reply.startswith("250 2.0.0 Sent"), reply
        finally:
            await relay.close()
    assert copies(up, A) == 2


FOLDED = (
    "Subject: =?utf-8?q?R=C3=A9union_de_l=E2=80=99=C3=A9quipe?= about the quarterly\r\n"
    " numbers, the roadmap and everything else we said we would discuss\r\n"
)


@pytest.mark.parametrize(
    ("subject_lines", "words"),
    [
        (FOLDED, "Réunion de l’équipe about the quarterly numbers, the roadmap"),
        ("Subject: Grüße aus Köln\r\n", "Grüße aus Köln"),
        ("", "(no subject)"),
    ],
)
async def test_folded_and_encoded_subjects_with_a_refused_recipient(
    tmp_path, db_url, store, subject_lines: str, words: str
) -> None:
    raw = (
        f"From: {ME}\r\nTo: {A}, {B}\r\n{subject_lines}"
        "Message-ID: <folded@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "<html><body><p>Grüße</p></body></html>\r\n"
    ).encode()
    async with capture_upstream(refuse={B: "550 5.1.1 <bob@example.net>: no such user"}) as up:
        cfg, relay, port = await start(tmp_path, db_url, store, up.port)
        try:
            reply = await asyncio.to_thread(smtp_send, port, ME, [A, B], raw)
            assert reply.startswith("250 2.0.0") and "1 not delivered" in reply, reply
            await eventually(lambda: reports(up))
        finally:
            await relay.close()
    assert (copies(up, A), copies(up, B)) == (1, 0)
    (report,) = reports(up)
    assert report["From"].addresses[0].addr_spec == ME  # the user's own address
    assert words in str(report["Subject"]) and "Not delivered to 1 recipient" in report["Subject"]
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert "Action: failed" in text and "Status: 5.1.1" in text and "no such user" in text
    assert up.for_recipient(ME)[0].mail_from == "<>"
    assert await outcomes(store) == {A: "accepted", B: "rejected"}


async def test_all_refused_for_good_is_550_and_nothing_is_queued(tmp_path, db_url, store) -> None:
    refused = {A: "550 5.1.1 no such user", B: "550 5.1.1 no such user"}
    async with capture_upstream(refuse=refused) as up:
        cfg, relay, port = await start(tmp_path, db_url, store, up.port)
        try:
            reply = await asyncio.to_thread(smtp_send, port, ME, [A, B], html_message())
            await eventually(lambda: not Spool(cfg.spool_dir).ids())
        finally:
            await relay.close()
    assert reply.startswith("550 5.1.1") and "all 2 recipients" in reply
    assert reports(up) == []  # the client was told; no report on top
    assert await outcomes(store) == {A: "rejected", B: "rejected"}


async def test_give_up_reports_failure_and_delay_warning_comes_first(
    tmp_path, db_url, store
) -> None:
    async with capture_upstream(refuse={B: "452 4.2.2 Mailbox full"}) as up:
        cfg, relay, port = await start(
            tmp_path,
            db_url,
            store,
            up.port,
            queue={"retry_seconds": [1], "give_up_after": "4s", "delay_warning_after": "1s"},
        )
        try:
            reply = await asyncio.to_thread(smtp_send, port, ME, [A, B], html_message())
            assert "1 queued" in reply
            await eventually(lambda: len(reports(up)) == 2, timeout=20)
            await eventually(lambda: not Spool(cfg.spool_dir).ids())
        finally:
            await relay.close()
    delayed, failed = reports(up)
    assert "Delayed for 1 recipient" in delayed["Subject"]
    assert "Action: delayed" in delayed.as_string() and "Status: 4.2.2" in delayed.as_string()
    assert "Will-Retry-Until" in delayed.as_string()
    assert "Not delivered" in failed["Subject"] and "Action: failed" in failed.as_string()
    assert "gave up" in failed.as_string()
    assert copies(up, B) == 0 and copies(up, A) == 1
    assert (await outcomes(store))[B] == "expired"


async def test_throttling_replies_are_deferrals_and_sends_are_paced(
    tmp_path, db_url, store
) -> None:
    quota = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"
    async with capture_upstream(refuse={A: quota}) as up:
        cfg, relay, port = await start(
            tmp_path,
            db_url,
            store,
            up.port,
            upstream={"max_per_minute": 120},
            queue={"retry_seconds": [1]},
        )
        try:
            reply = await asyncio.to_thread(smtp_send, port, ME, [A], html_message())
            assert reply.startswith("250") and "queued" in reply, reply
            assert (await outcomes(store))[A] == "deferred"
            up.refuse.clear()
            t0 = time.monotonic()
            reply = await asyncio.to_thread(smtp_send, port, ME, [B, C], html_message())
            assert reply.startswith("250")
            # After the throttling reply the account rests, then copies go 0.5 s apart.
            await eventually(lambda: copies(up, C) == 1, timeout=90)
            assert time.monotonic() - t0 > 0.4
        finally:
            await relay.close()


async def test_copies_wait_for_the_login_after_a_restart_and_fail_plainly_without_it(
    tmp_path, db_url, store
) -> None:
    """auth = "upstream": the user's password forwards their mail and is never written down."""
    async with capture_upstream(logins={ME: "secret"}, refuse={B: "451 4.3.0 later"}) as up:
        cfg = make_config(
            tmp_path, db_url, up.port, relay={"auth": "upstream"}, queue={"retry_seconds": [1]}
        )
        relay = await service.start_relay(cfg, store, with_digests=False)
        port = int(cfg.relay.listen.rsplit(":", 1)[1])
        try:
            reply = await asyncio.to_thread(login_and_send, port, [A, B])
            assert "1 queued" in reply
            assert b"secret" not in next(cfg.spool_dir.glob("*.spool")).read_bytes()
            up.refuse.clear()
            await eventually(lambda: copies(up, B) == 1)  # retried with the password in memory
            up.refuse = {C: "451 4.3.0 later"}
            reply = await asyncio.to_thread(login_and_send, port, [C])
            assert "1 queued" in reply
        finally:
            await relay.close()  # a restart: the password is gone with the process
        relay = await service.start_relay(cfg, store, with_digests=False)
        try:
            await eventually(lambda: not Spool(cfg.spool_dir).ids())
        finally:
            await relay.close()
    assert copies(up, C) == 0
    async with store() as s:
        row = (await s.execute(select(Delivery).where(Delivery.recipient == C))).scalar_one()
    assert row.outcome == "expired" and "send the message again" in row.upstream_reply


def login_and_send(port: int, rcpts: list[str]) -> str:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.login(ME, "secret")
        c.mail(ME)
        for r in rcpts:
            c.rcpt(r)
        code, text = c.data(html_message())
        return f"{code} {text.decode()}"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_mail_flows_while_the_database_is_away_and_records_catch_up(
    tmp_path, db_url, store
) -> None:
    url = make_url(db_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    await proxy.start()
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    engine = make_engine(via_proxy)
    sessions = make_sessionmaker(engine)
    async with capture_upstream() as up:
        cfg = make_config(tmp_path, via_proxy, up.port)
        relay = await service.start_relay(cfg, sessions, with_digests=False)
        port = int(cfg.relay.listen.rsplit(":", 1)[1])
        try:
            before = await asyncio.to_thread(smtp_send, port, ME, [A], html_message())
            assert before.startswith("250 2.0.0 Sent")
            await proxy.cut()  # PostgreSQL is away
            replies = [
                await asyncio.to_thread(
                    smtp_send, port, "you@example.com", [A, B], html_message(f"Out {i}")
                )
                for i in range(3)
            ]
            assert all(r.startswith("250 2.0.0 Sent to 2") for r in replies), replies
            assert (copies(up, A), copies(up, B)) == (4, 3)  # mail did not wait for us
            await proxy.start()  # back: the records catch up from the spool
            await eventually(lambda: not Spool(cfg.spool_dir).ids(), timeout=60)
        finally:
            await relay.close()
            await engine.dispose()
            await proxy.cut()
    async with store() as s:
        rows = (await s.execute(select(Delivery))).scalars().all()
        subjects = set((await s.execute(select(Message.subject))).scalars())
    assert len(rows) == 7 and {r.outcome for r in rows} == {"accepted"}
    assert {"Out 0", "Out 1", "Out 2"} <= subjects
    # Whom this user never tracks could not be asked (nor was it known from a minute ago):
    # those copies went out without a pixel, and say why.
    assert sum(r.untracked_reason == "store_unavailable" for r in rows) == 6


async def test_mailping_queue_lists_retries_and_drops(tmp_path, db_url, store, capsys) -> None:
    from relay.cli import main

    async with capture_upstream(refuse={B: "451 4.3.0 later", C: "451 4.3.0 later"}) as up:
        cfg, relay, port = await start(tmp_path, db_url, store, up.port)
        config = tmp_path / "mailping.toml"
        config.write_text(f'data_dir = "{cfg.data_dir}"\n')
        try:
            await asyncio.to_thread(smtp_send, port, ME, [A, B], html_message("First"))
            await asyncio.to_thread(smtp_send, port, ME, [C], html_message("Second"))
            first, second = Spool(cfg.spool_dir).ids()
            assert await asyncio.to_thread(main, ["queue", "list", "--config", str(config)]) == 0
            listing = capsys.readouterr().out
            assert "'First'" in listing and f"{B}: deferred after 1 try" in listing
            assert "next try in" in listing and "451 4.3.0 later" in listing
            up.refuse = {C: "451 4.3.0 later"}
            assert (
                await asyncio.to_thread(main, ["queue", "retry", first, "--config", str(config)])
                == 0
            )
            await eventually(lambda: copies(up, B) == 1)
            assert (
                await asyncio.to_thread(main, ["queue", "drop", second, "--config", str(config)])
                == 0
            )
            assert "1 copies dropped" in capsys.readouterr().out
            await eventually(lambda: not Spool(cfg.spool_dir).ids())
            assert (
                await asyncio.to_thread(main, ["queue", "drop", "nope", "--config", str(config)])
                == 2
            )
        finally:
            await relay.close()
    assert copies(up, C) == 0
    assert (await outcomes(store))[C] == "dropped"
    assert queue_admin.list_queue(Spool(cfg.spool_dir)) == ["the queue is empty"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_report_api_and_digest_show_queued_and_deferred_copies(site, store) -> None:
    import datetime as dt
    from zoneinfo import ZoneInfo

    from relay.digest.compose import compose
    from relay.digest.query import collect
    from tests.conftest import send_as
    from tests.test_api import api, token_for
    from tests.test_pixel import fetch

    cfg, _ids, upstream = site
    upstream.refuse = {"zed@example.com": "451 4.7.0 Try again later"}
    port = int(cfg.relay.listen.rsplit(":", 1)[1])
    await asyncio.to_thread(send_as, port, "ana@example.org", "Waiting", ["zed@example.com"])
    base = cfg.pixelserver.public_url
    code, body = await api(
        base, "/api/v1/messages?state=queued", await token_for(store, "ana@example.org")
    )
    assert code == 200
    (message,) = body["messages"]
    (d,) = message["deliveries"]
    assert (d["state"], d["outcome"]) == ("queued", "deferred")
    assert d["summary"].startswith("Delayed") and "Try again later" in d["upstream_reply"]
    async with store() as s:
        now = dt.datetime.now(dt.UTC)
        data = await collect(s, "ana@example.org", now - dt.timedelta(hours=1), now)
    mail = compose(data, ZoneInfo("UTC"), base, now)
    assert "still queued" in mail.text and "Delayed: the mail server deferred it" in mail.text
    resp = await fetch(f"{base}/messages/{message['id']}")
    assert resp.code in (200, 302)  # the page needs a login; its chip is the API's chip
