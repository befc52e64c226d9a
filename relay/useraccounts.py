"""Forwarding as each user, through the account they connected in Settings.

With relay.auth = "local", a user who connected Microsoft 365 has their mail sent to
Microsoft's SMTP submission server with XOAUTH2 as their own mailbox; one who connected Google
through the Gmail API (relay/gmailapi.py). Their access tokens come from their refresh token
(kept sealed in the store, opened only here, in memory), are cached until shortly before they
expire and never written anywhere.

A refresh token that stops working (password changed, consent revoked by the user or an
administrator) marks the connection broken: Settings shows it, and the user's copies wait in
the queue with that reason until they connect again (or expire with a report). Users without
a connection go through the relay's own upstream as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import oauthcode
from pixelserver.config import ConnectConfig
from pixelserver.store import mailaccounts
from pixelserver.store.mailaccounts import BROKEN, Connection, Sealer, SealError
from relay.forward import DEFERRED, Copy, OAuthLogin, Outcome, Render, SmtpUpstream, Upstream
from relay.gmailapi import GmailApiUpstream
from relay.oauth import RENEW_MARGIN, TokenError
from relay.pace import Pacer, limit_for
from relay.queue import Route
from relay.tracking import STORE_ERRORS

log = logging.getLogger("mailping.useraccounts")

RECONNECT = "connect it again in MailPing's Settings"


def broken_words(provider: str, problem: str) -> str:
    label = oauthcode.LABELS.get(provider, provider)
    return f"your {label} account stopped working for MailPing ({problem}): {RECONNECT}"


class UserTokens:
    """One connected user's access tokens, from their sealed refresh token."""

    def __init__(
        self,
        user: str,
        provider: oauthcode.Provider,
        sessions: async_sessionmaker[AsyncSession],
        sealer: Sealer,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.user = user
        self.provider = provider
        self.sessions = sessions
        self.sealer = sealer
        self.clock = clock
        self.refreshes = 0
        self._token = ""
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token and self.clock() < self._renew_at:
                return self._token
            return await self._refresh()

    def invalidate(self, token: str) -> None:
        if token == self._token:
            self._token, self._renew_at = "", 0.0

    async def _refresh(self) -> str:
        label = self.provider.label
        try:
            async with self.sessions() as session:
                found = await mailaccounts.connection(session, self.user)
        except STORE_ERRORS:
            raise TokenError("the store is unreachable; the connected account waits") from None
        if found is None or found.provider != self.provider.name:
            raise TokenError(f"your {label} account is no longer connected: {RECONNECT}")
        if found.status == BROKEN:
            raise TokenError(broken_words(found.provider, found.problem))
        try:
            refresh_token = self.sealer.open(found.sealed_refresh_token)
        except SealError as exc:
            await self._broken(str(exc))
            raise TokenError(broken_words(found.provider, str(exc))) from None
        now = self.clock()
        try:
            grant = await oauthcode.refresh(self.provider, refresh_token)
        except oauthcode.GrantRefused as exc:
            await self._broken(str(exc))
            raise TokenError(broken_words(found.provider, str(exc))) from None
        except oauthcode.ProviderUnavailable as exc:
            raise TokenError(f"{label}: {exc}") from None
        # A new refresh token (rotation), or the old one sealed with an older key: seal again.
        rotated = grant.refresh_token and grant.refresh_token != refresh_token
        if not rotated and not self.sealer.current(found.sealed_refresh_token):
            grant = dataclasses.replace(grant, refresh_token=refresh_token)
            rotated = True
        try:
            async with self.sessions.begin() as session:
                await mailaccounts.refreshed(
                    session, self.user, self.sealer.seal(grant.refresh_token) if rotated else None
                )
        except STORE_ERRORS:
            log.warning("user %s: could not record a renewed %s token", self.user, label)
        self.refreshes += 1
        self._token = grant.access_token
        self._renew_at = now + grant.expires_in - min(RENEW_MARGIN, grant.expires_in / 5)
        return self._token

    async def _broken(self, problem: str) -> None:
        log.warning("user %s: %s account broken: %s", self.user, self.provider.label, problem)
        try:
            async with self.sessions.begin() as session:
                await mailaccounts.broken(session, self.user, problem)
        except STORE_ERRORS:
            pass  # the next try finds out again


@dataclass
class Waiting:
    """An upstream that keeps every copy queued with one reason (a broken connection, the
    store away): nothing is sent through the relay's own account instead."""

    reason: str

    def describe(self) -> str:
        return "waiting"

    async def send(
        self, sender: str, copies: Sequence[Copy], render: Render, **kw: Any
    ) -> list[Outcome]:
        on_outcome = kw.get("on_outcome")
        outcomes = []
        for c in copies:
            outcome = Outcome(c, DEFERRED, 451, self.reason)
            outcomes.append(outcome)
            if on_outcome is not None:
                await on_outcome(outcome)
        return outcomes


class UserRoutes:
    """Which upstream a user's mail leaves through (queue.route)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        connect: ConnectConfig,
        providers: dict[str, oauthcode.Provider],
        sealer: Sealer,
        *,
        timeout: float = 60,
        local_hostname: str | None = None,
        share: int = 1,
    ) -> None:
        self.sessions = sessions
        self.connect = connect
        self.providers = providers
        self.sealer = sealer
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._upstreams: dict[tuple[str, str, str], Upstream] = {}
        # Microsoft paces submissions per mailbox (30 a minute); the Gmail API counts per day.
        self.pacers = {
            "microsoft": Pacer(limit_for(connect.microsoft_smtp_host, 0), share=share),
            "google": Pacer(0),
        }

    async def connection(self, user: str) -> Connection | None:
        async with self.sessions() as session:
            return await mailaccounts.connection(session, user)

    async def kind(self, user: str) -> str | None:
        """The provider of the user's connection (for the Sent guard and the Gmail API's
        one-send rule at submission), None without one."""
        try:
            found = await self.connection(user)
        except STORE_ERRORS:
            return None
        return found.provider if found is not None else None

    async def __call__(self, user: str) -> Route | None:
        try:
            found = await self.connection(user)
        except STORE_ERRORS:
            return self._waiting(user, "the store is unreachable: which account sends is unknown")
        if found is None:
            return None
        if found.provider not in self.providers:
            return self._waiting(user, f"{found.provider} accounts are no longer offered here")
        if found.status == BROKEN:
            return self._waiting(user, broken_words(found.provider, found.problem))
        key = (found.user, found.provider, found.address)
        if key not in self._upstreams:
            self._upstreams[key] = self._make(found)
        return Route(self._upstreams[key], found.address, self.pacers[found.provider])

    def _waiting(self, user: str, reason: str) -> Route:
        return Route(Waiting(reason), user, self.pacers["google"])

    def _make(self, found: Connection) -> Upstream:
        provider = self.providers[found.provider]
        tokens = UserTokens(found.user, provider, self.sessions, self.sealer)
        if found.provider == "google":
            return GmailApiUpstream(
                self.connect.gmail_api_url, tokens, address=found.address, timeout=self.timeout
            )
        c = self.connect
        return SmtpUpstream(
            c.microsoft_smtp_host,
            c.microsoft_smtp_port,
            c.microsoft_smtp_tls,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
            oauth=OAuthLogin(found.address, tokens),
        )
