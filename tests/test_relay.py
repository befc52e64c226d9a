"""The relay over real SMTP: smtplib/aiosmtplib -> relay -> capture upstream, on SQLite and
PostgreSQL. Nothing of ours is mocked; the upstream is a real aiosmtpd server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import quopri
import smtplib
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from pixelserver.store.schema import Delivery
from relay import service
from relay.rewrite import prepare, untouched_copy
from tests.conftest import CaptureUpstream, Stack, free_port, make_config
from tests.helpers import (
    CORPUS_DIR,
    MAILGEM_COUNT,
    MAILGEM_DIR,
    PIXEL_RE,
    assert_unharmed,
    corpus,
    eventually,
    mailgem_files,
    smtp_send,
)

RCPTS = ["ana@example.org", "bob@example.net", "chen@example.com"]


def send_smtplib(port: int, sender: str, rcpts: list[str], data: bytes) -> tuple[dict, str]:
    """Blocking smtplib client, run in a thread so the relay keeps its event loop."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        try:
            refused = client.sendmail(sender, rcpts, data)
        except smtplib.SMTPDataError as exc:
            return {}, f"{exc.smtp_code} {exc.smtp_error.decode()}"
        return refused, "250"


async def deliveries(store) -> list[Delivery]:
    async with store() as session:
        return list((await session.execute(select(Delivery).order_by("id"))).scalars())


@pytest.mark.parametrize("name", sorted(corpus()))
async def test_corpus_through_the_relay(name: str, stack: Stack, upstream: CaptureUpstream) -> None:
    expect = corpus()[name]
    raw = (CORPUS_DIR / name).read_bytes()
    n = 1 + sum(map(ord, name)) % 3  # 1 to 3 recipients, varied per message
    rcpts = RCPTS[:n]
    refused, reply = await asyncio.to_thread(
        send_smtplib, stack.relay_port, "me@example.com", rcpts, raw
    )
    assert refused == {} and reply == "250"
    assert sorted(m.rcpt_tos[0] for m in upstream.messages) == sorted(rcpts)
    assert all(len(m.rcpt_tos) == 1 and m.mail_from == "me@example.com" for m in upstream.messages)
    tokens: set[str] = set()
    for m in upstream.messages:
        if expect["untracked"]:
            assert m.data.replace(b"\r\n", b"\n") == untouched_copy(raw).replace(b"\r\n", b"\n")
        else:
            found = assert_unharmed(raw, m.data, pixels=expect["pixels"])
            assert len(set(found)) == 1
            tokens |= set(found)
    rows = await deliveries(stack.store)
    assert [r.outcome for r in rows] == ["accepted"] * n
    if expect["untracked"]:
        assert {r.untracked_reason for r in rows} == {expect["untracked"]}
    else:
        assert tokens == {r.token for r in rows}, "each copy carries its own recipient's token"


async def test_bcc_recipient_gets_a_copy_but_never_appears(
    stack: Stack, upstream: CaptureUpstream
) -> None:
    raw = (CORPUS_DIR / "bcc_header_left_in.eml").read_bytes()
    await asyncio.to_thread(
        send_smtplib,
        stack.relay_port,
        "assistant@example.com",
        ["partner@example.org", "boss@example.com"],
        raw,
    )
    assert len(upstream.messages) == 2
    for m in upstream.messages:
        assert b"boss@example.com" not in m.data
        assert b"Bcc" not in m.data.split(b"\r\n\r\n")[0]
    assert [m.rcpt_tos for m in upstream.for_recipient("boss@example.com")] == [
        ["boss@example.com"]
    ]


