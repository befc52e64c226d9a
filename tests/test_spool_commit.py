"""Group commit in the durable spool: messages spooled together share their flushes to disk,
nobody hears they are on disk before the flush that covers them, and a relay killed right
after its 250 replies loses none of those messages."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import pytest

from relay import spool as spool_module
from relay.spool import Spool
from tests.conftest import capture_upstream, free_port
from tests.helpers import eventually, smtp_send
from tests.test_queue_crash import ME, message, serve, write_config

N = 8


def header(n: int) -> dict:
    return {
        "user": ME,
        "sender": ME,
        "arrival": 0.0,
        "copies": [{"rcpt": f"r{n}@example.org", "token": f"t{n}".ljust(22, "x"), "tracked": 1}],
    }


def test_messages_spooled_together_share_their_flushes(tmp_path, monkeypatch) -> None:
    """N messages put at the same moment: fewer fsync/syncfs calls than N (one each was two
    each), and each put returns only after a flush that covered its own file."""
    calls: list[str] = []
    flushed: set[int] = set()
    lock = threading.Lock()
    real_fsync, real_syncfs, real_flush = os.fsync, spool_module._syncfs, spool_module._flush

    def counting_fsync(fd: int) -> None:
        with lock:
            calls.append("fsync")
        real_fsync(fd)

    def counting_syncfs(directory: Path) -> None:
        with lock:
            calls.append("syncfs")
        real_syncfs(directory)

    def recording_flush(directory: Path, fds: list[int], folder: bool) -> None:
        real_flush(directory, fds, folder)
        with lock:
            flushed.update(fds)

    monkeypatch.setattr(spool_module.os, "fsync", counting_fsync)
    monkeypatch.setattr(spool_module, "_syncfs", counting_syncfs)
    monkeypatch.setattr(spool_module, "_flush", recording_flush)
    spool = Spool(tmp_path / "spool")
    spool.open()
    start = threading.Barrier(N)
    entries: dict[int, object] = {}
    early: list[int] = []

    def put(n: int) -> None:
        start.wait()
        entry = spool.put(header(n), f"message {n}\r\n".encode() * 1000)
        with lock:
            if entry.fd not in flushed:
                early.append(n)
        entries[n] = entry

    threads = [threading.Thread(target=put, args=(n,)) for n in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert early == []
    assert len(calls) < N, calls
    assert spool.commits.flushes < N
    assert len(spool.ids()) == N
    for n, entry in entries.items():
        assert spool.load(entry.id).read_data() == f"message {n}\r\n".encode() * 1000
        spool.release(entry)
    # A commit record alone is flushed on its own, at once.
    before = len(calls)
    entry = spool.acquire(spool.ids()[0])
    spool.append(entry, {"e": "status", "c": 0, "s": "committing"}, sync=True)
    spool.release(entry)
    assert calls[before:] == ["fsync"]
    assert spool.load(entry.id).copies[0].status == "committing"


def test_a_failed_flush_fails_every_message_in_its_batch(tmp_path, monkeypatch) -> None:
    """A disk that refuses the flush: no put claims its message is on disk."""

    def broken(directory: Path, fds: list[int], folder: bool) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool_module, "_flush", broken)
    spool = Spool(tmp_path / "spool")
    spool.open()
    errors: list[str] = []
    start = threading.Barrier(4)

    def put(n: int) -> None:
        start.wait()
        try:
            spool.put(header(n), b"x\r\n")
        except spool_module.SpoolError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=put, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and all("Input/output error" in e for e in errors), errors
    assert spool.ids() == []


async def test_killed_right_after_250_replies_to_messages_spooled_together_loses_none(
    tmp_path, db_url, store
) -> None:
    """N clients at once, the upstream deferring everything (the spool alone holds the
    messages): every client hears 250, the relay is SIGKILLed at once, and after a restart
    every copy of every message is delivered exactly once."""
    relay_port = free_port()
    messages = [message(100 + n) for n in range(N)]
    async with capture_upstream() as up:
        for rcpts, _ in messages:
            for r in rcpts:
                up.refuse[r] = "451 4.3.0 Try later"
        config = write_config(tmp_path, db_url, relay_port, up.port)
        config.write_text(
            config.read_text().replace("retry_seconds = [1]", "retry_seconds = [600]")
        )
        proc = await asyncio.to_thread(serve, config)
        try:
            replies = await asyncio.gather(
                *(asyncio.to_thread(smtp_send, relay_port, ME, r, raw) for r, raw in messages)
            )
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert all(r.startswith("250") and "queued" in r for r in replies), replies
        up.refuse.clear()
        proc = await asyncio.to_thread(serve, config)
        try:
            everyone = [r for rcpts, _ in messages for r in rcpts]
            await eventually(
                lambda: all(len(up.for_recipient(r)) == 1 for r in everyone), timeout=60
            )
            await eventually(
                lambda: not list((tmp_path / "data" / "spool").glob("*.spool")), timeout=30
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 20)
    assert [len(up.for_recipient(r)) for r in everyone] == [1] * len(everyone)


def test_after_a_flush_that_raised_the_next_batch_still_gets_a_leader(
    tmp_path, monkeypatch
) -> None:
    """Whatever a flush raises, its batch is woken with an error and the spool goes on."""
    real_flush = spool_module._flush
    monkeypatch.setattr(
        spool_module, "_flush", lambda *a: (_ for _ in ()).throw(RuntimeError("bug"))
    )
    spool = Spool(tmp_path / "spool")
    spool.open()
    with pytest.raises(RuntimeError):
        spool.put(header(0), b"x\r\n")
    monkeypatch.setattr(spool_module, "_flush", real_flush)
    done: list[str] = []
    threads = [
        threading.Thread(target=lambda n=n: done.append(spool.put(header(n), b"y\r\n").id))
        for n in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(done) == spool.ids() and len(done) == 3
