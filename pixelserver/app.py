"""make_app(): the URL table and settings, nothing else. Tests call it too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tornado.web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.config import PixelServerConfig, parse_networks
from pixelserver.hits import HitPipeline
from pixelserver.networks import DataSource
from pixelserver.pixel import PixelHandler
from pixelserver.reports import AboutPage, MessagesPage, OutboxPage

HERE = Path(__file__).parent


def make_app(
    config: PixelServerConfig,
    sessions: async_sessionmaker[AsyncSession],
    pipeline: HitPipeline,
    *,
    report_password: str | None = None,
    outbox_dir: Path | None = None,
    data_sources: Sequence[DataSource] = (),
) -> tornado.web.Application:
    trusted = parse_networks(config.trusted_proxies, "-", "pixelserver.trusted_proxies")
    pages = {
        "sessions": sessions,
        "trusted_proxies": trusted,
        "password": report_password or None,
        "outbox_dir": outbox_dir,
    }
    return tornado.web.Application(
        [
            (
                rf"/{config.pixel_path}/([^/]*)",
                PixelHandler,
                {"pipeline": pipeline, "trusted_proxies": trusted},
            ),
            (r"/", MessagesPage, pages),
            (r"/outbox/([0-9]{1,18})", OutboxPage, pages),
            (r"/about", AboutPage, {**pages, "data_sources": list(data_sources)}),
        ],
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        autoescape="xhtml_escape",
        compress_response=False,
        xsrf_cookies=False,
    )
