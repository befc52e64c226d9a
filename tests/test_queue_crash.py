"""SIGKILL of `mailping serve` while clients submit, and restart on the same data_dir: every
message the client heard 250 for reaches each recipient exactly once (or is reported as
uncertain), a client that re-sends what it got no reply for causes no duplicate, and nothing
stays pending. Also an upstream that drops the line in the middle of DATA."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import subprocess
import sys
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from pixelserver.store import migrate
from pixelserver.store.schema import Delivery, make_engine, make_sessionmaker
from relay import service
from tests.conftest import capture_upstream, free_port, make_config, require_postgres
from tests.helpers import eventually, smtp_send
from tests.test_serve import wait_for_line

ME = "me@example.com"


def serve(config: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_line(proc, r"SMTP relay on")
    log = open(config.parent / f"serve-{proc.pid}.log", "w")  # noqa: SIM115 - lives with proc

    def copy() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.write(line)
            log.flush()

    threading.Thread(target=copy, daemon=True).start()
    return proc


def write_config(tmp_path: Path, db_url: str, relay_port: int, upstream_port: int) -> Path:
    web = free_port()
    config = tmp_path / "mailping.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        + f'[database]\nurl = "{db_url}"\n'
        + f'[relay]\nlisten = "127.0.0.1:{relay_port}"\nauth = "none"\n'
        f'[upstream]\nhost = "127.0.0.1"\nport = {upstream_port}\ntls = "none"\n'
        f"[queue]\nretry_seconds = [1]\nreply_within = 5\n"
        f'[pixelserver]\nlisten = "127.0.0.1:{web}"\npublic_url = "http://127.0.0.1:{web}"\n'
    )
    return config


def message(n: int) -> tuple[list[str], bytes]:
    rcpts = [f"m{n}-r{j}@example.org" for j in range(3)]
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ME, ", ".join(rcpts), f"Message {n}"
    msg["Message-ID"] = f"<crash-{n}@example.com>"
    msg.set_content("plain")
    msg.add_alternative(f"<html><body><p>Number {n}</p></body></html>", subtype="html")
    return rcpts, msg.as_bytes().replace(b"\n", b"\r\n")


def client(port: int, numbers: list[int], replies: dict[int, str]) -> None:
    for n in numbers:
        rcpts, raw = message(n)
        try:
            replies[n] = smtp_send(port, ME, rcpts, raw)
        except (OSError, smtplib.SMTPException) as exc:
            replies[n] = f"lost: {exc}"


async def test_sigkill_under_submissions_then_restart_sends_each_copy_once(
    tmp_path, db_url, store
) -> None:
    relay_port = free_port()
    async with capture_upstream(data_delay=0.05) as up:
        config = write_config(tmp_path, db_url, relay_port, up.port)
        proc = await asyncio.to_thread(serve, config)
        replies: dict[int, str] = {}
        threads = [
            threading.Thread(target=client, args=(relay_port, list(range(i, 60, 4)), replies))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        await eventually(lambda: len(replies) >= 12, timeout=60)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: no shutdown at all
        proc.wait()
        for t in threads:
            await asyncio.to_thread(t.join)
        heard = {n for n, r in replies.items() if r.startswith("250")}
        unheard = sorted(set(range(60)) - heard)
        assert heard and unheard, replies
        proc = await asyncio.to_thread(serve, config)
        try:
            # The clients send again whatever they heard no 250 for, as clients do.
            again: dict[int, str] = {}
            await asyncio.to_thread(client, relay_port, unheard, again)
            assert all(r.startswith("250") for r in again.values()), again
            spool = tmp_path / "data" / "spool"
            await eventually(lambda: not list(spool.glob("*.spool")), timeout=90)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 20)
    async with store() as s:
        rows = (await s.execute(select(Delivery))).scalars().all()
    outcome = {r.recipient: r.outcome for r in rows}
    counts: dict[str, int] = {}
    for m in up.messages:
        if m.rcpt_tos == [ME]:
            continue  # delivery reports about uncertain copies
        counts[m.rcpt_tos[0]] = counts.get(m.rcpt_tos[0], 0) + 1
    twice = {r: c for r, c in counts.items() if c > 1}
    assert twice == {}, twice
    for n in range(60):
        for r in message(n)[0]:
            # Exactly once, or (cut between its final dot and the reply) reported uncertain.
            assert counts.get(r, 0) == 1 or outcome.get(r) == "uncertain", (n, r, outcome.get(r))
    assert {o for o in outcome.values()} <= {"accepted", "uncertain"}
    print(f"heard {len(heard)}, resent {len(unheard)}, copies {len(up.messages)}")


async def test_deferred_then_killed_right_after_the_reply_resumes_on_restart(
    tmp_path, db_url, store
) -> None:
    relay_port = free_port()
    rcpts, raw = message(1)
    async with capture_upstream(refuse={rcpts[1]: "451 4.3.0 Try later"}) as up:
        config = write_config(tmp_path, db_url, relay_port, up.port)
        config.write_text(
            config.read_text().replace("retry_seconds = [1]", "retry_seconds = [600]")
        )
        proc = await asyncio.to_thread(serve, config)
        reply = await asyncio.to_thread(smtp_send, relay_port, ME, rcpts, raw)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert reply.startswith("250") and "1 queued" in reply, reply
        up.refuse.clear()
        proc = await asyncio.to_thread(serve, config)
        try:
            # On start the queue tries at once, not 600 s later.
            await eventually(lambda: len(up.for_recipient(rcpts[1])) == 1, timeout=30)
            await eventually(
                lambda: not list((tmp_path / "data" / "spool").glob("*.spool")), timeout=30
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 20)
    assert [len(up.for_recipient(r)) for r in rcpts] == [1, 1, 1]


class DropMidData:
    """An upstream that hangs up in the middle of the first DATA it receives (before the
    final dot: nothing was delivered), then behaves."""

    def __init__(self) -> None:
        self.port = free_port()
        self.delivered: list[str] = []
        self.dropped = 0

    async def start(self) -> asyncio.Server:
        return await asyncio.start_server(self.session, "127.0.0.1", self.port)

    async def session(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 flaky.test ESMTP\r\n")
        rcpt = ""
        try:
            while line := await r.readline():
                cmd = line.decode().strip().upper()
                if cmd.startswith("EHLO"):
                    w.write(b"250-flaky.test\r\n250 8BITMIME\r\n")
                elif cmd.startswith("RCPT"):
                    rcpt = line.decode().split("<", 1)[1].split(">", 1)[0]
                    w.write(b"250 ok\r\n")
                elif cmd == "DATA":
                    w.write(b"354 go on\r\n")
                    await w.drain()
                    if not self.dropped:
                        await r.read(100)
                        self.dropped += 1
                        w.transport.abort()
                        return
                    while (await r.readline()) != b".\r\n":
                        pass
                    self.delivered.append(rcpt)
                    w.write(b"250 queued\r\n")
                elif cmd == "QUIT":
                    w.write(b"221 bye\r\n")
                    await w.drain()
                    w.close()
                    return
                else:
                    w.write(b"250 ok\r\n")
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass


async def test_an_upstream_dropping_mid_data_gets_the_copy_once(tmp_path, db_url, store) -> None:
    from relay import service
    from tests.conftest import make_config

    flaky = DropMidData()
    server = await flaky.start()
    cfg = make_config(tmp_path, db_url, flaky.port, queue={"retry_seconds": [1]})
    relay = await service.start_relay(cfg, store, with_digests=False)
    try:
        rcpts, raw = message(7)
        # Large enough that the relay is still writing the body when the line drops (a small
        # one is wholly sent, dot included, before the drop is seen: that one is uncertain).
        head, body = raw.split(b"\r\n\r\n", 1)
        raw = head + b"\r\nX-Pad: 1\r\n\r\n" + body + (b"x" * 76 + b"\r\n") * 100_000
        port = int(cfg.relay.listen.rsplit(":", 1)[1])
        reply = await asyncio.to_thread(smtp_send, port, ME, rcpts, raw)
        assert reply.startswith("250"), reply
        await eventually(lambda: sorted(flaky.delivered) == sorted(rcpts), timeout=30)
    finally:
        await relay.close()
        server.close()
    assert flaky.dropped == 1 and sorted(flaky.delivered) == sorted(rcpts)


@pytest.mark.postgres
async def test_postgresql_stopped_and_started_with_pg_ctlcluster(tmp_path) -> None:
    """A real PostgreSQL server of its own (pg_createcluster), stopped and started with
    pg_ctlcluster while mail is sent: mail flows, the records catch up, nothing pending."""
    require_postgres()
    version = sorted(os.listdir("/etc/postgresql"), key=float)[-1]
    name, port = f"mp{os.getpid() % 100000}", free_port()

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, timeout=120)

    run("pg_createcluster", version, name, "-p", str(port), "--start")
    try:
        run("su", "postgres", "-c", f"psql -p {port} -qc \"ALTER USER postgres PASSWORD 'pw'\"")
        url = f"postgresql+asyncpg://postgres:pw@127.0.0.1:{port}/postgres"
        engine = make_engine(url)
        await migrate.upgrade(engine)
        sessions = make_sessionmaker(engine)
        async with capture_upstream() as up:
            cfg = make_config(tmp_path, url, up.port)
            relay = await service.start_relay(cfg, sessions, with_digests=False)
            port_smtp = int(cfg.relay.listen.rsplit(":", 1)[1])
            try:
                rcpts, raw = message(1)
                assert (await asyncio.to_thread(smtp_send, port_smtp, ME, rcpts, raw))[:3] == "250"
                run("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "stop")
                for n in (2, 3):
                    rcpts, raw = message(n)
                    reply = await asyncio.to_thread(
                        smtp_send, port_smtp, f"u{n}@example.com", rcpts, raw
                    )
                    assert reply.startswith("250 2.0.0 Sent to 3"), reply
                assert len(up.messages) == 9  # the database being down stopped no mail
                run("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start")
                spool = cfg.spool_dir
                await eventually(lambda: not list(spool.glob("*.spool")), timeout=60)
            finally:
                await relay.close()
        async with sessions() as s:
            outcomes = list((await s.execute(select(Delivery.outcome))).scalars())
        await engine.dispose()
        assert sorted(outcomes) == ["accepted"] * 9
    finally:
        subprocess.run(
            ["pg_dropcluster", "--stop", version, name], capture_output=True, timeout=120
        )
