"""Who is reading the pages: logins, sessions, and the headers every page carries.

Logins use the relay's identities: with relay.auth "upstream" the password is checked against
the user's mail provider, with "local" against MailPing's own users (the check arrives from the
relay as a callable; the pixel server never imports the relay). With "none" (a loopback-only
demo) there is no login and the pages answer only this machine, or the report password.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import tornado.web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.config import DigestConfig
from pixelserver.store.accounts import add_user_network
from pixelserver.store.throttle import LoginThrottle, TooManyAttempts
from pixelserver.store.websessions import (
    SessionLimits,
    end_web_session,
    start_web_session,
    web_session_user,
)
from pixelserver.verdicts.networks import Network, client_ip, is_loopback, mask
from pixelserver.web.localtime import LocalTime, user_zone

log = logging.getLogger("mailping.web")

SESSION_COOKIE = "mailping_session"
PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)

CheckLogin = Callable[[str, str], Awaitable[bool]]


@dataclass
class WebAuth:
    """How people log in to the pages (one per process, shared by its handlers)."""

    mode: str  # "none" | "upstream" | "local"
    check: CheckLogin | None = None
    report_password: str | None = None
    secure_cookies: bool = False
    limits: SessionLimits = field(default_factory=SessionLimits)
    throttle: LoginThrottle = field(default_factory=lambda: LoginThrottle(None))

    @property
    def logins(self) -> bool:
        return self.mode != "none"


class BasePage(tornado.web.RequestHandler):
    """A page for people: security headers, the current user, and HTML errors."""

    def initialize(
        self,
        sessions: async_sessionmaker[AsyncSession],
        trusted_proxies: Sequence[Network],
        auth: WebAuth,
        outbox_dir: Path | None = None,
        **extra: object,
    ) -> None:
        self.sessions = sessions
        self.trusted_proxies = trusted_proxies
        self.auth = auth
        self.outbox_dir = outbox_dir
        self.extra = extra

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cache-Control", "no-store")
        self.clear_header("Server")

    @property
    def client(self) -> str:
        return client_ip(self.request.remote_ip or "", self.request.headers, self.trusted_proxies)

    def get_current_user(self) -> str | None:
        return None  # set by prepare() from the server-side session, if there is one

    def session_key(self) -> str | None:
        """The session key from the signed cookie (the signature only proves this site made
        it; whether the session is still alive is the store's answer)."""
        days = self.auth.limits.absolute.total_seconds() / 86400
        value = self.get_signed_cookie(SESSION_COOKIE, max_age_days=days)
        try:
            return value.decode("ascii") if value else None
        except UnicodeDecodeError:
            return None

    async def _session_user(self) -> str | None:
        key = self.session_key()
        if key is None:
            return None
        try:
            async with self.sessions.begin() as session:
                return await web_session_user(session, key, self.auth.limits)
        except SQLAlchemyError:
            log.warning("cannot check a web session: the store is unreachable")
            raise tornado.web.HTTPError(503) from None

    @property
    def user(self) -> str | None:
        """Whose messages to show: the logged-in user, or None (everyone) in the demo mode."""
        return self.current_user

    async def prepare(self) -> None:
        if self.auth.logins:
            self.current_user = await self._session_user()
            if self.current_user is None and self.needs_login:
                self.redirect(f"/login?next={tornado.escape.url_escape(self.request.uri or '/')}")
                return
        else:
            await self._demo_access()
        self.local = await self.local_time(self.user)

    local: LocalTime = LocalTime("UTC")

    async def local_time(self, user: str | None) -> LocalTime:
        """The user's time zone from Settings (the [digest] default for the demo, or while
        the store cannot say): every time on a page, in an export or a notification."""
        defaults = self.extra.get("digest_defaults") or DigestConfig()
        try:
            async with self.sessions() as session:
                return LocalTime(await user_zone(session, user, defaults))  # type: ignore[arg-type]
        except SQLAlchemyError:
            return LocalTime(defaults.timezone)  # type: ignore[union-attr]

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace["local"] = self.local
        return namespace

    needs_login = True

    async def _demo_access(self) -> None:
        """auth = "none": this machine only, or the report password (HTTP Basic).

        The Host header must be a name this server is known by: otherwise a page the user
        visits could point its own name at 127.0.0.1 (DNS rebinding) and read the report
        with the browser's loopback access. The report password is throttled like logins."""
        if self.auth.report_password:
            # The browser sends the password with every request, and comparing it is cheap:
            # only failures are counted here, against the client's network.
            throttle = self.auth.throttle
            if await throttle.network_locked(self.client):
                raise tornado.web.HTTPError(429)
            if not self._password_ok(self.auth.report_password):
                if self.request.headers.get("Authorization"):
                    with contextlib.suppress(TooManyAttempts):
                        await throttle.attempt(None, self.client)
                self.set_header("WWW-Authenticate", 'Basic realm="MailPing", charset="UTF-8"')
                raise tornado.web.HTTPError(401)
            return
        # Loopback only: a page from elsewhere could have rebound its own name to 127.0.0.1.
        # (With the report password it cannot: the browser keeps credentials per origin.)
        hosts = self.extra.get("demo_hosts")
        if hosts is not None and self.request.host.lower() not in hosts:  # type: ignore[operator]
            raise tornado.web.HTTPError(403, reason="Unknown Host")
        peer = self.request.remote_ip or ""
        ip = self.client
        # Proxy headers from a peer that is not a configured proxy: an unknown proxy forwards
        # someone from elsewhere, so the request is not from this machine whatever its socket.
        relayed = any(h in self.request.headers for h in PROXY_HEADERS) and ip == peer
        if not is_loopback(ip) or relayed:
            raise tornado.web.HTTPError(403, reason="Reports are only shown on this machine")

    def _password_ok(self, password: str) -> bool:
        header = self.request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            _user, _, given = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(given.encode(), password.encode())

    def write_error(self, status_code: int, **kwargs: object) -> None:
        messages = {
            401: "This page needs the report password.",
            403: "Reports are only shown on this machine. Set pixelserver.report_password_env "
            "in the configuration to read them from elsewhere.",
            404: "There is nothing here.",
            429: "Too many failed logins from your address. Wait ten minutes and try again.",
            503: "The database cannot be reached right now; the report will be back when it is.",
        }
        if status_code == 403 and self._reason == "Unknown Host":
            text = "This server does not answer to that name. Use the address it listens on."
        elif status_code == 403 and "_xsrf" in str(kwargs.get("exc_info", "")):
            text = "This form had expired or came from another site. Reload the page and retry."
        else:
            text = messages.get(status_code, "Something went wrong on our side.")
        self.render("error.html", status=status_code, text=text)


# What a same-site path may hold, as sent by this site's own login redirect: RFC 3986 path and
# query characters (no backslash, no space, no control character, nothing beyond ASCII).
_SAFE_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_DANGEROUS_DECODED = re.compile(r"[\\\x00-\x1f\x7f]|^\s*/\s*[/\\]|^[a-zA-Z][a-zA-Z0-9+.-]*:")


def safe_next(target: str | None) -> str:
    """Only paths on this site: an open redirect would make the login page a phishing tool.

    Browsers read `\\` as `/` and drop tabs and newlines, so `/\\evil`, `/\t/evil` and their
    percent-encoded forms lead off-site as surely as `//evil` does. The target must be a plain
    path made of URL characters, and no decoding of it (up to three rounds, for double
    encoding) may turn up a backslash, a control character, a leading `//`, a scheme or
    anything beyond ASCII.
    Anything else is replaced by the report's front page."""
    if not target or len(target) > 2000 or not _SAFE_PATH.fullmatch(target):
        return "/"
    decoded = target
    for _ in range(3):
        if _DANGEROUS_DECODED.search(decoded):
            return "/"
        parts = urlsplit(decoded)
        if parts.scheme or parts.netloc:
            return "/"
        before = decoded
        try:
            decoded = unquote(decoded, errors="strict")
        except UnicodeDecodeError:
            return "/"
        if decoded == before:
            break
    else:
        return "/"  # still encoded after three rounds: nobody writes that in good faith
    if not decoded.isascii():  # lookalike dots and slashes (U+3002, U+2215) are refused too
        return "/"
    return target


def demo_hosts(listen: tuple[str, int], public_url: str) -> frozenset[str]:
    """The Host header values the loopback demo answers: the listen address, this machine's
    loopback names on its port, and public_url's host."""
    host, port = listen
    names = {f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
    if host not in ("", "0.0.0.0", "::"):
        names.add(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    public = urlsplit(public_url)
    if public.netloc:
        names.add(public.netloc.lower())
        if public.port is None and public.hostname:
            default = 443 if public.scheme == "https" else 80
            names.add(f"{public.hostname}:{default}")
    return frozenset(n.lower() for n in names)


class LoginPage(BasePage):
    needs_login = False

    def get(self) -> None:
        if not self.auth.logins:
            self.redirect("/")
            return
        self.render(
            "login.html",
            error="",
            next=safe_next(self.get_query_argument("next", "/")),
            mode=self.auth.mode,
        )

    async def post(self) -> None:
        if not self.auth.logins or self.auth.check is None:
            raise tornado.web.HTTPError(404)
        ip = self.client
        target = safe_next(self.get_body_argument("next", "/"))
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "")
        # Counted before the slow check, per username and per network, in the store that the
        # relay's logins count in too (pixelserver/store/throttle.py): guesses sent at once, from
        # many networks or through several processes, at the pages or the relay, all add up.
        throttle = self.auth.throttle
        try:
            attempt = await throttle.attempt(username, ip)
        except TooManyAttempts:
            raise tornado.web.HTTPError(429) from None
        try:
            ok = bool(username and password) and await self.auth.check(username, password)
        except Exception:  # the provider could not be asked; say so rather than "wrong password"
            log.warning("could not check a web login", exc_info=True)
            await throttle.not_checked(attempt)
            self.set_status(503)
            self.render(
                "login.html",
                next=target,
                mode=self.auth.mode,
                error="Your mail provider could not be reached to check the login. "
                "Try again in a moment.",
            )
            return
        if not ok:
            await tornado.gen.sleep(min(0.3 * attempt.highest, 3.0))  # each failure costs more
            self.set_status(401)
            self.render(
                "login.html",
                next=target,
                mode=self.auth.mode,
                error="That username and password were not accepted.",
            )
            return
        await throttle.succeeded(attempt)
        previous = self.session_key()
        async with self.sessions.begin() as session:
            await add_user_network(session, username, mask(ip))
            if previous:  # a new login never reuses a session (no fixation)
                await end_web_session(session, previous)
            key = await start_web_session(session, username)
        self.set_signed_cookie(
            SESSION_COOKIE,
            key,
            expires_days=self.auth.limits.absolute.total_seconds() / 86400,
            httponly=True,
            samesite="Lax",
            secure=self.auth.secure_cookies,
        )
        self.redirect(target)


class LogoutPage(BasePage):
    needs_login = False

    async def post(self) -> None:
        """Ends the session on the server, not only in this browser."""
        key = self.session_key()
        if key is not None:
            async with self.sessions.begin() as session:
                await end_web_session(session, key)
        self.clear_cookie(SESSION_COOKIE)
        self.redirect("/login" if self.auth.logins else "/")
