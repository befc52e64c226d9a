"""Who may relay: real swaks over STARTTLS and implicit TLS with AUTH PLAIN and LOGIN, both
login modes, refusal without login, throttling, the user command, and nmap's open-relay check."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import urllib.parse
from base64 import b64encode
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pixelserver.config import ConfigError
from pixelserver.store.accounts import set_local_user
from pixelserver.store.schema import LoginThrottle as AttemptRow
from pixelserver.store.throttle import PRUNE_EVERY, LoginThrottle
from relay import auth as auth_module
from relay import service
from relay.certs import make_self_signed
from relay.config import load_config
from relay.forward import Credentials
from tests.conftest import (
    CaptureUpstream,
    capture_upstream,
    free_port,
    make_config,
    start_pixelserver,
)
from tests.helpers import CORPUS_DIR
from tests.test_serve import wait_for_line

HTML_FILE = CORPUS_DIR / "thunderbird_html_only_lf_trailing.eml"
# HTML_FILE is from Ingrid Solberg; swaks sends it as me@example.com.
INGRID_AS_ANA = {"sender_login_maps": {"ana@example.org": ("@solberg.no", "me@example.com")}}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if "CI" in __import__("os").environ:
            pytest.fail(f"CI is set but {tool} is not installed")
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.fixture
def cert(tmp_path: Path) -> dict[str, str]:
    c, k = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed("127.0.0.1", c, k)
    return {"cert_file": str(c), "key_file": str(k)}


def port_of(cfg) -> int:
    return int(cfg.relay.listen.rsplit(":", 1)[1])


def swaks(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            require("swaks"),
            "--server",
            "127.0.0.1",
            "--port",
            str(port),
            "--from",
            "me@example.com",
            "--to",
            "ana@example.org",
            "--data",
            str(HTML_FILE),
            "--timeout",
            "20",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def mailping(cfg_file: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "--config",
            str(cfg_file),
            "--log-level",
            "WARNING",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def config_file(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "mailping.toml"
    path.write_text(
        f'data_dir = "{tmp_path}/data"\n[database]\nurl = "{db_url}"\n[relay]\nauth = "local"\n'
    )
    return path


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_local_users_log_in_over_starttls_with_swaks(
    tmp_path: Path, db_url: str, store, cert, mechanism: str
) -> None:
    added = mailping(
        config_file(tmp_path, db_url),
        "user",
        "add",
        "Ana@Example.org",
        "--password-stdin",
        stdin="correct horse battery\n",
    )
    assert added.returncode == 0, added.stderr
    async with capture_upstream(logins={"relay@example.com": "relay-secret"}) as cap:
        cfg = make_config(
            tmp_path,
            db_url,
            cap.port,
            relay={"auth": "local", "tls": "starttls", **cert, **INGRID_AS_ANA},
            upstream={"username": "relay@example.com"},
            upstream_password="relay-secret",
        )
        relay = await service.start_relay(cfg, store)
        try:
            ok = await asyncio.to_thread(
                swaks,
                port_of(cfg),
                "--tls",
                "--auth",
                mechanism,
                "--auth-user",
                "ana@example.org",
                "--auth-password",
                "correct horse battery",
            )
            bad = await asyncio.to_thread(
                swaks,
                port_of(cfg),
                "--tls",
                "--auth",
                mechanism,
                "--auth-user",
                "ana@example.org",
                "--auth-password",
                "wrong horse battery",
            )
        finally:
            await relay.close()
        assert ok.returncode == 0, ok.stdout
        assert "<~  250 2.0.0 Sent to 1 recipient" in ok.stdout
        assert "535 5.7.8" in bad.stdout and bad.returncode != 0
        (m,) = cap.messages
        assert m.login == "relay@example.com"  # forwarded with the relay account


async def test_upstream_logins_are_checked_there_and_used_to_forward(
    tmp_path: Path, db_url: str, store, cert
) -> None:
    async with capture_upstream(logins={"ana@example.org": "ana-password-1"}) as cap:
        cfg = make_config(
            tmp_path, db_url, cap.port, relay={"auth": "upstream", "tls": "implicit", **cert}
        )
        relay = await service.start_relay(cfg, store)
        try:
            ok = await asyncio.to_thread(
                swaks,
                port_of(cfg),
                "--tlsc",
                "--auth",
                "LOGIN",
                "--auth-user",
                "ana@example.org",
                "--auth-password",
                "ana-password-1",
            )
            again = await asyncio.to_thread(
                swaks,
                port_of(cfg),
                "--tlsc",
                "--auth",
                "PLAIN",
                "--auth-user",
                "ana@example.org",
                "--auth-password",
                "ana-password-1",
            )
            bad = await asyncio.to_thread(
                swaks,
                port_of(cfg),
                "--tlsc",
                "--auth",
                "PLAIN",
                "--auth-user",
                "ana@example.org",
                "--auth-password",
                "guess",
            )
        finally:
            await relay.close()
    assert ok.returncode == 0 and again.returncode == 0, ok.stdout + again.stdout
    assert "535 5.7.8" in bad.stdout
    assert [m.login for m in cap.messages] == ["ana@example.org", "ana@example.org"]
    # Login checks: the first, and the wrong password; the second success came from the cache.
    assert cap.sessions == 2 + 2


async def test_without_login_every_recipient_is_refused(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    cfg = make_config(tmp_path, db_url, upstream.port, relay={"auth": "local"})
    relay = await service.start_relay(cfg, store)
    try:

        def go() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port_of(cfg), timeout=30) as c:
                c.ehlo("client.test")
                c.mail("me@example.com")
                return c.rcpt("ana@example.org")

        code, text = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert code == 530 and text.startswith(b"5.7.0 Authentication required")
    assert upstream.messages == []


async def test_beyond_loopback_logins_wait_for_starttls(
    tmp_path: Path, db_url: str, store, upstream, cert
) -> None:
    cfg = make_config(
        tmp_path, db_url, upstream.port, relay={"auth": "local", "tls": "starttls", **cert}
    )
    cfg = cfg.__class__(
        **{
            **cfg.__dict__,
            "relay": cfg.relay.__class__(
                **{**cfg.relay.__dict__, "listen": "0.0.0.0:" + cfg.relay.listen.rsplit(":", 1)[1]}
            ),
        }
    )
    relay = await service.start_relay(cfg, store)
    try:

        def go() -> tuple[dict, tuple[int, bytes], dict]:
            with smtplib.SMTP("127.0.0.1", port_of(cfg), timeout=30) as c:
                c.ehlo("client.test")
                before = dict(c.esmtp_features)
                mail = c.mail("me@example.com")
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                c.starttls(context=ctx)
                c.ehlo("client.test")
                return before, mail, dict(c.esmtp_features)

        before, mail, after = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert "auth" not in before and "starttls" in before
    assert mail[0] == 530
    assert after["auth"].split() == ["LOGIN", "PLAIN"]


async def test_repeated_failures_are_slowed_then_refused(
    tmp_path: Path, db_url: str, store, upstream
) -> None:
    cfg = make_config(tmp_path, db_url, upstream.port, relay={"auth": "local"})
    relay = await service.start_relay(cfg, store)
    try:

        def go() -> list[int]:
            codes = []
            with smtplib.SMTP("127.0.0.1", port_of(cfg), timeout=60) as c:
                c.ehlo("client.test")
                c.user, c.password = "nobody@example.org", "not-the-password"
                for _ in range(6):
                    try:
                        c.auth("PLAIN", c.auth_plain)
                    except smtplib.SMTPAuthenticationError as exc:
                        codes.append(exc.smtp_code)
            return codes

        codes = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert codes == [535] * 5 + [454]


def test_user_command(tmp_path: Path, db_url: str, store) -> None:
    cfg = config_file(tmp_path, db_url)
    assert (
        mailping(
            cfg,
            "user",
            "add",
            "bob@example.org",
            "--password-stdin",
            stdin="long enough password\n",
        ).returncode
        == 0
    )
    changed = mailping(
        cfg, "user", "add", "bob@example.org", "--password-stdin", stdin="another long password\n"
    )
    assert changed.stdout.startswith("changed the password of bob@example.org")
    short = mailping(cfg, "user", "add", "eve@example.org", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    assert mailping(cfg, "user", "list").stdout.split() == ["bob@example.org"]
    assert mailping(cfg, "user", "remove", "bob@example.org").returncode == 0
    missing = mailping(cfg, "user", "remove", "bob@example.org")
    assert missing.returncode == 2 and "no user 'bob@example.org'" in missing.stderr
    assert mailping(cfg, "user", "add").returncode == 2


def nmap_open_relay(port: int) -> str:
    out = subprocess.run(
        [
            require("nmap"),
            "-Pn",
            "-n",
            "-p",
            str(port),
            "--script",
            "+smtp-open-relay",
            "--script-args",
            "smtp-open-relay.domain=example.com",
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "smtp-open-relay" in out, out
    return out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_nmap_finds_no_open_relay(tmp_path: Path, db_url: str, store, upstream) -> None:
    require("nmap")
    closed = make_config(tmp_path / "closed", db_url, upstream.port, relay={"auth": "local"})
    relay = await service.start_relay(closed, store)
    try:
        verdict = await asyncio.to_thread(nmap_open_relay, port_of(closed))
    finally:
        await relay.close()
    assert "Server isn't an open relay, authentication needed" in verdict
    # The check can fail: the loopback-only demo mode (auth = "none") relays for anyone here.
    demo = make_config(tmp_path / "demo", db_url, upstream.port, relay={"auth": "none"})
    relay = await service.start_relay(demo, store)
    try:
        verdict = await asyncio.to_thread(nmap_open_relay, port_of(demo))
    finally:
        await relay.close()
    assert "Server is an open relay" in verdict
    assert upstream.messages == []  # nmap stops at RCPT; nothing was ever forwarded


# --- every TLS mode beyond loopback, and secrets kept out of logs (issue 12) ---


def machine_address() -> str:
    """An address of this machine that is not loopback: traffic to it never leaves the machine,
    yet the relay sees a non-loopback listen address and peer, as it would on a server."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for value in out:
        if ipaddress.ip_address(value).version == 4 and not ipaddress.ip_address(value).is_loopback:
            return value
    pytest.fail(f"this machine has no non-loopback IPv4 address to listen on (hostname -I: {out})")


