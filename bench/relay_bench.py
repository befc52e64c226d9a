"""Messages per second through the MailPing relay, beside a plain pass-through relay.

Both relays receive the same 50 KB HTML message (multipart/alternative, quoted-printable HTML)
for 3 recipients and send 3 per-recipient copies to the same sink. MailPing also parses, adds
a pixel per copy and records the message and deliveries in SQLite. Each relay runs in its own
process pinned to core 0; the load and the sink share core 1. The load is Postfix's
`smtp-source` and the sink its `smtp-sink` (Debian package postfix, daemon not started) when
they are installed, else an aiosmtplib client and a Python sink (`--load python`).

Run: .venv/bin/python bench/relay_bench.py [--messages 400] [--concurrency 4] [--load postfix]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from _common import PYTHON, ROOT, free_port, machine, mailping, relay_toml, running

RECIPIENTS = [f"person{i}@example.org" for i in range(3)]
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def fifty_kb_message() -> bytes:
    rows = "".join(
        f'<tr><td style="padding:4px;font-family:Arial">Item {i}</td>'
        f'<td style="padding:4px">Beschreibung für Posten {i} – Lieferung in KW {i % 52}</td>'
        f'<td align="right">{i * 3.5:.2f} €</td></tr>\n'
        for i in range(250)
    )
    html = f"<html><head><meta charset='utf-8'></head><body><table>{rows}</table></body></html>"
    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = ", ".join(RECIPIENTS)
    msg["Subject"] = "Monthly statement"
    msg.set_content("Your statement is in the HTML part.")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg.as_bytes()


async def drive(port: int, data: bytes, messages: int, concurrency: int) -> float:
    """Send `messages` messages over `concurrency` connections; returns messages/s."""
    per_client = messages // concurrency

    async def client() -> None:
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, timeout=120
        ) as smtp:
            for _ in range(per_client):
                errors, _ = await smtp.sendmail("sender@example.com", RECIPIENTS, data)
                assert not errors

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return per_client * concurrency / (time.perf_counter() - start)


def smtp_source(port: int, message: Path, messages: int, concurrency: int) -> float:
    """Postfix's load generator: `concurrency` sessions, 3 recipients per message."""
    args = ["taskset", "-c", "1", SMTP_SOURCE, "-s", str(concurrency), "-m", str(messages)]
    args += ["-r", str(len(RECIPIENTS)), "-F", str(message), "-f", "sender@example.com"]
    args += ["-t", "person@example.org", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, timeout=600)
    return messages / (time.perf_counter() - start)


def measure(
    port: int, data: bytes, messages: int, concurrency: int, runs: int, load: str, file: Path
) -> float:
    if load == "postfix":
        smtp_source(port, file, max(concurrency * 5, 20), concurrency)  # warm-up
        return statistics.median(
            smtp_source(port, file, messages, concurrency) for _ in range(runs)
        )
    asyncio.run(drive(port, data, max(concurrency * 5, 20), concurrency))  # warm-up
    return statistics.median(
        asyncio.run(drive(port, data, messages, concurrency)) for _ in range(runs)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    postfix = os.path.exists(SMTP_SOURCE) and os.path.exists(SMTP_SINK)
    ap.add_argument(
        "--load", choices=["postfix", "python"], default="postfix" if postfix else "python"
    )
    args = ap.parse_args()
    data = fifty_kb_message()
    tmp = tempfile.TemporaryDirectory()
    file = Path(tmp.name) / "message.eml"
    file.write_bytes(data.replace(b"\r\n", b"\n"))

    def run(port: int) -> float:
        return measure(port, data, args.messages, args.concurrency, args.runs, args.load, file)

    results = {}
    sink_port = free_port()
    if args.load == "postfix":
        # As root, smtp-sink must be told which user to drop to (the package makes "postfix").
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        sink = [SMTP_SINK, *user, f"127.0.0.1:{sink_port}", "256"]
    else:
        sink = [PYTHON, str(ROOT / "bench" / "sink.py"), str(sink_port)]
    with running(sink, sink_port, cpu=1):
        port = free_port()
        with mailping("relay", port, relay_toml(port, sink_port, "max_in_flight = 64\n"), cpu=0):
            results["MailPing relay"] = run(port)
        port = free_port()
        baseline = [PYTHON, str(ROOT / "bench" / "passthrough_relay.py"), str(port), str(sink_port)]
        with running(baseline, port, cpu=0):
            results["pass-through baseline"] = run(port)

    print(
        f"relay: {len(data) // 1024} KB HTML message, {len(RECIPIENTS)} recipients, "
        f"{args.messages} messages x {args.runs} runs, {args.concurrency} connections, "
        f"load {'smtp-source -> smtp-sink' if args.load == 'postfix' else 'aiosmtplib -> sink.py'}"
    )
    print(f"machine: {machine()}")
    base = results["pass-through baseline"]
    for name, rate in results.items():
        print(
            f"  {name:<22} {rate:8.1f} messages/s  ({rate * len(RECIPIENTS):7.1f} copies/s)"
            f"  {rate / base * 100:5.1f}% of baseline"
        )


if __name__ == "__main__":
    main()
