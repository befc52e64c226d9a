"""The relay's own account with OAuth 2.0 (upstream.auth = "xoauth2"), against real parts: a
token endpoint over HTTP issuing expiring client-credentials tokens, and an SMTP upstream that
takes nothing but XOAUTH2/OAUTHBEARER with those tokens. Mail goes end to end over SMTP."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import email
import logging
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from relay import queue_admin, service
from relay.certs import make_self_signed
from relay.config import ConfigError, OAuthConfig, load_config
from relay.spool import Spool
from tests.conftest import make_config
from tests.helpers import eventually, smtp_send
from tests.oauth_servers import oauth_smtp, token_endpoint
from tests.test_queue import html_message

MAILBOX = "relay@contoso.example"
CLIENT, SECRET = "5f8c-app-id", "s3cret~value.with+chars"
SCOPE = "https://outlook.office365.com/.default"
ME = "me@example.com"
A, B = "ana@example.org", "bob@example.net"


def oauth_config(tmp_path: Path, db_url: str, port: int, token_url: str, secret: str = SECRET):
    cfg = make_config(
        tmp_path,
        db_url,
        port,
        relay={"auth": "none"},
        upstream={
            "auth": "xoauth2",
            "username": MAILBOX,
            "oauth": OAuthConfig(
                token_url=token_url, client_id=CLIENT, client_secret_env="SECRET", scope=SCOPE
            ),
        },
    )
    return dataclasses.replace(cfg, oauth_client_secret=secret)


async def send(port: int, rcpts: list[str], subject: str) -> str:
    return await asyncio.to_thread(smtp_send, port, ME, rcpts, html_message(subject))


def relay_port(cfg) -> int:
    return int(cfg.relay.listen.rsplit(":", 1)[1])


async def test_forwards_through_an_xoauth2_only_upstream_with_one_cached_token(
    tmp_path, db_url, store, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        token_endpoint({CLIENT: SECRET}, scope=SCOPE) as ep,
        oauth_smtp(ep, MAILBOX) as up,
    ):
        cfg = oauth_config(tmp_path, db_url, up.port, ep.url)
        relay = await service.start_relay(cfg, store, with_digests=False)
        try:
            assert (await send(relay_port(cfg), [A, B], "First")).startswith("250")
            assert (await send(relay_port(cfg), [A], "Second")).startswith("250")
            await eventually(lambda: len(up.messages) == 3)
        finally:
            await relay.close()
    subjects = sorted(email.message_from_bytes(m.data)["Subject"] for m in up.messages)
    assert subjects == ["First", "First", "Second"]
    assert {m.login for m in up.messages} == {MAILBOX}
    assert ep.grants == 1, "one token serves every connection until it is due for renewal"
    assert up.logins and set(up.logins) == {"ok"}
    # The token is in neither the logs (the test's own SMTP stand-in excepted) nor the store.
    [token] = set(up.seen_tokens)
    ours = [r for r in caplog.records if r.name != "mail.log"]
    assert any("new access token" in r.getMessage() for r in ours)
    assert not [r for r in ours if token in r.getMessage() or token[8:40] in r.getMessage()]
    assert not [r for r in ours if SECRET in r.getMessage()]
    async with store() as s:
        dump = await _store_text(s)
    assert token not in dump and SECRET not in dump
    assert token.encode() not in b"".join(
        p.read_bytes() for p in cfg.data_dir.rglob("*") if p.is_file()
    )


async def _store_text(session) -> str:
    """Every text column of every table, as one string."""
    conn = await session.connection()
    names = await conn.run_sync(lambda c: __import__("sqlalchemy").inspect(c).get_table_names())
    out = []
    for name in names:
        rows = (await session.execute(text(f'SELECT * FROM "{name}"'))).all()
        out.extend(repr(tuple(r)) for r in rows)
    return "\n".join(out)


async def test_token_is_renewed_before_it_expires(tmp_path, db_url, store) -> None:
    async with (
        token_endpoint({CLIENT: SECRET}, scope=SCOPE, lifetime=2) as ep,
        oauth_smtp(ep, MAILBOX) as up,
    ):
        cfg = oauth_config(tmp_path, db_url, up.port, ep.url)
        relay = await service.start_relay(cfg, store, with_digests=False)
        try:
            assert (await send(relay_port(cfg), [A], "Before")).startswith("250")
            await eventually(lambda: len(up.messages) == 1)
            assert ep.grants == 1
            await asyncio.sleep(2.1)  # the first token has expired at the endpoint
            assert (await send(relay_port(cfg), [B], "After")).startswith("250")
            await eventually(lambda: len(up.messages) == 2)
        finally:
            await relay.close()
    assert ep.grants == 2
    assert up.logins == ["ok", "ok"], "renewed before use, not after a refusal"


async def test_a_revoked_token_is_renewed_once_on_535(tmp_path, db_url, store) -> None:
    async with (
        token_endpoint({CLIENT: SECRET}, scope=SCOPE) as ep,
        oauth_smtp(ep, MAILBOX) as up,
    ):
        cfg = oauth_config(tmp_path, db_url, up.port, ep.url)
        relay = await service.start_relay(cfg, store, with_digests=False)
        try:
            assert (await send(relay_port(cfg), [A], "One")).startswith("250")
            await eventually(lambda: len(up.messages) == 1)
            ep.revoke_all()  # an administrator revoked the app's tokens
            assert (await send(relay_port(cfg), [B], "Two")).startswith("250")
            await eventually(lambda: len(up.messages) == 2)
        finally:
            await relay.close()
    assert up.logins == ["ok", "refused", "ok"]
    assert ep.grants == 2


async def test_a_wrong_client_secret_keeps_copies_queued_with_the_reason(
    tmp_path, db_url, store, caplog
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        token_endpoint({CLIENT: SECRET}, scope=SCOPE) as ep,
        oauth_smtp(ep, MAILBOX) as up,
    ):
        cfg = oauth_config(tmp_path, db_url, up.port, ep.url, secret="expired-secret")
        relay = await service.start_relay(cfg, store, with_digests=False)
        try:
            reply = await send(relay_port(cfg), [A, B], "Waiting")
            assert reply.startswith("250"), reply  # queued: the client's mail is not lost
            spool = Spool(cfg.spool_dir)
            await eventually(lambda: "after 1 try" in "\n".join(queue_admin.list_queue(spool)))
            listing = "\n".join(queue_admin.list_queue(spool))
        finally:
            await relay.close()
    assert f"{A}: deferred after 1 try" in listing and f"{B}: deferred after 1 try" in listing
    assert "the token endpoint refused the client: invalid_client" in listing
    assert up.messages == [] and up.logins == []
    # One line about the refused grant (the queue logs each copy's deferral as always).
    lines = [r for r in caplog.records if r.name == "mailping.oauth"]
    assert [r.getMessage() for r in lines] == [
        "upstream OAuth: the token endpoint refused the client: invalid_client "
        "(AADSTS7000215: Invalid client secret.)"
    ]
    assert ep.requests == 2, "body, then Basic once; not again for the second copy"
    assert not [r for r in caplog.records if r.exc_info], "no stack trace"
    assert "expired-secret" not in caplog.text


async def test_secret_in_http_basic_when_the_endpoint_wants_it(tmp_path, db_url, store) -> None:
    async with (
        token_endpoint({CLIENT: SECRET}, scope=SCOPE, basic_only=True) as ep,
        oauth_smtp(ep, MAILBOX) as up,
    ):
        cfg = oauth_config(tmp_path, db_url, up.port, ep.url)
        relay = await service.start_relay(cfg, store, with_digests=False)
        try:
            assert (await send(relay_port(cfg), [A], "One")).startswith("250")
            assert (await send(relay_port(cfg), [B], "Two")).startswith("250")
            await eventually(lambda: len(up.messages) == 2)
        finally:
            await relay.close()
    assert ep.grants == 1 and ep.requests == 2, "body refused once, then Basic kept"


async def test_an_unreachable_token_endpoint_defers_with_words(tmp_path, db_url, store) -> None:
    from tests.conftest import free_port

    async with token_endpoint({CLIENT: SECRET}, scope=SCOPE) as ep, oauth_smtp(ep, MAILBOX) as up:
        url = f"http://127.0.0.1:{free_port()}/token"
        cfg = oauth_config(tmp_path, db_url, up.port, url)
        relay = await service.start_relay(cfg, store, with_digests=False)
        try:
            assert (await send(relay_port(cfg), [A], "Nowhere")).startswith("250")
            spool = Spool(cfg.spool_dir)
            await eventually(lambda: "after 1 try" in "\n".join(queue_admin.list_queue(spool)))
            listing = "\n".join(queue_admin.list_queue(spool))
        finally:
            await relay.close()
    assert "could not reach the token endpoint 127.0.0.1" in listing


def rsa_certificate(tmp_path: Path) -> tuple[Path, Path, x509.Certificate]:
    """What an administrator uploads to the app registration (certificate) and keeps (key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailping relay")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "app.crt", tmp_path / "app.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert


async def test_a_certificate_instead_of_a_secret(tmp_path, db_url, store) -> None:
    cert_path, key_path, cert = rsa_certificate(tmp_path)
    async with (
        token_endpoint({}, scope=SCOPE, certificates={CLIENT: cert}) as ep,
        oauth_smtp(ep, MAILBOX) as up,
    ):
        cfg = oauth_config(tmp_path, db_url, up.port, ep.url, secret="")
        oauth = dataclasses.replace(
            cfg.upstream.oauth,
            client_secret_env="",
            certificate_file=str(cert_path),
            certificate_key_file=str(key_path),
        )
        cfg = dataclasses.replace(cfg, upstream=dataclasses.replace(cfg.upstream, oauth=oauth))
        relay = await service.start_relay(cfg, store, with_digests=False)
        try:
            assert (await send(relay_port(cfg), [A], "Signed")).startswith("250")
            await eventually(lambda: len(up.messages) == 1)
        finally:
            await relay.close()
    assert ep.grants == 1 and up.logins == ["ok"]


# --- configuration ---------------------------------------------------------------------------

BASE = f"""
[relay]
listen = "127.0.0.1:2525"
[upstream]
host = "smtp.office365.com"
auth = "xoauth2"
username = "{MAILBOX}"
[upstream.oauth]
token_url = "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
client_id = "{CLIENT}"
client_secret_env = "MP_SECRET"
scope = "{SCOPE}"
"""


def _load(tmp_path: Path, body: str, env: dict[str, str] | None = None):
    path = tmp_path / "mailping.toml"
    path.write_text(body)
    return load_config(path, {"MP_SECRET": SECRET} if env is None else env)


def test_config_reads_upstream_oauth(tmp_path) -> None:
    cfg = _load(tmp_path, BASE)
    assert cfg.upstream.auth == "xoauth2" and cfg.upstream.oauth.client_id == CLIENT
    assert cfg.oauth_client_secret == SECRET and SECRET not in repr(cfg)
    assert cfg.relay.auth == "none", "clients are not checked against an upstream password"
    make_self_signed("relay.example", tmp_path / "cert.pem", tmp_path / "key.pem")
    listen = (
        'listen = "0.0.0.0:2525"\ntls = "starttls"\ncert_file = "cert.pem"\nkey_file = "key.pem"'
    )
    wide = _load(tmp_path, BASE.replace('listen = "127.0.0.1:2525"', listen))
    assert wide.relay.auth == "local", "beyond loopback: logins made with `mailping user add`"


@pytest.mark.parametrize(
    ("change", "env", "key", "words"),
    [
        ("", {}, "upstream.oauth.client_secret_env", "MP_SECRET is not set"),
        ('client_secret_env = "MP_SECRET"', None, "upstream.oauth.client_secret_env", "name the"),
        ('token_url = "https://', None, "upstream.oauth.token_url", "needed"),
        ('token_url = "http://idp.example/token"', None, "upstream.oauth.token_url", "https"),
        ('secret = "inline"', None, "upstream.oauth.secret", "unknown key"),
        ('client_auth = "header"', None, "upstream.oauth.client_auth", "must be one of"),
    ],
)
def test_config_mistakes_name_the_key(tmp_path, change, env, key, words) -> None:
    body = BASE
    if change.startswith("client_secret_env"):
        body = body.replace(change + "\n", "")
    elif change.startswith('token_url = "https://'):
        body = "\n".join(ln for ln in body.splitlines() if not ln.startswith("token_url"))
    elif change.startswith("token_url"):
        body = "\n".join(change if ln.startswith("token_url") else ln for ln in body.splitlines())
    elif change:
        body += change + "\n"
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body, env)
    assert key in str(err.value) and words in str(err.value)
    assert str(tmp_path / "mailping.toml") in str(err.value)


