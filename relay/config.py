"""The whole MailPing configuration: one TOML file, loaded once into frozen objects.

The relay owns the file because `mailping` (relay/cli.py) is what reads it; the tracking side's
tables are defined in pixelserver.config so that the pixel server never imports the relay.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pixelserver.config import (
    ConfigError,
    ConnectConfig,
    DatabaseConfig,
    DigestConfig,
    GeoipConfig,
    PixelServerConfig,
    PrivacyConfig,
    WebhooksConfig,
    build_section,
    choices,
    is_loopback_host,
    parse_listen,
    validate_database,
    validate_digest,
    validate_pixelserver,
    validate_webhooks,
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
    # Logins allowed to use this instance (relay and report): addresses and "@domain" entries;
    # empty: every login the upstream (or the local user table) accepts.
    allowed_senders: tuple[str, ...] = ()
    # auth = "local": addresses a login may send as besides its own name ("@domain", "*": any).
    sender_login_maps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    max_message_size: int = 36700160
    max_in_flight: int = 16
    max_recipients: int = 100  # per message; more get "452 4.5.3 Too many recipients"
    # Open client connections per process, in all and from one /24 or /64; more get 421.
    max_connections: int = 200
    max_connections_per_network: int = 50
    # Login attempts per user and per client network in a window (counted before the check,
    # shared by all processes through the store); more get 454 until the window ends.
    login_failures_per_user: int = 5
    login_failures_per_network: int = 20
    login_failure_window: int = 600  # seconds
    # Behind a TCP balancer that sends the PROXY protocol header (nginx `proxy_protocol on;`).
    proxy_protocol: bool = False


@dataclass(frozen=True)
class OAuthConfig:
    """[upstream.oauth]: the app registration that gets the relay's access tokens
    (client-credentials grant, relay/oauth.py) when upstream.auth = "xoauth2"."""

    token_url: str = ""
    client_id: str = ""
    client_secret_env: str = ""  # the environment variable holding the client secret
    scope: str = ""
    # How the secret travels: "auto" (form body, then HTTP Basic once if refused), "body",
    # "basic".
    client_auth: str = choices("auto", "body", "basic")
    # Instead of a secret: a certificate registered with the app; its key signs an assertion.
    certificate_file: str = ""
    certificate_key_file: str = ""
    verify_certificate: bool = True  # of the token endpoint's HTTPS certificate
    ca_file: str = ""  # a CA bundle for the token endpoint (a company's own CA)


@dataclass(frozen=True)
class UpstreamConfig:
    host: str = ""
    port: int = 587
    tls: str = choices("starttls", "none", "implicit")
    # "password": log in with username and the password in password_env; "xoauth2": with an
    # access token from [upstream.oauth].
    auth: str = choices("password", "xoauth2")
    username: str = ""
    password_env: str = ""
    sent_copy: str = choices("auto", "guard", "off")
    timeout: int = 60
    verify_certificate: bool = True
    # Submissions a minute to one upstream account; 0: the provider's documented limit if
    # MailPing knows it (relay/pace.py), else no pacing.
    max_per_minute: int = 0
    oauth: OAuthConfig = field(default_factory=OAuthConfig)


@dataclass(frozen=True)
class QueueConfig:
    """The durable outbound queue (relay/queue.py)."""

    retry_seconds: tuple[int, ...] = (60, 300, 1800, 7200, 21600)  # the last one repeats
    give_up_after: str = "5d"
    delay_warning_after: str = "4h"  # tell the sender a copy is late ("0": never)
    reply_within: int = 20  # seconds the client may wait for the first attempt
    resubmit_window: str = "1d"  # same Message-ID, sender and recipients: not sent twice


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '30m', '4h', '5d', '1w', or a bare number of seconds."""
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a duration such as 30m, 4h or 5d, got {text!r}") from None
    if value < 0:
        raise ValueError(f"a duration cannot be negative: {text!r}")
    return value * _UNITS[unit]


