"""Assembly: build the relay and the pixel server from a Config, on the running event loop.

`mailping serve` runs both in one process; `mailping relay` and `mailping pixelserver` run one
each against the same store, which is how MailPing scales out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import tornado.httpserver
import tornado.web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pixelserver import oauthcode
from pixelserver.config import ConfigError, is_loopback_host, parse_listen, parse_networks
from pixelserver.hits import HitPipeline, Journal, Judge, RecordLimits
from pixelserver.pixel import PixelFrontEnd
from pixelserver.store import migrate, retention
from pixelserver.store.appsecrets import app_secret, has_untagged_tokens, token_key
from pixelserver.store.mailaccounts import Sealer
from pixelserver.store.schema import make_engine, make_sessionmaker
from pixelserver.store.throttle import LoginThrottle
from pixelserver.store.websessions import SessionLimits
from pixelserver.tokens import TokenCheck
from pixelserver.verdicts import mailbox
from pixelserver.verdicts.networks import (
    AsnSource,
    MaxMindAsn,
    MaxMindLocation,
    Networks,
    PlevinAsn,
    bundled_city_db,
    mask_addresses_in_logs,
)
from pixelserver.web.app import make_app
from pixelserver.web.base import WebAuth
from pixelserver.web.connect import Connector
from relay.auth import Authenticator, LocalLogin, SenderPolicy, UpstreamLogin, allowlisted
from relay.config import Config, config_warnings, resolve_file
from relay.digest.runner import Clock, DigestRunner, system_clock
from relay.forward import Credentials, OAuthLogin, OutboxUpstream, SmtpUpstream, Upstream
from relay.handler import RelayHandler
from relay.limits import ConnectionLimits
from relay.oauth import ClientCredentials, TokenSource
from relay.oauth_cert import CertificateError, certificate_assertion
from relay.pace import Pacer, limit_for
from relay.providers import files_sent_copy
from relay.queue import QueuePolicy, QueueRunner
from relay.smtp import RelaySMTP
from relay.spool import Spool
from relay.submit import Relay, is_google_host
from relay.tracking import STORE_ERRORS
from relay.useraccounts import UserRoutes

log = logging.getLogger("mailping")

PROXY_HEADER_WAIT = 10.0  # seconds a balancer has to send the PROXY header of a connection


class ListenError(Exception):
    """A listen address cannot be used; says which key to change."""

    def __init__(self, key: str, address: str, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        super().__init__(f"cannot listen on {address} ({key}): {reason.lower()}")


# Nothing MailPing serves takes a large body (forms, logins) or a slow one: refuse bigger
# bodies on their Content-Length instead of buffering Tornado's default 100 MB in memory, and
# drop connections that dribble headers or bodies.
REQUEST_LIMITS = {
    "max_body_size": 256 * 1024,
    "body_timeout": 30.0,
    "idle_connection_timeout": 60.0,  # also the wait for a request's headers
}


class SchemaOutOfDate(Exception):
    """The PostgreSQL schema is older than this version of MailPing."""


async def open_store(cfg: Config) -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
    """SQLite is upgraded in place on start; a shared PostgreSQL is upgraded by an operator."""
    if not cfg.database.url:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.database_url)
    if engine.dialect.name == "sqlite":
        await migrate.upgrade(engine)
    else:
        try:
            current = await migrate.current_revision(engine)
        except STORE_ERRORS as exc:
            # Mail must flow while the database is away: the relay spools and catches up, the
            # pixel journals. The schema is checked by the first process started with it up.
            log.warning("database unreachable at start (%s); starting without it", exc)
            return engine, make_sessionmaker(engine)
        if current != migrate.head_revision():
            await engine.dispose()
            raise SchemaOutOfDate(
                f"database schema is at {current or 'nothing'}, this MailPing needs "
                f"{migrate.head_revision()}: run `mailping db upgrade`"
            )
    return engine, make_sessionmaker(engine)


def make_token_source(cfg: Config) -> TokenSource:
    """The relay account's access tokens (upstream.auth = "xoauth2")."""
    o = cfg.upstream.oauth
    assertion = None
    if o.certificate_file:
        try:
            assertion = certificate_assertion(
                resolve_file(cfg, o.certificate_file),
                resolve_file(cfg, o.certificate_key_file),
                o.client_id,
                o.token_url,
            )
        except CertificateError as exc:
            raise ConfigError(cfg.source, "upstream.oauth.certificate_file", str(exc)) from None
    return TokenSource(
        ClientCredentials(
            token_url=o.token_url,
            client_id=o.client_id,
            client_secret=cfg.oauth_client_secret,
            scope=o.scope,
            client_auth=o.client_auth,
            verify_certificate=o.verify_certificate,
            ca_file=str(resolve_file(cfg, o.ca_file)) if o.ca_file else "",
            timeout=cfg.upstream.timeout,
            assertion=assertion,
        )
    )


