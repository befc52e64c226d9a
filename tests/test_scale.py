"""Durable and scale-out: no answered hit is lost to SIGKILL or a database outage under load;
`--workers N` processes share the ports; two relays and two pixel servers share one
PostgreSQL; /metrics tells what is going on."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from pixelserver.store.schema import Delivery, Hit, Message, make_engine, make_sessionmaker
from relay import service, tracking
from tests.conftest import (
    capture_upstream,
    free_port,
    make_config,
    start_pixelserver,
)
from tests.loadgen import pixel_load
from tests.test_pixel import fetch
from tests.test_serve import wait_for_line


async def deliveries(store, n: int) -> list[str]:
    """n recorded copies; returns their pixel paths."""
    recorded = await tracking.record_message(
        store,
        user="me@example.com",
        envelope_from="me@example.com",
        recipients=[f"r{i}@example.org" for i in range(n)],
        subject="Load",
        message_id_header="<load@example.com>",
        size=1,
        untracked_reason=None,
    )
    return [f"/p/{d.token}.gif" for d in recorded.deliveries]


async def count_hits(store) -> int:
    async with store() as s:
        return (await s.execute(select(func.count(Hit.id)))).scalar_one()


async def settle(store, at_least: int, timeout: float = 40) -> int:
    """Hits in the store once it stops growing and has reached `at_least`."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        n = await count_hits(store)
        if n >= at_least and n == last:
            return n
        last = n
        await asyncio.sleep(0.5)
    return await count_hits(store)


def pixel_server(tmp_path: Path, db_url: str, port: int, *extra: str) -> subprocess.Popen:
    config = tmp_path / "mailping.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[database]\nurl = "{db_url}"\n'
        f'[pixelserver]\nlisten = "127.0.0.1:{port}"\npublic_url = "http://127.0.0.1:{port}"\n'
        # A load of thousands of fetches a second on 50 tokens from one client: here to test
        # durability, not the abuse limits, which would (rightly) stop recording most of it.
        "record_burst_per_token = 1000000\nrecord_burst_per_network = 1000000\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "--config", str(config), "pixelserver", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_line(proc, r"pixel server and report page on")
    return proc


async def test_sigkill_under_load_loses_no_answered_hit(tmp_path, db_url, store) -> None:
    paths = await deliveries(store, 50)
    port = free_port()
    proc = await asyncio.to_thread(pixel_server, tmp_path, db_url, port)
    stop = asyncio.Event()
    concurrency = 16
    load = asyncio.create_task(pixel_load("127.0.0.1", port, paths, stop, concurrency=concurrency))
    await asyncio.sleep(2.0)
    os.kill(proc.pid, signal.SIGKILL)  # mid-load: no shutdown, no last flush
    proc.wait()
    stop.set()
    result = await load
    assert result.answered > 200
    # Started again on the same data_dir: the journal is replayed.
    proc = await asyncio.to_thread(pixel_server, tmp_path, db_url, port)
    try:
        stored = await settle(store, result.answered)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    # Every answered fetch is stored. A request can also be journaled and then killed before
    # its answer left: at most one per connection in flight, stored though never answered.
    print(f"answered {result.answered}, failed {result.failed}, stored {stored}")
    assert result.answered <= stored <= result.answered + concurrency, (result, stored)
    async with store() as s:
        uids = (await s.execute(select(func.count(func.distinct(Hit.uid))))).scalar_one()
    assert uids == stored