def test_config_refuses_upstream_logins_with_xoauth2(tmp_path) -> None:
    body = BASE.replace('listen = "127.0.0.1:2525"', 'listen = "127.0.0.1:2525"\nauth = "upstream"')
    with pytest.raises(ConfigError, match="relay.auth"):
        _load(tmp_path, body)
    with pytest.raises(ConfigError, match="upstream.tls"):
        _load(tmp_path, BASE.replace('auth = "xoauth2"', 'auth = "xoauth2"\ntls = "none"'))


# --- mailping check-config --try-upstream ----------------------------------------------------


async def test_check_config_try_upstream_gets_a_token_and_logs_in(tmp_path, monkeypatch) -> None:
    from relay.cli import main

    async with token_endpoint({CLIENT: SECRET}, scope=SCOPE) as ep, oauth_smtp(ep, MAILBOX) as up:
        good = tmp_path / "good.toml"
        good.write_text(
            f'data_dir = "{tmp_path}/data"\n'
            + BASE.replace('host = "smtp.office365.com"', f'host = "127.0.0.1"\nport = {up.port}')
            .replace('auth = "xoauth2"', 'auth = "xoauth2"\ntls = "none"')
            .replace("https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token", ep.url)
        )
        monkeypatch.setenv("MP_SECRET", SECRET)
        started = time.monotonic()
        ok = await asyncio.to_thread(
            main, ["check-config", "--try-upstream", "--config", str(good)]
        )
        assert ok == 0
        assert ep.grants == 1 and up.logins == ["ok"] and up.messages == []
        monkeypatch.setenv("MP_SECRET", "wrong")
        bad = await asyncio.to_thread(
            main, ["check-config", "--try-upstream", "--config", str(good)]
        )
        assert bad != 0 and ep.grants == 1
        assert time.monotonic() - started < 20


