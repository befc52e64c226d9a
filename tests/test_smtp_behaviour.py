"""The relay's SMTP dialogue with real clients and real upstream servers: extensions, enhanced
codes, size limits, pipelining, SMTPUTF8, 8BITMIME, and every way an upstream can fail."""

from __future__ import annotations

import asyncio
import re
import smtplib
import socket
import ssl
from pathlib import Path

import pytest
from sqlalchemy import select

from pixelserver.store.schema import Delivery
from relay import replies, service
from relay.certs import make_self_signed
from relay.handler import RelayHandler
from tests.conftest import CaptureUpstream, Stack, capture_upstream, free_port, make_config
from tests.helpers import CORPUS_DIR, MAILGEM_DIR, eventually, smtp_send

HTML = (CORPUS_DIR / "gmail_web_no_body_tag.eml").read_bytes()
ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")


def converse(port: int, lines: list[bytes], *, pipelined: bool = False) -> list[bytes]:
    """Raw SMTP: returns the final line of each reply (after the greeting)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        f = sock.makefile("rb")

        def reply() -> list[bytes]:
            out = []
            while True:
                line = f.readline().rstrip(b"\r\n")
                out.append(line)
                if line[3:4] != b"-":
                    return out

        reply()  # greeting
        results = []
        if pipelined:
            sock.sendall(b"".join(line + b"\r\n" for line in lines))
            results = [reply()[-1] for _ in lines]
        else:
            for line in lines:
                sock.sendall(line + b"\r\n")
                results.append(reply()[-1])
        return results


async def relay_on(tmp_path: Path, db_url: str, store, port: int | None, **kw):
    cfg = make_config(tmp_path, db_url, port, **kw)
    return cfg, await service.start_relay(cfg, store)


def smtp_port(cfg) -> int:
    return int(cfg.relay.listen.rsplit(":", 1)[1])


def send(port: int, rcpts: list[str], data: bytes = HTML, **kw) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        try:
            c.sendmail("me@example.com", rcpts, data, **kw)
        except smtplib.SMTPResponseException as exc:
            return f"{exc.smtp_code} {exc.smtp_error.decode()}"
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return f"{code} {text.decode()}"
    return "250"


async def outcomes(store) -> list[str]:
    async with store() as s:
        return list((await s.execute(select(Delivery.outcome).order_by("id"))).scalars())


async def test_ehlo_advertises_what_the_relay_does(stack: Stack) -> None:
    def ehlo() -> dict:
        with smtplib.SMTP("127.0.0.1", stack.relay_port, timeout=30) as c:
            c.ehlo("client.test")
            return c.esmtp_features

    features = await asyncio.to_thread(ehlo)
    assert features["size"] == "36700160"  # 35 MiB, the configured default
    for ext in ("8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
        assert ext in features
    assert "auth" not in features  # auth = "none": nothing to log in to
    assert "starttls" not in features


async def test_every_reply_carries_an_enhanced_status_code(stack: Stack) -> None:
    lines = [
        b"EHLO client.test",
        b"NOOP",
        b"RCPT TO:<a@example.org>",
        b"MAIL FROM:<me@example.com>",
        b"MAIL FROM:<me@example.com>",
        b"RCPT TO:<a@example.org>",
        b"RSET",
        b"VRFY x",
        b"BOGUS",
        b"HELP",
        b"DATA",
        b"QUIT",
    ]
    got = await asyncio.to_thread(converse, stack.relay_port, lines)
    checked = [r for line, r in zip(lines, got, strict=True) if not line.startswith(b"EHLO")]
    assert all(ENHANCED.match(r) for r in checked), checked
    assert got[2].startswith(b"503 5.5.1 need MAIL command")


async def test_pipelined_transaction(stack: Stack, upstream: CaptureUpstream) -> None:
    got = await asyncio.to_thread(
        converse,
        stack.relay_port,
        [
            b"EHLO client.test",
            b"MAIL FROM:<me@example.com>",
            b"RCPT TO:<a@example.org>",
            b"RCPT TO:<b@example.org>",
            b"DATA",
        ],
        pipelined=True,
    )
    assert [r[:3] for r in got] == [b"250", b"250", b"250", b"250", b"354"]

    def finish() -> None:
        with socket.create_connection(("127.0.0.1", stack.relay_port), timeout=30) as sock:
            f = sock.makefile("rb")
            f.readline()
            sock.sendall(
                b"EHLO c\r\nMAIL FROM:<me@example.com>\r\nRCPT TO:<a@example.org>\r\n"
                b"RCPT TO:<b@example.org>\r\nDATA\r\n"
            )
            for _ in range(4):
                while f.readline()[3:4] == b"-":
                    pass
            assert f.readline().startswith(b"354")
            sock.sendall(HTML + b".\r\nQUIT\r\n")
            assert f.readline().startswith(b"250 2.0.0 Sent to 2 recipients")

    await asyncio.to_thread(finish)
    assert len(upstream.messages) == 2


async def test_size_limit_is_refused_clearly(tmp_path: Path, db_url: str, store, upstream) -> None:
    cfg, relay = await relay_on(
        tmp_path, db_url, store, upstream.port, relay={"max_message_size": 20_000}
    )
    try:
        big = HTML + b"x" * 30_000 + b"\r\n"
        declared = await asyncio.to_thread(
            converse, smtp_port(cfg), [b"EHLO c", b"MAIL FROM:<me@example.com> SIZE=30000"]
        )
        assert (
            declared[1]
            == b"552 5.3.4 Message too big: this relay accepts messages up to 20000 bytes"
        )
        reply = await asyncio.to_thread(send, smtp_port(cfg), ["a@example.org"], big)
        assert reply.startswith("552 5.3.4 Message too big")
    finally:
        await relay.close()
    assert upstream.messages == []


async def test_smtputf8_addresses_end_to_end(stack: Stack, upstream: CaptureUpstream) -> None:
    raw = (MAILGEM_DIR / "rfc6532" / "utf8_headers.eml").read_bytes().replace(b"\n", b"\r\n")

    def go() -> dict:
        with smtplib.SMTP("127.0.0.1", stack.relay_port, timeout=30) as c:
            return c.sendmail(
                "zoë@example.com",
                ["josé@example.org"],
                raw,
                mail_options=["SMTPUTF8", "BODY=8BITMIME"],
            )

    assert await asyncio.to_thread(go) == {}
    (m,) = upstream.messages
    assert m.mail_from == "zoë@example.com" and m.rcpt_tos == ["josé@example.org"]
    assert "SMTPUTF8" in m.mail_options and "BODY=8BITMIME" in m.mail_options


async def test_smtputf8_needed_but_missing_upstream_sends_nothing(
    tmp_path: Path, db_url: str, store
) -> None:
    async with capture_upstream(smtputf8=False) as cap:
        cfg, relay = await relay_on(tmp_path, db_url, store, cap.port)
        try:

            def go() -> str:
                with smtplib.SMTP("127.0.0.1", smtp_port(cfg), timeout=30) as c:
                    try:
                        c.sendmail(
                            "me@example.com",
                            ["josé@example.org", "ana@example.org"],
                            HTML,
                            mail_options=["SMTPUTF8"],
                        )
                    except smtplib.SMTPDataError as exc:
                        return f"{exc.smtp_code} {exc.smtp_error.decode()}"
                return "250"

            reply = await asyncio.to_thread(go)
        finally:
            await relay.close()
        assert reply.startswith("550 5.6.7 This message needs SMTPUTF8")
        assert cap.messages == []
    assert await outcomes(store) == ["rejected", "rejected"]


async def test_8bit_body_is_declared_upstream(stack: Stack, upstream: CaptureUpstream) -> None:
    raw = (CORPUS_DIR / "outlook_upper_body_8bit.eml").read_bytes()
    assert (
        await asyncio.to_thread(
            send, stack.relay_port, ["a@example.org"], raw, mail_options=["BODY=8BITMIME"]
        )
        == "250"
    )
    assert upstream.messages[0].mail_options == ["BODY=8BITMIME"]


async def test_upstream_hanging_up_after_each_message_gets_each_copy_once(
    tmp_path: Path, db_url: str, store
) -> None:
    async with capture_upstream(hang_up=True) as cap:
        cfg, relay = await relay_on(tmp_path, db_url, store, cap.port)
        try:
            rcpts = ["a@example.org", "b@example.org", "c@example.org"]
            assert await asyncio.to_thread(send, smtp_port(cfg), rcpts) == "250"
        finally:
            await relay.close()
        assert sorted(m.rcpt_tos[0] for m in cap.messages) == rcpts
        assert cap.sessions == 3  # re-opened after each hang-up, never re-sent
    assert await outcomes(store) == ["accepted"] * 3


async def test_upstream_without_starttls_is_a_clear_temporary_failure(
    tmp_path: Path, db_url: str, store, upstream
) -> None:
    cfg, relay = await relay_on(
        tmp_path, db_url, store, upstream.port, upstream={"tls": "starttls"}
    )
    try:
        reply = await asyncio.to_thread(
            smtp_send, smtp_port(cfg), "me@example.com", ["a@example.org"], HTML
        )
    finally:
        await relay.close()
    assert reply.startswith("250 2.0.0") and "1 queued" in reply and "STARTTLS" in reply
    assert upstream.messages == []


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed("127.0.0.1", cert, key)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_untrusted_upstream_certificate_is_refused_unless_told_otherwise(
    tmp_path: Path, db_url: str, store, self_signed
) -> None:
    async with capture_upstream(tls=server_context(*self_signed), implicit=True) as cap:
        cfg, relay = await relay_on(
            tmp_path / "a", db_url, store, cap.port, upstream={"tls": "implicit"}
        )
        try:
            reply = await asyncio.to_thread(
                smtp_send, smtp_port(cfg), "me@example.com", ["a@example.org"], HTML
            )
        finally:
            await relay.close()
        assert reply.startswith("250 2.0.0") and "TLS failed" in reply and "certificate" in reply
        assert cap.messages == []
        cfg, relay = await relay_on(
            tmp_path / "b",
            db_url,
            store,
            cap.port,
            upstream={"tls": "implicit", "verify_certificate": False},
        )
        try:
            assert await asyncio.to_thread(send, smtp_port(cfg), ["a@example.org"]) == "250"
        finally:
            await relay.close()
        assert len(cap.messages) == 1


async def test_upstream_refusing_the_relay_account_login(
    tmp_path: Path, db_url: str, store
) -> None:
    async with capture_upstream(logins={"relay@example.com": "right"}) as cap:
        cfg, relay = await relay_on(
            tmp_path,
            db_url,
            store,
            cap.port,
            relay={"auth": "none"},
            upstream={"username": "relay@example.com"},
            upstream_password="wrong",
        )
        try:
            reply = await asyncio.to_thread(
                smtp_send,
                smtp_port(cfg),
                "me@example.com",
                ["a@example.org", "b@example.org"],
                HTML,
            )
        finally:
            await relay.close()
        assert reply.startswith("250 2.0.0") and "refused the login" in reply
        assert cap.messages == []
        assert cap.sessions == 1  # not retried for the second copy
    assert await outcomes(store) == ["deferred", "deferred"]


async def test_silent_upstream_times_out_with_words(tmp_path: Path, db_url: str, store) -> None:
    port = free_port()
    server = await asyncio.start_server(lambda r, w: asyncio.sleep(30), "127.0.0.1", port)
    try:
        cfg, relay = await relay_on(tmp_path, db_url, store, port, upstream={"timeout": 1})
        try:
            reply = await asyncio.to_thread(
                smtp_send, smtp_port(cfg), "me@example.com", ["a@example.org"], HTML
            )
        finally:
            await relay.close()
    finally:
        server.close()
    assert reply.startswith("250 2.0.0") and "did not answer in time" in reply


async def test_unexpected_errors_are_a_451_that_tells_nothing_inside() -> None:
    handler = RelayHandler(relay=None, authenticator=None, in_flight=1)  # type: ignore[arg-type]
    reply = await handler.handle_exception(RuntimeError("password=hunter2 at /srv/secret"))
    assert reply == replies.INTERNAL_ERROR
    assert "hunter2" not in reply and "secret" not in reply


async def test_upstream_refusing_long_lines_is_reported_in_its_words(
    tmp_path: Path, db_url: str, store
) -> None:
    # A text-only message is not the relay's to rewrite: its long line reaches the upstream.
    raw = b"Subject: ledger\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 2000 + b"\r\n"
    async with capture_upstream(strict_lines=True) as cap:
        cfg, relay = await relay_on(tmp_path, db_url, store, cap.port)
        try:
            reply = await asyncio.to_thread(send, smtp_port(cfg), ["a@example.org"], raw)
        finally:
            await relay.close()
    assert reply.startswith("550 5.0.0 Line too long")  # accepted by MailPing, refused upstream
    assert await outcomes(store) == ["rejected"]


async def test_a_rewritten_part_with_long_lines_passes_a_strict_upstream(
    tmp_path: Path, db_url: str, store
) -> None:
    """The relay re-encodes the HTML part it tracks, so no line of the copy is over 998."""
    raw = (CORPUS_DIR / "very_long_line_over_998.eml").read_bytes()
    async with capture_upstream(strict_lines=True) as cap:
        cfg, relay = await relay_on(tmp_path, db_url, store, cap.port)
        try:
            reply = await asyncio.to_thread(send, smtp_port(cfg), ["a@example.org"], raw)
        finally:
            await relay.close()
    assert reply == "250"
    assert await outcomes(store) == ["accepted"]
    (m,) = cap.messages
    assert max(len(line) for line in m.data.split(b"\r\n")) <= 998


@pytest.mark.parametrize(("limit", "expect_parallel"), [(1, False), (4, True)])
async def test_messages_in_flight_are_limited(
    tmp_path: Path, db_url: str, store, limit: int, expect_parallel: bool
) -> None:
    async with capture_upstream(data_delay=0.3) as cap:
        cfg, relay = await relay_on(
            tmp_path, db_url, store, cap.port, relay={"max_in_flight": limit}
        )
        try:
            replies_ = await asyncio.gather(
                *(asyncio.to_thread(send, smtp_port(cfg), [f"r{i}@example.org"]) for i in range(4))
            )
        finally:
            await relay.close()
    assert replies_ == ["250"] * 4
    assert len(cap.messages) == 4
    assert (cap.most_in_data > 1) is expect_parallel


def test_cert_command_writes_a_usable_pair(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "cert",
            "--host",
            "relay.example.com",
            "--out",
            str(tmp_path / "certs"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    cert, key = tmp_path / "certs" / "cert.pem", tmp_path / "certs" / "key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)  # raises if the pair does not match
    from cryptography import x509

    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["relay.example.com"]


async def test_no_reply_after_the_whole_message_is_not_resent(
    tmp_path: Path, db_url: str, store
) -> None:
    """The upstream took the first copy and dropped the line before confirming: that copy is
    reported as uncertain and never sent twice; the next copies go out on a new connection."""
    async with capture_upstream(vanish_after_data=True) as cap:
        cfg, relay = await relay_on(tmp_path, db_url, store, cap.port)
        try:
            reply = await asyncio.to_thread(
                send, smtp_port(cfg), ["a@example.org", "b@example.org"]
            )
            await eventually(lambda: cap.for_recipient("me@example.com"))
        finally:
            await relay.close()
        assert reply == "250"  # b went out; a is in the delivery report
        assert [m.rcpt_tos for m in cap.messages].count(["a@example.org"]) == 1
    async with store() as s:
        rows = (await s.execute(select(Delivery).order_by("id"))).scalars().all()
    assert [r.outcome for r in rows] == ["uncertain", "accepted"]
    assert "may have been delivered" in rows[0].upstream_reply