async def test_mailgem_fixtures_pass_unharmed(stack: Stack, upstream: CaptureUpstream) -> None:
    """Every public fixture, over one real SMTP session, with two recipients each."""
    files = mailgem_files()
    if not files:
        pytest.skip(f"the shared corpus is not beside this checkout ({MAILGEM_DIR})")
    assert len(files) == MAILGEM_COUNT
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.relay_port, start_tls=False) as c:
        for path in files:
            raw = path.read_bytes()
            # SMTP carries CRLF lines and a final line break; give the fixture both up front.
            raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            raw = raw if raw.endswith(b"\r\n") else raw + b"\r\n"
            before = len(upstream.messages)
            errors, reply = await c.sendmail("me@example.com", RCPTS[:2], raw)
            assert errors == {} and reply.startswith("2.0.0 Sent to 2"), path.name
            copies = upstream.messages[before:]
            assert len(copies) == 2, path.name
            prepared = prepare(raw)
            for m in copies:
                if prepared.tracked:
                    assert_unharmed(raw, m.data, pixels=prepared.html_parts)
                else:
                    assert m.data == raw, path.name


async def test_a_forward_carries_only_the_new_recipients_pixel(
    stack: Stack, upstream: CaptureUpstream
) -> None:
    """Ana's copy carries Ana's pixel; the sender forwards that copy (its HTML quoted, once
    quoted-printable and once nested in a second forward) to Bob: Bob's copy carries Bob's pixel
    only, so Bob's opens are never counted as Ana's."""
    first = (
        b"From: me@example.com\r\nTo: ana@example.org\r\nSubject: Quote\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><p>The quote</p></body></html>\r\n"
    )
    await asyncio.to_thread(send_smtplib, stack.relay_port, "me@example.com", [RCPTS[0]], first)
    (ana_copy,) = upstream.messages
    ana_html = ana_copy.data.split(b"\r\n\r\n", 1)[1].decode().strip()
    (ana_url, ana_token) = PIXEL_RE.findall(ana_html)[0]
    assert ana_url.startswith(stack.pixel_base)
    quoted = f"<div>FYI</div><blockquote>{ana_html}</blockquote>"
    nested = f"<div>Below</div><blockquote>{quoted}</blockquote>"
    other = '<img src="https://cdn.example.com/p/AAAAAAAAAAAAAAAAAAAAAA.gif" alt="">'
    qp = quopri.encodestring((quoted + other).encode()).replace(b"\n", b"\r\n").decode()
    forward = (
        "From: me@example.com\r\nTo: bob@example.net\r\nSubject: Fwd: Quote\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{qp}\r\n"
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f"{nested}\r\n--b--\r\n"
    ).encode()
    await asyncio.to_thread(send_smtplib, stack.relay_port, "me@example.com", [RCPTS[1]], forward)
    bob_copy = upstream.for_recipient(RCPTS[1])[0]
    prefix = ana_url[: -len(ana_token) - len(".gif")]
    (bob_token,) = set(assert_unharmed(forward, bob_copy.data, pixels=2, own_prefix=prefix))
    assert bob_token != ana_token
    assert ana_token.encode() not in bob_copy.data
    html = email.message_from_bytes(bob_copy.data).get_payload()[0].get_payload(decode=True)
    assert other.encode() in html  # not this relay's pixel: kept (assert_unharmed checked all)
    rows = await deliveries(stack.store)
    assert [r.token for r in rows] == [ana_token, bob_token]


async def test_one_upstream_connection_serves_all_copies(
    stack: Stack, upstream: CaptureUpstream
) -> None:
    raw = (CORPUS_DIR / "gmail_web_no_body_tag.eml").read_bytes()
    await asyncio.to_thread(send_smtplib, stack.relay_port, "me@example.com", RCPTS, raw)
    assert len(upstream.messages) == 3
    assert upstream.sessions == 1


async def test_duplicate_rcpt_gets_one_copy(stack: Stack, upstream: CaptureUpstream) -> None:
    raw = (CORPUS_DIR / "gmail_web_no_body_tag.eml").read_bytes()
    await asyncio.to_thread(
        send_smtplib,
        stack.relay_port,
        "me@example.com",
        ["ana@example.org", "ANA@example.org"],
        raw,
    )
    assert len(upstream.messages) == 1


