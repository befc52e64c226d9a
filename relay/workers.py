"""`--workers N`: N copies of the same MailPing process sharing the listening ports.

Each child binds the relay and pixel ports with SO_REUSEPORT (the kernel spreads connections
over them), keeps its own hit journal (hits-<i>.journal) and writes to the shared store; the
parent only starts them, restarts one that dies, and stops them all on SIGTERM or Ctrl-C.
Child processes rather than threads because Python runs one thread at a time: the pixel's
throughput grows with processes, and one crashing worker does not take the others with it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from relay.config import Config

log = logging.getLogger("mailping.workers")

STARTUP_GRACE = 5.0  # a worker dying sooner than this after its start failed to start at all
RESTART_DELAY = 1.0


def metrics_dir(cfg: Config) -> str:
    return str(cfg.data_dir / "metrics")


def supervise(cfg: Config, argv: Sequence[str], workers: int) -> int:
    """Run `workers` children until a signal; returns the exit code for the command line."""
    env = dict(os.environ)
    # prometheus-client's multi-process mode: each child writes its samples under this
    # folder and /metrics in any child adds them up.
    shutil.rmtree(metrics_dir(cfg), ignore_errors=True)
    os.makedirs(metrics_dir(cfg), exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir(cfg)

    def spawn(i: int) -> tuple[subprocess.Popen, float]:
        args = [*argv, "--worker-index", str(i), "--worker-count", str(workers)]
        proc = subprocess.Popen([sys.executable, "-m", "relay.cli", *args], env=env)
        log.info("worker %d started (pid %d)", i, proc.pid)
        return proc, time.monotonic()

    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    procs = {i: spawn(i) for i in range(workers)}
    code = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, (proc, started) in list(procs.items()):
                status = proc.poll()
                if status is None:
                    continue
                if time.monotonic() - started < STARTUP_GRACE and status != 0:
                    log.error("worker %d could not start (exit %d); stopping", i, status)
                    code = status
                    stopping.append(0)
                    break
                log.error("worker %d exited with %d; starting it again", i, status)
                time.sleep(RESTART_DELAY)
                procs[i] = spawn(i)
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for s, handler in old.items():
            signal.signal(s, handler)
    return code
