"""Messages per second through the MailPing relay, beside a plain pass-through relay.

Both relays receive the same 50 KB HTML message (multipart/alternative, quoted-printable HTML)
for 5 recipients and send 5 per-recipient copies to the same local sink. MailPing also parses,
adds a pixel per copy and records the message and deliveries in SQLite. Each relay runs in its
own process pinned to core 0; the sink and the sending client share core 1.

Run: .venv/bin/python bench/relay_bench.py [--messages 400] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from email.message import EmailMessage

import aiosmtplib
from _common import PYTHON, ROOT, free_port, machine, mailping, relay_toml, running

RECIPIENTS = [f"person{i}@example.org" for i in range(5)]


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


def measure(port: int, data: bytes, messages: int, concurrency: int, runs: int) -> float:
    asyncio.run(drive(port, data, max(concurrency * 5, 20), concurrency))  # warm-up
    return statistics.median(
        asyncio.run(drive(port, data, messages, concurrency)) for _ in range(runs)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    data = fifty_kb_message()

    def run(port: int) -> float:
        return measure(port, data, args.messages, args.concurrency, args.runs)

    results = {}
    sink_port = free_port()
    with running([PYTHON, str(ROOT / "bench" / "sink.py"), str(sink_port)], sink_port, cpu=1):
        port = free_port()
        with mailping("relay", port, relay_toml(port, sink_port, "max_in_flight = 64\n"), cpu=0):
            results["MailPing relay"] = run(port)
        port = free_port()
        baseline = [PYTHON, str(ROOT / "bench" / "passthrough_relay.py"), str(port), str(sink_port)]
        with running(baseline, port, cpu=0):
            results["pass-through baseline"] = run(port)

    print(
        f"relay: {len(data) // 1024} KB HTML message, {len(RECIPIENTS)} recipients, "
        f"{args.messages} messages x {args.runs} runs, {args.concurrency} connections"
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
