"""Messages per second through the MailPing relay, beside plain pass-through relays.

Every relay receives the same message for 3 recipients and sends 3 per-recipient copies to the
same sink. The default message is a 42 KB quoted-printable newsletter with 116 links
(multipart/alternative); `--message statement` is the 50 KB statement of earlier figures.
MailPing also parses, adds a pixel per copy, spools the message durably and records the
message and deliveries in SQLite. Two baselines (bench/passthrough_relay.py): copies sent
concurrently, one `aiosmtplib.send` each (the one the target is measured against), and copies
sent one after another over one connection. Each relay runs in its own process pinned to core
0; the load and the sink share core 1; the relays are measured in turn, run by run, so a
change in the machine's load touches all of them alike. The load is Postfix's `smtp-source`
and the sink its `smtp-sink` (Debian package postfix, daemon not started) when they are
installed, else an aiosmtplib client and a Python sink (`--load python`).

Run: .venv/bin/python bench/relay_bench.py [--messages 400] [--concurrency 16] [--load postfix]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def newsletter() -> bytes:
    """A 42 KB newsletter, HTML and text both quoted-printable, with 116 links."""
    items = []
    for i in range(116):
        url = f"https://news.example.com/2026/12/story-{i}?utm_source=newsletter&utm_medium=email"
        items.append(
            f'<tr><td style="padding:8px 16px;font-family:Arial;'
            f'font-size:15px"><a href="{url}" style="color:#1a5fb4;'
            f'text-decoration:none">Story {i}: Neuigkeiten aus der Redaktion – Folge {i}</a>'
            f"<br>Beitrag {i}."
            f"</td></tr>\n"
        )
    html = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Newsletter</title></head>"
        f"<body><table width='600' cellpadding='0' cellspacing='0'>{''.join(items)}"
        "</table></body></html>"
    )
    text = "\n".join(f"Story {i}: https://news.example.com/2026/12/story-{i}" for i in range(116))
    msg = EmailMessage()
    msg["From"] = "news@example.com"
    msg["To"] = ", ".join(RECIPIENTS)
    msg["Subject"] = "Newsletter December"
    msg.set_content(text, cte="quoted-printable")
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


def one_run(
    port: int, data: bytes, messages: int, concurrency: int, load: str, file: Path
) -> float:
    if load == "postfix":
        return smtp_source(port, file, messages, concurrency)
    return asyncio.run(drive(port, data, messages, concurrency))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--message", choices=["newsletter", "statement"], default="newsletter")
    postfix = os.path.exists(SMTP_SOURCE) and os.path.exists(SMTP_SINK)
    ap.add_argument(
        "--load", choices=["postfix", "python"], default="postfix" if postfix else "python"
    )
    ap.add_argument("--only-mailping", action="store_true", help="no baselines (for profiling)")
    args = ap.parse_args()
    data = newsletter() if args.message == "newsletter" else fifty_kb_message()
    tmp = tempfile.TemporaryDirectory()
    file = Path(tmp.name) / "message.eml"
    file.write_bytes(data.replace(b"\r\n", b"\n"))

    sink_port = free_port()
    if args.load == "postfix":
        # As root, smtp-sink must be told which user to drop to (the package makes "postfix").
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        sink = [SMTP_SINK, *user, f"127.0.0.1:{sink_port}", "256"]
    else:
        sink = [PYTHON, str(ROOT / "bench" / "sink.py"), str(sink_port)]
    rates: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(running(sink, sink_port, cpu=1))
        ports = {"MailPing relay": free_port()}
        toml = relay_toml(ports["MailPing relay"], sink_port, "max_in_flight = 64\n")
        stack.enter_context(mailping("relay", ports["MailPing relay"], toml, cpu=0))
        if not args.only_mailping:
            for name, mode in (
                ("concurrent baseline", "concurrent"),
                ("sequential baseline", "sequential"),
            ):
                ports[name] = port = free_port()
                script = str(ROOT / "bench" / "passthrough_relay.py")
                stack.enter_context(
                    running([PYTHON, script, str(port), str(sink_port), mode], port, cpu=0)
                )
        warm = max(args.concurrency * 5, 20)
        for port in ports.values():
            one_run(port, data, warm, args.concurrency, args.load, file)
        for _ in range(args.runs):  # in turn, so the machine's load touches every relay alike
            for name, port in ports.items():
                rate = one_run(port, data, args.messages, args.concurrency, args.load, file)
                rates.setdefault(name, []).append(rate)

    print(
        f"relay: {len(data) / 1000:.1f} KB {args.message}, {len(RECIPIENTS)} recipients, "
        f"{args.messages} messages x {args.runs} runs, {args.concurrency} sessions, "
        f"load {'smtp-source -> smtp-sink' if args.load == 'postfix' else 'aiosmtplib -> sink.py'}"
    )
    print(f"machine: {machine()}")
    base = statistics.median(rates.get("concurrent baseline", rates["MailPing relay"]))
    for name, runs in rates.items():
        rate = statistics.median(runs)
        each = ", ".join(f"{r:.1f}" for r in runs)
        print(
            f"  {name:<20} {rate:7.1f} messages/s ({rate * len(RECIPIENTS):6.1f} copies/s)"
            f"  {rate / base * 100:5.1f}% of concurrent  [runs: {each}]"
        )
    if "concurrent baseline" in rates:
        pairs = [
            m / b
            for m, b in zip(rates["MailPing relay"], rates["concurrent baseline"], strict=True)
        ]
        print("  MailPing / concurrent, run by run: " + ", ".join(f"{r:.2f}" for r in pairs))


if __name__ == "__main__":
    main()
