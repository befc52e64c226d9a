"""The report pages: messages, one message, one recipient, a stored copy, About.

Handlers translate: read the request, call a query (pixelserver/store/queries.py), render. Every
query is for the current user, so someone else's message is simply not found (404).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import importlib.metadata
import logging
import secrets
import zoneinfo

import argon2
import tornado.ioloop
import tornado.web
from sqlalchemy.exc import SQLAlchemyError

from pixelserver.config import DigestConfig
from pixelserver.oauthcode import LABELS
from pixelserver.store import (
    clickrecords,
    clickreports,
    digests,
    erasure,
    links,
    mailaccounts,
    preferences,
    queries,
    webhookledger,
    webhooks,
)
from pixelserver.store.accounts import (
    api_tokens,
    create_api_token,
    revoke_api_token,
    set_local_user,
)
from pixelserver.store.showonce import API_TOKEN, MAIL_PASSWORD
from pixelserver.store.websessions import count_user_sessions, end_other_sessions
from pixelserver.verdicts.networks import mask
from pixelserver.verdicts.state import CLICK_WORDS, STATE_WORDS, STATES, VERDICT_WORDS
from pixelserver.web import showonce
from pixelserver.web.base import BasePage
from pixelserver.web.chart import hits_svg
from pixelserver.web.connect import Connector, disconnect
from pixelserver.web.webhookpages import add_for, remember_new, secret_once, webhook_config

log = logging.getLogger("mailping.web")


def _date(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None


class MessagesPage(BasePage):
    async def get(self) -> None:
        filters = queries.Filters(
            q=self.get_query_argument("q", "").strip()[:200],
            state=self.get_query_argument("state", ""),
            since=_date(self.get_query_argument("since", None)),
            until=_date(self.get_query_argument("until", None)),
        )
        before = self.get_query_argument("before", None)
        before_id = int(before) if before and before.isdigit() else None
        try:
            async with self.sessions() as session:
                rows = await queries.list_messages(session, self.user, filters, before_id=before_id)
        except SQLAlchemyError:
            log.exception("report query failed")
            raise tornado.web.HTTPError(503) from None
        more = rows[-1].id if len(rows) == queries.PAGE_SIZE else None
        self.render(
            "messages.html",
            messages=rows,
            more=more,
            filters=filters,
            states=[(s, STATE_WORDS[s]) for s in STATES],
            outbox=self.outbox_dir is not None,
            query=self._query_without_before(),
        )

    def _query_without_before(self) -> str:
        args = {
            k: self.get_query_argument(k)
            for k in ("q", "state", "since", "until")
            if self.get_query_argument(k, "")
        }
        return "&".join(f"{k}={tornado.escape.url_escape(v)}" for k, v in args.items())


class ExportPage(BasePage):
    """The Export button: the same CSV as the API's export, for the logged-in user."""

    async def get(self) -> None:
        from pixelserver.web.api import export_rows, write_csv

        filters = queries.Filters(
            since=_date(self.get_query_argument("since", None)),
            until=_date(self.get_query_argument("until", None)),
        )
        async with self.sessions() as session:
            rows = await export_rows(session, self.user, filters, self.local)
        write_csv(self, rows)


class MessagePage(BasePage):
    async def get(self, message_id: str) -> None:
        async with self.sessions() as session:
            detail = await queries.message_detail(session, self.user, int(message_id))
        if detail is None:
            raise tornado.web.HTTPError(404)
        sent = detail.message.accepted_at
        charts = {
            d.id: hits_svg(
                [(max(0.0, (h.at - sent).total_seconds()), h.verdict) for h in detail.hits[d.id]]
            )
            for d in detail.message.deliveries
        }
        urls = {d: self.extra["pixel_url"](t) for d, t in detail.link_tokens.items()}
        ids = [d.id for d in detail.message.deliveries]
        async with self.sessions() as session:
            click_summary = await clickreports.clicks_by_delivery(session, ids)
            clicks = await clickreports.clicks_of_deliveries(session, ids)
        self.render(
            "message.html",
            m=detail.message,
            link_urls=urls,
            snippet=links.snippet,
            hits=detail.hits,
            clicks=clicks,
            click_summary=click_summary,
            changes=detail.changes,
            charts=charts,
            verdict_words=VERDICT_WORDS,
            click_words=CLICK_WORDS,
            since=_since_words,
            outbox=self.outbox_dir is not None,
        )


class RecipientPage(BasePage):
    async def get(self, address: str) -> None:
        # Tornado has decoded the path argument already: decoding it again would turn the
        # "+" of ana+tag@example.com into a space.
        async with self.sessions() as session:
            history = await queries.recipient_history(session, self.user, address)
        if not history:
            raise tornado.web.HTTPError(404)
        self.render("recipient.html", address=address, history=history)


