"""Hits classified per second with network lookups (warm cache), beside the bare lookups.

A realistic mix of 20,000 fetches (Gmail and Yahoo proxies, Apple relay v4/v6, Microsoft,
security gateways, datacenters, consumer ISPs v4/v6, bots) spread over 2,000 networks is judged
once to warm the caches, then timed over several passes on one core. Target (issue 4): at least
20,000 hits/s. The baseline is the network lookups alone (`Networks.facts`), the part that
does not depend on the rules.

Run: .venv/bin/python bench/classify_bench.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402

from pixelserver.verdicts.classify import HitFacts, PriorHit, classify  # noqa: E402
from relay import service  # noqa: E402
from relay.config import load_config  # noqa: E402

GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
TB = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.1"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36"
IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)

KINDS = [  # (network template, UA, seconds after send), weighted like a real mailing
    ("66.249.{a}.{b}", GMAIL, 2400),
    ("74.6.{a}.{b}", "YahooMailProxy", 900),
    ("172.225.{a}.{b}", "Mozilla/5.0", 3),
    ("2a02:26f7:{a:x}::{b:x}", "Mozilla/5.0", 5),
    ("40.107.{a}.{b}", CHROME, 20),
    ("148.163.{a}.{b}", CHROME, 15),
    ("52.{a}.{b}.7", CHROME, 4),
    ("73.{a}.{b}.9", TB, 7200),
    ("81.2.{a}.{b}", IOS, 600),
    ("2a02:810d:{a:x}::{b:x}", TB, 3600),
    ("93.{a}.{b}.20", "curl/8.5", 100),
    ("88.{a}.{b}.3", "", 50),
]


def workload(n: int, networks: int, seed: int = 7) -> list[tuple[str, str, float]]:
    rnd = random.Random(seed)
    pool = []
    for _ in range(networks):
        template, ua, t = rnd.choice(KINDS)
        pool.append((template.format(a=rnd.randrange(256), b=rnd.randrange(1, 255)), ua, t))
    return [rnd.choice(pool) for _ in range(n)]


def main() -> None:
    networks = service.make_networks(load_config(None))
    hits = workload(20_000, 2_000)
    prior = (PriorHit("198.51.100.0/24", CHROME, 1.0),)
    start = time.perf_counter()
    for ip, ua, t in hits:  # warm: every network looked up once (the cold cost, reported too)
        classify(HitFacts(network=networks.facts(ip), ua=ua, seconds_after_send=t, prior=prior))
    cold = (time.perf_counter() - start) / len({ip for ip, _, _ in hits}) * 1e3

    def lookups() -> float:
        start = time.perf_counter()
        for ip, _, _ in hits:
            networks.facts(ip)
        return len(hits) / (time.perf_counter() - start)

    def judged() -> float:
        start = time.perf_counter()
        for ip, ua, t in hits:
            classify(HitFacts(network=networks.facts(ip), ua=ua, seconds_after_send=t, prior=prior))
        return len(hits) / (time.perf_counter() - start)

    bare = statistics.median(lookups() for _ in range(5))
    full = statistics.median(judged() for _ in range(5))
    print(
        f"classify: {len(hits)} hits over 2000 networks, warm cache, median of 5 passes, one core"
    )
    print(f"machine: {machine()}")
    print(
        f"  first sight of an address  {cold:10.2f} ms each (ASN and location decoded; off the "
        "request path)"
    )
    print(f"  network lookups only       {bare:10,.0f} hits/s  ({1e6 / bare:5.1f} µs/hit)")
    print(
        f"  lookups + classification   {full:10,.0f} hits/s  ({1e6 / full:5.1f} µs/hit)"
        f"   target 20,000: {'met' if full >= 20_000 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
