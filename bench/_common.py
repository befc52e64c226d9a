"""Helpers shared by the benchmarks: free ports, waiting for a port, starting processes."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def spawn(
    args: list[str],
    *,
    cpu: int | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """A server process, pinned to one core when asked (so load and server do not share)."""
    if (
        cpu is not None
        and hasattr(os, "sched_setaffinity")
        and os.cpu_count()
        and os.cpu_count() > 1
    ):
        args = ["taskset", "-c", str(cpu), *args]
    return subprocess.Popen(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def running(
    args: list[str], port: int, *, cpu: int | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """A server process listening on `port` for the duration of the block."""
    proc = spawn(args, cpu=cpu, cwd=ROOT, env=env)
    try:
        wait_port(port)
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def mailping(
    command: str, port: int, toml: str, *, cpu: int | None = None
) -> Iterator[subprocess.Popen]:
    """`mailping COMMAND` on a throwaway data directory and the given config tables."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "mailping.toml"
        cfg.write_text(f'data_dir = "{tmp}/data"\n{toml}')
        with running(
            [PYTHON, "-m", "relay.cli", "--config", str(cfg), "--log-level", "WARNING", command],
            port,
            cpu=cpu,
        ) as proc:
            yield proc


def relay_toml(port: int, sink_port: int, extra: str = "") -> str:
    """A relay with no login (loopback) forwarding to the local sink."""
    return (
        f'[relay]\nlisten = "127.0.0.1:{port}"\nauth = "none"\n{extra}'
        f'[upstream]\nhost = "127.0.0.1"\nport = {sink_port}\ntls = "none"\n'
        'sent_copy = "off"\n'
    )


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


PYTHON = sys.executable


@contextlib.asynccontextmanager
async def fresh_pg_database(url: str, name: str):
    """A new, empty database named `name` on the server of `url` (dropped afterwards);
    yields its URL."""
    import asyncpg
    from sqlalchemy.engine import make_url

    base = make_url(url)
    admin = await asyncpg.connect(
        host=base.host,
        port=base.port or 5432,
        user=base.username,
        password=base.password,
        database=base.database or "postgres",
    )
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
