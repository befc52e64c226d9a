"""The pixel under abuse: one token or one network fetched thousands of times must not push
real opens out. Recording is dropped (never the image) past per-token and per-network limits,
set so that the busiest real proxies never reach them, and counted in a metric."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import func, select
from tornado.httpclient import AsyncHTTPClient

from pixelserver.recordlimits import RecordLimits
from pixelserver.store.messages import NewDelivery, add_message
from pixelserver.store.schema import Hit
from relay import tracking
from tests.conftest import Stack, make_config, start_pixelserver
from tests.test_pixel import a_delivery, assert_pixel, fetch, hits_of, wait_for_hits


async def _flood(urls: list[str], headers: dict[str, str], concurrency: int = 20) -> None:
    client = AsyncHTTPClient(max_clients=concurrency)
    queue = list(urls)

    async def worker() -> None:
        while queue:
            url = queue.pop()
            assert_pixel(await fetch(url, headers=headers, network_interface="127.0.0.2"))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    del client


def _dropped(metrics_text: str, limit: str) -> float:
    m = re.search(
        rf'^mailping_pixel_not_recorded_total{{limit="{limit}"}} ([0-9.e+]+)$',
        metrics_text,
        re.M,
    )
    return float(m.group(1)) if m else 0.0


async def test_one_token_fetched_in_a_flood_is_recorded_only_up_to_its_limit(stack: Stack) -> None:
    before = _dropped((await fetch(f"{stack.pixel_base}/metrics")).body.decode(), "token")
    flooded = await a_delivery(stack.store, "ana@example.org")
    real = await a_delivery(stack.store, "bob@example.org")
    url = f"{stack.pixel_base}/p/{flooded.token}.gif"
    await _flood([url] * 400, {"X-Forwarded-For": "203.0.113.9"})
    # Bob's real open, in the middle of the flood's aftermath, is recorded.
    assert_pixel(
        await fetch(
            f"{stack.pixel_base}/p/{real.token}.gif",
            headers={"X-Forwarded-For": "198.51.100.4"},
            network_interface="127.0.0.2",
        )
    )
    await wait_for_hits(stack.store, real.id, 1)
    stored = len(await hits_of(stack.store, flooded.id))
    limits = RecordLimits()
    assert limits.token_burst <= stored < limits.token_burst + 40, stored
    after = _dropped((await fetch(f"{stack.pixel_base}/metrics")).body.decode(), "token")
    assert after - before == 400 - stored


async def test_one_network_fetching_thousands_of_tokens_is_limited(
    tmp_path: Path, db_url: str, store
) -> None:
    """With a network limit of 200 (refilled in 10 s), so that a test client can outrun it."""
    base = make_config(tmp_path, db_url, None)
    cfg = replace(base, pixelserver=replace(base.pixelserver, record_burst_per_network=200))
    pixel = await start_pixelserver(cfg, store)
    url = cfg.pixelserver.public_url
    try:
        recorded = await tracking.record_message(
            store,
            user="me@example.com",
            envelope_from="me@example.com",
            recipients=[f"r{i}@example.org" for i in range(600)],
            subject="a big send",
            message_id_header="",
            size=1,
            untracked_reason=None,
        )
        other = await a_delivery(store, "dan@example.org")
        urls = [f"{url}/p/{d.token}.gif" for d in recorded.deliveries]
        started = time.monotonic()
        await _flood(urls, {"X-Forwarded-For": "203.0.113.77"}, concurrency=40)
        took = time.monotonic() - started
        # Another network is not held back by it.
        assert_pixel(
            await fetch(
                f"{url}/p/{other.token}.gif",
                headers={"X-Forwarded-For": "198.51.100.4"},
                network_interface="127.0.0.2",
            )
        )
        await wait_for_hits(store, other.id, 1)
        async with store() as s:
            stored = (await s.execute(select(func.count(Hit.id)))).scalar_one() - 1
        assert stored <= 200 + 20 * took + 5, (stored, took)
        assert stored < 600
        text = (await fetch(f"{url}/metrics")).body.decode()
        assert _dropped(text, "network") >= 600 - stored
    finally:
        await pixel.close()


def test_known_proxy_networks_are_never_limited_by_network() -> None:
    """Apple's relays and Google's image proxy fetch for a whole send at its peak: their
    networks are exempt from the network limit; each token keeps its own limit."""
    limits = RecordLimits()
    now = 1000.0
    for i in range(limits.network_burst * 3):
        assert limits.drop(f"t{i}", "66.249.93.0/24", ("google_fetcher",), now) is None
        assert limits.drop(f"a{i}", "104.28.28.0/24", ("apple_relay",), now) is None
    assert limits.drop("one", "192.0.2.0/24", (), now) is None
    drops = [limits.drop("same", "192.0.2.0/24", (), now) for _ in range(limits.token_burst + 5)]
    assert drops.count("token") == 5
    # The bucket refills with time.
    assert limits.drop("same", "192.0.2.0/24", (), now + 60) is None


async def test_forged_tokens_never_reach_the_journal(tmp_path: Path, db_url: str, store) -> None:
    """Tokens carry an HMAC tag: a random or forged one is told apart on the request path,
    without a lookup, and costs nothing but its answer."""
    pixel = await start_pixelserver(make_config(tmp_path, db_url, None), store)
    url = f"http://127.0.0.1:{list(pixel.http._sockets.values())[0].getsockname()[1]}"
    try:
        d = await a_delivery(store)
        assert len(d.token) == 22  # the same shape as ever: URLs and rewrites are unchanged
        appended = pixel.pipeline.journal.appended
        forged = [secrets.token_urlsafe(16) for _ in range(20)]  # random, untagged
        forged += [d.token[:-2] + ("AB" if d.token[-2:] != "AB" else "CD")]  # tag broken
        forged += [d.token[:3] + ("x" if d.token[3] != "x" else "y") + d.token[4:]]
        for token in forged:
            assert_pixel(await fetch(f"{url}/p/{token}.gif"))
        assert pixel.pipeline.journal.appended == appended
        assert_pixel(await fetch(f"{url}/p/{d.token}.gif"))
        assert pixel.pipeline.journal.appended == appended + 1
        await wait_for_hits(store, d.id, 1)
    finally:
        await pixel.close()


async def test_untagged_tokens_minted_before_still_count_while_they_exist(
    tmp_path: Path, db_url: str, store
) -> None:
    async with store.begin() as s:
        _, (old,) = await add_message(
            s,
            user_address="me@example.com",
            envelope_from="me@example.com",
            subject="sent before the upgrade",
            message_id_header="",
            size=1,
            deliveries=[NewDelivery("ana@example.org", "Q" * 21 + "w", "tracked", None)],
        )
    pixel = await start_pixelserver(make_config(tmp_path, db_url, None), store)
    url = f"http://127.0.0.1:{list(pixel.http._sockets.values())[0].getsockname()[1]}"
    try:
        assert_pixel(await fetch(f"{url}/p/{'Q' * 21}w.gif"))
        await wait_for_hits(store, old.id, 1)
    finally:
        await pixel.close()
