"""Configuration: defaults, and every mistake named by file and key, through the real CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pixelserver.config import ConfigError
from relay.cli import main
from relay.config import load_config

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "mailping.toml"
    p.write_text(text)
    return p


def test_example_file_is_valid_and_equals_the_defaults(tmp_path: Path) -> None:
    example = load_config(EXAMPLE)
    embedded = load_config(None)
    for section in ("relay", "upstream", "pixelserver", "database", "geoip", "privacy"):
        assert getattr(example, section) == getattr(embedded, section), section


def test_every_key_is_documented_in_the_example() -> None:
    import dataclasses
    import tomllib

    from relay.config import Config, OAuthConfig

    # A key may be shown commented out where its default depends on other keys.
    text = re.sub(r"^# (\w+ = )", r"\1", EXAMPLE.read_text(), flags=re.M)
    documented = tomllib.loads(text)
    for f in dataclasses.fields(Config):
        if f.name in (
            "relay",
            "upstream",
            "pixelserver",
            "database",
            "geoip",
            "privacy",
            "connect",
        ):
            keys = {k.name for k in dataclasses.fields(f.default_factory())}  # type: ignore[misc]
            assert keys == set(documented[f.name]), f.name
    oauth_keys = {k.name for k in dataclasses.fields(OAuthConfig)}
    assert oauth_keys == set(documented["upstream"]["oauth"])


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[relay]\nlisen = '127.0.0.1:25'\n", "relay.lisen", "unknown key"),
        ("[relay]\nmax_message_size = '35MB'\n", "relay.max_message_size", "expected an integer"),
        ("[relay]\ntls = 'ssl'\n", "relay.tls", "must be one of"),
        ("[relay]\nlisten = '0.0.0.0:2525'\n", "relay.auth", "loopback"),
        ("[relay]\nlisten = 'localhost'\n", "relay.listen", "host:port"),
        ("[relay]\ntls = 'starttls'\n", "relay.cert_file", "needs cert_file"),
        ("[upstream]\nusername = 'me'\n", "upstream.password_env", "no password"),
        ("[upstream]\npassword_env = 'NOPE_NOT_SET_123'\n", "upstream.password_env", "not set"),
        ("[relay]\nauth = 'upstream'\n", "relay.auth", "upstream.host"),
        (
            "[pixelserver]\ntrusted_proxies = ['10.0.0.0/33']\n",
            "pixelserver.trusted_proxies",
            "not an IP",
        ),
        ("[pixelserver]\npublic_url = 'example.com'\n", "pixelserver.public_url", "http"),
        ("[database]\nurl = 'mysql://x'\n", "database.url", "must be empty"),
        ("[smtp]\nport = 1\n", "smtp", "unknown"),
        ("data_dir = 5\n", "data_dir", "non-empty string"),
        ("[relay\n", "-", "not valid TOML"),
        ("[geoip]\ncity_db = 'GeoLite2-City.mmdb'\n", "geoip.city_db", "no such file"),
        ("[privacy]\ngeo_precision = 'street'\n", "privacy.geo_precision", "must be one of"),
        ("[privacy]\nretention_days = 0\n", "privacy.retention_days", "at least 1 day"),
        ("[digest]\nhour = 24\n", "digest.hour", "from 0 to 23"),
        ("[digest]\ntimezone = 'Paris'\n", "digest.timezone", "not an IANA time zone"),
        ("[digest]\nfrom_address = 'mailping'\n", "digest.from_address", "not an address"),
        ("[digest]\nenabled = 'yes'\n", "digest.enabled", "true or false"),
        ("[digest]\nusername = 'd@x'\n", "digest.password_env", "no password"),
        ("[digest]\npassword_env = 'NOPE_NOT_SET_123'\n", "digest.password_env", "not set"),
    ],
)
def test_mistakes_name_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == key and err.value.file == str(path)
    assert words in err.value.reason


def test_auth_defaults_to_upstream_logins_once_an_upstream_is_set(tmp_path: Path) -> None:
    assert load_config(None).relay.auth == "none"
    cfg = load_config(write(tmp_path, "[upstream]\nhost = 'smtp.example.com'\n"))
    assert cfg.relay.auth == "upstream"
    path = write(tmp_path, "[relay]\nlisten = '0.0.0.0:587'\nauth = 'local'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "relay.tls" and "only taken over TLS" in err.value.reason


def test_secret_comes_from_the_named_environment_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[upstream]\nhost='smtp.example.com'\nusername='me'\npassword_env='MP_PW'\n"
    )
    cfg = load_config(path, environ={"MP_PW": "s3cret"})
    assert cfg.upstream_password == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_relative_data_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data_dir = 'state'\n"))
    assert cfg.data_dir == (tmp_path / "state").resolve()
    assert cfg.database_url.endswith(str(tmp_path / "state" / "mailping.sqlite3"))


def test_cli_check_config_reports_errors_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[relay]\ntls = 'ssl'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "--config", str(path), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mailping: configuration error: {path}: relay.tls: "
        "must be one of 'none', 'starttls', 'implicit'"
    ]


def test_cli_check_config_says_what_it_would_do(tmp_path: Path, capsys) -> None:
    path = write(
        tmp_path,
        "[upstream]\nhost='smtp.example.com'\nusername='me'\npassword_env='MP_PW'\n"
        "[database]\nurl='postgresql+asyncpg://mp:pw@db.internal/mailping'\n",
    )
    import os

    os.environ["MP_PW"] = "x"
    try:
        assert main(["--config", str(path), "check-config"]) == 0
    finally:
        del os.environ["MP_PW"]
    out = capsys.readouterr().out
    assert "smtp.example.com:587 with starttls TLS as me" in out
    assert "postgresql+asyncpg://mp:***@db.internal/mailping" in out
    assert "pw@" not in out


def test_the_database_password_comes_from_the_environment(tmp_path: Path, capsys) -> None:
    import os

    from sqlalchemy.engine import make_url

    base = os.environ.get("MAILPING_TEST_PG_URL")
    if not base:
        if os.environ.get("CI"):
            pytest.fail("CI is set but MAILPING_TEST_PG_URL is not")
        pytest.skip("set MAILPING_TEST_PG_URL to run PostgreSQL tests")
    url = make_url(base)
    without = base.replace(f":{url.password}@", "@")
    path = write(tmp_path, f"[database]\nurl = '{without}'\npassword_env = 'MP_TEST_DB_PASSWORD'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == "database.password_env"
    cfg = load_config(path, environ={"MP_TEST_DB_PASSWORD": url.password or ""})
    assert make_url(cfg.database_url).password == url.password
    assert cfg.database_url not in repr(cfg)  # the URL with its password is never printed
    # The password in the URL as well is a mistake worth naming.
    both = tmp_path / "both.toml"
    both.write_text(f"[database]\nurl = '{base}'\npassword_env = 'MP_TEST_DB_PASSWORD'\n")
    with pytest.raises(ConfigError, match="database.url"):
        load_config(both, environ={"MP_TEST_DB_PASSWORD": "x"})
    # And the password works: the real server accepts it.
    os.environ["MP_TEST_DB_PASSWORD"] = url.password or ""
    try:
        assert main(["--config", str(path), "db", "status"]) == 0
    finally:
        del os.environ["MP_TEST_DB_PASSWORD"]
    out = capsys.readouterr().out
    assert "schema" in out and f":{url.password}@" not in out


def test_check_config_describes_report_access_with_logins(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "[relay]\nauth = 'local'\n")
    assert main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("report page:"))
    assert "log in" in line and "mailping user add" in line
    assert "only from this machine" not in line
    assert "30 minutes" in line and "12 hours" in line
