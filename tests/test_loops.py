"""The background loops never die: the digest scheduler and the retention purge keep going
through a database outage (the connection cut as if PostgreSQL were stopped and started)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy.engine import make_url

from pixelserver.store import retention
from pixelserver.store.schema import make_engine, make_sessionmaker
from tests.conftest import capture_upstream
from tests.test_digest import Clock, at, new_user, runner_for, sent
from tests.test_scale import CuttableProxy


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_the_digest_scheduler_survives_a_database_restart(tmp_path, db_url, store) -> None:
    url = make_url(db_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    await proxy.start()
    via = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    engine = make_engine(via)
    sessions = make_sessionmaker(engine)
    await new_user(store)
    await sent(store, "Numbers", ["ana@example.org"], at(2026, 3, 28, 5))
    clock = Clock(at(2026, 3, 28, 6, 0))  # before the 08:00 (UTC) digest
    async with capture_upstream() as up:
        runner = runner_for(tmp_path, db_url, sessions, up.port, clock)
        loop = asyncio.create_task(runner.run_forever(interval=0.1))
        purge = asyncio.create_task(retention.purge_forever(sessions, 395, interval=0.1))
        try:
            await asyncio.sleep(0.5)
            await proxy.cut()  # PostgreSQL "stopped": connections dropped, new ones refused
            await asyncio.sleep(1.5)
            assert not loop.done(), loop.exception() if loop.done() else None
            assert not purge.done(), purge.exception() if purge.done() else None
            clock.now = at(2026, 3, 28, 8, 1)  # the digest fell due during the outage
            await asyncio.sleep(0.5)
            await proxy.start()  # and started again
            for _ in range(100):
                if up.messages:
                    break
                await asyncio.sleep(0.1)
            assert [m.rcpt_tos for m in up.messages] == [["me@example.com"]]
            assert not loop.done() and not purge.done()
        finally:
            for task in (loop, purge):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await engine.dispose()
            await proxy.cut()