class CuttableProxy:
    """A TCP forwarder to the database that the test can cut, as if the server were stopped:
    open connections are dropped and new ones refused until it is restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._pair, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for w in list(self.pipes):
            w.transport.abort()
        self.pipes.clear()

    async def _pair(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_database_outage_under_load_loses_no_hit(tmp_path, db_url, store) -> None:
    paths = await deliveries(store, 50)
    url = make_url(db_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    await proxy.start()
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    cfg = make_config(tmp_path, via_proxy, None)
    # A load on 50 tokens from one client, to test the outage, not the abuse limits.
    cfg = dataclasses.replace(
        cfg,
        pixelserver=dataclasses.replace(
            cfg.pixelserver, record_burst_per_token=10**6, record_burst_per_network=10**6
        ),
    )
    engine = make_engine(via_proxy)
    pixel = await start_pixelserver(cfg, make_sessionmaker(engine))
    port = int(cfg.pixelserver.listen.rsplit(":", 1)[1])
    stop = asyncio.Event()
    try:
        load = asyncio.create_task(pixel_load("127.0.0.1", port, paths, stop, concurrency=8))
        await asyncio.sleep(1.0)
        # The store is being written before the outage (on a loaded machine the first batch,
        # which also opens the first connection, can take more than the first second).
        deadline = time.monotonic() + 10
        while (before := await count_hits(store)) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert before > 0
        await proxy.cut()
        await asyncio.sleep(4.0)  # the database is away; pixels keep being answered
        during = await count_hits(store)
        assert pixel.pipeline.journal.pending_bytes() > 0
        await proxy.start()
        await asyncio.sleep(1.0)
        stop.set()
        result = await load
        stored = await settle(store, result.answered)
    finally:
        stop.set()
        await pixel.close()
        await engine.dispose()
        await proxy.cut()
    print(f"outage: answered {result.answered}, stored {stored}, before {before}, during {during}")
    assert result.failed == 0  # not one pixel went unanswered
    assert stored == result.answered  # and every one is stored, once
    assert during - before < result.answered - during  # most arrived during or after the cut


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_the_pipeline_resumes_within_a_second_of_the_database_returning(
    tmp_path, db_url, store
) -> None:
    """A pipeline that waits seconds after the database is back is as bad as a lost hit under
    load: the journal it did not drain grows by thousands a second. After an 8 s outage the
    hits must be stored within about a second of the database's return (a backoff that had
    doubled to 5 s waited up to 5 s more)."""
    paths = await deliveries(store, 5)
    url = make_url(db_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    await proxy.start()
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    cfg = make_config(tmp_path, via_proxy, None)
    engine = make_engine(via_proxy)
    pixel = await start_pixelserver(cfg, make_sessionmaker(engine))
    base = f"http://{cfg.pixelserver.listen}"
    try:
        assert (await fetch(base + paths[0])).code == 200
        await settle(store, 1, timeout=10)
        await proxy.cut()
        for path in paths:  # answered and journaled while the database is away
            assert (await fetch(base + path)).code == 200
        await asyncio.sleep(8.0)  # long enough for any backoff to have grown
        assert await count_hits(store) == 1
        await proxy.start()
        back = time.monotonic()
        while await count_hits(store) < 1 + len(paths) and time.monotonic() - back < 30:
            await asyncio.sleep(0.05)
        resumed = time.monotonic() - back
    finally:
        await pixel.close()
        await engine.dispose()
        await proxy.cut()
    print(f"stored again {resumed:.2f} s after the database came back")
    assert await count_hits(store) == 1 + len(paths)
    assert resumed < 2.0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_workers_share_the_ports_on_postgresql(tmp_path, db_url, store) -> None:
    relay_port, web_port = free_port(), free_port()
    async with capture_upstream() as up:
        config = tmp_path / "mailping.toml"
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\n[database]\nurl = "{db_url}"\n'
            f'[relay]\nlisten = "127.0.0.1:{relay_port}"\nauth = "none"\n'
            f'[upstream]\nhost = "127.0.0.1"\nport = {up.port}\ntls = "none"\n'
            f'[pixelserver]\nlisten = "127.0.0.1:{web_port}"\n'
            f'public_url = "http://127.0.0.1:{web_port}"\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "--config", str(config), "serve", "--workers", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            for _ in range(2):
                await asyncio.to_thread(wait_for_line, proc, r"send a test mail")
            listeners = await asyncio.to_thread(
                subprocess.run,
                ["ss", "-ltnpH", f"sport = :{web_port}"],
                capture_output=True,
                text=True,
            )
            pids = set(re.findall(r"pid=(\d+)", listeners.stdout))
            assert len(pids) == 2, listeners.stdout  # two processes on one port
            for i in range(8):
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = "me@example.com", "a@x.example", f"M{i}"
                msg.set_content("plain")
                msg.add_alternative("<html><body><p>Hi</p></body></html>", subtype="html")
                await asyncio.to_thread(_send, relay_port, msg, ["a@x.example", "b@y.example"])
            urls = [
                re.search(rb'src="(http://[^"]+\.gif)"', m.data).group(1).decode()
                for m in up.messages
            ]
            assert len(urls) == 16
            for url in urls:  # a new connection each: the kernel spreads them over both
                assert (await fetch(url, headers={"Connection": "close"})).code == 200
            stored = await settle(store, 16)
            metrics = (await fetch(f"http://127.0.0.1:{web_port}/metrics")).body.decode()
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, out
    assert stored == 16
    async with store() as s:
        assert (await s.execute(select(func.count(Delivery.id)))).scalar_one() == 16
    assert (tmp_path / "data" / "hits-0.journal").exists()
    assert (tmp_path / "data" / "hits-1.journal").exists()
    # Summed over both workers.
    assert re.search(r"^mailping_pixel_requests_total 16\.0$", metrics, re.M), metrics
    assert re.search(r'^mailping_relay_messages_total\{result="sent"\} 8\.0$', metrics, re.M)


def _send(port: int, msg: EmailMessage, to: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.send_message(msg, to_addrs=to)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_two_relays_and_two_pixel_servers_on_one_postgresql(tmp_path, db_url, store):
    """Separate engines and data_dirs, as on two machines: every delivery and hit once."""
    async with capture_upstream() as up:
        running = []
        engines = []
        for name in ("a", "b"):
            cfg = make_config(tmp_path / name, db_url, up.port)
            cfg.data_dir.mkdir(parents=True)
            engine = make_engine(db_url)
            engines.append(engine)
            sessions = make_sessionmaker(engine)
            relay = await service.start_relay(cfg, sessions)
            pixel = await start_pixelserver(cfg, sessions)
            running.append((cfg, relay, pixel))
        try:
            for i, (cfg, _, _) in enumerate(running * 3):
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = "me@example.com", "x@x.example", f"S{i}"
                msg.set_content("plain")
                msg.add_alternative("<html><body><p>Hi</p></body></html>", subtype="html")
                port = int(cfg.relay.listen.rsplit(":", 1)[1])
                rcpts = [f"p{i}@x.example", f"q{i}@y.example", f"r{i}@z.example"]
                await asyncio.to_thread(_send, port, msg, rcpts)
            tokens = [
                re.search(rb"/p/([A-Za-z0-9_-]{22})\.gif", m.data).group(1).decode()
                for m in up.messages
            ]
            assert len(tokens) == 18
            # Every copy fetched through both pixel servers, concurrently.
            await asyncio.gather(
                *(
                    fetch(f"{cfg.pixelserver.public_url}/p/{t}.gif")
                    for t in tokens
                    for cfg, _, _ in running
                )
            )
            stored = await settle(store, 36)
        finally:
            for _, relay, pixel in running:
                await relay.close()
                await pixel.close()
            for e in engines:
                await e.dispose()
    assert stored == 36
    async with store() as s:
        per_delivery = (
            await s.execute(
                select(Delivery.token, func.count(Hit.id))
                .join(Hit, Hit.delivery_id == Delivery.id)
                .group_by(Delivery.token)
            )
        ).all()
        messages = (await s.execute(select(func.count(Message.id)))).scalar_one()
    assert messages == 6
    assert sorted(per_delivery) == sorted((t, 2) for t in tokens)


async def test_metrics_are_served_to_allowed_networks_only(stack) -> None:
    base = stack.pixel_base
    await fetch(f"{base}/p/{'A' * 22}.gif")
    page = await fetch(f"{base}/metrics")
    assert page.code == 200
    assert page.headers["Content-Type"].startswith("text/plain")
    body = page.body.decode()
    for name in (
        "mailping_pixel_requests_total",
        "mailping_hits_total",
        "mailping_pipeline_backlog_bytes",
        "mailping_journal_bytes",
        "mailping_batch_write_seconds_bucket",
        "mailping_relay_messages_total",
        "mailping_upstream_seconds_bucket",
        "mailping_upstream_errors_total",
    ):
        assert name in body, name


async def test_metrics_are_not_there_for_other_networks(tmp_path, db_url, store) -> None:
    cfg = make_config(tmp_path, db_url, None)
    cfg = dataclasses.replace(
        cfg, pixelserver=dataclasses.replace(cfg.pixelserver, metrics_allow=("10.0.0.0/8",))
    )
    pixel = await start_pixelserver(cfg, store)
    try:
        page = await fetch(f"{cfg.pixelserver.public_url}/metrics")
    finally:
        await pixel.close()
    assert page.code == 404