def swaks_at(server: str, port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            require("swaks"),
            "--server",
            server,
            "--port",
            str(port),
            "--from",
            "ana@example.org",
            "--to",
            "carol@example.net",
            "--data",
            str(HTML_FILE),
            "--timeout",
            "20",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def add_local_user(store, name: str, password: str) -> None:
    async with store.begin() as s:
        await set_local_user(s, name, auth_module.hash_password(password))


@pytest.mark.parametrize(("tls", "flag"), [("starttls", "--tls"), ("implicit", "--tlsc")])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_every_tls_mode_takes_a_login_on_a_non_loopback_address(
    tmp_path: Path, db_url: str, store, tls: str, flag: str
) -> None:
    address = machine_address()
    c, k = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(address, c, k)
    await add_local_user(store, "ana@example.org", "correct horse battery")
    async with capture_upstream(logins={"relay@example.com": "relay-secret"}) as cap:
        cfg = make_config(
            tmp_path,
            db_url,
            cap.port,
            relay={
                "listen": f"{address}:{free_port()}",
                "auth": "local",
                **INGRID_AS_ANA,
                "tls": tls,
                "cert_file": str(c),
                "key_file": str(k),
            },
            upstream={"username": "relay@example.com"},
            upstream_password="relay-secret",
        )
        relay = await service.start_relay(cfg, store)
        try:
            login = ("--auth", "PLAIN", "--auth-user", "ana@example.org")
            ok = await asyncio.to_thread(
                swaks_at,
                address,
                port_of(cfg),
                flag,
                *login,
                "--auth-password",
                "correct horse battery",
            )
            # Before STARTTLS nothing offers a login beyond loopback.
            plain = (
                await asyncio.to_thread(swaks_at, address, port_of(cfg), "--quit-after", "EHLO")
                if tls == "starttls"
                else None
            )
        finally:
            await relay.close()
    assert "<~  250 2.0.0 Sent to 1 recipient" in ok.stdout, ok.stdout + ok.stderr
    assert len(cap.messages) == 1
    if plain is not None:
        assert "250-STARTTLS" in plain.stdout and "AUTH" not in plain.stdout, plain.stdout


def test_tls_none_beyond_loopback_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "mailping.toml"
    path.write_text(f"[relay]\nlisten = '{machine_address()}:2525'\nauth = 'local'\ntls = 'none'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == "relay.tls" and err.value.file == str(path)


@pytest.mark.parametrize(
    ("upstream", "key"),
    [
        ("host = 'smtp.example.com'\ntls = 'none'", "upstream.tls"),
        ("host = 'smtp.example.com'\nverify_certificate = false", "upstream.verify_certificate"),
    ],
)
def test_upstream_logins_never_cross_the_network_unprotected(
    tmp_path: Path, upstream: str, key: str
) -> None:
    path = tmp_path / "mailping.toml"
    path.write_text(f"[relay]\nauth = 'upstream'\n[upstream]\n{upstream}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == key and err.value.file == str(path)
    assert "passwords" in err.value.reason
    # On this machine (a local test server or a tunnel) it is allowed.
    path.write_text(
        f"[relay]\nauth = 'upstream'\n[upstream]\n{upstream}\n".replace(
            "smtp.example.com", "127.0.0.1"
        )
    )
    assert load_config(path, environ={}).relay.auth == "upstream"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_passwords_never_reach_a_log_even_at_debug(
    tmp_path: Path, db_url: str, store, upstream, caplog, mechanism: str
) -> None:
    password = "Sup3r-Secret-Passw0rd"
    await add_local_user(store, "ana@example.org", password)
    cfg = make_config(tmp_path, db_url, upstream.port, relay={"auth": "local"})
    caplog.set_level(logging.DEBUG)
    relay = await service.start_relay(cfg, store)
    try:

        def go() -> list[int]:
            codes = []
            for pw in (password, password + "-wrong"):
                with smtplib.SMTP("127.0.0.1", port_of(cfg), timeout=30) as c:
                    c.set_debuglevel(0)
                    c.ehlo("client.test")
                    try:
                        codes.append(c.login("ana@example.org", pw)[0])
                    except smtplib.SMTPAuthenticationError as exc:
                        codes.append(exc.smtp_code)
                    c.user, c.password = "ana@example.org", pw
            return codes

        codes = await asyncio.to_thread(go)
    finally:
        await relay.close()
    assert codes == [235, 535]
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "auth_" in logged or "AUTH" in logged  # DEBUG logging was really captured
    for pw in (password, password + "-wrong"):
        forms = [
            pw,
            b64encode(pw.encode()).decode(),
            b64encode(f"\0ana@example.org\0{pw}".encode()).decode(),
        ]
        for form in forms:
            assert form not in logged, form
    assert password not in repr(Credentials("ana@example.org", password))


# --- who may log in (relay.allowed_senders) and as whom they may send (auth = "local") ---


async def web_login(base: str, username: str, password: str) -> int:
    """POST the report's login form as a browser would (XSRF cookie and field); the status."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    client = AsyncHTTPClient()
    first = await client.fetch(f"{base}/login", raise_error=False)
    token = re.search(r'name="_xsrf" value="([^"]+)"', first.body.decode()).group(1)
    cookie = first.headers["Set-Cookie"].split(";", 1)[0]
    body = urllib.parse.urlencode({"_xsrf": token, "username": username, "password": password})
    reply = await client.fetch(
        HTTPRequest(
            f"{base}/login",
            method="POST",
            headers={"Cookie": cookie},
            body=body,
            follow_redirects=False,
            request_timeout=30,
        ),
        raise_error=False,
    )
    return reply.code


def smtp_login(port: int, username: str, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        try:
            return c.login(username, password)[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_allowed_senders_limit_who_may_log_in_to_relay_and_report(
    tmp_path: Path, db_url: str, store
) -> None:
    logins = {"ana@example.org": "ana-password-1", "eve@gmail.example": "eve-password-1"}
    async with capture_upstream(logins=logins) as cap:
        cfg = make_config(
            tmp_path,
            db_url,
            cap.port,
            relay={"auth": "upstream", "allowed_senders": ("@example.org", "boss@partner.test")},
        )
        relay = await service.start_relay(cfg, store)
        pixel = await start_pixelserver(cfg, store)
        try:
            eve = await asyncio.to_thread(
                smtp_login, port_of(cfg), "eve@gmail.example", "eve-password-1"
            )
            checks_for_eve = cap.sessions
            ana = await asyncio.to_thread(
                smtp_login, port_of(cfg), "ana@example.org", "ana-password-1"
            )
            web_eve = await web_login(
                cfg.pixelserver.public_url, "eve@gmail.example", "eve-password-1"
            )
            web_ana = await web_login(
                cfg.pixelserver.public_url, "ana@example.org", "ana-password-1"
            )
        finally:
            await relay.close()
            await pixel.close()
    # Eve's password is right at her provider, but she is not on the list: refused, and the
    # provider was not even asked (the relay is no oracle for other people's passwords).
    assert eve == 535 and checks_for_eve == 0
    assert ana == 235
    assert web_eve == 401 and web_ana == 302


def test_check_config_warns_when_a_shared_provider_lets_anyone_in(tmp_path: Path) -> None:
    def check(upstream_host: str, extra: str = "") -> subprocess.CompletedProcess:
        path = tmp_path / "mailping.toml"
        path.write_text(
            f"[relay]\nauth = 'upstream'\n{extra}\n[upstream]\nhost = '{upstream_host}'\n"
        )
        return mailping(path, "check-config")

    for host in (
        "smtp.gmail.com",
        "smtp.office365.com",
        "smtp.mail.yahoo.com",
        "smtp.mail.me.com",
        "smtp.fastmail.com",
        "smtp.zoho.eu",
        "mail.gmx.net",
    ):
        shared = check(host)
        assert shared.returncode == 0, shared.stderr
        assert "WARNING" in shared.stderr and "relay.allowed_senders" in shared.stderr, host
    listed = check("smtp.gmail.com", "allowed_senders = ['@example.org']")
    own = check("mail.example.org")
    assert "WARNING" not in listed.stderr + own.stderr


@pytest.fixture
async def local_site(tmp_path: Path, db_url: str, store):
    """auth = "local" with Ana, who may also send as sales@ and anyone at team.example.org."""
    await add_local_user(store, "ana@example.org", "ana-password-1")
    await add_local_user(store, "relay-bot", "bot-password-1")
    async with capture_upstream(logins={"relay@example.com": "x"}) as cap:
        cfg = make_config(
            tmp_path,
            db_url,
            cap.port,
            relay={
                "auth": "local",
                "sender_login_maps": {
                    "ana@example.org": ("sales@example.org", "@team.example.org"),
                    "relay-bot": ("*",),
                },
            },
            upstream={"username": "relay@example.com"},
            upstream_password="x",
        )
        relay = await service.start_relay(cfg, store)
        try:
            yield port_of(cfg), cap
        finally:
            await relay.close()


def send_as_login(
    port: int, login: tuple[str, str], envelope_from: str, header_from: str
) -> tuple[tuple[int, bytes], tuple[int, bytes] | None]:
    """MAIL's reply, and DATA's reply when MAIL was accepted."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = header_from, "carol@example.net", "Hello"
    msg.set_content("plain")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        c.login(*login)
        mail = c.mail(envelope_from)
        if mail[0] != 250:
            return mail, None
        c.rcpt("carol@example.net")
        return mail, c.data(msg.as_bytes())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_local_login_sends_only_as_its_own_addresses(local_site) -> None:
    port, cap = local_site
    ana = ("ana@example.org", "ana-password-1")
    results = {
        case: await asyncio.to_thread(send_as_login, port, who, env, head)
        for case, who, env, head in [
            ("own", ana, "Ana@Example.org", "Ana <ana@example.org>"),
            ("mapped", ana, "sales@example.org", "Sales <x@team.example.org>"),
            ("other envelope", ana, "bob@example.org", "ana@example.org"),
            ("other header", ana, "ana@example.org", "Bob <bob@example.org>"),
            ("second header address", ana, "ana@example.org", "ana@example.org, bob@example.org"),
            ("anyone", ("relay-bot", "bot-password-1"), "alerts@ops.test", "Ops <alerts@ops.test>"),
        ]
    }
    for case in ("own", "mapped", "anyone"):
        mail, data = results[case]
        assert mail[0] == 250 and data is not None and data[0] == 250, (case, results[case])
    mail, data = results["other envelope"]
    assert mail[0] == 553 and mail[1].startswith(b"5.7.1 ") and data is None
    assert b"bob@example.org" in mail[1] and b"ana@example.org" in mail[1]
    for case in ("other header", "second header address"):
        mail, data = results[case]
        assert mail[0] == 250 and data is not None and data[0] == 550, (case, data)
        assert data[1].startswith(b"5.7.1 From: ") and b"bob@example.org" in data[1]
    assert len(cap.messages) == 3


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_forged_sender_is_refused_to_swaks_too(local_site) -> None:
    port, cap = local_site
    out = await asyncio.to_thread(
        swaks_at,
        "127.0.0.1",
        port,
        "--from",
        "ceo@example.org",
        "--auth",
        "LOGIN",
        "--auth-user",
        "ana@example.org",
        "--auth-password",
        "ana-password-1",
    )
    assert "<** 553 5.7.1" in out.stdout, out.stdout
    assert cap.messages == []


# --- login throttling shared by worker processes through the store ---


def guess(port: int, username: str, password: str, source: str = "127.0.0.1") -> int:
    """One login attempt on its own connection; the reply code."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(source, 0)) as c:
        c.ehlo("client.test")
        c.user, c.password = username, password
        try:  # one mechanism: login() would try LOGIN after a failed PLAIN, two attempts
            return c.auth("PLAIN", c.auth_plain)[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


async def parallel_guesses(port: int, attempts: list[tuple[str, str]], source: str) -> list[int]:
    """All attempts at once, each on its own connection (and so spread over the workers)."""
    return sorted(
        await asyncio.gather(
            *(asyncio.to_thread(guess, port, user, pw, source) for user, pw in attempts)
        )
    )


async def test_parallel_guesses_across_worker_processes_are_counted_before_the_check(
    tmp_path: Path, db_url: str, store
) -> None:
    port = free_port()
    path = tmp_path / "mailping.toml"
    path.write_text(
        f'data_dir = "{tmp_path}/data"\n[database]\nurl = "{db_url}"\n'
        f'[relay]\nlisten = "127.0.0.1:{port}"\nauth = "local"\n'
        "login_failures_per_user = 3\nlogin_failures_per_network = 6\n"
    )
    add = mailping(
        path, "user", "add", "ana@example.org", "--password-stdin", stdin="ana-pass-12\n"
    )
    assert add.returncode == 0, add.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "--config", str(path), "relay", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(2):
            await asyncio.to_thread(wait_for_line, proc, r"send a test mail")
        # From 127.0.0.0/24: 4 users, 2 guesses each, at once. No user reaches 3, but the
        # network reaches 6: two attempts are refused before any check.
        network = await parallel_guesses(
            port,
            [(f"u{i}@example.org", "wrong-guess") for i in range(4) for _ in range(2)],
            "127.0.0.1",
        )
        # From another network (this machine's non-loopback address): 6 guesses for Ana.
        other = machine_address()
        user = await parallel_guesses(port, [("ana@example.org", "wrong-guess")] * 6, other)
        # Ana's own password, now: still refused until the window has passed.
        right = await asyncio.to_thread(guess, port, "ana@example.org", "ana-pass-12", other)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert network == [454, 454] + [535] * 6, out
    assert user == [454] * 3 + [535] * 3, out
    assert right == 454
    async with store() as s:
        rows = (await s.execute(select(func.count()).select_from(AttemptRow))).scalar()
    assert rows == 4 + 1 + 2  # u0..u3 and ana, two networks: nothing else is kept


async def test_the_throttle_table_keeps_only_the_last_window(store) -> None:
    now = [1_000_000.0]
    throttle = LoginThrottle(store, per_user=5, per_network=1000, window=600, clock=lambda: now[0])
    for i in range(50):  # a spray of names from many networks
        await throttle.attempt(f"user{i}@example.org", f"198.51.{i}.7")
    now[0] += 600 + PRUNE_EVERY
    await throttle.attempt("late@example.org", "203.0.113.9")
    async with store() as s:
        rows = (await s.execute(select(AttemptRow.key))).scalars().all()
    assert len(rows) == 2  # the late user and its network; the ended window is gone


def test_sender_login_maps_and_allowed_senders_are_checked_at_load(tmp_path: Path) -> None:
    path = tmp_path / "mailping.toml"
    path.write_text(
        "[relay]\nauth = 'local'\nallowed_senders = ['@example.org']\n"
        "[relay.sender_login_maps]\n"
        "'Ana@Example.org' = ['sales@example.org', '@team.example.org']\n"
        "scanner = ['*']\n"
    )
    relay = load_config(path, environ={}).relay
    assert relay.sender_login_maps["scanner"] == ("*",)
    assert auth_module.SenderPolicy(relay.sender_login_maps).owns(
        "ana@example.org", "x@TEAM.example.org"
    )
    for bad, key in [
        ("allowed_senders = ['example.org']", "relay.allowed_senders"),
        ("allowed_senders = ['*']", "relay.allowed_senders"),
        ("sender_login_maps = { ana = ['sales'] }", "relay.sender_login_maps.ana"),
        ("sender_login_maps = { ana = 'sales@example.org' }", "relay.sender_login_maps"),
    ]:
        path.write_text(f"[relay]\nauth = 'local'\n{bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(path, environ={})
        assert err.value.key == key, (bad, err.value)


@pytest.mark.parametrize(
    ("relay", "key"),
    [("auth = 'none'", "relay.auth"), ("auth = 'local'\ntls = 'none'", "relay.tls")],
)
def test_behind_a_proxy_balancer_loopback_is_no_excuse(
    tmp_path: Path, relay: str, key: str
) -> None:
    """nginx on the same machine passes remote clients to a loopback listen address: neither an
    open relay nor logins in clear text."""
    path = tmp_path / "mailping.toml"
    path.write_text(f"[relay]\nlisten = '127.0.0.1:2525'\nproxy_protocol = true\n{relay}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == key


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_guesses_on_the_report_login_count_for_the_account_too(
    tmp_path: Path, db_url: str, store
) -> None:
    """The pages and the relay share one count per account: guessing cannot move from one to
    the other, nor run in parallel on the pages."""
    await add_local_user(store, "ana@example.org", "ana-password-1")
    cfg = make_config(
        tmp_path,
        db_url,
        None,
        relay={"auth": "local", "login_failures_per_user": 3},
    )
    relay = await service.start_relay(cfg, store)
    pixel = await start_pixelserver(cfg, store)
    base = cfg.pixelserver.public_url
    try:
        smtp = [await asyncio.to_thread(guess, port_of(cfg), "ana@example.org", "x") for _ in "12"]
        pages = await asyncio.gather(*(web_login(base, "ana@example.org", "y") for _ in "12"))
        right = await web_login(base, "ana@example.org", "ana-password-1")
    finally:
        await relay.close()
        await pixel.close()
    # The pages' two guesses were the account's 3rd and 4th attempts: the 4th is over the
    # limit and refused before its check, as the pages refuse a locked login (429).
    assert smtp == [535, 535] and sorted(pages) == [401, 429]
    assert right == 429  # 5 attempts on an account allowed 3: locked for the window