@dataclass(frozen=True)
class Config:
    source: str
    data_dir: Path
    relay: RelayConfig = field(default_factory=RelayConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    pixelserver: PixelServerConfig = field(default_factory=PixelServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    geoip: GeoipConfig = field(default_factory=GeoipConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    digest: DigestConfig = field(default_factory=DigestConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    connect: ConnectConfig = field(default_factory=ConnectConfig)
    upstream_password: str = field(default="", repr=False)
    oauth_client_secret: str = field(default="", repr=False)
    # [connect]: the key sealing users' refresh tokens, and each provider's client secret.
    connect_key: str = field(default="", repr=False)
    connect_secrets: dict[str, str] = field(default_factory=dict, repr=False)
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
    def spool_dir(self) -> Path:
        """The durable outbound queue: shared by every process that uses this data_dir."""
        return self.data_dir / "spool"

    @property
    def digest_credentials(self) -> tuple[str, str] | None:
        """The login the digest is sent with: [digest]'s own, else the relay's upstream one."""
        if self.digest.username:
            return self.digest.username, self.digest_password
        if self.upstream.username and self.upstream.auth == "password":
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

    sections = {
        "relay",
        "upstream",
        "queue",
        "pixelserver",
        "database",
        "geoip",
        "privacy",
        "digest",
        "webhooks",
        "connect",
    }
    for key in raw:
        if key not in sections | {"data_dir"}:
            raise ConfigError(file, key, "unknown key or table")
    data_dir_value = raw.get("data_dir", DEFAULT_DATA_DIR)
    if not isinstance(data_dir_value, str) or not data_dir_value:
        raise ConfigError(file, "data_dir", f"expected a non-empty string, got {data_dir_value!r}")

    relay = build_section(RelayConfig, raw.get("relay"), file, "relay")
    upstream = _build_upstream(raw.get("upstream"), file)
    if upstream.host and "auth" not in (raw.get("relay") or {}):
        if upstream.auth == "password":
            # With a real upstream, the safe default is that clients log in with their account.
            relay = dataclasses.replace(relay, auth="upstream")
        elif relay.proxy_protocol or not is_loopback_host(
            parse_listen(relay.listen, file, "relay.listen")[0]
        ):
            # An OAuth relay account takes no client passwords: clients beyond this machine
            # log in with `mailping user add` logins.
            relay = dataclasses.replace(relay, auth="local")
    queue = build_section(QueueConfig, raw.get("queue"), file, "queue")
    _validate_queue(queue, file)
    pixel = build_section(PixelServerConfig, raw.get("pixelserver"), file, "pixelserver")
    database = build_section(DatabaseConfig, raw.get("database"), file, "database")
    geoip = build_section(GeoipConfig, raw.get("geoip"), file, "geoip")
    privacy = build_section(PrivacyConfig, raw.get("privacy"), file, "privacy")
    digest = build_section(DigestConfig, raw.get("digest"), file, "digest")
    validate_digest(digest, file)
    webhooks = build_section(WebhooksConfig, raw.get("webhooks"), file, "webhooks")
    validate_webhooks(webhooks, file)
    _require_files(geoip, "geoip", ("city_db", "asn_db"), base, file)
    if privacy.retention_days < 1:
        raise ConfigError(file, "privacy.retention_days", "must be at least 1 day")

    host, _ = parse_listen(relay.listen, file, "relay.listen")
    # Behind a PROXY balancer clients come from elsewhere, whatever address the relay binds.
    local_only = is_loopback_host(host) and not relay.proxy_protocol
    if relay.auth == "none" and not local_only:
        where = "with relay.proxy_protocol" if relay.proxy_protocol else f"not {host!r}"
        raise ConfigError(
            file,
            "relay.auth",
            f'"none" lets anyone relay; it is allowed only on a loopback listen address, {where}',
        )
    if relay.auth == "upstream" and not upstream.host:
        raise ConfigError(file, "relay.auth", '"upstream" needs upstream.host to check logins')
    if relay.auth != "none" and relay.tls == "none" and not local_only:
        raise ConfigError(
            file,
            "relay.tls",
            "logins are only taken over TLS beyond loopback: set starttls or implicit",
        )
    _require_protected_upstream_logins(relay, upstream, file)
    _check_address_entries(relay.allowed_senders, file, "relay.allowed_senders", wildcard=False)
    for login, entries in relay.sender_login_maps.items():
        _check_address_entries(entries, file, f"relay.sender_login_maps.{login}", wildcard=True)
    if relay.tls != "none" and not (relay.cert_file and relay.key_file):
        raise ConfigError(
            file, "relay.cert_file", f'relay.tls = "{relay.tls}" needs cert_file and key_file'
        )
    _require_files(relay, "relay", ("cert_file", "key_file"), base, file)
    if relay.max_message_size < 1024:
        raise ConfigError(file, "relay.max_message_size", "must be at least 1024 bytes")
    for key in (
        "max_connections",
        "max_connections_per_network",
        "login_failures_per_user",
        "login_failures_per_network",
        "login_failure_window",
    ):
        if getattr(relay, key) < 1:
            raise ConfigError(file, f"relay.{key}", "must be at least 1")
    if relay.max_recipients < 1:
        raise ConfigError(file, "relay.max_recipients", "must be at least 1")
    if relay.max_in_flight < 1:
        raise ConfigError(file, "relay.max_in_flight", "must be at least 1")
    if not 0 < upstream.port < 65536:
        raise ConfigError(file, "upstream.port", f"not a TCP port: {upstream.port}")
    if upstream.timeout < 1:
        raise ConfigError(file, "upstream.timeout", "must be at least 1 second")
    if upstream.max_per_minute < 0:
        raise ConfigError(file, "upstream.max_per_minute", "cannot be negative")
    if upstream.auth == "xoauth2":
        password = ""
        client_secret = _validate_oauth(relay, upstream, env, base, file)
    else:
        password = _login_password(upstream.username, upstream.password_env, env, file, "upstream")
        client_secret = ""
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
    connect = build_section(ConnectConfig, raw.get("connect"), file, "connect")
    connect_key, connect_secrets = _validate_connect(connect, relay, env, file)

    return Config(
        source=file,
        data_dir=(base / data_dir_value).resolve(),
        relay=relay,
        upstream=upstream,
        queue=queue,
        pixelserver=pixel,
        database=database,
        geoip=geoip,
        privacy=privacy,
        digest=digest,
        webhooks=webhooks,
        upstream_password=password,
        oauth_client_secret=client_secret,
        digest_password=digest_password,
        database_password=database_password,
        connect=connect,
        connect_key=connect_key,
        connect_secrets=connect_secrets,
    )


def _build_upstream(table: object, file: str) -> UpstreamConfig:
    """[upstream] with its [upstream.oauth] table."""
    if isinstance(table, dict) and "oauth" in table:
        rest = {k: v for k, v in table.items() if k != "oauth"}
        upstream = build_section(UpstreamConfig, rest, file, "upstream")
        oauth = build_section(OAuthConfig, table["oauth"], file, "upstream.oauth")
        return dataclasses.replace(upstream, oauth=oauth)
    return build_section(UpstreamConfig, table, file, "upstream")


def _validate_oauth(
    relay: RelayConfig, upstream: UpstreamConfig, env: Mapping[str, str], base: Path, file: str
) -> str:
    """upstream.auth = "xoauth2": everything the client-credentials grant needs; returns the
    client secret (from the environment, never the file)."""
    o = upstream.oauth
    if not upstream.host:
        raise ConfigError(file, "upstream.auth", '"xoauth2" needs upstream.host')
    if not upstream.username:
        raise ConfigError(
            file, "upstream.username", 'upstream.auth = "xoauth2" logs in as this mailbox: set it'
        )
    if upstream.password_env:
        raise ConfigError(
            file, "upstream.password_env", 'not used with upstream.auth = "xoauth2": remove it'
        )
    if relay.auth == "upstream":
        raise ConfigError(
            file,
            "relay.auth",
            '"upstream" checks client passwords against the upstream, which upstream.auth = '
            '"xoauth2" does not use: set "local" (or "none" on loopback)',
        )
    if not is_loopback_host(upstream.host) and (
        upstream.tls == "none" or not upstream.verify_certificate
    ):
        key = "upstream.tls" if upstream.tls == "none" else "upstream.verify_certificate"
        raise ConfigError(
            file,
            key,
            f"the access token would go to {upstream.host} unprotected: use TLS and check "
            "the certificate (a loopback upstream is exempt)",
        )
    for key in ("token_url", "client_id"):
        if not getattr(o, key):
            raise ConfigError(
                file, f"upstream.oauth.{key}", 'needed with upstream.auth = "xoauth2"'
            )
    parts = urllib.parse.urlsplit(o.token_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(file, "upstream.oauth.token_url", f"not an http(s) URL: {o.token_url!r}")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            file,
            "upstream.oauth.token_url",
            "must be https:// (the client secret travels in it); http:// only on loopback",
        )
    with_cert = bool(o.certificate_file or o.certificate_key_file)
    if with_cert and not (o.certificate_file and o.certificate_key_file):
        raise ConfigError(
            file, "upstream.oauth.certificate_file", "needs both certificate_file and key file"
        )
    if with_cert and o.client_secret_env:
        raise ConfigError(
            file, "upstream.oauth.client_secret_env", "give a secret or a certificate, not both"
        )
    if not with_cert and not o.client_secret_env:
        raise ConfigError(
            file,
            "upstream.oauth.client_secret_env",
            "name the environment variable holding the client secret (or set certificate_file)",
        )
    _require_files(o, "upstream.oauth", ("certificate_file", "certificate_key_file"), base, file)
    _require_files(o, "upstream.oauth", ("ca_file",), base, file)
    if o.client_secret_env and o.client_secret_env not in env:
        raise ConfigError(
            file,
            "upstream.oauth.client_secret_env",
            f"environment variable {o.client_secret_env} is not set",
        )
    return env.get(o.client_secret_env, "") if o.client_secret_env else ""


def _validate_connect(
    connect: ConnectConfig, relay: RelayConfig, env: Mapping[str, str], file: str
) -> tuple[str, dict[str, str]]:
    """[connect]: users' own accounts. Returns (the token key, client secrets by provider)."""
    if not connect.offered:
        return "", {}
    first = f"connect.{connect.offered[0]}_client_id"
    if relay.auth != "local":
        raise ConfigError(
            file, first, 'users connect their own accounts only with relay.auth = "local"'
        )
    if not connect.key_env:
        raise ConfigError(
            file,
            "connect.key_env",
            "name the environment variable holding the key that encrypts users' refresh "
            "tokens (make one: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')",
        )
    if connect.key_env not in env:
        raise ConfigError(
            file, "connect.key_env", f"environment variable {connect.key_env} is not set"
        )
    from cryptography.fernet import Fernet

    keys = [k.strip() for k in env[connect.key_env].split(",") if k.strip()]
    try:
        if not keys:
            raise ValueError
        for key in keys:
            Fernet(key)
    except ValueError:
        raise ConfigError(
            file,
            "connect.key_env",
            f"{connect.key_env} is not a Fernet key (32 bytes, URL-safe base64; several, "
            "comma-separated, to rotate)",
        ) from None
    for key in (
        "microsoft_login_url",
        "google_authorize_url",
        "google_token_url",
        "google_revoke_url",
        "gmail_api_url",
    ):
        url = urllib.parse.urlsplit(getattr(connect, key))
        if url.scheme != "https" and not (
            url.scheme == "http" and is_loopback_host(url.hostname or "")
        ):
            raise ConfigError(file, f"connect.{key}", "must be an https:// URL")
    found: dict[str, str] = {}
    for provider in connect.offered:
        name = getattr(connect, f"{provider}_client_secret_env")
        if name and name not in env:
            raise ConfigError(
                file,
                f"connect.{provider}_client_secret_env",
                f"environment variable {name} is not set",
            )
        if name:
            found[provider] = env[name]
    return env[connect.key_env], found


def _validate_queue(queue: QueueConfig, file: str) -> None:
    for key in ("give_up_after", "delay_warning_after", "resubmit_window"):
        try:
            parse_duration(getattr(queue, key))
        except ValueError as exc:
            raise ConfigError(file, f"queue.{key}", str(exc)) from None
    if any(s < 1 for s in queue.retry_seconds):
        raise ConfigError(file, "queue.retry_seconds", "every wait must be at least 1 second")
    if parse_duration(queue.give_up_after) < 1:
        raise ConfigError(file, "queue.give_up_after", "must be at least a second")
    if not 1 <= queue.reply_within <= 300:
        raise ConfigError(file, "queue.reply_within", "must be between 1 and 300 seconds")


def _require_protected_upstream_logins(
    relay: RelayConfig, upstream: UpstreamConfig, file: str
) -> None:
    """auth = "upstream" passes every user's password on to the upstream: refuse to start when
    it would cross the network in clear text or to a server whose certificate is not checked
    (anyone on the path could read it). A loopback upstream (a test server, a local tunnel or
    stunnel) never leaves this machine."""
    if relay.auth != "upstream" or is_loopback_host(upstream.host):
        return
    if upstream.tls == "none":
        raise ConfigError(
            file,
            "upstream.tls",
            f'"none" would send your users\' passwords to {upstream.host} unencrypted '
            '(relay.auth = "upstream"): use "starttls" or "implicit"',
        )
    if not upstream.verify_certificate:
        raise ConfigError(
            file,
            "upstream.verify_certificate",
            f"false would send your users' passwords to whoever answers as {upstream.host} "
            '(relay.auth = "upstream"): keep certificate checks on',
        )


def _check_address_entries(
    entries: tuple[str, ...], file: str, key: str, *, wildcard: bool
) -> None:
    """Each entry is an address ("ana@example.org") or a whole domain ("@example.org"); a typo
    here would silently lock people out or let them in, so it stops the start."""
    for entry in entries:
        if wildcard and entry == "*":
            continue
        local, at, domain = entry.rpartition("@")
        if not at or not domain or "." not in domain or " " in entry or "@" in local:
            allowed = 'an address, "@domain"' + (' or "*"' if wildcard else "")
            raise ConfigError(file, key, f"{entry!r} is not {allowed}")


# Providers where anyone can open an account: with auth = "upstream" and no allowlist, every
# one of their users could send through this relay. Matched on the end of upstream.host.
SHARED_PROVIDERS = {
    "gmail.com": "Google",
    "google.com": "Google",
    "googlemail.com": "Google",
    "office365.com": "Microsoft",
    "outlook.com": "Microsoft",
    "hotmail.com": "Microsoft",
    "live.com": "Microsoft",
    "yahoo.com": "Yahoo",
    "aol.com": "AOL",
    "me.com": "iCloud",
    "icloud.com": "iCloud",
    "fastmail.com": "Fastmail",
    "messagingengine.com": "Fastmail",
    "zoho.com": "Zoho",
    "zoho.eu": "Zoho",
    "zoho.in": "Zoho",
    "zohomail.com": "Zoho",
    "gmx.net": "GMX",
    "gmx.com": "GMX",
    "web.de": "WEB.DE",
    "mail.com": "mail.com",
    "yandex.com": "Yandex",
    "yandex.ru": "Yandex",
    "mail.ru": "Mail.ru",
    "protonmail.ch": "Proton",
    "proton.me": "Proton",
    "ionos.com": "IONOS",
    "ionos.de": "IONOS",
    "1and1.com": "IONOS",
    "mailbox.org": "mailbox.org",
    "posteo.de": "Posteo",
    "orange.fr": "Orange",
    "free.fr": "Free",
    "libero.it": "Libero",
    "seznam.cz": "Seznam",
    "qq.com": "QQ",
    "163.com": "NetEase",
}


def shared_provider(host: str) -> str | None:
    """The public mail provider whose submission server `host` is, if it is one."""
    host = host.lower().rstrip(".")
    for domain, name in SHARED_PROVIDERS.items():
        if host == domain or host.endswith("." + domain):
            return name
    return None


def config_warnings(cfg: Config) -> list[str]:
    """Valid but dangerous settings, for `mailping check-config` and the start-up log."""
    warnings = []
    provider = shared_provider(cfg.upstream.host)
    if cfg.relay.auth == "upstream" and not cfg.relay.allowed_senders and provider:
        warnings.append(
            f'WARNING: relay.auth = "upstream" with {provider} ({cfg.upstream.host}) and no '
            f"relay.allowed_senders: ANYONE with a {provider} account can log in and send "
            f'through this relay. List your people: allowed_senders = ["@your-domain"] or '
            f"their addresses ({cfg.source})"
        )
    return warnings


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
