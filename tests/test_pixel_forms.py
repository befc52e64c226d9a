"""Both forms of the pixel are fetched by a real browser engine: the <img> and the table cell's
background the relay writes into short HTML without images (relay/rewrite.py pixel_form).
Headless Chromium renders each copy as the upstream got it and the pixel server records the
fetch under that copy's token."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from pixelserver.store.schema import Delivery, Hit
from relay import service
from tests.conftest import CaptureUpstream, make_config, start_pixelserver
from tests.helpers import PIXEL_RE, eventually, smtp_send
from tests.test_clicks import html_of

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SHORT = "<html><body><p>Thanks, Tuesday at ten works.</p></body></html>"
LONG = "<html><body>" + "<p>A paragraph of the quarterly letter.</p>" * 90 + "</body></html>"


def _mail(html: str, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "ana@example.org", to, "Forms"
    msg.set_content("plain words")
    msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


async def test_chromium_fetches_the_cell_and_the_image_pixel(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream, browser
) -> None:
    cfg = make_config(tmp_path, db_url, upstream.port)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    relay = await service.start_relay(cfg, store)
    pixel = await start_pixelserver(cfg, store)
    try:
        port = int(cfg.relay.listen.rsplit(":", 1)[1])
        copies = {}
        for name, html in (("cell", SHORT), ("img", LONG)):
            to = f"{name}@example.net"
            reply = await asyncio.to_thread(
                smtp_send, port, "ana@example.org", [to], _mail(html, to)
            )
            assert reply.startswith("250"), reply
            await eventually(lambda to=to: any(m.rcpt_tos == [to] for m in upstream.messages))
            copies[name] = html_of(next(m for m in upstream.messages if m.rcpt_tos == [to]).data)
        assert "<table" in copies["cell"] and "background=" in copies["cell"]
        assert copies["img"].split("<body>", 1)[1].startswith("<img ")
        page = await browser.new_page()
        for html in copies.values():
            (_url, token), *_ = PIXEL_RE.findall(html)

            async def fetched(token: str = token) -> bool:
                async with store() as s:
                    hits = await s.execute(
                        select(Hit.id).join(Delivery).where(Delivery.token == token)
                    )
                    return hits.first() is not None

            assert not await fetched()
            await page.set_content(html, wait_until="load")
            await eventually(fetched)
        await page.close()
    finally:
        await relay.close()
        await pixel.close()
