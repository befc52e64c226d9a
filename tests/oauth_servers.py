"""Real stand-ins for a provider's OAuth 2.0 parts, started on loopback ports by the tests.

- TokenEndpoint: an HTTP token endpoint (tornado) issuing expiring bearer tokens for the
  client-credentials grant (client secret in the form body or in HTTP Basic).
- OAuthSmtp: an aiosmtpd submission server that advertises and accepts only XOAUTH2 and
  OAUTHBEARER, with tokens its TokenEndpoint issued and that have not expired; anything else
  gets Google's style of refusal (a 334 JSON challenge, then 535).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import tornado.httpserver
import tornado.web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.conftest import Captured, LenientSMTP, free_port


@dataclass
class Issued:
    user_hint: str
    expires: float


@dataclass
class TokenEndpoint:
    port: int
    clients: dict[str, str]  # client_id -> secret
    lifetime: float = 3600.0
    scope: str = "https://outlook.office365.com/.default"
    tokens: dict[str, Issued] = field(default_factory=dict)
    grants: int = 0
    requests: int = 0
    basic_only: bool = False  # refuse secrets in the form body (RFC 6749's MUST is Basic)
    certificates: dict[str, x509.Certificate] = field(default_factory=dict)  # client_id -> cert

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth2/v2.0/token"

    def valid(self, token: str) -> bool:
        issued = self.tokens.get(token)
        return issued is not None and issued.expires > time.time()

    def revoke_all(self) -> None:
        self.tokens.clear()


class _TokenHandler(tornado.web.RequestHandler):
    def initialize(self, endpoint: TokenEndpoint) -> None:
        self.endpoint = endpoint

    def _error(self, status: int, error: str, description: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": error, "error_description": description}))

    def post(self) -> None:
        ep = self.endpoint
        ep.requests += 1
        form = urllib.parse.parse_qs(self.request.body.decode())
        one = {k: v[0] for k, v in form.items()}
        client_id, secret = one.get("client_id"), one.get("client_secret")
        auth = self.request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            pair = base64.b64decode(auth[6:]).decode()
            cid, _, sec = pair.partition(":")
            client_id, secret = urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(sec)
        elif ep.basic_only:
            secret = None
        if one.get("grant_type") != "client_credentials":
            return self._error(400, "unsupported_grant_type", "only client_credentials here")
        if "client_assertion" in one:
            problem = _assertion_problem(ep, client_id or "", one["client_assertion"], self)
            if problem:
                return self._error(401, "invalid_client", problem)
        elif client_id not in ep.clients or ep.clients[client_id] != secret:
            return self._error(401, "invalid_client", "AADSTS7000215: Invalid client secret.")
        if one.get("scope") != ep.scope:
            return self._error(400, "invalid_scope", f"scope must be {ep.scope}")
        token = "eyJ" + secrets.token_urlsafe(40)
        ep.tokens[token] = Issued(client_id, time.time() + ep.lifetime)
        ep.grants += 1
        self.set_header("Content-Type", "application/json")
        self.finish(
            {
                "token_type": "Bearer",
                "expires_in": int(ep.lifetime) if ep.lifetime >= 1 else ep.lifetime,
                "access_token": token,
            }
        )


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _assertion_problem(
    ep: TokenEndpoint, client_id: str, assertion: str, handler: tornado.web.RequestHandler
) -> str:
    """What is wrong with a client assertion (RFC 7523), or "" if it is good."""
    cert = ep.certificates.get(client_id)
    if cert is None:
        return "no certificate registered for this client"
    try:
        head, body, sig = assertion.split(".")
        header = json.loads(_b64url_decode(head))
        claims = json.loads(_b64url_decode(body))
        public = cert.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(
            _b64url_decode(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except (ValueError, InvalidSignature):
        return "AADSTS700027: signature verification failed"
    thumb = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).rstrip(b"=").decode()
    if header.get("x5t#S256") != thumb:
        return "unknown certificate thumbprint"
    if claims.get("aud") != ep.url or claims.get("iss") != client_id != claims.get("sub"):
        return "wrong audience or issuer"
    if not claims.get("exp", 0) > time.time():
        return "assertion expired"
    return ""


@contextlib.asynccontextmanager
async def token_endpoint(clients: dict[str, str], **kw: object) -> AsyncIterator[TokenEndpoint]:
    ep = TokenEndpoint(port=free_port(), clients=clients, **kw)  # type: ignore[arg-type]
    app = tornado.web.Application([(r"/oauth2/v2.0/token", _TokenHandler, {"endpoint": ep})])
    server = tornado.httpserver.HTTPServer(app)
    server.listen(ep.port, "127.0.0.1")
    try:
        yield ep
    finally:
        server.stop()
        await server.close_all_connections()


@dataclass
class OAuthSmtp:
    """Accepts mail only after XOAUTH2/OAUTHBEARER with a live token for `mailbox`."""

    port: int
    tokens: TokenEndpoint | AuthServer
    mailbox: str  # "": each token's own owner (users' accounts)
    messages: list[Captured] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)  # "ok" / "refused", in order
    seen_tokens: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(
            Captured(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
                session.auth_data if isinstance(session.auth_data, str) else None,
            )
        )
        return "250 2.0.0 OK queued"

    async def _check(self, server: SMTP, user: str, token: str) -> AuthResult:
        self.seen_tokens.append(token)
        owner = self.mailbox or (
            self.tokens.owner(token) if isinstance(self.tokens, AuthServer) else ""
        )
        if user and user == owner and self.tokens.valid(token):
            self.logins.append("ok")
            return AuthResult(success=True, auth_data=user, message=None)
        self.logins.append("refused")
        # Google's and Microsoft's way: a JSON challenge, the client answers empty, then 535.
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "SMTP.Send"})
        await server.challenge_auth(error.encode())
        await server.push("535 5.7.3 Authentication unsuccessful")
        return AuthResult(success=False, handled=True)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        blob = args[1] if len(args) > 1 else ""
        if not blob:
            got = await server.challenge_auth("", encode_to_b64=False)
            blob = got.decode() if isinstance(got, bytes) else ""
            raw = got if isinstance(got, bytes) else b""
        else:
            try:
                raw = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                return AuthResult(success=False, message="501 5.5.2 Cannot decode")
        fields = dict(
            part.split("=", 1)
            for part in raw.decode("utf-8", "replace").split("\x01")
            if "=" in part
        )
        bearer = fields.get("auth", "")
        token = bearer[7:] if bearer.startswith("Bearer ") else ""
        return await self._check(server, fields.get("user", ""), token)

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 7628: n,a=user,^Aauth=Bearer token^A^A."""
        try:
            raw = base64.b64decode(args[1] if len(args) > 1 else "", validate=True).decode()
        except (binascii.Error, ValueError):
            return AuthResult(success=False, message="501 5.5.2 Cannot decode")
        gs2, _, rest = raw.partition("\x01")
        user = next((p[2:] for p in gs2.split(",") if p.startswith("a=")), "")
        fields = dict(part.split("=", 1) for part in rest.split("\x01") if "=" in part)
        bearer = fields.get("auth", "")
        return await self._check(server, user, bearer[7:] if bearer.startswith("Bearer ") else "")