def make_upstream(cfg: Config) -> Upstream:
    if cfg.outbox_dir is not None:
        return OutboxUpstream(cfg.outbox_dir)
    oauth = None
    if cfg.upstream.auth == "xoauth2":
        oauth = OAuthLogin(cfg.upstream.username, make_token_source(cfg))
    creds = (
        Credentials(cfg.upstream.username, cfg.upstream_password)
        if cfg.upstream.username and oauth is None
        else None
    )
    return SmtpUpstream(
        cfg.upstream.host,
        cfg.upstream.port,
        cfg.upstream.tls,
        credentials=creds,
        timeout=cfg.upstream.timeout,
        verify_certificate=cfg.upstream.verify_certificate,
        local_hostname=cfg.relay.hostname or None,
        oauth=oauth,
    )


def connect_providers(cfg: Config) -> dict[str, oauthcode.Provider]:
    """The providers users may connect their own account with ([connect])."""
    return oauthcode.providers(cfg.connect, cfg.connect_secrets)


def make_connector(cfg: Config) -> Connector | None:
    """What the Settings pages need to connect users' accounts ([connect])."""
    if not cfg.connect.offered:
        return None
    return Connector(connect_providers(cfg), Sealer(cfg.connect_key), cfg.pixelserver.public_url)


def make_user_routes(
    cfg: Config, sessions: async_sessionmaker[AsyncSession], hostname: str
) -> UserRoutes | None:
    """Users' own connected accounts ([connect]); None when none are offered."""
    if not cfg.connect.offered:
        return None
    return UserRoutes(
        sessions,
        cfg.connect,
        connect_providers(cfg),
        Sealer(cfg.connect_key),
        timeout=cfg.upstream.timeout,
        local_hostname=hostname,
        share=cfg.worker_count,
    )


def server_tls_context(cfg: Config) -> ssl.SSLContext | None:
    if cfg.relay.tls == "none":
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(
            resolve_file(cfg, cfg.relay.cert_file), resolve_file(cfg, cfg.relay.key_file)
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            cfg.source, "relay.cert_file", f"cannot load certificate: {exc}"
        ) from None
    return ctx


def guard_sent_copy(cfg: Config) -> bool:
    """upstream.sent_copy: "guard", "off", or "auto" (guard for the providers documented to
    file submitted copies in the sender's Sent folder: relay.providers)."""
    if cfg.outbox_dir is not None or cfg.upstream.sent_copy == "off":
        return False
    return cfg.upstream.sent_copy == "guard" or files_sent_copy(cfg.upstream.host)


@dataclass
class RunningRelay:
    server: asyncio.base_events.Server
    handler: RelayHandler
    queue: QueueRunner
    digests: asyncio.Task | None = None

    async def close(self) -> None:
        if self.digests is not None:
            self.digests.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.digests
        self.server.close()
        await self.server.wait_closed()
        await self.queue.close()
        self.queue.spool.close()


def make_queue(
    cfg: Config, sessions: async_sessionmaker[AsyncSession], upstream: Upstream, hostname: str
) -> QueueRunner:
    """The spool in data_dir and the runner that forwards from it (one per process; the
    processes of `--workers` share the spool through file locks)."""
    spool = Spool(cfg.spool_dir)
    spool.open()
    return QueueRunner(
        spool=spool,
        upstream=upstream,
        sessions=sessions,
        policy=QueuePolicy.from_config(cfg.queue),
        hostname=hostname,
        public_url=cfg.pixelserver.public_url,
        pixel_path=cfg.pixelserver.pixel_path,
        pacer=Pacer(
            limit_for(cfg.upstream.host, cfg.upstream.max_per_minute), share=cfg.worker_count
        ),
        account=cfg.upstream.username or cfg.upstream.host,
        relay_login=bool(cfg.upstream.username) or cfg.outbox_dir is not None,
    )


def make_digest_runner(
    cfg: Config,
    sessions: async_sessionmaker[AsyncSession],
    upstream: Upstream | None = None,
    clock: Clock = system_clock,
) -> DigestRunner:
    """Digests leave through the same upstream as relayed mail (a folder of their own in the
    demo outbox), with the digest login."""
    if upstream is None:
        outbox = cfg.outbox_dir
        upstream = OutboxUpstream(outbox / "digests") if outbox else make_upstream(cfg)
    login = cfg.digest_credentials
    return DigestRunner(
        sessions,
        upstream,
        cfg.digest,
        report_url=cfg.pixelserver.public_url,
        hostname=cfg.relay.hostname or socket.getfqdn(),
        credentials=Credentials(*login) if login else None,
        clock=clock,
    )


