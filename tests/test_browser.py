"""The report page in a real headless Chromium (Debian's, driven by Playwright): a newcomer
opens the stored copy from the report page, the browser fetches the pixel, the open shows up."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from relay import service
from tests.conftest import SHOTS, make_config, start_pixelserver


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_open_the_copy_from_the_report_page(
    tmp_path: Path, db_url: str, store, browser
) -> None:
    cfg = make_config(tmp_path, db_url, None)  # no upstream: the local outbox
    relay = await service.start_relay(cfg, store)
    pixel = await start_pixelserver(cfg, store)
    try:
        msg = EmailMessage()
        msg["From"] = "me@example.com"
        msg["To"] = "ana@example.org"
        msg["Subject"] = "<img src=x onerror=alert(1)> Offer"
        msg.set_content("plain")
        msg.add_alternative("<html><body><h1>Our offer</h1></body></html>", subtype="html")
        port = int(cfg.relay.listen.rsplit(":", 1)[1])

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                c.send_message(msg)

        await asyncio.to_thread(send)

        page = await browser.new_page(viewport={"width": 1000, "height": 700})
        dialogs: list[str] = []
        page.on("dialog", lambda d: dialogs.append(d.message))
        await page.goto(cfg.pixelserver.public_url + "/")
        heading = page.locator("section.message h2")
        assert await heading.inner_text() == "<img src=x onerror=alert(1)> Offer"
        row = page.locator("tr.delivery", has_text="ana@example.org")
        chip = row.locator(".chip")
        assert await chip.inner_text() == "Not opened yet"

        async with page.expect_popup() as popup_info:
            await row.get_by_role("link", name="view copy").click()
        copy = await popup_info.value
        await copy.wait_for_load_state("load")
        assert await copy.locator("h1").inner_text() == "Our offer"
        await copy.close()

        for _ in range(40):
            await page.reload()
            if "you viewed it" in await chip.inner_text():
                break
            await asyncio.sleep(0.1)
        # Sent from this machine and opened here: the sender viewing the copy, said so.
        assert await chip.inner_text() == "Not opened yet · you viewed it"
        assert dialogs == []  # the subject never ran as markup
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "report-first-run.png"), full_page=True)
        await page.set_viewport_size({"width": 390, "height": 800})
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the report page scrolls sideways on a phone"
    finally:
        await relay.close()
        await pixel.close()
