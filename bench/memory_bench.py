"""Peak memory of the relay while it sends a 20 MB message to 5 recipients.

Target (issue 3): the relay process's peak resident memory grows by less than 6 times the
message size. Measured from /proc: resident set before the message (after a warm-up message)
and the high-water mark (VmHWM) after it, for MailPing and for the pass-through baseline.

Run: .venv/bin/python bench/memory_bench.py
"""

from __future__ import annotations

import asyncio
import sys
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from _common import PYTHON, ROOT, free_port, machine, mailping, relay_toml, running

RECIPIENTS = [f"person{i}@example.org" for i in range(5)]
MB = 1024 * 1024


def twenty_mb_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = ", ".join(RECIPIENTS)
    msg["Subject"] = "Survey photos"
    msg.set_content("Photos attached.")
    msg.add_alternative("<html><body><p>Photos attached.</p></body></html>", subtype="html")
    blob = bytes(range(256)) * (15 * MB // 256)
    msg.add_attachment(blob, maintype="application", subtype="zip", filename="survey.zip")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Linux 4.0+: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def send(port: int, data: bytes) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=300) as s:
        errors, _ = await s.sendmail("sender@example.com", RECIPIENTS, data)
        assert not errors


def measure(proc, port: int, data: bytes) -> tuple[float, float]:
    """(RSS before, peak growth) in MB for one 20 MB message."""
    asyncio.run(send(port, b"Subject: warm-up\r\nContent-Type: text/html\r\n\r\n<b>hi</b>\r\n"))
    before = status_kb(proc.pid, "VmRSS")
    reset_peak(proc.pid)
    asyncio.run(send(port, data))
    peak = status_kb(proc.pid, "VmHWM")
    return before / 1024, (peak - before) / 1024


def main() -> None:
    data = twenty_mb_message()
    size = len(data) / MB
    results = {}
    sink_port = free_port()
    with running([PYTHON, str(ROOT / "bench" / "sink.py"), str(sink_port)], sink_port):
        port = free_port()
        with mailping("relay", port, relay_toml(port, sink_port)) as proc:
            results["MailPing relay"] = measure(proc, port, data)
        port = free_port()
        baseline = [PYTHON, str(ROOT / "bench" / "passthrough_relay.py"), str(port), str(sink_port)]
        with running(baseline, port) as proc:
            results["pass-through baseline"] = measure(proc, port, data)
    print(
        f"memory: one {size:.1f} MB message to {len(RECIPIENTS)} recipients; "
        f"target: peak growth under 6 x size = {6 * size:.0f} MB"
    )
    print(f"machine: {machine()}")
    for name, (before, growth) in results.items():
        print(
            f"  {name:<22} RSS before {before:6.1f} MB   peak growth {growth:6.1f} MB "
            f"= {growth / size:4.2f} x message size"
        )


if __name__ == "__main__":
    sys.exit(main())
