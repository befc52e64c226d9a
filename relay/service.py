"""Assembly: build the relay and the pixel server from a Config, on the running event loop.

`mailping serve` runs both in one process; `mailping relay` and `mailping pixelserver` run one
each against the same store, which is how MailPing scales out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pixelserver import oauthcode, server
from pixelserver.config import ConfigError, is_loopback_host, parse_listen
from pixelserver.server import ListenError
from pixelserver.store import migrate
from pixelserver.store.mailaccounts import Sealer
from pixelserver.store.schema import make_engine, make_sessionmaker
from pixelserver.store.throttle import LoginThrottle
from pixelserver.verdicts.networks import (
    Networks,
    mask_addresses_in_logs,
)
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
from relay.webhooks import WebhookRunner

log = logging.getLogger("mailping")

PROXY_HEADER_WAIT = 10.0  # seconds a balancer has to send the PROXY header of a connection


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
    webhooks: asyncio.Task | None = None

    async def close(self) -> None:
        for task in (self.digests, self.webhooks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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


def make_webhook_runner(cfg: Config, sessions: async_sessionmaker[AsyncSession]) -> WebhookRunner:
    """Webhooks are posted by every relay process; the ledger's claims keep them from posting
    one event twice."""
    return WebhookRunner(
        sessions,
        allow_private=cfg.webhooks.allow_private,
        timeout=cfg.webhooks.timeout_seconds,
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
    hooks = asyncio.get_running_loop().create_task(
        make_webhook_runner(cfg, sessions).run_forever(), name="webhooks"
    )
    return RunningRelay(server, handler, queue, digests, hooks)


def make_networks(cfg: Config) -> Networks:
    """The offline network data, from the configured .mmdb files or what is installed."""
    return server.make_networks(
        resolve_file(cfg, cfg.geoip.city_db) if cfg.geoip.city_db else None,
        resolve_file(cfg, cfg.geoip.asn_db) if cfg.geoip.asn_db else None,
    )


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
        limits=server.session_limits(cfg.pixelserver),
        throttle=make_throttle(cfg, sessions),  # the relay's: one count for both
    )


def owned_journals(cfg: Config) -> list[Path]:
    """The journals of every worker of this run: retention never deletes those."""
    if cfg.worker is None:
        return [cfg.data_dir / "hits.journal"]
    return [cfg.data_dir / f"hits-{i}.journal" for i in range(cfg.worker_count)]


def pixel_site(cfg: Config) -> server.PixelSite:
    """What the pixel server needs of this configuration."""
    return server.PixelSite(
        pixel=cfg.pixelserver,
        geoip=cfg.geoip,
        privacy=cfg.privacy,
        digest=cfg.digest,
        source=cfg.source,
        data_dir=cfg.data_dir,
        journal_path=cfg.journal_path,
        outbox_dir=cfg.outbox_dir,
        keep_journals=(cfg.journal_path, *owned_journals(cfg)),
        orphan_journals=tuple(cfg.orphan_journals()),
        reuse_port=cfg.worker is not None,
        upstream_google=is_google_host(cfg.upstream.host),
        webhooks=cfg.webhooks,
        connector=make_connector(cfg),
    )


async def start_pixelserver(
    cfg: Config, sessions: async_sessionmaker[AsyncSession], networks: Networks | None = None
) -> server.RunningPixelServer:
    """The pixel server of this configuration, its pages logging people in as the relay does."""
    if networks is None:
        networks = await asyncio.to_thread(make_networks, cfg)
    return await server.start_pixelserver(
        pixel_site(cfg), sessions, web_auth(cfg, sessions), networks
    )
