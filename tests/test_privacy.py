"""Privacy at rest: no full client address reaches the disk, in any file, in any form.

Real servers, real fetches through a trusted proxy (X-Forwarded-For), then every file under
the data folder (store, journals, logs) is read byte by byte for the addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import smtplib
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

from pixelserver.hits import Journal
from pixelserver.store.schema import make_engine, make_sessionmaker
from tests.conftest import free_port, make_config, start_pixelserver
from tests.test_pixel import a_delivery, assert_pixel, fetch, hits_of

# Distinct full addresses: IPv4 (two of them in one /24, one inside an Apple relay range
# narrower than a /24 and one outside it), IPv6, and an IPv4-mapped IPv6 address.
APPLE = "104.28.28.10"  # in 104.28.28.0/26 (apple-relay-ipv4.txt)
NOT_APPLE = "104.28.28.201"  # same /24, in no relay range
CLIENTS = [APPLE, NOT_APPLE, "203.0.113.77", "2001:db8:85a3:42::8a2e:370:7334", "::ffff:192.0.2.44"]
FIRST_HOP = "198.51.100.23"  # left of a client in X-Forwarded-For: forwarded, never used


def address_forms(ip: str) -> tuple[set[bytes], set[bytes]]:
    """Every way an address could sit in a file: text (compressed and exploded; compared
    without case) and packed bytes; an IPv4-mapped address in its IPv4 forms too."""
    addr = ipaddress.ip_address(ip)
    text = {addr.compressed.encode(), addr.exploded.encode()}
    packed = {addr.packed}
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        more_text, more_packed = address_forms(str(addr.ipv4_mapped))
        text |= more_text
        packed |= more_packed
    return text, packed


def files_holding(folder: Path, ips: list[str]) -> list[str]:
    """`file: address` for each full address found anywhere under `folder`."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        lowered = data.lower()
        for ip in ips:
            text, packed = address_forms(ip)
            for form in sorted(text):
                if re.search(rb"(?<![0-9a-f.:])" + re.escape(form) + rb"(?![0-9a-f:])", lowered):
                    found.append(f"{path.relative_to(folder)}: {ip} as {form!r}")
            # Four packed bytes turn up by chance in a few MB of database pages (about once in
            # a thousand runs per address): there only the 16-byte IPv6 form is looked for.
            database = ".sqlite3" in path.name
            found += [
                f"{path.relative_to(folder)}: {ip} packed"
                for f in packed
                if f in data and not (database and len(f) == 4)
            ]
    return found


async def proxied_fetch(url: str, forwarded_for: str) -> None:
    """A fetch arriving through the trusted proxy (127.0.0.2 in the test config)."""
    assert_pixel(
        await fetch(url, headers={"X-Forwarded-For": forwarded_for}, network_interface="127.0.0.2")
    )


async def test_journal_keeps_no_address_while_the_store_is_away(
    tmp_path: Path, db_url: str, store
) -> None:
    """With the store away the journal is all there is, for as long as it lasts: it holds the
    masked network and the facts that needed the full address, never the address."""
    d = await a_delivery(store)
    dead = make_config(
        tmp_path, f"postgresql+asyncpg://nobody:x@127.0.0.1:{free_port()}/none", None
    )
    dead_engine = make_engine(dead.database_url)
    pixel = await start_pixelserver(dead, make_sessionmaker(dead_engine))
    try:
        for ip in CLIENTS:
            await proxied_fetch(f"{dead.pixelserver.public_url}/p/{d.token}.gif", ip)
        await proxied_fetch(
            f"{dead.pixelserver.public_url}/p/{d.token}.gif", f"{FIRST_HOP}, 203.0.113.77"
        )
        await asyncio.sleep(0.3)
        assert pixel.pipeline.journal.size() > 0
        assert files_holding(dead.data_dir, [*CLIENTS, FIRST_HOP]) == []
    finally:
        await pixel.close()
        await dead_engine.dispose()
    assert files_holding(dead.data_dir, [*CLIENTS, FIRST_HOP]) == []

    # The store is back: the journal replays with the facts taken at the edge.
    pixel = await start_pixelserver(make_config(tmp_path, db_url, None), store)
    try:
        hits = await hits_of(store, d.id)
    finally:
        await pixel.close()
    assert [h.ip_prefix for h in hits] == [
        "104.28.28.0/24",
        "104.28.28.0/24",
        "203.0.113.0/24",
        "2001:db8:85a3::/48",
        "192.0.2.0/24",
        "203.0.113.0/24",
    ]
    # Apple's relay range is narrower than the /24: only the edge, holding the full address,
    # can tell the two 104.28.28.x clients apart, and it did.
    assert "apple_relay" in hits[0].net_lists
    assert "apple_relay" not in hits[1].net_lists
    assert files_holding(tmp_path, [*CLIENTS, FIRST_HOP]) == []


