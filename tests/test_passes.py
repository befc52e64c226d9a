"""The loop behind the digest and webhook runners: it outlives failing passes and says so once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay.passes import run_passes


async def test_failing_passes_are_logged_once_and_the_loop_goes_on(caplog) -> None:
    log = logging.getLogger("mailping.test-passes")
    calls = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise OSError("connection refused")  # the store away, as asyncpg reports it
        if calls == 5:
            done.set()

    caplog.set_level(logging.INFO, logger=log.name)
    task = asyncio.create_task(run_passes(tick, "digest", 0.001, log))
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("digest pass failed; trying again every 0.001 s") == 1
    assert messages.count("digest passes work again") == 1
