"""`mailping serve` as a newcomer runs it: no config file, embedded defaults, in an empty
directory. A mail goes in over SMTP, its stored copy's pixel is fetched, the report shows it."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest

DEFAULT_SMTP = ("127.0.0.1", 2525)
DEFAULT_WEB = "http://127.0.0.1:8025"


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 30) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"never printed {pattern!r}; got: {''.join(seen)}")


@pytest.fixture
def served(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "MAILPING_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "--log-level", "WARNING", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = wait_for_line(proc, r"send a test mail: swaks")
        yield proc, tmp_path, "".join(banner)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_first_run_on_embedded_defaults(served) -> None:
    proc, cwd, banner = served
    assert "SMTP relay on 127.0.0.1:2525" in banner
    assert "http://127.0.0.1:8025/" in banner
    assert "no upstream configured" in banner

    msg = EmailMessage()
    msg["From"] = "me@example.com"
    msg["To"] = "ana@example.org, bob@example.net"
    msg["Subject"] = "Hello from the first run"
    msg.set_content("Plain version")
    msg.add_alternative("<html><body><p>Hello <b>Ana</b></p></body></html>", subtype="html")
    with smtplib.SMTP(*DEFAULT_SMTP, timeout=30) as client:
        client.send_message(msg)

    outbox = cwd / "mailping-data" / "outbox"
    copies = sorted(outbox.glob("*.eml"))
    assert len(copies) == 2
    urls = [
        re.search(rb'src="(http://127\.0\.0\.1:8025/p/[\w-]{22}\.gif)"', c.read_bytes())
        for c in copies
    ]
    assert all(urls) and urls[0].group(1) != urls[1].group(1)

    with urllib.request.urlopen(urls[0].group(1).decode(), timeout=10) as resp:
        assert resp.status == 200 and len(resp.read()) == 43

    page = ""
    for _ in range(50):
        with urllib.request.urlopen(DEFAULT_WEB + "/", timeout=10) as resp:
            page = resp.read().decode()
        if "you viewed it" in page:
            break
        time.sleep(0.1)
    assert "Hello from the first run" in page
    # Sent and fetched from this machine: the sender looking at their copy, not Ana opening it.
    assert page.count("Not opened yet · you viewed it") == 1
    assert page.count("Not opened yet</span>") == 1
    assert "view copy" in page


def test_stops_cleanly_on_sigterm(served) -> None:
    proc, _, _ = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_a_second_instance_names_the_busy_address(served, tmp_path: Path) -> None:
    other = tmp_path / "second"
    other.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "--log-level", "WARNING", "serve"],
        cwd=other,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "mailping: cannot listen on 127.0.0.1:8025 (pixelserver.listen): address already in use"
    )