@contextlib.asynccontextmanager
async def oauth_smtp(
    tokens: TokenEndpoint | AuthServer, mailbox: str = ""
) -> AsyncIterator[OAuthSmtp]:
    up = OAuthSmtp(port=free_port(), tokens=tokens, mailbox=mailbox)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: LenientSMTP(
            up,
            decode_data=False,
            hostname="oauth-upstream.test",
            auth_require_tls=False,
            auth_exclude_mechanism=["PLAIN", "LOGIN"],
        ),
        "127.0.0.1",
        up.port,
    )
    try:
        yield up
    finally:
        server.close()
        await server.wait_closed()


# --- users' own accounts: authorization code with PKCE, refresh, revoke; the Gmail API -------


@dataclass
class Granted:
    email: str
    scope: str
    expires: float = 0.0


@dataclass
class AuthServer:
    """An authorization server for users' accounts (both providers' shapes: Microsoft's
    /{tenant}/oauth2/v2.0/{authorize,token}, Google's /google/{authorize,token,revoke}).
    The authorize step signs in `signed_in` (else the login_hint) and consents at once."""

    port: int
    clients: dict[str, str]  # client_id -> secret ("" for a public client)
    lifetime: float = 3600.0
    rotate: bool = True  # a new refresh token with each refresh (Microsoft does)
    signed_in: str = ""
    codes: dict[str, dict] = field(default_factory=dict)
    access: dict[str, Granted] = field(default_factory=dict)
    refresh: dict[str, Granted] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)
    refreshes: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def valid(self, token: str) -> bool:
        g = self.access.get(token)
        return g is not None and g.expires > time.time()

    def owner(self, token: str) -> str:
        g = self.access.get(token)
        return g.email if g else ""

    def revoke_everything(self) -> None:
        """The user changed their password: every grant of theirs ends."""
        self.refresh.clear()
        self.access.clear()


class _AuthorizeHandler(tornado.web.RequestHandler):
    def initialize(self, server: AuthServer) -> None:
        self.server = server

    def get(self, _where: str) -> None:
        s = self.server
        q = {
            k: self.get_query_argument(k, "")
            for k in (
                "client_id",
                "redirect_uri",
                "state",
                "code_challenge",
                "code_challenge_method",
                "scope",
                "login_hint",
                "response_type",
            )
        }
        if q["client_id"] not in s.clients or q["response_type"] != "code":
            raise tornado.web.HTTPError(400)
        if q["code_challenge_method"] != "S256" or not q["code_challenge"]:
            raise tornado.web.HTTPError(400, "PKCE required")
        code = secrets.token_urlsafe(16)
        s.codes[code] = {**q, "email": s.signed_in or q["login_hint"]}
        sep = "&" if "?" in q["redirect_uri"] else "?"
        query = urllib.parse.urlencode({"code": code, "state": q["state"]})
        self.redirect(q["redirect_uri"] + sep + query)


def _id_token(email: str) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return part({"alg": "none"}) + "." + part({"email": email, "preferred_username": email}) + ".x"