async def test_all_rejected_is_550_with_the_upstream_words(
    stack: Stack, upstream: CaptureUpstream
) -> None:
    upstream.refuse = {r: "550 5.1.1 No such user here" for r in RCPTS[:2]}
    raw = (CORPUS_DIR / "gmail_web_no_body_tag.eml").read_bytes()
    _, reply = await asyncio.to_thread(
        send_smtplib, stack.relay_port, "me@example.com", RCPTS[:2], raw
    )
    assert reply.startswith("550 5.1.1 No such user here")
    assert [r.outcome for r in await deliveries(stack.store)] == ["rejected", "rejected"]


async def test_temporary_refusal_is_queued_not_refused(
    stack: Stack, upstream: CaptureUpstream
) -> None:
    """Spooled means accepted: a deferral is the queue's to retry, and the reply says why."""
    upstream.refuse = {RCPTS[0]: "452 4.2.2 Mailbox full, try later"}
    raw = (CORPUS_DIR / "gmail_web_no_body_tag.eml").read_bytes()
    reply = await asyncio.to_thread(smtp_send, stack.relay_port, "me@example.com", RCPTS[:1], raw)
    assert reply.startswith("250 2.0.0") and "1 queued" in reply and "Mailbox full" in reply
    assert [r.outcome for r in await deliveries(stack.store)] == ["deferred"]
    assert upstream.messages == []


