"""The pages and the pixel against a hostile internet: DNS rebinding on the loopback demo, the
demo report password's throttling, /metrics behind a proxy, request size limits, an unbranded
pixel, the API's 401, and CSV cells a spreadsheet would run."""

from __future__ import annotations

import base64
import csv
import io
import socket
from dataclasses import replace
from pathlib import Path

from pixelserver.web.api import csv_cell
from tests.conftest import Stack, make_config, start_pixelserver
from tests.test_pixel import a_delivery, fetch


async def test_the_loopback_demo_refuses_a_foreign_host_header(stack: Stack) -> None:
    """A page the user visits can point evil.example at 127.0.0.1 (DNS rebinding) and read
    what this machine may read: only the names this server is known by are answered."""
    port = stack.pixel_base.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        for path in ("/", "/api/v1/messages", "/settings", "/about"):
            resp = await fetch(f"{stack.pixel_base}{path}", headers={"Host": host})
            assert resp.code == 403, (host, path, resp.code)
    assert "does not answer to that name" in resp.body.decode()
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        resp = await fetch(f"{stack.pixel_base}/", headers={"Host": host})
        assert resp.code == 200, host
    # The pixel answers whatever the Host: mail clients fetch it through every kind of proxy.
    d = await a_delivery(stack.store)
    resp = await fetch(f"{stack.pixel_base}/p/{d.token}.gif", headers={"Host": "evil.example"})
    assert resp.code == 200


async def test_the_demo_report_password_is_throttled(
    tmp_path: Path, db_url: str, store, monkeypatch
) -> None:
    monkeypatch.setenv("TEST_REPORT_PASSWORD", "correct horse battery")
    base = make_config(tmp_path, db_url, None)
    cfg = replace(
        base,
        pixelserver=replace(base.pixelserver, report_password_env="TEST_REPORT_PASSWORD"),
        # Wrong report passwords count against the network in the one login throttle.
        relay=replace(base.relay, login_failures_per_network=5),
    )
    pixel = await start_pixelserver(cfg, store)
    try:
        url = f"{cfg.pixelserver.public_url}/"
        hdr = {"X-Forwarded-For": "203.0.113.9"}
        wrong = {**hdr, "Authorization": "Basic " + base64.b64encode(b"me:guess").decode()}
        right = {
            **hdr,
            "Authorization": "Basic " + base64.b64encode(b"me:correct horse battery").decode(),
        }
        codes = [
            (await fetch(url, headers=wrong, network_interface="127.0.0.2")).code for _ in range(6)
        ]
        assert codes == [401] * 5 + [429]
        # Locked out: even the right password waits for the window to pass.
        assert (await fetch(url, headers=right, network_interface="127.0.0.2")).code == 429
        # Someone on another network is not locked out by it.
        other = {**right, "X-Forwarded-For": "198.51.100.7"}
        assert (await fetch(url, headers=other, network_interface="127.0.0.2")).code == 200
    finally:
        await pixel.close()


async def test_metrics_look_at_the_client_behind_a_trusted_proxy(stack: Stack) -> None:
    url = f"{stack.pixel_base}/metrics"
    assert (await fetch(url)).code == 200
    # From the trusted proxy (127.0.0.2, itself in 127.0.0.0/8) on behalf of the internet.
    resp = await fetch(
        url, headers={"X-Forwarded-For": "203.0.113.9"}, network_interface="127.0.0.2"
    )
    assert resp.code == 404


def _raw(base: str, request: bytes, timeout: float = 10) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data


async def test_large_bodies_are_refused_before_they_are_read(stack: Stack) -> None:
    import asyncio

    body = b"a" * (2 * 1024 * 1024)
    request = (
        b"POST /settings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/"
        b"x-www-form-urlencoded\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    reply = await asyncio.to_thread(_raw, stack.pixel_base, request)
    # Refused on the headers alone (nothing of the body was sent).
    assert reply.startswith(b"HTTP/1.1 413") or reply.startswith(b"HTTP/1.1 400"), reply[:200]
    # The server is still there.
    assert (await fetch(f"{stack.pixel_base}/")).code == 200


async def test_the_pixel_names_no_product(stack: Stack) -> None:
    d = await a_delivery(stack.store)
    resp = await fetch(f"{stack.pixel_base}/p/{d.token}.gif")
    assert resp.code == 200
    assert "mailping" not in str(resp.headers).lower()
    assert "Server" not in resp.headers


async def test_the_api_401_is_well_formed(site) -> None:
    cfg, _, _ = site
    import asyncio

    request = b"GET /api/v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = await asyncio.to_thread(_raw, cfg.pixelserver.public_url, request)
    status, _, rest = reply.partition(b"\r\n")
    assert status == b"HTTP/1.1 401 Unauthorized"
    assert b"\r\nwww-authenticate: bearer" in rest.lower()


def test_csv_cells_a_spreadsheet_would_run_are_escaped() -> None:
    for value in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://e")'):
        assert csv_cell(value).startswith("'"), value
    for value in ("Hello", "ana@example.org", "", "1.5"):
        assert csv_cell(value) == value
    out = io.StringIO()
    csv.writer(out).writerow([csv_cell("=cmd|' /C calc'!A0")])
    assert out.getvalue().startswith("'=cmd")


async def test_the_csv_export_and_its_button_escape_formulas(stack: Stack) -> None:
    from relay import tracking

    await tracking.record_message(
        stack.store,
        user="me@example.com",
        envelope_from="me@example.com",
        recipients=["ana@example.org"],
        subject='=HYPERLINK("http://evil.example","click")',
        message_id_header="",
        size=1,
        untracked_reason=None,
    )
    page = await fetch(f"{stack.pixel_base}/")
    assert 'href="/export.csv"' in page.body.decode()
    for path in ("/export.csv", "/api/v1/export?format=csv"):
        resp = await fetch(f"{stack.pixel_base}{path}")
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
        rows = list(csv.DictReader(io.StringIO(resp.body.decode())))
        assert rows[0]["subject"] == '\'=HYPERLINK("http://evil.example","click")'


async def test_header_values_are_cut_before_they_are_journaled(stack: Stack) -> None:
    from tests.test_pixel import wait_for_hits

    d = await a_delivery(stack.store)
    resp = await fetch(
        f"{stack.pixel_base}/p/{d.token}.gif",
        headers={"User-Agent": "Mozilla/5.0 " + "x" * 20000, "Accept": "image/" + "y" * 20000},
    )
    assert resp.code == 200
    (hit,) = await wait_for_hits(stack.store, d.id, 1)
    assert hit.user_agent.startswith("Mozilla/5.0 xxx") and len(hit.user_agent) <= 512
    assert len(hit.headers["Accept"]) <= 256


async def test_nothing_in_a_copy_names_the_product(stack: Stack, upstream) -> None:
    """The recipient's tools see a 1x1 image at the configured address, nothing saying
    MailPing: no header, no URL part, no attribute (X-MailPing is the sender's, removed)."""
    import asyncio
    import smtplib
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "me@example.com", "ana@example.org", "Hello"
    msg["X-MailPing"] = "on"
    msg.set_content("plain")
    msg.add_alternative("<html><body><p>Hello</p></body></html>", subtype="html")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", stack.relay_port, timeout=30) as c:
            c.send_message(msg)

    await asyncio.to_thread(send)
    (copy,) = upstream.messages
    assert b"<img" in copy.data
    assert b"mailping" not in copy.data.lower()