def test_draining_a_large_journal_rewrites_at_most_what_it_consumed(tmp_path: Path) -> None:
    """Compaction rewrites what is left after the consumed part. Draining a backlog in small
    steps must not rewrite the rest again at every step past `compact_at` (which wrote the
    journal's size squared over the step, with an fsync each, on the loop answering pixels)."""
    path = tmp_path / "hits.journal"
    journal = Journal(path, compact_at=16 * 1024)
    for i in range(6000):
        journal.append("203.0.113.0/24", (), f"{i:022d}", "GET", "ua", {})
    total, rewritten, inode = journal.size(), 0, os.stat(path).st_ino
    while records := journal.read_new()[0]:
        journal.committed(journal.read_new()[1])
        if os.stat(path).st_ino != inode:  # compacted: a new file holding what was left
            inode = os.stat(path).st_ino
            rewritten += journal.size()
        assert records
    journal.close()
    assert journal.size() == 0
    assert rewritten <= total


def test_journal_compaction_keeps_the_file_private(tmp_path: Path) -> None:
    """The compacted journal replaces the old one: it must be 0600 like the original, whatever
    the process umask."""
    old = os.umask(0o022)
    try:
        journal = Journal(tmp_path / "hits.journal", compact_at=1000)
        for i in range(40):
            journal.append("203.0.113.0/24", (), f"{i:022d}", "GET", "ua", {})
        records, end = journal.read_new()
        journal.append("203.0.113.0/24", (), "x" * 22, "GET", "ua", {})  # one line left over
        journal.committed(end)
        assert journal.size() < end  # it was compacted, not truncated or left alone
        mode = stat.S_IMODE(os.stat(tmp_path / "hits.journal").st_mode)
        assert mode == 0o600, oct(mode)
        assert not list(tmp_path.glob("*.compact"))
        assert [r["t"] for r in journal.read_new()[0]] == ["x" * 22]
        journal.close()
    finally:
        os.umask(old)


# --- a real `mailping serve`, its log in the data folder ---------------------------------


def _wait_for_line(proc: subprocess.Popen, log: Path, pattern: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and re.search(pattern, log.read_text(errors="replace")):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"never logged {pattern!r}: {log.read_text(errors='replace')}")


def test_no_full_client_address_anywhere_under_a_running_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    smtp_port, web_port = free_port(), free_port()
    base = f"http://127.0.0.1:{web_port}"
    config = tmp_path / "mailping.toml"
    config.write_text(
        f'data_dir = "{data}"\n'
        f'[relay]\nlisten = "127.0.0.1:{smtp_port}"\nhostname = "relay.test"\n'
        f'[pixelserver]\nlisten = "127.0.0.1:{web_port}"\npublic_url = "{base}"\n'
        'trusted_proxies = ["127.0.0.1/32"]\n'
    )
    log = data / "mailping.log"
    env = {k: v for k, v in os.environ.items() if k != "MAILPING_CONFIG"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "--config", str(config), "--log-level", "DEBUG"]
            + ["serve"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_line(proc, log, r"send a test mail")
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "me@example.com", "ana@example.org", "Hi"
        msg.set_content("plain")
        msg.add_alternative("<html><body><p>Hello</p></body></html>", subtype="html")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            client.send_message(msg)
        (copy,) = (data / "outbox").glob("*.eml")
        url = re.search(rb'src="(http://[^"]+\.gif)"', copy.read_bytes()).group(1).decode()
        forwarded = [*CLIENTS, f"{FIRST_HOP}, 203.0.113.77"]
        for value in forwarded:
            req = urllib.request.Request(url, headers={"X-Forwarded-For": value})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
        # The report refuses a proxied visitor (demo mode): that refusal is logged too.
        for value in forwarded:
            req = urllib.request.Request(base + "/", headers={"X-Forwarded-For": value})
            try:
                urllib.request.urlopen(req, timeout=10)
            except urllib.error.HTTPError as exc:
                assert exc.code == 403
        # A recipient's page: the access log says which page, not whose.
        with urllib.request.urlopen(base + "/recipients/ana%40example.org", timeout=10) as resp:
            assert resp.status == 200
        db = sqlite3.connect(f"file:{data / 'mailping.sqlite3'}?mode=ro", uri=True)
        for _ in range(100):
            if db.execute("select count(*) from hit").fetchone()[0] == len(forwarded):
                break
            time.sleep(0.1)
        prefixes = [r[0] for r in db.execute("select ip_prefix from hit order by id")]
        db.close()
        assert len(prefixes) == len(forwarded)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    text = log.read_text(errors="replace")
    assert files_holding(data, [*CLIENTS, FIRST_HOP]) == []
    # The logs still say who came, as a network: 403s for the proxied visitors, and the
    # SMTP session under its masked peer.
    assert "203.0.113.0/24" in text
    assert "mail.log" in text and "127.0.0.0/24" in text
    assert "('127.0.0.1'" not in text and "(127.0.0.1)" not in text
    assert "ana%40example.org" not in text and "GET /recipients/" in text
