"""OAuth 2.0 authorization code with PKCE (RFC 6749 4.1, RFC 7636) for users' own accounts.

The pages send the user to the provider with a one-time `state` and a PKCE challenge, take the
code back, and exchange it (with the verifier) for a refresh token; the relay later turns that
refresh token into short-lived access tokens. The standard library and Tornado's HTTP client
are enough for these four requests (msal and google-auth would add two dependency trees for
the same few form posts), and the same code then serves both providers and the test's own
authorization server.

Scopes ask for sending only: Microsoft's SMTP.Send, Google's gmail.send; plus openid/email so
the connected mailbox's address is known (from the ID token the token endpoint returns over
TLS: OpenID Connect Core 3.1.3.7 lets a client that got it straight from there skip the
signature check).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import urllib.parse
from dataclasses import dataclass, field

import tornado.httpclient

from pixelserver.config import ConnectConfig

MICROSOFT_SCOPE = "https://outlook.office.com/SMTP.Send offline_access openid email"
GOOGLE_SCOPE = "https://www.googleapis.com/auth/gmail.send openid email"
LABELS = {"microsoft": "Microsoft 365", "google": "Google"}


@dataclass(frozen=True)
class Provider:
    name: str  # "microsoft" | "google"
    authorize_url: str
    token_url: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    scope: str = ""
    revoke_url: str = ""
    extra: tuple[tuple[str, str], ...] = ()  # more authorize parameters

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)


def providers(cfg: ConnectConfig, secrets_: dict[str, str]) -> dict[str, Provider]:
    """The providers [connect] offers; `secrets_` maps provider name to its client secret."""
    out: dict[str, Provider] = {}
    if cfg.microsoft_client_id:
        base = f"{cfg.microsoft_login_url.rstrip('/')}/{cfg.microsoft_tenant}/oauth2/v2.0"
        out["microsoft"] = Provider(
            "microsoft",
            f"{base}/authorize",
            f"{base}/token",
            cfg.microsoft_client_id,
            secrets_.get("microsoft", ""),
            MICROSOFT_SCOPE,
            extra=(("prompt", "select_account"),),
        )
    if cfg.google_client_id:
        out["google"] = Provider(
            "google",
            cfg.google_authorize_url,
            cfg.google_token_url,
            cfg.google_client_id,
            secrets_.get("google", ""),
            GOOGLE_SCOPE,
            revoke_url=cfg.google_revoke_url,
            # offline: a refresh token; consent: a new one even if the user connected before.
            extra=(("access_type", "offline"), ("prompt", "consent")),
        )
    return out


class GrantRefused(Exception):
    """The provider said no (invalid_grant: revoked, expired, password changed)."""

    def __init__(self, error: str, words: str) -> None:
        super().__init__(words)
        self.error = error


class ProviderUnavailable(Exception):
    """No answer, or not one that can be read: try again later; the grant may still be good."""


@dataclass(frozen=True)
class Grant:
    access_token: str = field(repr=False)
    expires_in: float
    refresh_token: str = field(default="", repr=False)  # empty: keep the one we have
    scope: str = ""
    email: str = ""  # the mailbox, from the ID token


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(
    provider: Provider, redirect_uri: str, state: str, challenge: str, login_hint: str = ""
) -> str:
    params = [
        ("client_id", provider.client_id),
        ("response_type", "code"),
        ("redirect_uri", redirect_uri),
        ("scope", provider.scope),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        *provider.extra,
    ]
    if login_hint:
        params.append(("login_hint", login_hint))
    sep = "&" if "?" in provider.authorize_url else "?"
    return provider.authorize_url + sep + urllib.parse.urlencode(params)


async def exchange_code(
    provider: Provider, code: str, verifier: str, redirect_uri: str, timeout: float = 30
) -> Grant:
    return await _token_request(
        provider,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
        timeout,
    )


async def refresh(provider: Provider, refresh_token: str, timeout: float = 30) -> Grant:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if provider.name == "microsoft":
        form["scope"] = provider.scope
    return await _token_request(provider, form, timeout)


async def revoke(provider: Provider, token: str, timeout: float = 30) -> bool:
    """Revoke at the provider where it offers that (Google); True if it confirmed.

    Microsoft has no endpoint for one refresh token: forgetting it here is what ends it for
    MailPing (the user can remove the app under My Apps)."""
    if not provider.revoke_url:
        return False
    request = tornado.httpclient.HTTPRequest(
        provider.revoke_url,
        method="POST",
        body=urllib.parse.urlencode({"token": token}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        request_timeout=timeout,
    )
    response = await tornado.httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
    return response.code == 200


async def _token_request(provider: Provider, form: dict[str, str], timeout: float) -> Grant:
    form = {**form, "client_id": provider.client_id}
    if provider.client_secret:
        form["client_secret"] = provider.client_secret
    request = tornado.httpclient.HTTPRequest(
        provider.token_url,
        method="POST",
        body=urllib.parse.urlencode(form),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
        request_timeout=timeout,
        connect_timeout=timeout,
        follow_redirects=False,
    )
    host = urllib.parse.urlsplit(provider.token_url).netloc
    try:
        response = await tornado.httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
    except OSError as exc:
        raise ProviderUnavailable(f"could not reach {host}: {exc}") from None
    if response.code == 599:
        raise ProviderUnavailable(f"could not reach {host}: {response.error}")
    try:
        body = json.loads(response.body or b"")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ProviderUnavailable(f"{host} answered HTTP {response.code}")
    if response.code != 200 or "error" in body:
        error = " ".join(str(body.get("error", f"HTTP {response.code}")).split())[:60]
        detail = " ".join(str(body.get("error_description", "")).split())[:160]
        words = f"{LABELS.get(provider.name, host)} refused: {error}"
        words += f" ({detail})" if detail else ""
        if response.code >= 500:
            raise ProviderUnavailable(words)
        raise GrantRefused(error, words)
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise ProviderUnavailable(f"{host} answered without an access_token")
    try:
        expires = float(body.get("expires_in", 3600))
    except (TypeError, ValueError):
        expires = 3600.0
    refresh_token = body.get("refresh_token")
    return Grant(
        access_token=token,
        expires_in=expires if expires > 0 else 3600.0,
        refresh_token=refresh_token if isinstance(refresh_token, str) else "",
        scope=str(body.get("scope", "")),
        email=_id_token_email(body.get("id_token")),
    )


def _id_token_email(id_token: object) -> str:
    """The mailbox the user signed in with, from the ID token's claims (email, or Microsoft's
    preferred_username); "" when there is none."""
    if not isinstance(id_token, str) or id_token.count(".") != 2:
        return ""
    payload = id_token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return ""
    if not isinstance(claims, dict):
        return ""
    for key in ("email", "preferred_username", "upn"):
        value = claims.get(key)
        if isinstance(value, str) and "@" in value:
            return value.strip().lower()
    return ""
