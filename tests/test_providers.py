"""Which upstreams file the copies they are sent in the sender's Sent folder, and the Sent-folder
guard that `upstream.sent_copy = "auto"` turns on for them."""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
from pathlib import Path

import pytest

from relay import providers, service
from relay.submit import is_google_host
from tests.conftest import CaptureUpstream, make_config
from tests.helpers import CORPUS_DIR, assert_unharmed


@pytest.mark.parametrize(
    ("host", "name", "files"),
    [
        ("smtp.gmail.com", "Google", True),
        ("SMTP.GMAIL.COM.", "Google", True),
        ("smtp-relay.gmail.com", "Google", True),
        ("aspmx.l.google.com", "Google", True),
        ("smtp.office365.com", "Microsoft 365", True),
        ("smtp-mail.outlook.com", "Outlook.com", True),
        ("smtp.zoho.com", "Zoho Mail", True),
        ("smtppro.zoho.eu", "Zoho Mail", True),
        ("smtp.mail.me.com", "iCloud Mail", False),
        ("smtp.mail.yahoo.com", "Yahoo Mail", None),
        ("smtp.fastmail.com", "Fastmail", None),
        ("mail.gmx.net", "GMX", None),
    ],
)
def test_known_upstreams(host: str, name: str, files: bool | None) -> None:
    provider = providers.provider_for_host(host)
    assert provider is not None and provider.name == name
    assert provider.files_sent_copy is files
    assert providers.files_sent_copy(host) is (files is True)
    assert provider.source  # every fact says where it comes from


@pytest.mark.parametrize(
    "host",
    [
        "",
        "127.0.0.1",
        "smtp.example.com",
        "gmail.com.evil.example",
        "notgmail.com",
        "office365.com.example.net",
        "myzoho.com",
    ],
)
def test_other_hosts_are_nobody_we_know(host: str) -> None:
    assert providers.provider_for_host(host) is None
    assert not providers.files_sent_copy(host)


def test_is_google_host_still_answers_for_its_callers() -> None:
    assert is_google_host("smtp.gmail.com") and providers.is_google_host("aspmx.l.google.com")
    assert not is_google_host("smtp.office365.com") and not is_google_host("smtp.example.com")


def test_every_suffix_belongs_to_one_provider() -> None:
    suffixes = [s for p in providers.PROVIDERS for s in p.suffixes]
    assert len(suffixes) == len(set(suffixes))
    assert all(s == s.lower().strip(".") and "." in s for s in suffixes)


@pytest.mark.parametrize(
    ("host", "mode", "outbox", "guarded"),
    [
        ("smtp.office365.com", "auto", False, True),
        ("smtp.gmail.com", "auto", False, True),
        ("smtp.zoho.eu", "auto", False, True),
        ("smtp.mail.me.com", "auto", False, False),
        ("smtp.fastmail.com", "auto", False, False),
        ("smtp.office365.com", "off", False, False),
        ("smtp.example.com", "guard", False, True),
        ("smtp.office365.com", "auto", True, False),  # the local outbox has no Sent folder
    ],
)
def test_auto_guards_the_providers_that_file_sent_copies(
    tmp_path: Path, host: str, mode: str, outbox: bool, guarded: bool
) -> None:
    cfg = make_config(tmp_path, "", None, upstream={"host": host, "sent_copy": mode})
    if outbox:
        cfg = dataclasses.replace(cfg, upstream=dataclasses.replace(cfg.upstream, host=""))
    assert service.guard_sent_copy(cfg) is guarded


def send(port: int, data: bytes) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail("me@example.com", ["ana@example.org", "bob@example.net"], data)


async def test_a_microsoft_365_upstream_gets_the_guard_copy_first(
    tmp_path: Path, db_url: str, store, upstream: CaptureUpstream
) -> None:
    """The relay configured for smtp.office365.com with sent_copy = "auto" (the real host is out
    of reach: the copies go to a real local SMTP server in its place) sends the sender's own
    pixel-free copy before the recipients' copies."""
    cfg = make_config(tmp_path, db_url, upstream.port, upstream={"host": "smtp.office365.com"})
    assert cfg.upstream.sent_copy == "auto"
    stand_in = service.make_upstream(make_config(tmp_path, db_url, upstream.port))
    relay = await service.start_relay(cfg, store, stand_in, with_digests=False)
    raw = (CORPUS_DIR / "outlook_qp_alternative.eml").read_bytes()
    try:
        refused = await asyncio.to_thread(send, int(cfg.relay.listen.rsplit(":", 1)[1]), raw)
    finally:
        await relay.close()
    assert refused == {}
    guard, *copies = upstream.messages
    assert guard.rcpt_tos == ["me@example.com"] and guard.data == raw
    assert [m.rcpt_tos for m in copies] == [["ana@example.org"], ["bob@example.net"]]
    assert len({tuple(assert_unharmed(raw, m.data, pixels=1)) for m in copies}) == 2