# --- [connect]: users' own accounts ---------------------------------------------------------

CONNECT = """
[relay]
listen = "127.0.0.1:2525"
auth = "local"
[connect]
key_env = "MP_KEY"
microsoft_client_id = "ms-app"
microsoft_client_secret_env = "MS_SECRET"
"""
FERNET_KEY = "x" * 43 + "="


@pytest.mark.parametrize(
    ("body", "env", "key", "words"),
    [
        (
            CONNECT.replace('auth = "local"', 'auth = "none"'),
            None,
            "connect.microsoft_client_id",
            'relay.auth = "local"',
        ),
        (CONNECT.replace('key_env = "MP_KEY"', ""), None, "connect.key_env", "Fernet"),
        (CONNECT, {"MS_SECRET": "s"}, "connect.key_env", "MP_KEY is not set"),
        (CONNECT, {"MS_SECRET": "s", "MP_KEY": "short"}, "connect.key_env", "not a Fernet key"),
        (CONNECT, {"MS_SECRET": "s", "MP_KEY": FERNET_KEY + ",old"}, "connect.key_env", "rotate"),
        (CONNECT, {"MP_KEY": FERNET_KEY}, "connect.microsoft_client_secret_env", "not set"),
        (
            CONNECT + 'gmail_api_url = "http://gmail.example"\n',
            None,
            "connect.gmail_api_url",
            "https",
        ),
    ],
)
def test_connect_config_mistakes_name_the_key(tmp_path, body, env, key, words) -> None:
    env = {"MS_SECRET": "s", "MP_KEY": FERNET_KEY} if env is None else env
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body, env)
    assert key in str(err.value) and words in str(err.value)


