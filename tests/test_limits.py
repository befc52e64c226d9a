"""Limits that hold under abuse: connections (global and per client network, 421), recipients
per message (452 4.5.3), command lines before DATA (RFC 5321's, not DATA's 1 MiB allowance),
and memory for a message bounded by its size. Real sockets, real clients, the real relay."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import smtplib
import socket
import ssl
import struct
import tracemalloc
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from pixelserver.store.accounts import set_local_user
from pixelserver.store.schema import Message
from relay import auth, service
from relay.certs import make_self_signed
from relay.smtp import RelaySMTP
from tests.conftest import CaptureUpstream, free_port, make_config
from tests.test_auth import machine_address, port_of, swaks_at

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def message(size_hint: int = 0) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "me@example.com", "a@example.org", "Limits"
    msg.set_content("plain text" + "x" * size_hint)
    return msg.as_bytes()


@SQLITE
async def test_recipients_beyond_the_cap_are_told_to_come_back(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    cfg = make_config(tmp_path, db_url, upstream.port, relay={"max_recipients": 3})
    relay = await service.start_relay(cfg, store)
    try:

        def go() -> tuple[list[tuple[int, bytes]], tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port_of(cfg), timeout=30) as c:
                c.ehlo("client.test")
                c.mail("me@example.com")
                codes = [c.rcpt(f"r{i}@example.org") for i in range(5)]
                return codes, c.data(message())

        rcpts, data = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert [code for code, _ in rcpts] == [250, 250, 250, 452, 452]
    assert rcpts[3][1].startswith(b"4.5.3 Too many recipients")
    assert data[0] == 250
    assert sorted(m.rcpt_tos[0] for m in upstream.messages) == [
        "r0@example.org",
        "r1@example.org",
        "r2@example.org",
    ]


def open_session(port: int, source: str) -> tuple[socket.socket, bytes]:
    """A client connection from `source` (an address of this machine); its first reply."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return s, s.makefile("rb").readline()


