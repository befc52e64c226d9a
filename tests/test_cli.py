"""The command line as people type it: `--config FILE` (and `--log-level`) after the subcommand
as well as before it, for every subcommand."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pixelserver.store.accounts import set_local_user
from relay import service
from relay.auth import hash_password
from relay.certs import make_self_signed
from relay.cli import build_parser, main, swaks_hint
from tests.conftest import capture_upstream, free_port, make_config
from tests.test_serve import wait_for_line

# The arguments each subcommand needs besides the config; every subcommand must be listed.
SUBCOMMANDS: dict[str, list[str]] = {
    "serve": [],
    "relay": [],
    "pixelserver": [],
    "db": ["status"],
    "check-config": [],
    "user": ["list"],
    "classify": ["--ip", "192.0.2.1"],
    "reclassify": [],
    "geoip": ["status"],
    "digest": ["--user", "me@example.com", "--preview"],
    "cert": ["--out", "certs"],
    "queue": ["list"],
    "networks": ["update", "--data-dir", "nets"],
    "forget": ["someone@example.com"],
    "webhook": ["list"],
}


def mailping(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MAILPING_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def test_the_table_above_names_every_subcommand() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == set(SUBCOMMANDS)


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
@pytest.mark.parametrize("where", ["before", "after"])
def test_every_subcommand_takes_config_before_or_after_it(
    command: str, where: str, tmp_path: Path
) -> None:
    args = [command, *SUBCOMMANDS[command]]
    flags = ["--config", "x.toml", "--log-level", "ERROR"]
    parsed = build_parser().parse_args(flags + args if where == "before" else args + flags)
    assert (parsed.command, parsed.config, parsed.log_level) == (command, "x.toml", "ERROR")


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_reads_the_config_named_after_it(command: str, tmp_path: Path) -> None:
    """A config with a mistake: each subcommand, given it after its name, must stop on that
    mistake and name the file (not ignore the flag or refuse it as unknown)."""
    broken = tmp_path / "broken-i12.toml"
    broken.write_text("[relay]\ntls = 'ssl'\n")
    proc = mailping(tmp_path, command, *SUBCOMMANDS[command], "--config", str(broken))
    assert proc.returncode == 2, proc.stderr
    assert f"configuration error: {broken}: relay.tls" in proc.stderr


def test_check_config_after_the_subcommand_describes_that_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "mailping.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/distinctive-data-dir-i12"\n')
    assert main(["check-config", "--config", str(cfg), "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert f"configuration: {cfg} (valid)" in out
    assert f"data directory: {tmp_path}/distinctive-data-dir-i12" in out


def test_store_commands_after_the_subcommand_use_that_files_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "distinctive-data-dir-i12"
    cfg = tmp_path / "mailping.toml"
    cfg.write_text(f'data_dir = "{data}"\n')
    status = mailping(tmp_path, "db", "upgrade", "--config", str(cfg))
    assert status.returncode == 0, status.stderr
    assert str(data / "mailping.sqlite3") in status.stdout
    added = subprocess.run(
        [sys.executable, "-m", "relay.cli", "user", "add", "ana@example.com"]
        + ["--password-stdin", "--config", str(cfg)],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    listed = mailping(tmp_path, "user", "list", "--config", str(cfg))
    assert listed.stdout.split() == ["ana@example.com"]
    assert (data / "mailping.sqlite3").exists()


@pytest.mark.parametrize(
    ("tls", "auth", "expected", "absent"),
    [
        ("none", "none", [], ["--tls", "--tlsc", "--auth", "-au"]),
        ("starttls", "none", ["--tls"], ["--tlsc", "--auth"]),
        ("implicit", "none", ["--tlsc"], ["--tls", "--auth"]),
        ("starttls", "local", ["--tls", "--auth", "-au"], ["--tlsc"]),
        ("implicit", "upstream", ["--tlsc", "--auth", "-au"], ["--tls"]),
        ("none", "local", ["--auth", "-au"], ["--tls", "--tlsc"]),
    ],
)
def test_the_swaks_hint_has_the_flags_the_relay_needs(
    tmp_path: Path, tls: str, auth: str, expected: list[str], absent: list[str]
) -> None:
    cfg = make_config(tmp_path, "", None, relay={"tls": tls, "auth": auth})
    argv = swaks_hint(cfg)
    assert argv[0] == "swaks"
    assert all(flag in argv for flag in expected), argv
    assert not any(flag in argv for flag in absent), argv
    assert "--auth-password" not in argv and "-ap" not in argv  # swaks asks for it


def test_the_swaks_hint_names_a_reachable_address_for_a_wildcard_listen(tmp_path: Path) -> None:
    for listen, server in (("0.0.0.0:2525", "127.0.0.1"), ("[::]:2525", "::1")):
        argv = swaks_hint(make_config(tmp_path, "", None, relay={"listen": listen}))
        assert argv[argv.index("--server") + 1] == server


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_the_printed_swaks_command_sends_through_a_relay_that_needs_tls_and_login(
    tmp_path: Path, db_url: str, store, tls: str
) -> None:
    """The hint, run as printed (plus the password swaks would ask for), gets a 250."""
    swaks = shutil.which("swaks")
    if swaks is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but swaks is not installed")
        pytest.skip("swaks is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed("127.0.0.1", cert, key)
    async with store() as session, session.begin():
        await set_local_user(session, "you@example.com", hash_password("a long password"))
    async with capture_upstream() as cap:
        cfg = make_config(
            tmp_path,
            db_url,
            cap.port,
            relay={"tls": tls, "auth": "local", "cert_file": str(cert), "key_file": str(key)},
        )
        relay = await service.start_relay(cfg, store, with_digests=False)
        try:
            argv = [swaks, *swaks_hint(cfg)[1:], "--auth-password", "a long password"]
            proc = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, timeout=60
            )
        finally:
            await relay.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [m.rcpt_tos for m in cap.messages] == [["someone@example.com"]]


def test_serve_prints_the_hint_for_the_config_named_after_it(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed("127.0.0.1", cert, key)
    cfg = tmp_path / "mailping.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path}/data"\n'
        f'[relay]\nlisten = "127.0.0.1:{free_port()}"\ntls = "implicit"\nauth = "local"\n'
        f'cert_file = "{cert}"\nkey_file = "{key}"\n'
        f'[pixelserver]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "MAILPING_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(cfg), "--log-level", "ERROR"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = wait_for_line(proc, r"send a test mail: swaks")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    hint = banner[-1]
    assert "--tlsc" in hint and "--auth" in hint and "-au you@example.com" in hint