def test_connect_config_reads_secrets_out_of_the_file(tmp_path) -> None:
    cfg = _load(tmp_path, CONNECT, {"MS_SECRET": "s3", "MP_KEY": FERNET_KEY})
    assert cfg.connect.offered == ("microsoft",)
    assert cfg.connect_secrets == {"microsoft": "s3"} and cfg.connect_key == FERNET_KEY
    assert "s3" not in repr(cfg) and FERNET_KEY not in repr(cfg)
    two = _load(tmp_path, CONNECT, {"MS_SECRET": "s3", "MP_KEY": f"{FERNET_KEY}, {FERNET_KEY}"})
    assert two.connect_key.count(",") == 1, "a new key first, the old one still opens tokens"


# --- the whole program, as an operator runs it -----------------------------------------------


async def test_mailping_relay_forwards_through_an_xoauth2_only_upstream(tmp_path) -> None:
    """`mailping relay` started from a config file, with the secret in its environment; its
    whole output (DEBUG) carries neither the secret nor a token."""
    import os
    import socket
    import sys

    from tests.conftest import free_port

    async with token_endpoint({CLIENT: SECRET}, scope=SCOPE) as ep, oauth_smtp(ep, MAILBOX) as up:
        port = free_port()
        config = tmp_path / "mailping.toml"
        config.write_text(
            f'data_dir = "{tmp_path}/data"\n'
            + BASE.replace("127.0.0.1:2525", f"127.0.0.1:{port}")
            .replace('host = "smtp.office365.com"', f'host = "127.0.0.1"\nport = {up.port}')
            .replace('auth = "xoauth2"', 'auth = "xoauth2"\ntls = "none"')
            .replace("https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token", ep.url)
        )
        env = {**os.environ, "MP_SECRET": SECRET}
        log_file = (tmp_path / "output.log").open("wb")  # a file: a full pipe would stall it
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "--log-level", "DEBUG", "relay",
            "--config", str(config),
            env=env, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:

            def listening() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0

            await eventually(listening, timeout=30)
            for subject in ("One", "Two"):
                assert (await send(port, [A], subject)).startswith("250")
            await eventually(lambda: len(up.messages) == 2)
        finally:
            proc.terminate()
            await proc.wait()
            log_file.close()
    assert ep.grants == 1 and set(up.logins) == {"ok"}
    text = (tmp_path / "output.log").read_text(errors="replace")
    assert "new access token" in text
    [token] = set(up.seen_tokens)
    sasl = base64.b64encode(f"user={MAILBOX}\x01auth=Bearer {token}\x01\x01".encode()).decode()
    assert token not in text and SECRET not in text and sasl not in text
