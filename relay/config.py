"""The whole MailPing configuration: one TOML file, loaded once into frozen objects.

The relay owns the file because `mailping` (relay/cli.py) is what reads it; the tracking side's
tables are defined in pixelserver.config so that the pixel server never imports the relay.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pixelserver.config import (
    ConfigError,
    DatabaseConfig,
    DigestConfig,
    GeoipConfig,
    PixelServerConfig,
    PrivacyConfig,
    build_section,
    choices,
    is_loopback_host,
    parse_listen,
    validate_database,
    validate_digest,
    validate_pixelserver,
)

ENV_VAR = "MAILPING_CONFIG"
EMBEDDED = "(embedded defaults)"
DEFAULT_DATA_DIR = "mailping-data"


@dataclass(frozen=True)
class RelayConfig:
    listen: str = "127.0.0.1:2525"
    hostname: str = ""
    tls: str = choices("none", "starttls", "implicit")
    cert_file: str = ""
    key_file: str = ""
    auth: str = choices("none", "upstream", "local")
    max_message_size: int = 36700160
    max_in_flight: int = 16


@dataclass(frozen=True)
class UpstreamConfig:
    host: str = ""
    port: int = 587
    tls: str = choices("starttls", "none", "implicit")
    username: str = ""
    password_env: str = ""
    sent_copy: str = choices("auto", "guard", "off")
    timeout: int = 60
    verify_certificate: bool = True


@dataclass(frozen=True)
class Config:
    source: str
    data_dir: Path
    relay: RelayConfig = field(default_factory=RelayConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    pixelserver: PixelServerConfig = field(default_factory=PixelServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    geoip: GeoipConfig = field(default_factory=GeoipConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    digest: DigestConfig = field(default_factory=DigestConfig)
    upstream_password: str = field(default="", repr=False)
    digest_password: str = field(default="", repr=False)
    database_password: str = field(default="", repr=False)
    # Set in each process of `--workers N`: its own journal, and ports shared (SO_REUSEPORT).
    worker: int | None = None
    worker_count: int = 1

    @property
    def database_url(self) -> str:
        """The configured URL (with the password from database.password_env), or the
        embedded SQLite file in data_dir."""
        if not self.database.url:
            return f"sqlite+aiosqlite:///{self.data_dir / 'mailping.sqlite3'}"
        if not self.database.password_env:
            return self.database.url
        from sqlalchemy.engine import make_url

        url = make_url(self.database.url).set(password=self.database_password)
        return url.render_as_string(hide_password=False)

    @property
    def outbox_dir(self) -> Path | None:
        """Where copies go when no upstream is configured (the first-run demo)."""
        return None if self.upstream.host else self.data_dir / "outbox"

    @property
    def digest_credentials(self) -> tuple[str, str] | None:
        """The login the digest is sent with: [digest]'s own, else the relay's upstream one."""
        if self.digest.username:
            return self.digest.username, self.digest_password
        if self.upstream.username:
            return self.upstream.username, self.upstream_password
        return None

    def orphan_journals(self) -> list[Path]:
        """Journals in data_dir no running process owns (left by a run with more workers, or
        by a single process before workers were used): worker 0, or the single process,
        replays them."""
        if self.worker not in (None, 0):
            return []
        owned = (
            {"hits.journal"}
            if self.worker is None
            else {f"hits-{i}.journal" for i in range(self.worker_count)}
        )
        return sorted(
            p
            for p in self.data_dir.glob("hits*.journal")
            if p.name not in owned and p.stat().st_size > 0
        )

    @property
    def journal_path(self) -> Path:
        name = "hits.journal" if self.worker is None else f"hits-{self.worker}.journal"
        return self.data_dir / name


def config_path(cli_value: str | None) -> Path | None:
    """--config wins over MAILPING_CONFIG; neither means embedded defaults."""
    value = cli_value or os.environ.get(ENV_VAR) or ""
    return Path(value) if value else None


def load_config(path: Path | None, environ: dict[str, str] | None = None) -> Config:
    """Read, type-check and validate the file; every mistake raises ConfigError naming the key."""
    env = os.environ if environ is None else environ
    if path is None:
        raw: dict = {}
        file = EMBEDDED
        base = Path.cwd()
    else:
        file = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(file, "-", "file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(file, "-", f"cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(file, "-", f"not valid TOML: {exc}") from None
        base = path.resolve().parent

    sections = {"relay", "upstream", "pixelserver", "database", "geoip", "privacy", "digest"}
    for key in raw:
        if key not in sections | {"data_dir"}:
            raise ConfigError(file, key, "unknown key or table")
    data_dir_value = raw.get("data_dir", DEFAULT_DATA_DIR)
    if not isinstance(data_dir_value, str) or not data_dir_value:
        raise ConfigError(file, "data_dir", f"expected a non-empty string, got {data_dir_value!r}")

    relay = build_section(RelayConfig, raw.get("relay"), file, "relay")
    upstream = build_section(UpstreamConfig, raw.get("upstream"), file, "upstream")
    if upstream.host and "auth" not in (raw.get("relay") or {}):
        # With a real upstream, the safe default is that clients log in with their account.
        relay = dataclasses.replace(relay, auth="upstream")
    pixel = build_section(PixelServerConfig, raw.get("pixelserver"), file, "pixelserver")
    database = build_section(DatabaseConfig, raw.get("database"), file, "database")
    geoip = build_section(GeoipConfig, raw.get("geoip"), file, "geoip")
    privacy = build_section(PrivacyConfig, raw.get("privacy"), file, "privacy")
    digest = build_section(DigestConfig, raw.get("digest"), file, "digest")
    validate_digest(digest, file)
    _require_files(geoip, "geoip", ("city_db", "asn_db"), base, file)
    if privacy.retention_days < 1:
        raise ConfigError(file, "privacy.retention_days", "must be at least 1 day")

    host, _ = parse_listen(relay.listen, file, "relay.listen")
    if relay.auth == "none" and not is_loopback_host(host):
        raise ConfigError(
            file,
            "relay.auth",
            f'"none" lets anyone relay; it is allowed only on a loopback listen address, '
            f"not {host!r}",
        )
    if relay.auth == "upstream" and not upstream.host:
        raise ConfigError(file, "relay.auth", '"upstream" needs upstream.host to check logins')
    if relay.auth != "none" and relay.tls == "none" and not is_loopback_host(host):
        raise ConfigError(
            file,
            "relay.tls",
            "logins are only taken over TLS beyond loopback: set starttls or implicit",
        )
    if relay.tls != "none" and not (relay.cert_file and relay.key_file):
        raise ConfigError(
            file, "relay.cert_file", f'relay.tls = "{relay.tls}" needs cert_file and key_file'
        )
    _require_files(relay, "relay", ("cert_file", "key_file"), base, file)
    if relay.max_message_size < 1024:
        raise ConfigError(file, "relay.max_message_size", "must be at least 1024 bytes")
    if relay.max_in_flight < 1:
        raise ConfigError(file, "relay.max_in_flight", "must be at least 1")
    if not 0 < upstream.port < 65536:
        raise ConfigError(file, "upstream.port", f"not a TCP port: {upstream.port}")
    if upstream.timeout < 1:
        raise ConfigError(file, "upstream.timeout", "must be at least 1 second")
    password = _login_password(upstream.username, upstream.password_env, env, file, "upstream")
    digest_password = _login_password(digest.username, digest.password_env, env, file, "digest")
    if pixel.report_password_env and pixel.report_password_env not in env:
        raise ConfigError(
            file,
            "pixelserver.report_password_env",
            f"environment variable {pixel.report_password_env} is not set",
        )
    validate_pixelserver(pixel, file)
    validate_database(database, file)
    database_password = _database_password(database, env, file)

    return Config(
        source=file,
        data_dir=(base / data_dir_value).resolve(),
        relay=relay,
        upstream=upstream,
        pixelserver=pixel,
        database=database,
        geoip=geoip,
        privacy=privacy,
        digest=digest,
        upstream_password=password,
        digest_password=digest_password,
        database_password=database_password,
    )


def _database_password(database: DatabaseConfig, env: Mapping[str, str], file: str) -> str:
    """database.password_env: the password of database.url, kept out of the file."""
    if not database.password_env:
        return ""
    if not database.url.startswith("postgresql"):
        raise ConfigError(file, "database.password_env", "only for a postgresql+asyncpg:// url")
    from sqlalchemy.engine import make_url

    if make_url(database.url).password:
        raise ConfigError(
            file, "database.url", "has a password, and database.password_env names another"
        )
    if database.password_env not in env:
        raise ConfigError(
            file,
            "database.password_env",
            f"environment variable {database.password_env} is not set",
        )
    return env[database.password_env]


def _login_password(
    username: str, password_env: str, env: Mapping[str, str], file: str, section: str
) -> str:
    """The password a [section]'s login uses, read from the environment variable it names."""
    if username and not password_env:
        raise ConfigError(
            file, f"{section}.password_env", f"{section}.username is set but no password"
        )
    if password_env and password_env not in env:
        raise ConfigError(
            file, f"{section}.password_env", f"environment variable {password_env} is not set"
        )
    return env.get(password_env, "") if password_env else ""


def _require_files(
    section: object, prefix: str, keys: tuple[str, ...], base: Path, file: str
) -> None:
    """Paths given in the file must exist (relative ones are relative to the file)."""
    for key in keys:
        value = getattr(section, key)
        if value and not (base / value).is_file():
            raise ConfigError(file, f"{prefix}.{key}", f"no such file: {base / value}")


def resolve_file(cfg: Config, value: str) -> Path:
    """Relative paths in the file are relative to the file, like data_dir."""
    base = Path.cwd() if cfg.source == EMBEDDED else Path(cfg.source).resolve().parent
    return base / value
