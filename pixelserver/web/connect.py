"""Settings: "Connect your Microsoft 365 account" / "Connect your Google account".

The authorization-code flow with PKCE: /settings/connect/<provider> remembers a one-time
state and the PKCE verifier in a short-lived signed cookie (HttpOnly, SameSite=Lax so it comes
back with the provider's redirect) and sends the user to the provider; the provider sends
them back to /settings/connect/callback with a code, which is exchanged (with the verifier)
for a refresh token. That token is sealed (pixelserver/store/mailaccounts.py) before it
reaches the store; the access token that comes with it is dropped.

A plain link starts the flow (not a form): the page's CSP allows forms to post only to this
site, and a browser applies that to the redirect after a post too. Starting a flow changes
nothing; only a callback that brings back this browser's own state does.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import urllib.parse
from dataclasses import dataclass

import tornado.web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import oauthcode
from pixelserver.store import mailaccounts
from pixelserver.store.mailaccounts import Sealer, SealError
from pixelserver.web.base import BasePage

log = logging.getLogger("mailping.web.connect")

FLOW_COOKIE = "mp_oauth"
FLOW_MINUTES = 10
CALLBACK_PATH = "/settings/connect/callback"


@dataclass(frozen=True)
class Connector:
    """What the pages need to connect accounts: the providers offered, the sealing key, and
    where the provider sends the user back."""

    providers: dict[str, oauthcode.Provider]
    sealer: Sealer
    public_url: str

    @property
    def redirect_uri(self) -> str:
        return self.public_url.rstrip("/") + CALLBACK_PATH


class _ConnectPage(BasePage):
    @property
    def connector(self) -> Connector:
        connector = self.extra.get("connector")
        if not isinstance(connector, Connector) or self.user is None:
            raise tornado.web.HTTPError(404)
        return connector


class ConnectStart(_ConnectPage):
    """GET /settings/connect/(microsoft|google): off to the provider."""

    def get(self, name: str) -> None:
        provider = self.connector.providers.get(name)
        if provider is None:
            raise tornado.web.HTTPError(404)
        state = secrets.token_urlsafe(24)
        verifier, challenge = oauthcode.pkce_pair()
        flow = json.dumps({"p": name, "s": state, "v": verifier, "u": self.user})
        self.set_signed_cookie(
            FLOW_COOKIE,
            flow,
            expires_days=FLOW_MINUTES / 1440,
            httponly=True,
            samesite="Lax",
            secure=self.auth.secure_cookies,
            path="/settings/connect",
        )
        url = oauthcode.authorize_url(
            provider, self.connector.redirect_uri, state, challenge, login_hint=self.user or ""
        )
        self.redirect(url)


class ConnectCallback(_ConnectPage):
    """GET /settings/connect/callback?code=…&state=…: the provider's answer."""

    async def get(self) -> None:
        connector = self.connector
        raw = self.get_signed_cookie(FLOW_COOKIE, max_age_days=FLOW_MINUTES / 1440)
        self.clear_cookie(FLOW_COOKIE, path="/settings/connect")
        try:
            flow = json.loads(raw) if raw else {}
        except ValueError:
            flow = {}
        state = self.get_query_argument("state", "")
        if not flow or not hmac.compare_digest(str(flow.get("s", "")), state):
            return self._back(
                error="That sign-in was not started here (or took too long): try again."
            )
        if flow.get("u") != self.user:
            return self._back(error="That sign-in was started by another MailPing user.")
        provider = connector.providers.get(str(flow.get("p")))
        if provider is None:
            raise tornado.web.HTTPError(404)
        if self.get_query_argument("error", ""):
            words = self.get_query_argument("error_description", "") or self.get_query_argument(
                "error"
            )
            return self._back(error=f"{provider.label} did not connect: {words[:200]}")
        code = self.get_query_argument("code", "")
        if not code:
            return self._back(error=f"{provider.label} sent no authorization code: try again.")
        try:
            grant = await oauthcode.exchange_code(
                provider, code, str(flow.get("v", "")), connector.redirect_uri
            )
        except (oauthcode.GrantRefused, oauthcode.ProviderUnavailable) as exc:
            log.warning("connecting %s for %s failed: %s", provider.label, self.user, exc)
            return self._back(error=f"Could not connect: {exc}")
        if not grant.refresh_token:
            return self._back(
                error=f"{provider.label} gave no refresh token, so MailPing could send only for "
                "an hour: remove MailPing's access in your account settings and connect again."
            )
        address = grant.email or self.user or ""
        if "@" in (self.user or "") and address != (self.user or "").lower():
            # MailPing lets each login send only as its own address; a mailbox under another
            # address would have its provider refuse every message (or send as someone else).
            return self._back(
                error=f"You signed in to {provider.label} as {address}, but your MailPing login "
                f"is {self.user}: connect the account of {self.user}."
            )
        try:
            async with self.sessions.begin() as session:
                await mailaccounts.connect(
                    session,
                    self.user or "",
                    provider.name,
                    address,
                    connector.sealer.seal(grant.refresh_token),
                    grant.scope,
                )
        except SQLAlchemyError:
            log.warning("cannot store a connected account: the store is unreachable")
            raise tornado.web.HTTPError(503) from None
        log.info("user %s connected %s (%s)", self.user, provider.label, address)
        self._back(connected=provider.name)

    def _back(self, *, error: str = "", connected: str = "") -> None:
        query = {"connect_error": error} if error else {"connected": connected}
        self.redirect("/settings?" + urllib.parse.urlencode(query))


async def disconnect(
    connector: Connector,
    sessions: async_sessionmaker[AsyncSession],
    user: str,
) -> str:
    """Forget the user's connection; revoke it at the provider where that is possible.
    Returns words for the page."""
    async with sessions.begin() as session:
        found = await mailaccounts.disconnect(session, user)
    if found is None:
        return "No account was connected."
    provider = connector.providers.get(found.provider)
    label = oauthcode.LABELS.get(found.provider, found.provider)
    if provider is not None and provider.revoke_url:
        try:
            token = connector.sealer.open(found.sealed_refresh_token)
            revoked = await oauthcode.revoke(provider, token)
        except (SealError, OSError):
            revoked = False
        if revoked:
            return f"Disconnected: {label} has revoked MailPing's access."
    return (
        f"Disconnected: MailPing has forgotten its {label} token. You can also remove MailPing "
        "under your account's app permissions."
    )