@SQLITE
async def test_connections_are_capped_globally_and_per_client_network(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    other = machine_address()  # another /24 than 127.0.0.0/24, still this machine
    cfg = make_config(
        tmp_path,
        db_url,
        upstream.port,
        relay={"max_connections": 3, "max_connections_per_network": 2},
    )
    relay = await service.start_relay(cfg, store)
    port = port_of(cfg)
    opened: list[socket.socket] = []
    try:

        def connect(source: str) -> bytes:
            s, greeting = open_session(port, source)
            opened.append(s)
            return greeting

        first = [await asyncio.to_thread(connect, "127.0.0.1") for _ in range(2)]
        same_network = await asyncio.to_thread(connect, "127.0.0.2")  # same /24: refused
        elsewhere = await asyncio.to_thread(connect, other)
        full = await asyncio.to_thread(connect, other)  # 3 open: the relay is full
        opened[0].close()
        await asyncio.sleep(0.3)
        after_close = await asyncio.to_thread(connect, "127.0.0.1")
    finally:
        for s in opened:
            s.close()
        await relay.close()
    assert all(g.startswith(b"220 ") for g in first), first
    assert same_network.startswith(b"421 4.7.0 Too many connections from your network")
    assert elsewhere.startswith(b"220 ")
    assert full.startswith(b"421 4.7.0 Too many connections to this relay")
    assert after_close.startswith(b"220 ")


@SQLITE
async def test_long_lines_are_for_data_only(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    cfg = make_config(tmp_path, db_url, upstream.port)
    relay = await service.start_relay(cfg, store)
    long_line = b"x" * 500_000
    body = message().replace(b"plain text", long_line)
    try:

        def go() -> list[bytes]:
            with socket.create_connection(("127.0.0.1", port_of(cfg)), timeout=30) as s:
                f = s.makefile("rb")
                replies = [f.readline()]
                for command in (
                    b"EHLO client.test",
                    b"NOOP " + b"x" * 100_000,  # a command line far beyond RFC 5321's 512
                    b"MAIL FROM:<me@example.com>",
                    b"RCPT TO:<a@example.org>",
                    b"DATA",
                ):
                    s.sendall(command + b"\r\n")
                    reply = f.readline()
                    while reply[3:4] == b"-":
                        reply = f.readline()
                    replies.append(reply)
                s.sendall(body.replace(b"\n", b"\r\n") + b".\r\n")
                replies.append(f.readline())
                return replies

        replies = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert replies[2].startswith(b"500 5.5.2 Command line too long"), replies
    assert replies[-1].startswith(b"250 2.0.0 Sent to 1 recipient"), replies
    (m,) = upstream.messages
    assert long_line in m.data  # inside DATA a long line is still passed on


@SQLITE
async def test_an_overlong_auth_exchange_line_is_refused_not_an_internal_error(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    cfg = make_config(tmp_path, db_url, upstream.port, relay={"auth": "local"})
    relay = await service.start_relay(cfg, store)
    try:

        def go() -> list[bytes]:
            with socket.create_connection(("127.0.0.1", port_of(cfg)), timeout=30) as s:
                f = s.makefile("rb")
                f.readline()
                s.sendall(b"EHLO client.test\r\n")
                while f.readline()[3:4] == b"-":
                    pass
                s.sendall(b"AUTH LOGIN\r\n")
                challenge = f.readline()
                s.sendall(b"QUFB" * 50_000 + b"\r\n")
                refused = f.readline()
                s.sendall(b"NOOP\r\n")
                return [challenge, refused, f.readline()]

        challenge, refused, after = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert challenge.startswith(b"334 ")
    assert refused.startswith(b"500 5.5.6 Authentication exchange line is too long"), refused
    assert after.startswith(b"250 ")


class CountingHandler:
    """Takes DATA and keeps only its size: what the DATA phase itself costs is measured."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.sizes.append(len(envelope.original_content))
        return "250 OK"


async def test_a_message_of_empty_lines_costs_about_its_size_in_memory() -> None:
    lines = 1_000_000
    size = 2 * lines  # "\r\n" each
    handler = CountingHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RelaySMTP(handler, decode_data=False, data_size_limit=None), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]

    # Built before measuring, and sent raw: the client allocates nothing while traced.
    payload = b"\r\n" * lines + b".\r\n"

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            f = s.makefile("rb")
            f.readline()
            for command in (
                b"HELO client.test",
                b"MAIL FROM:<me@example.com>",
                b"RCPT TO:<a@x.org>",
            ):
                s.sendall(command + b"\r\n")
                f.readline()
            s.sendall(b"DATA\r\n")
            f.readline()
            s.sendall(payload)
            return f.readline()

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        reply = await asyncio.to_thread(send)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        server.close()
        await server.wait_closed()
    assert reply.startswith(b"250") and handler.sizes == [size], reply
    # The body, a copy of it handed on, and the reader's buffers: a few times the size, not
    # the ~30x of one Python object per line.
    print(f"{lines} empty lines ({size} bytes): peak {peak} bytes, {peak / size:.1f}x")
    assert peak < 4 * size + 3 * 1024 * 1024, peak


# --- behind a TCP balancer: the PROXY protocol (relay.proxy_protocol = true) ---


def proxy_v2(source: str, dest: str, sport: int = 40000, dport: int = 587) -> bytes:
    """A PROXY protocol v2 header (PROXY command, TCP over IPv4 or IPv6), as HAProxy or nginx
    send it."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def proxied_session(port: int, header: bytes) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(header)
    return s, s.makefile("rb").readline()


@SQLITE
async def test_the_client_address_comes_from_the_proxy_header(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    cfg = make_config(
        tmp_path,
        db_url,
        upstream.port,
        relay={"proxy_protocol": True, "max_connections_per_network": 1},
    )
    relay = await service.start_relay(cfg, store)
    port = port_of(cfg)
    opened: list[socket.socket] = []
    try:

        def connect(header: bytes) -> bytes:
            s, first = proxied_session(port, header)
            opened.append(s)
            return first

        v1 = await asyncio.to_thread(connect, b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 587\r\n")
        # Same client network as the first, through the balancer's same address: refused.
        v2_same = await asyncio.to_thread(connect, proxy_v2("198.51.100.9", "127.0.0.1"))
        v2_other = await asyncio.to_thread(connect, proxy_v2("2001:db8:1:2::5", "::1"))
        no_header = await asyncio.to_thread(connect, b"EHLO client.test\r\n")
        for s in opened:
            s.close()
        await asyncio.sleep(0.3)
        # swaks speaks the PROXY protocol itself: a whole message from "203.0.113.50".
        sent = await asyncio.to_thread(
            swaks_at,
            "127.0.0.1",
            port,
            "--from",
            "me@example.com",
            "--proxy-version",
            "1",
            "--proxy-family",
            "TCP4",
            "--proxy-source",
            "203.0.113.50",
            "--proxy-source-port",
            "40001",
            "--proxy-dest",
            "127.0.0.1",
            "--proxy-dest-port",
            "587",
        )
    finally:
        for s in opened:
            s.close()
        await relay.close()
    assert v1.startswith(b"220 ") and v2_other.startswith(b"220 ")
    assert v2_same.startswith(b"421 4.7.0 Too many connections from your network")
    assert no_header == b""  # closed: a client cannot skip the header and pass as the balancer
    assert "<-  250 2.0.0 Sent to 1 recipient" in sent.stdout, sent.stdout
    async with store() as s:
        prefixes = (await s.execute(select(Message.sender_prefix))).scalars().all()
    assert [p.split("/")[0].rsplit(".", 1)[0] for p in prefixes] == ["203.0.113"]


@SQLITE
async def test_implicit_tls_and_logins_behind_a_proxy_balancer(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    address = machine_address()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(address, cert, key)
    async with store.begin() as s:
        await set_local_user(s, "ana@example.org", auth.hash_password("ana-password-1"))
    cfg = make_config(
        tmp_path,
        db_url,
        upstream.port,
        relay={
            "listen": f"{address}:{free_port()}",
            "auth": "local",
            "tls": "implicit",
            "cert_file": str(cert),
            "key_file": str(key),
            "proxy_protocol": True,
        },
    )
    relay = await service.start_relay(cfg, store)
    try:

        def go() -> tuple[bytes, str, int]:
            raw = socket.create_connection((address, port_of(cfg)), timeout=10)
            # nginx sends the header in clear, then passes the client's TLS bytes through.
            raw.sendall(b"PROXY TCP4 198.51.100.7 " + address.encode() + b" 40000 465\r\n")
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            client = smtplib.SMTP()
            client.sock = ctx.wrap_socket(raw)
            code, greeting = client.getreply()
            client.ehlo("client.test")
            features = client.esmtp_features.get("auth", "")
            login = client.login("ana@example.org", "ana-password-1")[0]
            client.quit()
            return greeting, features, login

        greeting, features, login = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert b"MailPing" in greeting
    assert "PLAIN" in features and login == 235


@SQLITE
async def test_a_tls_hello_in_the_same_segment_as_the_proxy_header_is_not_lost(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    """nginx may pass the header and the client's first TLS bytes in one segment: bytes read
    past the header must go to the TLS layer, not be dropped."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed("127.0.0.1", cert, key)
    cfg = make_config(
        tmp_path,
        db_url,
        upstream.port,
        relay={
            "auth": "local",
            "tls": "implicit",
            "cert_file": str(cert),
            "key_file": str(key),
            "proxy_protocol": True,
        },
    )
    relay = await service.start_relay(cfg, store)
    try:

        def go() -> bytes:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(incoming, outgoing)
            with socket.create_connection(("127.0.0.1", port_of(cfg)), timeout=10) as s:
                with contextlib.suppress(ssl.SSLWantReadError):
                    tls.do_handshake()
                header = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 465\r\n"
                s.sendall(header + outgoing.read())  # one write: header and TLS hello
                while True:
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        s.sendall(outgoing.read())
                        incoming.write(s.recv(65536))
                s.sendall(outgoing.read())
                while True:
                    try:
                        return tls.read(4096)
                    except ssl.SSLWantReadError:
                        incoming.write(s.recv(65536))

        greeting = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert greeting.startswith(b"220 ") and b"MailPing" in greeting


@SQLITE
async def test_a_long_passphrase_fits_in_an_auth_line(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    """RFC 4954 lets an AUTH command line be 12288 octets; RFC 5321's 512 is for the others."""
    passphrase = "correct horse battery staple " * 20  # 580 characters
    async with store.begin() as s:
        await set_local_user(s, "ana@example.org", auth.hash_password(passphrase))
    cfg = make_config(tmp_path, db_url, upstream.port, relay={"auth": "local"})
    relay = await service.start_relay(cfg, store)
    try:

        def go() -> tuple[int, int]:
            with smtplib.SMTP("127.0.0.1", port_of(cfg), timeout=30) as c:
                c.ehlo("client.test")
                c.user, c.password = "ana@example.org", passphrase
                login = c.auth("PLAIN", c.auth_plain)[0]  # one line: AUTH PLAIN <base64>
                return login, c.docmd("NOOP " + "x" * 600)[0]

        login, long_noop = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert login == 235
    assert long_noop == 500  # other commands keep RFC 5321's limit
