"""The click redirect: /c/<token>/<n>/<tag> -> the address link n of that copy led to.

A tracking domain that redirects anywhere it is told to is an open redirect, which phishers
use and blocklists punish; so the handler redirects only to an address it finds in the store
for this token and link number, and only when the tag (an HMAC under the token key, over the
token, the number and that address) matches. Anything else gets a small page of our own,
never a Location header. The click is recorded and judged (pixelserver/store/clickrecords.py)
before the answer; a store that is away loses the redirect, not the recipient's page: they
are told where the link could not be followed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
from collections.abc import Sequence
from urllib.parse import quote

import tornado.web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import metrics
from pixelserver.recordlimits import RecordLimits
from pixelserver.store import clickrecords
from pixelserver.store.appsecrets import token_key
from pixelserver.tokens import CLICK_PATH, click_tag, tag_ok
from pixelserver.verdicts.networks import Network, Networks, client_ip

log = logging.getLogger("mailping.clicks")

CLICK_ROUTE = rf"/{CLICK_PATH}/([A-Za-z0-9_-]{{22}})/([0-9]{{1,4}})/([A-Za-z0-9_-]{{12}})"
MAX_UA = 512
PAGE = (
    "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title></head>"
    "<body><h1>{title}</h1><p>{text}</p></body></html>"
)
NOT_FOUND = (
    "Link not found",
    "This link is not one MailPing made, or it was changed on the way. Nothing was opened.",
)
UNAVAILABLE = (
    "Link not available right now",
    "The link service cannot look this link up at the moment. Please try again in a minute.",
)


def location(url: str) -> str:
    """The address for the Location header: as stored, with any non-ASCII character
    percent-encoded as UTF-8 (what a browser sends for it anyway)."""
    if url.isascii():
        return url
    return quote(url, safe="".join(chr(c) for c in range(0x21, 0x7F)))


class ClickHandler(tornado.web.RequestHandler):
    def initialize(
        self,
        sessions: async_sessionmaker[AsyncSession],
        trusted_proxies: Sequence[Network],
        networks: Networks | None,
        click_lock: asyncio.Lock,
        click_limits: RecordLimits,
        **_: object,
    ) -> None:
        # The app's click transactions, one at a time: clicks are few, and judged together
        # they must see each other (SQLite would refuse a second writer's stale snapshot).
        self.one_at_a_time = click_lock
        self.sessions = sessions
        self.trusted_proxies = trusted_proxies
        self.networks = networks
        self.limits = click_limits

    def set_default_headers(self) -> None:
        # No Server header (the recipient's tools need not learn the product), never cached
        # (each click is a click), and the page itself is inert.
        self.clear_header("Server")
        self.set_header("Cache-Control", "no-store, max-age=0, private")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'")

    async def get(self, token: str, n: str, tag: str) -> None:
        await self._click(token, int(n), tag)

    async def head(self, token: str, n: str, tag: str) -> None:
        await self._click(token, int(n), tag)

    async def _click(self, token: str, n: int, tag: str) -> None:
        try:
            async with self.one_at_a_time, self.sessions.begin() as session:
                key = await token_key(session)
                if not tag_ok(token, key):  # forged or random: no lookup, no record
                    metrics.FORGED_TOKENS.inc()
                    return self._page(404, NOT_FOUND)
                target = await clickrecords.find_target(session, token, n)
                expected = click_tag(key, token, n, target.url) if target else ""
                if target is None or not hmac.compare_digest(expected, tag):
                    return self._page(404, NOT_FOUND)
                if self.networks is not None and (new := self._new_click(token, n)) is not None:
                    await clickrecords.add_click(session, target, new)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("a click could not be looked up: %s", exc)
            return self._page(503, UNAVAILABLE)
        # 302 and exactly the stored address: query and fragment as the sender wrote them.
        self.set_status(302)
        self.set_header("Location", location(target.url))
        self.finish()

    def _new_click(self, token: str, n: int) -> clickrecords.NewClick | None:
        """The click to store; None past the copy's or the network's limit (a flood on one
        link is redirected as always, but stored only up to the limit)."""
        assert self.networks is not None
        ip = client_ip(self.request.remote_ip or "", self.request.headers, self.trusted_proxies)
        prefix, lists = self.networks.at_edge(ip)
        if (over := self.limits.drop(token, prefix, lists)) is not None:
            metrics.CLICKS_NOT_RECORDED.labels(over).inc()
            return None
        return clickrecords.NewClick(
            n=n,
            at=dt.datetime.now(dt.UTC),
            method=self.request.method or "GET",
            network=self.networks.facts_of(prefix, lists),
            user_agent=self.request.headers.get("User-Agent", "")[:MAX_UA],
        )

    def _page(self, status: int, words: tuple[str, str]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        if self.request.method == "HEAD":
            self.finish()
        else:
            self.finish(PAGE.format(title=words[0], text=words[1]))