def make_authenticator(
    cfg: Config, sessions: async_sessionmaker[AsyncSession], upstream: Upstream | None
) -> Authenticator | None:
    """How logins are checked, for the relay and the report pages alike (relay.auth), limited
    to relay.allowed_senders."""
    authenticator: Authenticator
    if cfg.relay.auth == "upstream":
        upstream = upstream or make_upstream(cfg)
        assert isinstance(upstream, SmtpUpstream)
        authenticator = UpstreamLogin(upstream.check_login)
    elif cfg.relay.auth == "local":
        authenticator = LocalLogin(sessions)
    else:
        return None
    return allowlisted(authenticator, cfg.relay.allowed_senders)


def make_throttle(cfg: Config, sessions: async_sessionmaker[AsyncSession]) -> LoginThrottle:
    """Login attempts counted in the store, shared by the relay, the pages and every process."""
    return LoginThrottle(
        sessions,
        per_user=cfg.relay.login_failures_per_user,
        per_network=cfg.relay.login_failures_per_network,
        window=cfg.relay.login_failure_window,
    )


async def start_relay(
    cfg: Config,
    sessions: async_sessionmaker[AsyncSession],
    upstream: Upstream | None = None,
    *,
    with_digests: bool = True,
) -> RunningRelay:
    mask_addresses_in_logs()  # aiosmtpd logs each session's peer in full
    upstream = upstream or make_upstream(cfg)
    hostname = cfg.relay.hostname or socket.getfqdn()
    queue = make_queue(cfg, sessions, upstream, hostname)
    routes = make_user_routes(cfg, sessions, hostname)
    queue.route = routes
    relay = Relay(
        sessions,
        queue,
        guard_sent_copy=guard_sent_copy(cfg),
        account_kind=routes.kind if routes is not None else None,
    )
    for warning in config_warnings(cfg):
        log.warning("%s", warning)
    authenticator = make_authenticator(cfg, sessions, upstream)
    handler = RelayHandler(
        relay,
        authenticator=authenticator,
        in_flight=cfg.relay.max_in_flight,
        sender_policy=SenderPolicy(cfg.relay.sender_login_maps)
        if cfg.relay.auth == "local"
        else None,
        max_recipients=cfg.relay.max_recipients,
        throttle=make_throttle(cfg, sessions),
    )
    host, port = parse_listen(cfg.relay.listen, cfg.source, "relay.listen")
    tls = server_tls_context(cfg)
    # Behind a PROXY balancer clients are remote even on a loopback listen address.
    loopback = is_loopback_host(host) and not cfg.relay.proxy_protocol

    limits = ConnectionLimits(cfg.relay.max_connections, cfg.relay.max_connections_per_network)
    implicit = tls if cfg.relay.tls == "implicit" else None
    proxy = cfg.relay.proxy_protocol

    def factory() -> RelaySMTP:
        return RelaySMTP(
            handler,
            limits=limits,
            proxy_wait=PROXY_HEADER_WAIT if proxy else None,
            # Behind a PROXY balancer the header comes before the TLS handshake.
            tls_after_proxy=implicit if proxy else None,
            data_size_limit=cfg.relay.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="MailPing ESMTP",
            tls_context=tls if cfg.relay.tls == "starttls" else None,
            require_starttls=cfg.relay.tls == "starttls" and not loopback,
            auth_require_tls=not loopback,
            auth_exclude_mechanism=["PLAIN", "LOGIN"] if authenticator is None else None,
        )

    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            factory,
            host=host,
            port=port,
            ssl=None if proxy else implicit,
            reuse_address=True,
            reuse_port=cfg.worker is not None,
        )
    except OSError as exc:
        queue.spool.close()
        raise ListenError("relay.listen", cfg.relay.listen, exc) from None
    queue.start()
    digests = None
    if with_digests:
        runner = make_digest_runner(cfg, sessions)
        digests = asyncio.get_running_loop().create_task(runner.run_forever())
    return RunningRelay(server, handler, queue, digests)


