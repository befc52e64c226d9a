"""Pixel hits per second and latency (p50/p99), MailPing beside a bare Tornado GIF handler.

MailPing's pixel server answers a known token and records every hit (journal on the request
path, batched store writes off it); the baseline only returns the GIF. Each server runs pinned
to core 0, `wrk` on core 1, with keep-alive connections and with a new connection per request
("Connection: close"), as real opens mostly arrive. After the MailPing run the bench checks that
every answered request became a stored hit.

Run: .venv/bin/python bench/pixel_bench.py [--seconds 10] [--connections 32]
Needs wrk (Debian package wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time

from _common import PYTHON, ROOT, free_port, machine, mailping, running

sys.path.insert(0, str(ROOT))


def seed(db_url: str, recipients: int = 1) -> list[str]:
    """Real deliveries in the store, so the bench fetches tokens MailPing knows."""
    from pixelserver.store import migrate
    from pixelserver.store.schema import make_engine, make_sessionmaker
    from relay import tracking

    async def run() -> list[str]:
        engine = make_engine(db_url)
        await migrate.upgrade(engine)
        recorded = await tracking.record_message(
            make_sessionmaker(engine),
            user="bench@example.com",
            envelope_from="bench@example.com",
            recipients=[f"reader{i}@example.org" for i in range(recipients)],
            subject="bench",
            message_id_header="<bench@example.com>",
            size=1,
            untracked_reason=None,
        )
        await engine.dispose()
        return [d.token for d in recorded.deliveries]

    return asyncio.run(run())


def stored_hits(db_url: str) -> int:
    from sqlalchemy import func, select

    from pixelserver.store.schema import Hit, make_engine, make_sessionmaker

    async def run() -> int:
        engine = make_engine(db_url)
        async with make_sessionmaker(engine)() as s:
            n = (await s.execute(select(func.count(Hit.id)))).scalar_one()
        await engine.dispose()
        return n

    return asyncio.run(run())


def wrk(url: str, seconds: int, connections: int, close: bool) -> dict[str, float]:
    args = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rps": rps,
        "p50": pct("50"),
        "p99": pct("99"),
        "total": total,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(map(int, errors.groups())) if errors else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("pixel_bench needs wrk: apt-get install wrk")

    rows = []
    answered = 0
    drained = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite+aiosqlite:///{tmp}/mailping.sqlite3"
        (token,) = seed(db_url)
        port = free_port()
        # One client fetching a small set of tokens as fast as it can: the abuse limits would
        # drop most of it from recording, so they are raised for the benchmark.
        toml = (
            f'[pixelserver]\nlisten = "127.0.0.1:{port}"\n'
            "record_burst_per_token = 1000000\nrecord_burst_per_network = 1000000\n"
            f'[database]\nurl = "{db_url}"\n'
        )
        with mailping("pixelserver", port, toml, cpu=0):
            for close in (False, True):
                r = wrk(
                    f"http://127.0.0.1:{port}/p/{token}.gif", args.seconds, args.connections, close
                )
                answered += r["total"] - r["errors"]
                rows.append(("MailPing pixel", close, r))
            # The journal may be behind after a burst: wait until the store has everything.
            start = time.monotonic()
            stored = stored_hits(db_url)
            while stored < answered and time.monotonic() - start < 300:
                time.sleep(2.0)
                stored = stored_hits(db_url)
            drained = time.monotonic() - start

    port = free_port()
    bare = [PYTHON, str(ROOT / "bench" / "bare_pixel.py"), str(port)]
    with running(bare, port, cpu=0, env={"PYTHONPATH": str(ROOT)}):
        for close in (False, True):
            r = wrk(
                f"http://127.0.0.1:{port}/p/AAAAAAAAAAAAAAAAAAAAAA.gif",
                args.seconds,
                args.connections,
                close,
            )
            rows.append(("bare Tornado baseline", close, r))

    print(f"pixel: wrk -t1 -c{args.connections} -d{args.seconds}s, server on core 0, wrk on core 1")
    print(f"machine: {machine()}")
    base = {close: r["rps"] for name, close, r in rows if name.startswith("bare")}
    for name, close, r in rows:
        mode = "new connection" if close else "keep-alive"
        print(
            f"  {name:<22} {mode:<15} {r['rps']:9.0f} hits/s  p50 {r['p50']:6.2f} ms  "
            f"p99 {r['p99']:6.2f} ms  {r['rps'] / base[close] * 100:5.1f}% of baseline"
            + (f"  errors {r['errors']}" if r["errors"] else "")
        )
    print(
        f"  stored hits {stored} of {answered} answered requests "
        f"({drained:.0f} s after the load stopped)"
    )


if __name__ == "__main__":
    main()