class _UserTokenHandler(tornado.web.RequestHandler):
    def initialize(self, server: AuthServer) -> None:
        self.server = server

    def _error(self, status: int, error: str, description: str) -> None:
        self.set_status(status)
        self.finish({"error": error, "error_description": description})

    def _issue(self, email: str, scope: str, refresh: str | None) -> None:
        s = self.server
        token = "at-" + secrets.token_urlsafe(24)
        s.access[token] = Granted(email, scope, time.time() + s.lifetime)
        body = {
            "token_type": "Bearer",
            "access_token": token,
            "expires_in": s.lifetime,
            "scope": scope,
            "id_token": _id_token(email),
        }
        if refresh:
            s.refresh[refresh] = Granted(email, scope)
            body["refresh_token"] = refresh
        self.finish(body)

    def post(self, _where: str) -> None:
        s = self.server
        f = {k: v[0] for k, v in urllib.parse.parse_qs(self.request.body.decode()).items()}
        cid = f.get("client_id", "")
        if cid not in s.clients or s.clients[cid] != f.get("client_secret", ""):
            return self._error(401, "invalid_client", "unknown client or wrong secret")
        if f.get("grant_type") == "authorization_code":
            c = s.codes.pop(f.get("code", ""), None)
            if c is None or c["redirect_uri"] != f.get("redirect_uri"):
                return self._error(400, "invalid_grant", "unknown code or redirect_uri")
            digest = hashlib.sha256(f.get("code_verifier", "").encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != c["code_challenge"]:
                return self._error(400, "invalid_grant", "PKCE verification failed")
            return self._issue(c["email"], c["scope"], "rt-" + secrets.token_urlsafe(24))
        if f.get("grant_type") == "refresh_token":
            old = f.get("refresh_token", "")
            g = s.refresh.get(old)
            if g is None:
                return self._error(
                    400,
                    "invalid_grant",
                    "AADSTS50173: The provided grant has expired due to "
                    "it being revoked, a fresh auth token is needed.",
                )
            s.refreshes += 1
            new = None
            if s.rotate:
                del s.refresh[old]
                new = "rt-" + secrets.token_urlsafe(24)
            return self._issue(g.email, g.scope, new)
        return self._error(400, "unsupported_grant_type", "")


class _RevokeHandler(tornado.web.RequestHandler):
    def initialize(self, server: AuthServer) -> None:
        self.server = server

    def post(self) -> None:
        token = urllib.parse.parse_qs(self.request.body.decode()).get("token", [""])[0]
        self.server.revoked.append(token)
        if self.server.refresh.pop(token, None) is None:
            self.set_status(400)
        self.finish({})


@dataclass
class GmailSent:
    owner: str
    raw: bytes


@dataclass
class GmailApi:
    """users.messages.send: a bearer token from `auth` with gmail.send, a base64url raw."""

    auth: AuthServer
    sent: list[GmailSent] = field(default_factory=list)
    refused: int = 0


class _GmailSendHandler(tornado.web.RequestHandler):
    def initialize(self, api: GmailApi) -> None:
        self.api = api

    def post(self) -> None:
        bearer = self.request.headers.get("Authorization", "")
        token = bearer[7:] if bearer.startswith("Bearer ") else ""
        g = self.api.auth.access.get(token)
        if g is None or not self.api.auth.valid(token):
            self.api.refused += 1
            self.set_status(401)
            return self.finish({"error": {"code": 401, "message": "Invalid Credentials"}})
        if "https://www.googleapis.com/auth/gmail.send" not in g.scope.split():
            self.set_status(403)
            return self.finish({"error": {"code": 403, "message": "Insufficient Permission"}})
        try:
            raw = base64.urlsafe_b64decode(json.loads(self.request.body)["raw"])
        except (ValueError, KeyError, binascii.Error):
            self.set_status(400)
            return self.finish({"error": {"code": 400, "message": "Invalid raw"}})
        self.api.sent.append(GmailSent(g.email, raw))
        self.finish({"id": secrets.token_hex(8), "threadId": "t", "labelIds": ["SENT"]})


@contextlib.asynccontextmanager
async def auth_server(clients: dict[str, str], **kw: object) -> AsyncIterator[AuthServer]:
    """The authorization server and, on the same port, the Gmail API stand-in (.gmail)."""
    s = AuthServer(port=free_port(), clients=clients, **kw)  # type: ignore[arg-type]
    gmail = GmailApi(s)
    app = tornado.web.Application(
        [
            (r"/(.+)/authorize", _AuthorizeHandler, {"server": s}),
            (r"/(.+)/token", _UserTokenHandler, {"server": s}),
            (r"/google/revoke", _RevokeHandler, {"server": s}),
            (r"/gmail/v1/users/me/messages/send", _GmailSendHandler, {"api": gmail}),
        ]
    )
    s.gmail = gmail  # type: ignore[attr-defined]
    server = tornado.httpserver.HTTPServer(app)
    server.listen(s.port, "127.0.0.1")
    try:
        yield s
    finally:
        server.stop()
        await server.close_all_connections()
