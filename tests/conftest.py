"""Shared fixtures: real stores (SQLite and PostgreSQL), a capture upstream SMTP server, and the
relay and pixel server started on the test's event loop, all over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import asyncpg
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from sqlalchemy import select
from sqlalchemy.engine import make_url

from pixelserver.config import DatabaseConfig, PixelServerConfig
from pixelserver.server import RunningPixelServer
from pixelserver.store import migrate
from pixelserver.store.accounts import set_local_user
from pixelserver.store.schema import Message, make_engine, make_sessionmaker
from relay import auth, service
from relay.config import Config, QueueConfig, RelayConfig, UpstreamConfig

PG_ENV = "MAILPING_TEST_PG_URL"
HERE = Path(__file__).parent

# --- Debian's Chromium, driven by Playwright (never a downloaded browser) ---

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root Chromium needs --no-sandbox; the rest stop its calls to a network it cannot reach.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
SHOTS = HERE.parent / "docs" / "screenshots"


def require_chromium() -> str:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("CI is set but Debian's chromium is not installed")
        pytest.skip("Debian's chromium is not installed")
    return CHROMIUM


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    executable = require_chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=executable, args=ARGS)
        yield b
        await b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_postgres() -> str:
    """In CI, PostgreSQL tests must run: a missing server is a failure, not a skip."""
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {PG_ENV} is not: PostgreSQL tests must run in CI")
        pytest.skip(f"set {PG_ENV} to run PostgreSQL tests")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.sqlite3'}"
        return
    base = make_url(require_postgres())
    name = f"mailping_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(
        host=base.host,
        port=base.port or 5432,
        user=base.username,
        password=base.password,
        database=base.database or "postgres",
    )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def store(db_url: str):
    engine = make_engine(db_url)
    await migrate.upgrade(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    login: str | None


@dataclass
class CaptureUpstream:
    """A real SMTP server standing in for the user's provider; records what it receives.

    `refuse` maps a recipient to the reply it gets at RCPT (e.g. "550 5.1.1 No such user");
    `logins` (user -> password), when set, makes AUTH required; `hang_up` closes the connection
    after each accepted message, as some providers do after a limit.
    """

    port: int
    messages: list[Captured] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    logins: dict[str, str] | None = None
    hang_up: bool = False
    vanish_after_data: bool = False  # take the message, then drop the line without a reply
    sessions: int = 0
    data_delay: float = 0.0  # seconds each DATA takes, to see how many run at once
    in_data: int = 0
    most_in_data: int = 0

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.logins is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_data += 1
        self.most_in_data = max(self.most_in_data, self.in_data)
        try:
            await asyncio.sleep(self.data_delay)
        finally:
            self.in_data -= 1
        if self.vanish_after_data:
            server.transport.abort()
            self.vanish_after_data = False
            self.messages.append(
                Captured(
                    envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, [], None
                )
            )
            await asyncio.sleep(3600)
        login = session.login_data.decode() if session.login_data else None
        self.messages.append(
            Captured(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
                login,
            )
        )
        if self.hang_up:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 2.0.0 queued"

    def authenticate(self, server, session, envelope, mechanism, data) -> AuthResult:
        ok = (
            self.logins is not None
            and self.logins.get(data.login.decode()) == data.password.decode()
        )
        return AuthResult(success=ok, handled=False, auth_data=data)

    def for_recipient(self, rcpt: str) -> list[Captured]:
        return [m for m in self.messages if m.rcpt_tos == [rcpt]]


class LenientSMTP(SMTP):
    """Like most providers, accepts lines over RFC 5321's 1000 octets."""

    line_length_limit = 1024 * 1024


@contextlib.asynccontextmanager
async def capture_upstream(
    *,
    smtputf8: bool = True,
    tls: ssl.SSLContext | None = None,
    implicit: bool = False,
    strict_lines: bool = False,
    **kw: object,
) -> AsyncIterator[CaptureUpstream]:
    cap = CaptureUpstream(port=free_port(), **kw)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    server_class = SMTP if strict_lines else LenientSMTP
    server = await loop.create_server(
        lambda: server_class(
            cap,
            decode_data=False,
            enable_SMTPUTF8=smtputf8,
            data_size_limit=None,
            hostname="upstream.test",
            authenticator=cap.authenticate,
            auth_require_tls=False,
            tls_context=None if implicit else tls,
        ),
        "127.0.0.1",
        cap.port,
        ssl=tls if implicit else None,
    )
    try:
        yield cap
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def upstream() -> AsyncIterator[CaptureUpstream]:
    async with capture_upstream() as cap:
        yield cap


