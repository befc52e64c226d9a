"""The pixel server assembled: the hit pipeline, its journal, retention, the pages and the
pixel front end on one listening socket.

It lives beside `make_app` so the pixel front end and the pages are found together; the relay's
service (relay/service.py) stays the composition root and hands over only what this package
needs (a PixelSite built from its configuration, and how the pages check a login), because the
pixel server never imports the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import tornado.httpserver
import tornado.web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.config import (
    ConfigError,
    DigestConfig,
    GeoipConfig,
    PixelServerConfig,
    PrivacyConfig,
    WebhooksConfig,
    parse_listen,
    parse_networks,
)
from pixelserver.hits import HitPipeline, Journal, Judge
from pixelserver.pixel import PixelFrontEnd
from pixelserver.recordlimits import RecordLimits
from pixelserver.store import retention
from pixelserver.store.appsecrets import app_secret, has_untagged_tokens, token_key
from pixelserver.store.mailboxes import MailboxRefresher
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

log = logging.getLogger("mailping")


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


@dataclass(frozen=True)
class PixelSite:
    """What the pixel server needs of the configuration, and nothing of the relay's."""

    pixel: PixelServerConfig
    geoip: GeoipConfig
    privacy: PrivacyConfig
    digest: DigestConfig
    source: str  # the configuration file, named in errors
    data_dir: Path
    journal_path: Path
    outbox_dir: Path | None
    keep_journals: tuple[Path, ...]  # this run's: retention never deletes them
    orphan_journals: tuple[Path, ...]  # left by runs that ended: stored, then removed
    reuse_port: bool  # one of several worker processes on one port
    upstream_google: bool  # the upstream is Google's: its proxy fetches are the sender's own
    clicks_default: bool = False  # [clicks] enabled: the Settings page says what users follow
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)  # targets Settings takes
    connector: Connector | None = None  # users connect their own mail accounts ([connect])


def make_networks(city_db: Path | None, asn_db: Path | None) -> Networks:
    """The offline network data: bundled lists, plus location and ASN from the configured
    .mmdb files or, where none is configured, the data installed with MailPing."""
    location = None
    if city_db is not None:
        location = MaxMindLocation(city_db)
    elif (bundled := bundled_city_db()) is not None:
        location = MaxMindLocation(bundled, bundled=True)
    asn: AsnSource | None
    if asn_db is not None:
        asn = MaxMindAsn(asn_db)
    else:
        try:
            asn = PlevinAsn()
        except ImportError:
            log.warning("no ASN data installed (plevin-db-network): network names will be missing")
            asn = None
    return Networks(asn=asn, location=location)


def session_limits(pixel: PixelServerConfig) -> SessionLimits:
    return SessionLimits(
        idle=dt.timedelta(minutes=pixel.session_idle_minutes),
        absolute=dt.timedelta(hours=pixel.session_max_hours),
    )


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


async def start_pixelserver(
    site: PixelSite,
    sessions: async_sessionmaker[AsyncSession],
    auth: WebAuth,
    networks: Networks,
) -> RunningPixelServer:
    mask_addresses_in_logs()  # Tornado logs connection errors with the peer's address
    journal = Journal(
        site.journal_path,
        fsync=site.pixel.journal_fsync,
        max_bytes=site.pixel.journal_max_mb * 1024 * 1024,
    )
    judge = Judge(
        networks,
        upstream_google=site.upstream_google,
        geo_precision=site.privacy.geo_precision,
    )
    limits = RecordLimits(
        token_burst=site.pixel.record_burst_per_token,
        network_burst=site.pixel.record_burst_per_network,
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
            site.privacy.retention_days,
            outbox_dir=site.outbox_dir,
            data_dir=site.data_dir,
            keep_journals=list(site.keep_journals),
            limits=session_limits(site.pixel),
        ),
        name="retention-purge",
    )
    adopted = [
        asyncio.get_running_loop().create_task(_adopt(path, sessions, judge), name=f"adopt {path}")
        for path in site.orphan_journals
    ]
    cookie_secret = await _shared_secret(sessions)
    app = make_app(
        site.pixel,
        sessions,
        auth=auth,
        cookie_secret=cookie_secret,
        outbox_dir=site.outbox_dir,
        data_sources=judge.networks.sources(),
        digest=site.digest,
        networks=judge.networks,
        clicks_default=site.clicks_default,
        webhooks=site.webhooks,
        connector=site.connector,
    )
    if cookie_secret is None:
        # The store is down: pixels must still be served. Sessions use a temporary key until
        # the shared one can be read (logins made meanwhile end when it is swapped in).
        app.settings["cookie_secret"] = secrets.token_urlsafe(48)
        asyncio.get_running_loop().create_task(_adopt_shared_secret(app, sessions))
    host, port = parse_listen(site.pixel.listen, site.source, "pixelserver.listen")
    trusted = parse_networks(site.pixel.trusted_proxies, site.source, "trusted_proxies")
    tokens = TokenCheck()
    await _read_token_check(tokens, sessions)
    adopted.append(
        asyncio.get_running_loop().create_task(
            _keep_token_check(tokens, sessions), name="token-check"
        )
    )
    front = PixelFrontEnd(app, site.pixel.pixel_path, pipeline, trusted, tokens)
    http = tornado.httpserver.HTTPServer(front, xheaders=False, **REQUEST_LIMITS)
    try:
        http.listen(port, address=host, reuse_port=site.reuse_port)
    except OSError as exc:
        for task in (purge, *adopted):
            task.cancel()
        await pipeline.close()
        raise ListenError("pixelserver.listen", site.pixel.listen, exc) from None
    return RunningPixelServer(http, pipeline, purge, adopted, _mailbox_refresher(site, sessions))


def _mailbox_refresher(
    site: PixelSite, sessions: async_sessionmaker[AsyncSession]
) -> list[asyncio.Task]:
    """The background MX lookups that record each delivery's mailbox provider."""
    if not site.geoip.mx_lookup:
        return []
    try:
        dns = mailbox.make_resolver(site.geoip.mx_nameservers)
    except ValueError as exc:
        raise ConfigError(site.source, "geoip.mx_nameservers", str(exc)) from None
    resolver = mailbox.MxResolver(dns)
    refresher = MailboxRefresher(sessions, resolver, interval=float(site.geoip.mx_refresh_seconds))
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
