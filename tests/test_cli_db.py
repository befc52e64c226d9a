"""`mailping db upgrade` and the start-up schema check, through the real command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pixelserver.store import migrate
from tests.conftest import free_port


def mailping(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "--config", str(cfg), "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_db_upgrade_then_status(tmp_path: Path, db_url: str) -> None:
    cfg = tmp_path / "mailping.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/data"\n[database]\nurl = "{db_url}"\n')
    status = mailping(cfg, "db", "status")
    assert status.returncode == 0 and "schema None" in status.stdout
    up = mailping(cfg, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    head = migrate.head_revision()
    assert f"schema {head}, this MailPing needs {head}" in up.stdout
    assert ":postgres@" not in up.stdout  # the password is never printed


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_relay_refuses_an_old_postgresql_schema(tmp_path: Path, db_url: str) -> None:
    """A shared PostgreSQL is upgraded by its operator; SQLite upgrades on start (test_serve)."""
    cfg = tmp_path / "mailping.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path}/data"\n[database]\nurl = "{db_url}"\n'
        f'[relay]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    proc = mailping(cfg, "relay")
    assert proc.returncode == 1
    assert "run `mailping db upgrade`" in proc.stderr