@dataclass
class RunningPixelServer:
    http: tornado.httpserver.HTTPServer
    pipeline: HitPipeline
    purge: asyncio.Task
    adopted: list[asyncio.Task] = field(default_factory=list)
    background: list[asyncio.Task] = field(default_factory=list)

    async def close(self) -> None:
        # Awaited, not just cancelled: a purge stopped mid-query must hand its connection
        # back, or aiosqlite's connection thread outlives the loop and the process never exits.
        for task in (self.purge, *self.adopted, *self.background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.http.stop()
        await self.http.close_all_connections()
        await self.pipeline.close()


def make_networks(cfg: Config) -> Networks:
    """The offline network data: bundled lists, plus location and ASN from the configured
    .mmdb files or, where none is configured, the data installed with MailPing."""
    location = None
    if cfg.geoip.city_db:
        location = MaxMindLocation(resolve_file(cfg, cfg.geoip.city_db))
    elif (bundled := bundled_city_db()) is not None:
        location = MaxMindLocation(bundled, bundled=True)
    asn: AsnSource | None
    if cfg.geoip.asn_db:
        asn = MaxMindAsn(resolve_file(cfg, cfg.geoip.asn_db))
    else:
        try:
            asn = PlevinAsn()
        except ImportError:
            log.warning("no ASN data installed (plevin-db-network): network names will be missing")
            asn = None
    return Networks(asn=asn, location=location)


async def _shared_secret(sessions: async_sessionmaker[AsyncSession]) -> str | None:
    """The session-cookie key all processes share (kept in the store), or None if it is down."""
    try:
        async with sessions.begin() as session:
            return await app_secret(session, "cookie_secret")
    except (SQLAlchemyError, OSError) as exc:
        log.warning("store unreachable at start (%s); serving pixels, logins wait for it", exc)
        return None


async def _adopt_shared_secret(
    app: tornado.web.Application, sessions: async_sessionmaker[AsyncSession]
) -> None:
    delay = 1.0
    while (secret := await _shared_secret(sessions)) is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 60.0)
    app.settings["cookie_secret"] = secret


async def _read_token_check(check: TokenCheck, sessions: async_sessionmaker[AsyncSession]) -> bool:
    """Fill `check` from the store (the tag key; whether untagged tokens remain)."""
    try:
        async with sessions.begin() as session:
            key = await token_key(session)
            untagged = await has_untagged_tokens(session)
    except (SQLAlchemyError, OSError):
        return False
    check.key, check.untagged = key, untagged
    return True


async def _keep_token_check(
    check: TokenCheck, sessions: async_sessionmaker[AsyncSession], every: float = 3600.0
) -> None:
    """Until the store has been read, every well-formed token is journaled; afterwards the
    untagged tokens of earlier versions are accepted only while deliveries still carry one
    (retention removes them), checked hourly."""
    delay = 1.0
    while check.key is None or check.untagged:
        if await _read_token_check(check, sessions):
            delay = every
        else:
            delay = min(max(delay * 2, 1.0), 60.0)
        if check.key is not None and not check.untagged:
            return
        await asyncio.sleep(delay)


def web_auth(cfg: Config, sessions: async_sessionmaker[AsyncSession]) -> WebAuth:
    """The pages log people in with the relay's identities (passed in: pixelserver never
    imports the relay)."""
    password = (
        os.environ.get(cfg.pixelserver.report_password_env)
        if cfg.pixelserver.report_password_env
        else None
    )
    authenticator = make_authenticator(cfg, sessions, None)

    async def check(username: str, password_: str) -> bool:
        assert authenticator is not None
        return await authenticator.check(Credentials(username, password_))

    return WebAuth(
        mode=cfg.relay.auth,
        check=check if authenticator else None,
        report_password=password or None,
        secure_cookies=cfg.pixelserver.public_url.startswith("https://"),
        limits=session_limits(cfg),
        throttle=make_throttle(cfg, sessions),  # the relay's: one count for both
    )


def owned_journals(cfg: Config) -> list[Path]:
    """The journals of every worker of this run: retention never deletes those."""
    if cfg.worker is None:
        return [cfg.data_dir / "hits.journal"]
    return [cfg.data_dir / f"hits-{i}.journal" for i in range(cfg.worker_count)]


def session_limits(cfg: Config) -> SessionLimits:
    return SessionLimits(
        idle=dt.timedelta(minutes=cfg.pixelserver.session_idle_minutes),
        absolute=dt.timedelta(hours=cfg.pixelserver.session_max_hours),
    )


