"""Every shipped deploy file is checked by the tools that will read it: `nginx -t` with
Debian's nginx (1.22 on Debian 12) and a throwaway certificate, and `systemd-analyze verify`
on the units with the `mailping` binary where they expect it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay import certs

DEPLOY = Path(__file__).parent.parent / "deploy"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def need(tool: str) -> str:
    found = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {tool} is not installed")
        pytest.skip(f"{tool} is not installed")
    return found


def test_nginx_accepts_the_shipped_configuration(tmp_path: Path) -> None:
    nginx = need("nginx")
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    certs.make_self_signed("track.example.com", cert, key)
    site = (DEPLOY / "nginx-mailping.conf").read_text()
    site = re.sub(r"/etc/letsencrypt/live/[^;]+/fullchain\.pem", str(cert), site)
    site = re.sub(r"/etc/letsencrypt/live/[^;]+/privkey\.pem", str(key), site)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "stream.conf").write_text((DEPLOY / "nginx-smtp-stream.conf").read_text())
    module = f"load_module {STREAM_MODULE};\n" if STREAM_MODULE.exists() else ""
    (tmp_path / "nginx.conf").write_text(
        f"{module}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n"
        f"include {tmp_path}/stream.conf;\n"
    )
    proc = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(tmp_path / "nginx.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "syntax is ok" in proc.stderr


def test_systemd_accepts_the_shipped_units(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    # The binary where the units expect it, as `pip install` into /opt/mailping puts it.
    binary = root / "opt/mailping/bin/mailping"
    binary.parent.mkdir(parents=True)
    # A copy, not a symlink: systemd resolves links inside --root.
    here = Path(sys.executable).parent / "mailping"
    shutil.copy(here if here.exists() else shutil.which("mailping") or "", binary)
    units = sorted(DEPLOY.glob("*.service"))
    assert units
    for unit in units:
        target = root / "etc/systemd/system" / unit.name
        shutil.copy(unit, target)
        proc = subprocess.run(
            [analyze, "verify", f"--root={root}", str(target)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"{unit.name}: {proc.stderr}"