def make_config(
    tmp_path: Path,
    db_url: str,
    upstream_port: int | None,
    *,
    relay: dict | None = None,
    upstream: dict | None = None,
    upstream_password: str = "",
    queue: dict | None = None,
) -> Config:
    """A Config as load_config would build it, on free loopback ports."""
    pixel_port = free_port()
    relay_kw = {"listen": f"127.0.0.1:{free_port()}", "hostname": "relay.test", **(relay or {})}
    upstream_kw = {
        "host": "127.0.0.1" if upstream_port else "",
        "port": upstream_port or 587,
        "tls": "none",
        "timeout": 5,
        **(upstream or {}),
    }
    return Config(
        source="(test)",
        data_dir=tmp_path / "data",
        relay=RelayConfig(**relay_kw),
        upstream=UpstreamConfig(**upstream_kw),
        queue=QueueConfig(**(queue or {})),
        upstream_password=upstream_password,
        pixelserver=PixelServerConfig(
            listen=f"127.0.0.1:{pixel_port}",
            public_url=f"http://127.0.0.1:{pixel_port}",
            trusted_proxies=("127.0.0.2/32",),
        ),
        database=DatabaseConfig(url=db_url),
    )


_NETWORKS: list = []


def shared_networks():
    """One Networks for the whole run: loading the bundled data takes about a second."""
    if not _NETWORKS:
        _NETWORKS.append(service.make_networks(make_config(Path("/nonexistent"), "", None)))
    return _NETWORKS[0]


async def start_pixelserver(cfg: Config, store) -> RunningPixelServer:
    return await service.start_pixelserver(cfg, store, shared_networks())


@dataclass
class Stack:
    """Relay + pixel server running on this test's loop against one store."""

    config: Config
    store: object
    relay_port: int
    pixel_base: str


@pytest.fixture
async def stack(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> AsyncIterator[Stack]:
    cfg = make_config(tmp_path, db_url, upstream.port)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    relay = await service.start_relay(cfg, store)
    pixel = await start_pixelserver(cfg, store)
    s = Stack(cfg, store, int(cfg.relay.listen.rsplit(":", 1)[1]), cfg.pixelserver.public_url)
    yield s
    await relay.close()
    await pixel.close()


# --- a site with logins: relay and pages with auth = "local", two users who each sent mail ---

USERS = {"ana@example.org": "ana-password-1", "bob@example.org": "bob-password-2"}
XSS = "<img src=x onerror=alert(1)> Offer"
BOB = "Bob's private plans"


def send_as(port: int, user: str, subject: str, to: list[str]) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = user, ", ".join(to), subject
    msg.set_content("plain")
    msg.add_alternative("<html><body><p>Hello</p></body></html>", subtype="html")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.login(user, USERS[user])
        c.send_message(msg)


@pytest.fixture
async def site(tmp_path: Path, db_url: str, store):
    """Relay and pages with auth = "local"; Ana and Bob have each sent a message."""
    async with capture_upstream(logins={"relay@example.com": "x"}) as upstream:
        async for value in _site(tmp_path, db_url, store, upstream):
            yield value


async def _site(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream, relay: dict | None = None
):
    async with store.begin() as s:
        for user, password in USERS.items():
            await set_local_user(s, user, auth.hash_password(password))
    cfg = make_config(
        tmp_path,
        db_url,
        upstream.port,
        relay={"auth": "local", **(relay or {})},
        upstream={"username": "relay@example.com"},
        upstream_password="x",
    )
    relay = await service.start_relay(cfg, store)
    pixel = await start_pixelserver(cfg, store)
    port = int(cfg.relay.listen.rsplit(":", 1)[1])
    await asyncio.to_thread(
        send_as, port, "ana@example.org", XSS, ["carol@gmail.com", "dan@example.net"]
    )
    await asyncio.to_thread(
        send_as, port, "bob@example.org", "Bob's private plans", ["eve@example.com"]
    )
    async with store() as s:
        ids = {m.subject: m.id for m in (await s.execute(select(Message))).scalars()}
    yield cfg, ids, upstream
    await relay.close()
    await pixel.close()
