"""Typed, frozen configuration for the tracking side, and the TOML-table loader both sides use.

Configuration is read once at start into frozen dataclasses so that a typo fails loudly before
anything listens, naming the file and the key, instead of surfacing as a wrong behaviour later.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import typing
import zoneinfo
from dataclasses import dataclass, field
from typing import Any


class ConfigError(Exception):
    """A configuration mistake; the message names the file and the key so it can be fixed."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason


def choices(default: str, *allowed: str) -> Any:
    """A string field that may only take one of `allowed` values."""
    return field(default=default, metadata={"choices": (default, *allowed)})


def _coerce(tp: Any, value: Any) -> Any:
    """Check `value` against a field type; raises ValueError with a user-facing reason."""
    if typing.get_origin(tp) is tuple and typing.get_args(tp)[0] is int:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ValueError(f"expected a non-empty list of integers, got {value!r}")
        return tuple(value)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return tuple(value)
    if typing.get_origin(tp) is dict:
        # A table of lists of strings, e.g. [relay.sender_login_maps]: "login" = ["address"].
        if not isinstance(value, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values()
        ):
            raise ValueError(f"expected a table of lists of strings, got {value!r}")
        return {k: tuple(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r}")  # a bug in this module, not user input


T = typing.TypeVar("T")


def build_section(cls: type[T], table: Any, file: str, prefix: str) -> T:
    """Make one frozen section object from a TOML table, rejecting unknown keys and bad types."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise ConfigError(file, prefix, f"expected a table [{prefix}], got {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in known:
            raise ConfigError(file, f"{prefix}.{key}", f"unknown key (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in table:
            continue
        try:
            value = _coerce(hints[name], table[name])
        except ValueError as exc:
            raise ConfigError(file, f"{prefix}.{name}", str(exc)) from None
        allowed = f.metadata.get("choices")
        if allowed and value not in allowed:
            raise ConfigError(
                file, f"{prefix}.{name}", f"must be one of {', '.join(map(repr, allowed))}"
            )
        values[name] = value
    return cls(**values)


def parse_listen(value: str, file: str, key: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(file, key, f"expected host:port, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    """True when `host` names only this machine (so nobody else can reach what listens there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_networks(
    values: tuple[str, ...], file: str, key: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ConfigError(file, key, f"{v!r} is not an IP address or network") from None
    return tuple(nets)


@dataclass(frozen=True)
class PixelServerConfig:
    listen: str = "127.0.0.1:8025"
    public_url: str = "http://127.0.0.1:8025"
    pixel_path: str = "p"
    trusted_proxies: tuple[str, ...] = ()
    report_password_env: str = ""
    workers: int = 1
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    journal_fsync: str = choices("batch", "always", "off")
    journal_max_mb: int = 1024
    # Fetches recorded per token and per network before the limit drops recording (the
    # image is always answered); the buckets refill in 30 s (token) and 10 s (network).
    record_burst_per_token: int = 60
    record_burst_per_network: int = 3000
    # Web sessions (logins) end after this long without a request, and this long after login.
    session_idle_minutes: int = 30
    session_max_hours: int = 12


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""
    password_env: str = ""  # the database password, from this environment variable


@dataclass(frozen=True)
class GeoipConfig:
    city_db: str = ""
    asn_db: str = ""
    # The recipient's mailbox provider from the MX of its domain, looked up in the background.
    mx_lookup: bool = True
    mx_nameservers: tuple[str, ...] = ()  # empty: the system's resolver
    mx_refresh_seconds: int = 30


@dataclass(frozen=True)
class PrivacyConfig:
    geo_precision: str = choices("city", "region", "country", "off")
    retention_days: int = 395


@dataclass(frozen=True)
class DigestConfig:
    """Defaults for every user's daily digest; each user may change theirs in Settings."""

    enabled: bool = True
    hour: int = 8
    timezone: str = "UTC"
    send_empty: bool = False
    from_address: str = ""  # empty: mailping@ the relay's host name
    report_url: str = ""  # empty: pixelserver.public_url
    username: str = ""  # empty: upstream.username
    password_env: str = ""


@dataclass(frozen=True)
class WebhooksConfig:
    """Signed webhooks each user sets up in Settings (pixelserver/store/webhooks.py)."""

    # Let webhooks go to http:// URLs and to loopback or private addresses (an intranet CRM,
    # tests). Off: only https:// URLs that resolve to public addresses, checked at every send.
    allow_private: bool = False
    timeout_seconds: int = 10


def validate_webhooks(cfg: WebhooksConfig, file: str) -> None:
    if not 1 <= cfg.timeout_seconds <= 60:
        raise ConfigError(file, "webhooks.timeout_seconds", "from 1 to 60 seconds")


@dataclass(frozen=True)
class ConnectConfig:
    """[connect]: users connect their own Microsoft 365 or Google account in Settings (OAuth
    2.0 authorization code with PKCE) and the relay sends their mail as them. Needs
    relay.auth = "local". A provider is offered when its client_id is set."""

    key_env: str = ""  # environment variable holding the Fernet key for refresh tokens
    microsoft_client_id: str = ""
    microsoft_client_secret_env: str = ""  # empty: a public client (PKCE only)
    microsoft_tenant: str = "common"  # "organizations", or your tenant id / domain
    microsoft_login_url: str = "https://login.microsoftonline.com"
    microsoft_smtp_host: str = "smtp.office365.com"
    microsoft_smtp_port: int = 587
    microsoft_smtp_tls: str = choices("starttls", "implicit", "none")
    google_client_id: str = ""
    google_client_secret_env: str = ""
    google_authorize_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_revoke_url: str = "https://oauth2.googleapis.com/revoke"
    gmail_api_url: str = "https://gmail.googleapis.com"

    @property
    def offered(self) -> tuple[str, ...]:
        return tuple(p for p in ("microsoft", "google") if getattr(self, f"{p}_client_id"))


def validate_digest(cfg: DigestConfig, file: str) -> None:
    if not 0 <= cfg.hour <= 23:
        raise ConfigError(file, "digest.hour", f"an hour from 0 to 23, got {cfg.hour}")
    if not is_timezone(cfg.timezone):
        raise ConfigError(
            file, "digest.timezone", f"{cfg.timezone!r} is not an IANA time zone (Europe/Paris)"
        )
    if cfg.from_address and "@" not in cfg.from_address.strip("@"):
        raise ConfigError(file, "digest.from_address", f"{cfg.from_address!r} is not an address")
    if cfg.report_url and not cfg.report_url.startswith(("http://", "https://")):
        raise ConfigError(file, "digest.report_url", "must start with http:// or https://")


def is_timezone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def validate_pixelserver(cfg: PixelServerConfig, file: str) -> None:
    parse_listen(cfg.listen, file, "pixelserver.listen")
    parse_networks(cfg.trusted_proxies, file, "pixelserver.trusted_proxies")
    parse_networks(cfg.metrics_allow, file, "pixelserver.metrics_allow")
    if not cfg.public_url.startswith(("http://", "https://")):
        raise ConfigError(file, "pixelserver.public_url", "must start with http:// or https://")
    if not cfg.pixel_path or not all(c.isalnum() or c in "-_" for c in cfg.pixel_path):
        raise ConfigError(file, "pixelserver.pixel_path", "letters, digits, - and _ only")
    if not 1 <= cfg.workers <= 64:
        raise ConfigError(file, "pixelserver.workers", "from 1 to 64 processes")
    if cfg.record_burst_per_token < 1:
        raise ConfigError(file, "pixelserver.record_burst_per_token", "must be at least 1")
    if cfg.record_burst_per_network < 1:
        raise ConfigError(file, "pixelserver.record_burst_per_network", "must be at least 1")
    if cfg.session_idle_minutes < 1:
        raise ConfigError(file, "pixelserver.session_idle_minutes", "must be at least 1")
    if cfg.session_max_hours < 1:
        raise ConfigError(file, "pixelserver.session_max_hours", "must be at least 1")
    if cfg.journal_max_mb < 1:
        raise ConfigError(file, "pixelserver.journal_max_mb", "must be at least 1 (MiB)")


def validate_database(cfg: DatabaseConfig, file: str) -> None:
    if cfg.url and not cfg.url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            file,
            "database.url",
            "must be empty (SQLite in data_dir), sqlite+aiosqlite://... or postgresql+asyncpg://...",
        )
