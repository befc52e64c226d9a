"""Edge cases of the relay over real SMTP, on SQLite and PostgreSQL: header text the store must
take (NUL bytes, raw 8-bit), and SMTPUTF8 against an upstream without it."""

from __future__ import annotations

import asyncio
import smtplib

from sqlalchemy import select

from pixelserver import storage
from relay import rewrite
from tests.conftest import CaptureUpstream, Stack
from tests.helpers import PIXEL_RE, assert_unharmed

HTML = b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hi</p></body></html>\r\n"


def send(port: int, data: bytes, rcpts: list[str], **kw: object) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail("me@example.com", rcpts, data, **kw)  # type: ignore[arg-type]


async def stored_messages(store) -> list[storage.Message]:
    async with store() as session:
        return list((await session.execute(select(storage.Message))).scalars())


async def stored_deliveries(store) -> list[storage.Delivery]:
    async with store() as session:
        return list((await session.execute(select(storage.Delivery))).scalars())


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
