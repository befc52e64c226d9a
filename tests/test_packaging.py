"""The distribution builds without packaging warnings and says its licence the PEP 639 way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_expression_and_setuptools_can_read_it() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    # Setuptools reads a string licence as an SPDX expression from version 77 on.
    (requirement,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert requirement.replace(" ", "") == "setuptools>=77"


def test_the_wheel_builds_without_a_licence_warning(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("relay", "pixelserver"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "project.license" not in output and "License classifiers" not in output, output
    (wheel,) = tmp_path.glob("mailping-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(name).decode()
    assert "License-Expression: MIT" in metadata.splitlines()


def ci_apt_packages() -> set[str]:
    """The Debian packages .ci/run installs (its one `apt-get install` command)."""
    text = (ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    (line,) = [x for x in text.splitlines() if "apt-get install" in x]
    words = line.split(">", 1)[0].split()
    return {w for w in words[words.index("install") + 1 :] if not w.startswith("-")}


def test_ci_installs_what_swaks_needs_for_tls() -> None:
    """swaks only Recommends its TLS modules, and CI installs without Recommends."""
    assert {"swaks", "libnet-ssleay-perl", "libio-socket-ssl-perl"} <= ci_apt_packages()


def test_swaks_here_can_speak_tls() -> None:
    """Where swaks is installed, it must do TLS, or the swaks TLS tests fail for a reason
    that has nothing to do with the relay."""
    swaks = shutil.which("swaks")
    if swaks is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but swaks is not installed")
        pytest.skip("swaks is not installed")
    proc = subprocess.run([swaks, "--support"], capture_output=True, text=True, timeout=30)
    assert "TLS supported" in proc.stdout + proc.stderr, proc.stderr