async def test_mixed_outcome_is_250_and_a_delivery_report(
    stack: Stack, upstream: CaptureUpstream
) -> None:
    upstream.refuse = {RCPTS[1]: "550 5.1.1 <bob@example.net>: Recipient address rejected"}
    raw = (CORPUS_DIR / "thunderbird_comment_body.eml").read_bytes()
    refused, reply = await asyncio.to_thread(
        send_smtplib, stack.relay_port, "me@example.com", RCPTS, raw
    )
    assert reply == "250" and refused == {}
    copies = [m for m in upstream.messages if m.rcpt_tos != ["me@example.com"]]
    assert sorted(m.rcpt_tos[0] for m in copies) == [RCPTS[0], RCPTS[2]]
    await eventually(lambda: upstream.for_recipient("me@example.com"))
    (dsn,) = upstream.for_recipient("me@example.com")
    assert dsn.mail_from == "<>"  # the null return path: a report is never bounced
    report = email.message_from_bytes(dsn.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"][0]
    text = status.as_string()
    assert "Final-Recipient: rfc822; bob@example.net" in text
    assert "Action: failed" in text and "Recipient address rejected" in text
    assert b"Recipient address rejected" in dsn.data
    outcomes = sorted((r.recipient, r.outcome) for r in await deliveries(stack.store))
    assert outcomes == sorted(
        [(RCPTS[0], "accepted"), (RCPTS[1], "rejected"), (RCPTS[2], "accepted")]
    )


async def test_upstream_down_is_queued_with_the_reason(tmp_path: Path, db_url: str, store) -> None:
    cfg = make_config(tmp_path, db_url, free_port())  # nothing listens on that port
    relay = await service.start_relay(cfg, store)
    try:
        raw = (CORPUS_DIR / "gmail_web_no_body_tag.eml").read_bytes()
        port = int(cfg.relay.listen.rsplit(":", 1)[1])
        reply = await asyncio.to_thread(smtp_send, port, "me@example.com", RCPTS, raw)
    finally:
        await relay.close()
    assert reply.startswith("250 2.0.0") and "3 queued" in reply
    assert "could not reach the upstream server" in reply
    assert "connection refused" in reply
    assert {r.outcome for r in await deliveries(store)} == {"deferred"}


async def test_outbox_when_no_upstream(tmp_path: Path, db_url: str, store) -> None:
    cfg = make_config(tmp_path, db_url, None)
    relay = await service.start_relay(cfg, store)
    try:
        raw = (CORPUS_DIR / "apple_mail_related_cid.eml").read_bytes()
        port = int(cfg.relay.listen.rsplit(":", 1)[1])
        _, reply = await asyncio.to_thread(send_smtplib, port, "me@example.com", RCPTS[:2], raw)
    finally:
        await relay.close()
    assert reply == "250"
    rows = await deliveries(store)
    for r in rows:
        stored = (cfg.data_dir / "outbox" / f"{r.token}.eml").read_bytes()
        (token,) = assert_unharmed(raw, stored, pixels=1)
        assert token == r.token


async def test_relay_never_crashes_on_garbage(stack: Stack, upstream: CaptureUpstream) -> None:
    garbage = b"\x00\xff\xfe not a message at all \r\n\r\n\r\n--\r\n" * 50
    refused, reply = await asyncio.to_thread(
        send_smtplib, stack.relay_port, "me@example.com", RCPTS[:1], garbage
    )
    assert reply == "250"
    assert upstream.messages[0].data == garbage
    rows = await deliveries(stack.store)
    assert rows[0].tracking == "untracked"


@pytest.mark.parametrize(("mode", "guarded"), [("guard", True), ("off", False), ("auto", False)])
async def test_sent_folder_copy_carries_no_pixel(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream, mode: str, guarded: bool
) -> None:
    """With the guard, the first copy the upstream sees is the sender's own, without a pixel
    (Gmail files that one in Sent Mail); "auto" guards only Google's servers."""
    cfg = make_config(tmp_path, db_url, upstream.port, upstream={"sent_copy": mode})
    relay = await service.start_relay(cfg, store)
    raw = (CORPUS_DIR / "outlook_qp_alternative.eml").read_bytes()
    try:
        _, reply = await asyncio.to_thread(
            send_smtplib, int(cfg.relay.listen.rsplit(":", 1)[1]), "me@example.com", RCPTS[:2], raw
        )
    finally:
        await relay.close()
    assert reply == "250"
    first, *rest = upstream.messages
    if guarded:
        assert first.rcpt_tos == ["me@example.com"] and first.data == raw
        assert [m.rcpt_tos[0] for m in rest] == RCPTS[:2]
    else:
        assert [m.rcpt_tos[0] for m in upstream.messages] == RCPTS[:2]
    for m in upstream.messages[int(guarded) :]:
        assert_unharmed(raw, m.data, pixels=1)
    assert [r.recipient for r in await deliveries(store)] == RCPTS[:2]


def test_google_upstreams_are_recognised() -> None:
    from relay.submit import is_google_host

    for host in ("smtp.gmail.com", "smtp-relay.gmail.com", "aspmx.l.google.com", "SMTP.GMAIL.COM."):
        assert is_google_host(host)
    for host in ("smtp.example.com", "gmail.com.evil.example", "notgmail.com", "127.0.0.1"):
        assert not is_google_host(host)


def twenty_megabytes() -> bytes:
    """A 20 MB message as a mail client builds it: HTML body and a large base64 attachment."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "me@example.com"
    msg["To"] = "ana@example.org, bob@example.net"
    msg["Subject"] = "Site survey photos (20 MB)"
    msg.set_content("Photos attached.")
    msg.add_alternative("<html><body><p>Photos attached.</p></body></html>", subtype="html")
    blob = bytes(range(256)) * (15 * 1024 * 1024 // 256)  # 15 MiB -> ~20 MiB in base64
    msg.add_attachment(blob, maintype="application", subtype="zip", filename="survey.zip")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_twenty_megabyte_message(stack: Stack, upstream: CaptureUpstream) -> None:
    raw = twenty_megabytes()
    assert len(raw) > 20_000_000
    refused, reply = await asyncio.to_thread(
        send_smtplib, stack.relay_port, "me@example.com", RCPTS[:2], raw
    )
    assert reply == "250" and refused == {}
    assert len(upstream.messages) == 2
    tokens = {assert_unharmed(raw, m.data, pixels=1)[0] for m in upstream.messages}
    assert len(tokens) == 2
