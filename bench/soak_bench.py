"""Memory under steady pixel load: MailPing's pixel server beside a bare Tornado GIF handler.

Each server runs pinned to core 0 for `--minutes` (default 10; the baseline
`--baseline-minutes`, default the same) under a steady `--rate` (default 1,000 fetches/s over
20,000 known tokens, about 30 fetches each, a new connection every 50 requests) from a load
generator on core 1; the server's resident memory (VmRSS) is sampled every 10 s. After three
minutes of warm-up (caches filling), memory must not grow: the figure is the last minute's
median RSS minus the fourth minute's. Every answered fetch must end up stored.

Run: .venv/bin/python bench/soak_bench.py [--minutes 10] [--rate 1000] [--baseline-minutes 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import PYTHON, ROOT, free_port, machine, mailping, running

sys.path.insert(0, str(ROOT))

from pixel_bench import seed, stored_hits  # noqa: E402

GIF_LEN = 43


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def steady_load(port: int, paths: list[str], rate: int, seconds: float) -> tuple[int, int]:
    """`rate` fetches a second for `seconds`, spread over 8 clients; (answered, failed)."""
    answered = failed = 0
    clients = 8
    interval = clients / rate
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal answered, failed
        n, reader, writer = i, None, None
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                path = paths[n % len(paths)]
                n += clients
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: soak\r\nUser-Agent: soak\r\n\r\n".encode()
                )
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(GIF_LEN)
                answered += 1
                if n % (50 * clients) < clients:  # a new connection now and then
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError):
                failed += 1
                writer = None
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return answered, failed


def soak(pid: int, port: int, paths: list[str], rate: int, minutes: float) -> tuple[list, int, int]:
    """RSS samples (seconds, VmRSS kB, RssAnon kB): RssAnon leaves out file pages such as
    SQLite's memory-mapped WAL index, which come and go with the files."""
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - start, rss_kb(pid), rss_kb(pid, "RssAnon")))
            stop.wait(10)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    answered, failed = asyncio.run(steady_load(port, paths, rate, minutes * 60))
    stop.set()
    sampler.join()
    return samples, answered, failed


WARM_UP = 180  # seconds


def growth(samples: list[tuple[float, int, int]], i: int = 1) -> tuple[float, float, float]:
    """(the first minute after warm-up's median MB, last minute's median MB, growth MB) of
    sample field `i` (1: VmRSS, 2: RssAnon)."""
    end = samples[-1][0]
    early = [s[i] for s in samples if WARM_UP <= s[0] < WARM_UP + 60] or [samples[0][i]]
    late = [s[i] for s in samples if s[0] >= end - 60] or [samples[-1][i]]
    a, b = statistics.median(early) / 1024, statistics.median(late) / 1024
    return a, b, b - a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--baseline-minutes", type=float)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite+aiosqlite:///{tmp}/soak.sqlite3"
        tokens = seed(db_url, 20_000)
        paths = [f"/p/{t}.gif" for t in tokens]
        port = free_port()
        toml = (  # one client at --rate a second: above the per-network limit, raised here
            f'[pixelserver]\nlisten = "127.0.0.1:{port}"\n'
            "record_burst_per_token = 1000000\nrecord_burst_per_network = 1000000\n"
            f'[database]\nurl = "{db_url}"\n'
        )
        with mailping("pixelserver", port, toml, cpu=0) as proc:
            samples, answered, failed = soak(proc.pid, port, paths, args.rate, args.minutes)
            deadline = time.monotonic() + 120
            while stored_hits(db_url) < answered and time.monotonic() < deadline:
                time.sleep(2)
            stored = stored_hits(db_url)
        results["MailPing pixel server"] = (samples, answered, failed)

    port = free_port()
    bare = [PYTHON, str(ROOT / "bench" / "bare_pixel.py"), str(port)]
    with running(bare, port, cpu=0, env={"PYTHONPATH": str(ROOT)}) as proc:
        minutes = args.baseline_minutes or args.minutes
        results["bare Tornado baseline"] = soak(proc.pid, port, paths, args.rate, minutes)

    print(
        f"soak: {args.rate} fetches/s for {args.minutes:g} min each, server on core 0, "
        "RSS every 10 s"
    )
    print(f"machine: {machine()}")
    for name, (samples, answered, failed) in results.items():
        a, b, d = growth(samples)
        anon = growth(samples, 2)[2]
        peak = max(s[1] for s in samples) / 1024
        print(
            f"  {name:<22} RSS after warm-up {a:6.1f} MB, last min {b:6.1f} MB, "
            f"growth {d:+5.1f} MB (anonymous {anon:+5.1f} MB), "
            f"peak {peak:6.1f} MB; {answered:,} answered, {failed} failed"
        )
    print(f"  stored hits {stored:,} of {results['MailPing pixel server'][1]:,} answered")
    mailping_samples = results["MailPing pixel server"][0]
    for label, i in (("RSS", 1), ("RssAnon", 2)):
        trace = " ".join(f"{s[i] / 1024:.0f}" for s in mailping_samples)
        print(f"  MailPing {label} trace (MB, every 10 s): {trace}")


if __name__ == "__main__":
    main()
