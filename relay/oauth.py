"""Access tokens for the relay's own upstream account: the OAuth 2.0 client-credentials grant.

Providers are retiring passwords for SMTP (Microsoft 365 turns basic authentication off); an
app registered with the provider gets a short-lived access token from the token endpoint and
logs in with SASL XOAUTH2 instead. The token is cached in memory only (never written, never
logged in full), renewed shortly before it expires, and renewed once more when the upstream
refuses it (revoked early, clock skew).

Every failure is a TokenError whose text is fit for a 451 reply and a log line: the queue
keeps the copies and tries again later.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import tornado.httpclient

log = logging.getLogger("mailping.oauth")

DEFAULT_LIFETIME = 3600.0  # seconds, when the endpoint does not say (RFC 6749 5.1 recommends)
RENEW_MARGIN = 60.0  # renew this long before expiry (at most a fifth of the lifetime)
REFUSAL_PAUSE = 30.0  # a refused grant is not asked again for this long: no storm of requests
MAX_DETAIL = 160  # characters of an endpoint's error_description kept in a reply


class TokenError(Exception):
    """No token could be had; the message says why in words for the user's report."""


class Tokens(Protocol):
    """Where an upstream login gets its access token (the relay's or a connected user's)."""

    async def token(self) -> str: ...

    def invalidate(self, token: str) -> None: ...


@dataclass(frozen=True)
class ClientCredentials:
    """An app registration: who asks for the token and how it proves it.

    `client_auth`: "body" sends the secret as form fields (what Microsoft and Google
    document), "basic" in an Authorization header (RFC 6749's MUST), "auto" tries the body
    and, if the endpoint says invalid_client, basic once (and keeps whichever worked)."""

    token_url: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    scope: str = ""
    client_auth: str = "auto"
    verify_certificate: bool = True
    ca_file: str = ""
    timeout: float = 30.0
    # A signed client assertion (RFC 7523) instead of a secret: made fresh for each grant.
    assertion: Callable[[], str] | None = field(default=None, repr=False)


def redact(token: str) -> str:
    """How a token may appear in a log line: a fingerprint (to tell two apart), none of it."""
    if not token:
        return "(none)"
    return f"#{hashlib.sha256(token.encode()).hexdigest()[:8]} ({len(token)} chars)"


class TokenSource:
    """One account's current access token, shared by every connection of this process."""

    def __init__(
        self,
        client: ClientCredentials,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.clock = clock
        self.grants = 0  # tokens received (for tests and the log)
        self._token = ""
        self._renew_at = 0.0
        self._refused: tuple[float, str] | None = None
        self._lock = asyncio.Lock()
        self._use_basic = client.client_auth == "basic"

    async def token(self) -> str:
        """A token valid for a while yet; asks the endpoint only when needed (one request at
        a time, however many copies are waiting)."""
        async with self._lock:
            now = self.clock()
            if self._token and now < self._renew_at:
                return self._token
            if self._refused is not None and now < self._refused[0]:
                raise TokenError(self._refused[1])
            try:
                return await self._grant(now)
            except TokenError as exc:
                self._refused = (now + REFUSAL_PAUSE, str(exc))
                log.warning("upstream OAuth: %s", exc)
                raise

    def invalidate(self, token: str) -> None:
        """The upstream refused `token`: the next call gets a new one (unless another copy
        has already replaced it)."""
        if token == self._token:
            self._token = ""
            self._renew_at = 0.0

    async def _grant(self, now: float) -> str:
        basic_first = self._use_basic
        try:
            body = await self._request(basic=basic_first)
        except _Refused as first:
            # "auto": some endpoints take the secret only in the Authorization header (RFC
            # 6749 makes Basic the one every server must support); try that once.
            if self.client.client_auth != "auto" or basic_first or self.client.assertion:
                raise TokenError(str(first)) from None
            try:
                body = await self._request(basic=True)
            except _Refused as second:
                best = first if first.error == "invalid_client" else second
                raise TokenError(str(best)) from None
            self._use_basic = True
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenError("the token endpoint answered without an access_token")
        lifetime = _lifetime(body.get("expires_in"))
        self._token = token
        self._renew_at = now + lifetime - min(RENEW_MARGIN, lifetime / 5)
        self._refused = None
        self.grants += 1
        log.info(
            "upstream OAuth: new access token %s for %s, valid %d s",
            redact(token),
            self.client.client_id,
            lifetime,
        )
        return token

    async def _request(self, *, basic: bool) -> dict:
        c = self.client
        form = {"grant_type": "client_credentials"}
        if c.scope:
            form["scope"] = c.scope
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        if c.assertion is not None:
            form["client_id"] = c.client_id
            form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            form["client_assertion"] = c.assertion()
        elif basic:
            pair = f"{_form_quote(c.client_id)}:{_form_quote(c.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = c.client_id
            form["client_secret"] = c.client_secret
        request = tornado.httpclient.HTTPRequest(
            c.token_url,
            method="POST",
            body=urllib.parse.urlencode(form),
            headers=headers,
            request_timeout=c.timeout,
            connect_timeout=c.timeout,
            validate_cert=c.verify_certificate,
            ca_certs=c.ca_file or None,
            follow_redirects=False,
        )
        host = urllib.parse.urlsplit(c.token_url).netloc
        try:
            response = await tornado.httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, tornado.httpclient.HTTPClientError, ssl.SSLError) as exc:
            raise TokenError(f"could not reach the token endpoint {host}: {exc}") from None
        if response.code == 599:  # tornado's "no HTTP answer" (refused, timeout, TLS)
            why = response.error or "no answer"
            raise TokenError(f"could not reach the token endpoint {host}: {why}")
        try:
            body = json.loads(response.body or b"")
        except ValueError:
            body = None
        if response.code == 200 and isinstance(body, dict):
            return body
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            error = _one_line(body["error"], 60)
            detail = body.get("error_description")
            words = f"the token endpoint refused the client: {error}"
            if isinstance(detail, str) and detail.strip():
                words += f" ({_one_line(detail, MAX_DETAIL)})"
            if response.code in (400, 401):
                raise _Refused(words, error)
            raise TokenError(words)
        words = f"the token endpoint {host} answered HTTP {response.code}"
        if response.code in (400, 401):
            raise _Refused(words, "")
        raise TokenError(words)


class _Refused(Exception):
    """A 400/401 refusal: perhaps only of the way the secret was sent."""

    def __init__(self, words: str, error: str) -> None:
        super().__init__(words)
        self.error = error


def _lifetime(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_LIFETIME
    return seconds if seconds > 0 else DEFAULT_LIFETIME


def _form_quote(value: str) -> str:
    """RFC 6749 2.3.1: id and secret are form-encoded before they go into Basic."""
    return urllib.parse.quote_plus(value)


def _one_line(text: str, limit: int) -> str:
    words = " ".join(text.split())
    return words if len(words) <= limit else words[: limit - 1] + "…"