class ForgetRecipientPage(BasePage):
    """Erase a recipient on their request (GDPR art. 17): everything of theirs in this user's
    report goes; a keyed hash keeps them from being tracked again."""

    async def post(self, address: str) -> None:
        # Tornado has decoded the path argument already: decoding it again would turn the
        # "+" of ana+tag@example.com into a space.
        if self.get_body_argument("confirm", "") != "yes":  # the page's checkbox
            raise tornado.web.HTTPError(400)
        done = await erasure.forget_recipient(
            self.sessions, address, user=self.user, outbox_dir=self.outbox_dir, vacuum=False
        )
        tornado.ioloop.IOLoop.current().spawn_callback(erasure.vacuum_later, self.sessions)
        log.info("forgot a recipient on request: %s", done.words())
        self.redirect("/")


def _since_words(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s after sending"
    if s < 7200:
        return f"{s // 60} min after sending"
    if s < 2 * 86400:
        return f"{s // 3600} h after sending"
    return f"{s // 86400} days after sending"


class OutboxPage(BasePage):
    """The copy a recipient would have received, shown as they would see it (pixel included)."""

    async def get(self, delivery_id: str) -> None:
        if self.outbox_dir is None:
            raise tornado.web.HTTPError(404)
        async with self.sessions() as session:
            token = await queries.owned_delivery_token(session, self.user, int(delivery_id))
        if token is None:
            raise tornado.web.HTTPError(404)
        try:
            raw = (self.outbox_dir / f"{token}.eml").read_bytes()
        except OSError:
            raise tornado.web.HTTPError(404) from None
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body = msg.get_body(preferencelist=("html", "plain"))
        content = body.get_content() if body is not None else ""
        html = body is not None and body.get_content_type() == "text/html"
        self.set_header("Content-Type", f"text/{'html' if html else 'plain'}; charset=utf-8")
        # The copy is mail, not our page: its images load (the pixel among them), scripts never.
        self.set_header(
            "Content-Security-Policy",
            "default-src 'none'; img-src * data:; style-src 'unsafe-inline'; "
            "frame-ancestors 'none'",
        )
        self.write(content)


class AboutPage(BasePage):
    """Version and the data behind verdicts, with the attributions their licences require."""

    needs_login = False

    def get(self) -> None:
        try:
            version = importlib.metadata.version("mailping")
        except importlib.metadata.PackageNotFoundError:
            version = "development"
        self.render("about.html", version=version, sources=self.extra.get("data_sources", []))


class NewLinkPage(BasePage):
    """A tracking link for mail written where the relay is not in the path."""

    def get(self, error: str = "", label: str = "", recipient: str = "", sender: str = "") -> None:
        self.render(
            "newlink.html",
            error=error,
            label=label,
            recipient=recipient,
            sender=sender,
            ask_sender=self.user is None,
        )

    async def post(self) -> None:
        label = self.get_body_argument("label", "")
        recipient = self.get_body_argument("recipient", "")
        # The demo mode has no login: the link belongs to the address typed, as relayed mail
        # belongs to its envelope sender there.
        sender = self.user or self.get_body_argument("sender", "").strip()
        try:
            if "@" not in sender:
                raise links.LinkError("Give your own address: the link is listed under it.")
            async with self.sessions.begin() as session:
                link = await links.create_link(
                    session, sender, label, recipient, sender_prefix=mask(self.client)
                )
        except links.LinkError as exc:
            self.set_status(400)
            self.get(str(exc), label, recipient, sender)
            return
        self.redirect(f"/messages/{link.message_id}#link")


class SettingsPage(BasePage):
    """The user's digest, whom never to track, and personal API tokens (shown once)."""

    async def get(
        self,
        new_token: str | None = None,
        error: str = "",
        saved: bool = False,
        new_secret: str | None = None,
        notice: str = "",
        mail_password: str = "",
    ) -> None:
        if self.user is None:
            raise tornado.web.HTTPError(404)  # the demo mode has no users to keep settings for
        connector = self.extra.get("connector")
        if self.request.method == "GET":  # the page a form redirected to: its value, once
            new_secret = await secret_once(self, self.user) or new_secret
            kind, value = await showonce.take(self, self.user) or ("", "")
            new_token = value if kind == API_TOKEN else new_token
            mail_password = value if kind == MAIL_PASSWORD else mail_password
        async with self.sessions() as session:
            tokens = await api_tokens(session, self.user)
            hooks = await webhooks.endpoints(session, self.user)
            attempts = await webhookledger.recent_attempts(session, self.user, 20)
            prefs = await preferences.load(session, self.user, self.digest_defaults)
            last_digest = await digests.latest(session, self.user)
            active = await count_user_sessions(session, self.user, self.auth.limits)
            clicks_choice = await clickrecords.click_choice(session, self.user)
            account = await mailaccounts.connection(session, self.user) if connector else None
        connected = self.get_query_argument("connected", "")
        if connected in LABELS and not notice:
            notice = f"Your {LABELS[connected]} account is connected: MailPing sends as you."
        self.render(
            "settings.html",
            tokens=tokens,
            new_token=new_token,
            prefs=prefs,
            last_digest=last_digest,
            zones=ZONES,
            error=error,
            saved=saved,
            active_sessions=active,
            clicks_choice=clicks_choice,
            clicks_default=bool(self.extra.get("clicks_default")),
            idle_minutes=int(self.auth.limits.idle.total_seconds() // 60),
            max_hours=int(self.auth.limits.absolute.total_seconds() // 3600),
            hooks=hooks,
            attempts=attempts,
            new_secret=new_secret,
            event_types=webhooks.EVENT_TYPES,
            connector=connector,
            account=account,
            labels=LABELS,
            notice=notice,
            connect_error=self.get_query_argument("connect_error", "")[:300],
            mail_password=mail_password,
            local_logins=self.auth.mode == "local",
        )

    @property
    def digest_defaults(self) -> DigestConfig:
        return self.extra["digest_defaults"]  # type: ignore[return-value]  # set by make_app

    async def post(self) -> None:
        if self.user is None:
            raise tornado.web.HTTPError(404)
        action = self.get_body_argument("action", "")
        new_webhook = None
        ticket = ""  # names the new token or password the page after the redirect shows
        connector = self.extra.get("connector")
        if action == "disconnect" and isinstance(connector, Connector):
            try:
                words = await disconnect(connector, self.sessions, self.user)
            except SQLAlchemyError:
                raise tornado.web.HTTPError(503) from None
            await self.get(notice=words)
            return
        if action == "mail_password" and self.auth.mode == "local":
            password = new_mail_password()
            hashed = await tornado.ioloop.IOLoop.current().run_in_executor(
                None, MAIL_HASHER.hash, password
            )
            async with self.sessions.begin() as session:
                await set_local_user(session, self.user, hashed)
                ticket = await showonce.hold(session, self.user, MAIL_PASSWORD, password)
            showonce.remember(self, ticket)  # redirect after post: a reload makes no other
            self.redirect("/settings#mail-program", status=303)
            return
        try:
            async with self.sessions.begin() as session:
                if action == "create":
                    name = self.get_body_argument("name", "").strip() or "API token"
                    token = await create_api_token(session, self.user, name)
                    ticket = await showonce.hold(session, self.user, API_TOKEN, token)
                elif action == "revoke":
                    await revoke_api_token(
                        session, self.user, int(self.get_body_argument("token_id", "0") or 0)
                    )
                elif action == "clicks":
                    choice = self.get_body_argument("clicks", "")
                    if choice not in CLICK_CHOICES:
                        raise preferences.PreferenceError(
                            "Click tracking: choose one of the three."
                        )
                    await clickrecords.set_click_choice(session, self.user, CLICK_CHOICES[choice])
                elif action == "logout_others":  # ASVS 3.3.4: end the sessions left elsewhere
                    key = self.session_key()
                    if key is not None:
                        await end_other_sessions(session, self.user, key)
                elif action == "preferences":
                    digest = preferences.check_digest(
                        enabled=self.get_body_argument("digest_enabled", "") == "on",
                        hour=self.get_body_argument("digest_hour", ""),
                        timezone=self.get_body_argument("digest_timezone", ""),
                        send_empty=self.get_body_argument("digest_empty", "") == "on",
                    )
                    await preferences.save(
                        session, self.user, digest, self.get_body_argument("exclusions", "")
                    )
                elif action == "webhook_add":  # its secret is shown after the redirect
                    new_webhook, _ = await add_for(
                        session,
                        self.user,
                        self.get_body_argument("url", ""),
                        self.get_body_arguments("events"),
                        webhook_config(self),
                        shown=False,
                    )
                elif action == "webhook_remove":
                    await webhooks.remove_endpoint(
                        session, int(self.get_body_argument("webhook_id", "0") or 0), self.user
                    )
                else:
                    raise tornado.web.HTTPError(400)
        except (preferences.PreferenceError, webhooks.WebhookError) as exc:
            self.set_status(400)
            await self.get(error=str(exc))
            return
        if new_webhook is not None:  # redirect after post: a reload cannot add it twice
            remember_new(self, new_webhook.id)
            self.redirect("/settings#webhooks", status=303)
            return
        if ticket:  # redirect after post: a reload cannot make a second token
            showonce.remember(self, ticket)
            self.redirect("/settings#api-tokens", status=303)
            return
        await self.get(saved=action in ("preferences", "clicks"))


CLICK_CHOICES = {"default": None, "on": True, "off": False}
ZONES = sorted(zoneinfo.available_timezones())
MAIL_HASHER = argon2.PasswordHasher()  # argon2id, as `mailping user add` stores passwords


def new_mail_password() -> str:
    """A password for the user's mail client: 20 characters from an unambiguous alphabet,
    about 115 bits; shown once, only its hash is kept."""
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(4))
