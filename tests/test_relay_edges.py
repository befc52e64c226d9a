"""Edge cases of the relay over real SMTP, on SQLite and PostgreSQL: header text the store must
take (NUL bytes, raw 8-bit), and SMTPUTF8 against an upstream without it."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest
from sqlalchemy import select

from pixelserver.store.schema import Delivery, Message
from relay import rewrite, service
from tests.conftest import CaptureUpstream, Stack, capture_upstream, make_config
from tests.helpers import PIXEL_RE, assert_unharmed

HTML = b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hi</p></body></html>\r\n"


def send(port: int, data: bytes, rcpts: list[str], **kw: object) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail("me@example.com", rcpts, data, **kw)  # type: ignore[arg-type]


async def stored_messages(store) -> list[Message]:
    async with store() as session:
        return list((await session.execute(select(Message))).scalars())


async def stored_deliveries(store) -> list[Delivery]:
    async with store() as session:
        return list((await session.execute(select(Delivery))).scalars())


def test_header_text_is_text_any_database_stores() -> None:
    prepared = rewrite.prepare(
        b"Subject: a\x00b =?utf-8?q?c=00d?=\r\nMessage-ID: <x\x00y@example.com>\r\n" + HTML
    )
    assert "\x00" not in prepared.subject + prepared.message_id
    assert prepared.subject == "a\ufffdb c\ufffdd"
    assert prepared.message_id == "<x\ufffdy@example.com>"


def test_raw_utf8_header_text_is_read_as_utf8() -> None:
    """RFC 6532 lets a header carry UTF-8 as it is; the report shows it, not mojibake."""
    prepared = rewrite.prepare("Subject: Grüße aus Köln\r\n".encode() + HTML)
    assert prepared.subject == "Grüße aus Köln"
    latin1 = rewrite.prepare(b"Subject: Gr\xfc\xdfe\r\n" + HTML)  # not UTF-8: kept visible
    assert latin1.subject == "Gr\ufffd\ufffde"
    assert all(not 0xD800 <= ord(c) <= 0xDFFF for c in latin1.subject)


async def test_nul_in_subject_and_message_id_is_still_tracked(
    stack: Stack, upstream: CaptureUpstream
) -> None:
    """PostgreSQL refuses NUL in text; the message must still be recorded and tracked."""
    data = (
        b"From: me@example.com\r\nTo: ana@example.org\r\n"
        b"Subject: Quote\x00 2026 \xc3\xa9t\xc3\xa9\r\n"
        b"Message-ID: <nul\x00id@example.com>\r\nMIME-Version: 1.0\r\n" + HTML
    )
    refused = await asyncio.to_thread(send, stack.relay_port, data, ["ana@example.org"])
    assert refused == {}
    (copy,) = upstream.messages
    assert PIXEL_RE.search(copy.data.decode("utf-8", "replace"))
    assert_unharmed(data, copy.data, pixels=1)
    (message,) = await stored_messages(stack.store)
    assert message.subject == "Quote\ufffd 2026 été"
    assert message.message_id_header == "<nul\ufffdid@example.com>"
    (delivery,) = await stored_deliveries(stack.store)
    assert (delivery.tracking, delivery.outcome) == ("tracked", "accepted")


# --- SMTPUTF8: asked upstream only when the message needs it ---------------------------------

ASCII_MAIL = b"From: me@example.com\r\nTo: ana@example.org\r\nSubject: Hello\r\n" + HTML
UTF8_SUBJECT = "From: me@example.com\r\nTo: ana@example.org\r\nSubject: Grüße\r\n".encode() + HTML
UTF8_FROM = "From: Zoë <me@example.com>\r\nTo: ana@example.org\r\nSubject: Hi\r\n".encode() + HTML


def test_smtputf8_is_needed_for_non_ascii_addresses_and_address_fields_only() -> None:
    need = rewrite.needs_smtputf8
    assert not need("me@example.com", ["ana@example.org"], ASCII_MAIL, declared=True)
    assert not need("me@example.com", ["ana@example.org"], UTF8_SUBJECT, declared=True)
    assert need("zoë@example.com", ["ana@example.org"], ASCII_MAIL, declared=True)
    assert need("me@example.com", ["josé@example.org"], ASCII_MAIL, declared=False)
    assert need("me@example.com", ["ana@example.org"], UTF8_FROM, declared=True)
    cc = b"Cc:\r\n =?utf-8?q?x?= <b@example.org>,\r\n Jos\xc3\xa9 <j@example.org>\r\n" + ASCII_MAIL
    assert need("me@example.com", ["ana@example.org"], cc, declared=True)
    # Only a client that declared SMTPUTF8 may send UTF-8 header fields (RFC 6531 3.4).
    assert not need("me@example.com", ["ana@example.org"], UTF8_FROM, declared=False)


async def relay_to(tmp_path: Path, db_url: str, store, upstream_port: int):
    cfg = make_config(tmp_path, db_url, upstream_port)
    relay = await service.start_relay(cfg, store, with_digests=False)
    return int(cfg.relay.listen.rsplit(":", 1)[1]), relay


def submit_utf8(port: int, sender: str, data: bytes) -> str:
    """Send declaring SMTPUTF8 (as Thunderbird and Apple Mail do); the relay's reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail(sender, ["ana@example.org"], data, mail_options=["SMTPUTF8"])
        except smtplib.SMTPDataError as exc:
            return f"{exc.smtp_code} {exc.smtp_error.decode()}"
    return "250"


@pytest.mark.parametrize("data", [ASCII_MAIL, UTF8_SUBJECT], ids=["ascii", "utf8-subject"])
async def test_declared_smtputf8_with_ascii_addresses_passes_an_upstream_without_it(
    tmp_path: Path, db_url: str, store, data: bytes
) -> None:
    async with capture_upstream(smtputf8=False) as cap:
        port, relay = await relay_to(tmp_path, db_url, store, cap.port)
        try:
            reply = await asyncio.to_thread(submit_utf8, port, "me@example.com", data)
        finally:
            await relay.close()
    assert reply == "250"
    (m,) = cap.messages
    assert "SMTPUTF8" not in m.mail_options
    assert_unharmed(data, m.data, pixels=1)


async def test_declared_smtputf8_with_ascii_addresses_is_not_asked_of_any_upstream(
    stack: Stack, upstream: CaptureUpstream
) -> None:
    assert await asyncio.to_thread(submit_utf8, stack.relay_port, "me@ex.com", ASCII_MAIL) == "250"
    (m,) = upstream.messages
    assert "SMTPUTF8" not in m.mail_options


async def test_a_utf8_from_field_still_needs_smtputf8_upstream(
    tmp_path: Path, db_url: str, store
) -> None:
    async with capture_upstream(smtputf8=False) as cap:
        port, relay = await relay_to(tmp_path, db_url, store, cap.port)
        try:
            reply = await asyncio.to_thread(submit_utf8, port, "me@example.com", UTF8_FROM)
        finally:
            await relay.close()
    assert reply.startswith("550 5.6.7 This message needs SMTPUTF8")
    assert cap.messages == []
    async with capture_upstream(smtputf8=True) as cap:
        port, relay = await relay_to(tmp_path, db_url, store, cap.port)
        try:
            reply = await asyncio.to_thread(submit_utf8, port, "me@example.com", UTF8_FROM)
        finally:
            await relay.close()
    assert reply == "250"
    (m,) = cap.messages
    assert "SMTPUTF8" in m.mail_options
