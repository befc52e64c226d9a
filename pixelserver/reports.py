"""The report pages a person reads: who got each message and whether it was fetched.

Until proper logins exist, the pages answer only requests from this machine, or requests that
carry the configured report password (HTTP Basic), so that a pixel server on the internet does
not publish its users' mail.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hmac
import logging
from collections.abc import Sequence
from pathlib import Path

import tornado.web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import storage
from pixelserver.networks import Network, client_ip, is_loopback

log = logging.getLogger("mailping.web")

PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
PAGE_SIZE = 50


class PageHandler(tornado.web.RequestHandler):
    """Base for pages meant for people: access rule and an HTML error page."""

    def initialize(
        self,
        sessions: async_sessionmaker[AsyncSession],
        trusted_proxies: Sequence[Network],
        password: str | None,
        outbox_dir: Path | None,
    ) -> None:
        self.sessions = sessions
        self.trusted_proxies = trusted_proxies
        self.password = password
        self.outbox_dir = outbox_dir

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")

    def prepare(self) -> None:
        if self.password:
            if not self._password_ok():
                self.set_header("WWW-Authenticate", 'Basic realm="MailPing", charset="UTF-8"')
                raise tornado.web.HTTPError(401)
            return
        peer = self.request.remote_ip or ""
        ip = client_ip(peer, self.request.headers, self.trusted_proxies)
        # Proxy headers from a peer that is not a configured proxy: an unknown proxy forwards
        # someone from elsewhere, so the request is not from this machine whatever its socket.
        relayed = any(h in self.request.headers for h in PROXY_HEADERS) and ip == peer
        if not is_loopback(ip) or relayed:
            raise tornado.web.HTTPError(403, reason="Reports are only shown on this machine")

    def _password_ok(self) -> bool:
        header = self.request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            _user, _, given = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        assert self.password is not None
        return hmac.compare_digest(given.encode(), self.password.encode())

    def write_error(self, status_code: int, **kwargs: object) -> None:
        messages = {
            401: "This page needs the report password.",
            403: "Reports are only shown on this machine. Set pixelserver.report_password_env "
            "in the configuration to read them from elsewhere.",
            404: "There is nothing here.",
            503: "The database cannot be reached right now; the report will be back when it is.",
        }
        self.render(
            "error.html",
            status=status_code,
            text=messages.get(status_code, "Something went wrong on our side."),
        )


class MessagesPage(PageHandler):
    async def get(self) -> None:
        before = self.get_query_argument("before", None)
        before_id = int(before) if before and before.isdigit() else None
        try:
            async with self.sessions() as session:
                rows = await storage.recent_messages(session, limit=PAGE_SIZE, before_id=before_id)
        except SQLAlchemyError:
            log.exception("report query failed")
            raise tornado.web.HTTPError(503) from None
        more = rows[-1].id if len(rows) == PAGE_SIZE else None
        self.render("messages.html", messages=rows, more=more, outbox=self.outbox_dir is not None)


class OutboxPage(PageHandler):
    """The copy a recipient would have received, shown as they would see it (pixel included)."""

    def get(self, delivery_id: str) -> None:
        if self.outbox_dir is None:
            raise tornado.web.HTTPError(404)
        path = self.outbox_dir / f"{int(delivery_id)}.eml"
        try:
            raw = path.read_bytes()
        except OSError:
            raise tornado.web.HTTPError(404) from None
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body = msg.get_body(preferencelist=("html", "plain"))
        content = body.get_content() if body is not None else ""
        if body is None or body.get_content_type() != "text/html":
            self.set_header("Content-Type", "text/plain; charset=utf-8")
        else:
            self.set_header("Content-Type", "text/html; charset=utf-8")
        # The copy is mail, not our page: no scripts, and nothing of ours for it to reach.
        self.set_header("Content-Security-Policy", "script-src 'none'; frame-ancestors 'none'")
        self.write(content)


class AboutPage(PageHandler):
    """Version and the data behind verdicts, with the attributions their licences require."""

    def initialize(self, data_sources: list, **pages: object) -> None:  # type: ignore[override]
        super().initialize(**pages)  # type: ignore[arg-type]
        self.data_sources = data_sources

    def get(self) -> None:
        self.render("about.html", version=_version(), sources=self.data_sources)


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("mailping")
    except importlib.metadata.PackageNotFoundError:
        return "development"
