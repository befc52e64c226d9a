"""make_app(): the URL table and settings, nothing else. Tests call it too."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import tornado.web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.config import (
    DigestConfig,
    PixelServerConfig,
    WebhooksConfig,
    parse_listen,
    parse_networks,
)
from pixelserver.metrics import MetricsHandler
from pixelserver.recordlimits import RecordLimits
from pixelserver.tokens import pixel_url
from pixelserver.verdicts.networks import DataSource, Network, Networks, client_ip, mask
from pixelserver.web.api import (
    ClicksApi,
    ExportApi,
    HitsApi,
    MessageApi,
    MessagesApi,
    NotFoundApi,
    OpenApiDocument,
    RecipientApi,
)
from pixelserver.web.base import LoginPage, LogoutPage, WebAuth, demo_hosts
from pixelserver.web.clicks import CLICK_ROUTE, ClickHandler
from pixelserver.web.connect import ConnectCallback, Connector, ConnectStart
from pixelserver.web.live import EventsHandler
from pixelserver.web.reports import (
    AboutPage,
    ExportPage,
    ForgetRecipientPage,
    MessagePage,
    MessagesPage,
    NewLinkPage,
    OutboxPage,
    RecipientPage,
    SettingsPage,
)
from pixelserver.web.webhookpages import WebhookApi, WebhookAttemptsApi, WebhooksApi

HERE = Path(__file__).parent
access_log = logging.getLogger("tornado.access")
# A recipient's address in a page's path is theirs, not the log's (and outlives an erasure).
_RECIPIENT_PATH = re.compile(r"(/(?:api/v1/)?recipients/)[^/]+")


def access_logger(trusted: Sequence[Network]) -> Callable[[tornado.web.RequestHandler], None]:
    """Tornado's access log, but naming the client as a network: the real client behind a
    trusted proxy, masked to its /24 or /48 (the full address is never written to a log)."""

    def log_request(handler: tornado.web.RequestHandler) -> None:
        status = handler.get_status()
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        if not access_log.isEnabledFor(level):
            return
        request = handler.request
        who = client_ip(request.remote_ip or "", request.headers, trusted)
        access_log.log(
            level,
            "%d %s %s (%s) %.2fms",
            status,
            request.method,
            _RECIPIENT_PATH.sub(r"\1…", request.path),
            mask(who) or "-",
            1000.0 * request.request_time(),
        )

    return log_request


def make_app(
    config: PixelServerConfig,
    sessions: async_sessionmaker[AsyncSession],
    *,
    auth: WebAuth,
    cookie_secret: str,
    outbox_dir: Path | None = None,
    data_sources: Sequence[DataSource] = (),
    digest: DigestConfig | None = None,
    networks: Networks | None = None,
    clicks_default: bool = False,
    webhooks: WebhooksConfig | None = None,
    connector: Connector | None = None,
) -> tornado.web.Application:
    trusted = parse_networks(config.trusted_proxies, "-", "pixelserver.trusted_proxies")
    pages = {
        "sessions": sessions,
        "trusted_proxies": trusted,
        "auth": auth,
        "outbox_dir": outbox_dir,
        "pixel_url": functools.partial(pixel_url, config.public_url, config.pixel_path),
        "digest_defaults": digest or DigestConfig(),
        "clicks_default": clicks_default,
        "webhooks": webhooks or WebhooksConfig(),
        "connector": connector,
        "demo_hosts": demo_hosts(
            parse_listen(config.listen, "-", "pixelserver.listen"), config.public_url
        ),
    }
    return tornado.web.Application(
        [
            (r"/", MessagesPage, pages),
            (
                CLICK_ROUTE,
                ClickHandler,
                {
                    **pages,
                    "networks": networks,
                    "click_lock": asyncio.Lock(),
                    # Buckets of their own: a flood on a link takes nothing from the pixel's.
                    "click_limits": RecordLimits(
                        token_burst=config.record_burst_per_token,
                        network_burst=config.record_burst_per_network,
                    ),
                },
            ),
            (r"/export\.csv", ExportPage, pages),
            (r"/messages/([0-9]{1,18})", MessagePage, pages),
            (r"/recipients/([^/]{1,400})", RecipientPage, pages),
            (r"/recipients/([^/]{1,400})/forget", ForgetRecipientPage, pages),
            (r"/outbox/([0-9]{1,18})", OutboxPage, pages),
            (r"/events", EventsHandler, pages),
            (r"/api/v1/messages", MessagesApi, pages),
            (r"/api/v1/messages/([0-9]{1,18})", MessageApi, pages),
            (r"/api/v1/deliveries/([0-9]{1,18})/hits", HitsApi, pages),
            (r"/api/v1/deliveries/([0-9]{1,18})/clicks", ClicksApi, pages),
            (r"/api/v1/export", ExportApi, pages),
            (r"/api/v1/recipients/([^/]+)", RecipientApi, pages),
            (r"/api/v1/webhooks", WebhooksApi, pages),
            (r"/api/v1/webhooks/attempts", WebhookAttemptsApi, pages),
            (r"/api/v1/webhooks/([^/]+)", WebhookApi, pages),
            (r"/api/v1/openapi.json", OpenApiDocument, pages),
            (r"/api/.*", NotFoundApi, pages),
            (r"/settings", SettingsPage, pages),
            (r"/settings/connect/callback", ConnectCallback, pages),
            (r"/settings/connect/(microsoft|google)", ConnectStart, pages),
            (r"/links/new", NewLinkPage, pages),
            (r"/login", LoginPage, pages),
            (r"/logout", LogoutPage, pages),
            (
                r"/metrics",
                MetricsHandler,
                {
                    "allow": parse_networks(config.metrics_allow, "-", "pixelserver.metrics_allow"),
                    "trusted_proxies": trusted,
                },
            ),
            (r"/about", AboutPage, {**pages, "data_sources": list(data_sources)}),
        ],
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        autoescape="xhtml_escape",
        compress_response=False,
        cookie_secret=cookie_secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict", "secure": auth.secure_cookies},
        login_url="/login",
        log_function=access_logger(trusted),
    )