async def start_pixelserver(
    cfg: Config, sessions: async_sessionmaker[AsyncSession], networks: Networks | None = None
) -> RunningPixelServer:
    mask_addresses_in_logs()  # Tornado logs connection errors with the peer's address
    journal = Journal(
        cfg.journal_path,
        fsync=cfg.pixelserver.journal_fsync,
        max_bytes=cfg.pixelserver.journal_max_mb * 1024 * 1024,
    )
    judge = Judge(
        networks or await asyncio.to_thread(make_networks, cfg),
        upstream_google=is_google_host(cfg.upstream.host),
        geo_precision=cfg.privacy.geo_precision,
    )
    limits = RecordLimits(
        token_burst=cfg.pixelserver.record_burst_per_token,
        network_burst=cfg.pixelserver.record_burst_per_network,
    )
    pipeline = HitPipeline(journal, sessions, judge, limits=limits)
    try:
        await pipeline.flush()  # replay what an earlier run answered but had not stored
    except Exception as exc:  # noqa: BLE001 - the pixel must come up even with the store away
        log.error("cannot replay the hit journal yet (%s); it stays until the store is back", exc)
    pipeline.start()
    purge = asyncio.get_running_loop().create_task(
        retention.purge_forever(
            sessions,
            cfg.privacy.retention_days,
            outbox_dir=cfg.outbox_dir,
            data_dir=cfg.data_dir,
            keep_journals=[cfg.journal_path, *owned_journals(cfg)],
            limits=session_limits(cfg),
        ),
        name="retention-purge",
    )
    adopted = [
        asyncio.get_running_loop().create_task(_adopt(path, sessions, judge), name=f"adopt {path}")
        for path in cfg.orphan_journals()
    ]
    cookie_secret = await _shared_secret(sessions)
    app = make_app(
        cfg.pixelserver,
        sessions,
        auth=web_auth(cfg, sessions),
        cookie_secret=cookie_secret,
        outbox_dir=cfg.outbox_dir,
        data_sources=judge.networks.sources(),
        digest=cfg.digest,
        connector=make_connector(cfg),
    )
    if cookie_secret is None:
        # The store is down: pixels must still be served. Sessions use a temporary key until
        # the shared one can be read (logins made meanwhile end when it is swapped in).
        app.settings["cookie_secret"] = secrets.token_urlsafe(48)
        asyncio.get_running_loop().create_task(_adopt_shared_secret(app, sessions))
    host, port = parse_listen(cfg.pixelserver.listen, cfg.source, "pixelserver.listen")
    trusted = parse_networks(cfg.pixelserver.trusted_proxies, cfg.source, "trusted_proxies")
    tokens = TokenCheck()
    await _read_token_check(tokens, sessions)
    adopted.append(
        asyncio.get_running_loop().create_task(
            _keep_token_check(tokens, sessions), name="token-check"
        )
    )
    front = PixelFrontEnd(app, cfg.pixelserver.pixel_path, pipeline, trusted, tokens)
    http = tornado.httpserver.HTTPServer(front, xheaders=False, **REQUEST_LIMITS)
    try:
        http.listen(port, address=host, reuse_port=cfg.worker is not None)
    except OSError as exc:
        for task in (purge, *adopted):
            task.cancel()
        await pipeline.close()
        raise ListenError("pixelserver.listen", cfg.pixelserver.listen, exc) from None
    return RunningPixelServer(http, pipeline, purge, adopted, _mailbox_refresher(cfg, sessions))


def _mailbox_refresher(
    cfg: Config, sessions: async_sessionmaker[AsyncSession]
) -> list[asyncio.Task]:
    """The background MX lookups that record each delivery's mailbox provider."""
    if not cfg.geoip.mx_lookup:
        return []
    try:
        dns = mailbox.make_resolver(cfg.geoip.mx_nameservers)
    except ValueError as exc:
        raise ConfigError(cfg.source, "geoip.mx_nameservers", str(exc)) from None
    resolver = mailbox.MxResolver(dns)
    refresher = mailbox.MailboxRefresher(
        sessions, resolver, interval=float(cfg.geoip.mx_refresh_seconds)
    )
    return [asyncio.get_running_loop().create_task(refresher.run_forever(), name="mx-lookups")]


async def _adopt(path: Path, sessions: async_sessionmaker[AsyncSession], judge: Judge) -> None:
    """Store what another (no longer running) process journaled, then remove its journal."""
    pipeline = HitPipeline(Journal(path), sessions, judge)
    while True:
        try:
            taken = await pipeline.flush()
        except Exception as exc:  # noqa: BLE001 - the store may be away; try again later
            log.warning("cannot replay %s yet (%s)", path, exc)
            await asyncio.sleep(5)
            continue
        pipeline.journal.close()
        path.unlink(missing_ok=True)
        log.info("replayed %d hits from %s", taken, path.name)
        return
