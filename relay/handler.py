"""The aiosmtpd handler: who may relay, and SMTP in/out translation around `Relay.submit`.

Handlers translate, they do not work: DATA is parsed into a Submission, handed to the domain
code, and its outcomes become one reply (relay/replies.py).
"""

from __future__ import annotations

import asyncio
import logging
from base64 import b64decode

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from pixelserver.store.throttle import LoginThrottle, TooManyAttempts
from relay import replies
from relay.auth import Authenticator, SenderPolicy, SenderRefused
from relay.forward import Credentials
from relay.rewrite import needs_smtputf8
from relay.submit import Relay, Submission

log = logging.getLogger("mailping.handler")


def _refused(reply: str) -> AuthResult:
    # handled=False: aiosmtpd is to send `reply` (handled=True means we already answered).
    return AuthResult(success=False, handled=False, message=reply)


def _client_ip(server: SMTP) -> str:
    """The client's address, as told by a PROXY header when the relay is behind a balancer."""
    ip = getattr(server, "client_ip", None)
    if ip is not None:
        return str(ip)
    peer = server.session.peer if server.session else None
    return str(peer[0]) if isinstance(peer, tuple) else ""


def _login(session: Session) -> Credentials | None:
    return session.auth_data if isinstance(session.auth_data, Credentials) else None


class RelayHandler:
    def __init__(
        self,
        relay: Relay,
        *,
        authenticator: Authenticator | None,
        in_flight: int,
        sender_policy: SenderPolicy | None = None,
        max_recipients: int = 100,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.relay = relay
        self.authenticator = authenticator
        self.sender_policy = sender_policy
        self.max_recipients = max_recipients
        self.in_flight = asyncio.Semaphore(in_flight)
        self.throttle = throttle or LoginThrottle(None)  # None: counted in this process only

    @property
    def needs_login(self) -> bool:
        # (Not named auth_*: aiosmtpd takes every auth_* attribute of a handler for a mechanism.)
        return self.authenticator is not None

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # aiosmtpd reads commands from a stream, so pipelined commands simply wait their turn.
        session.host_name = hostname
        if not self.needs_login:  # aiosmtpd would still offer an empty "AUTH" line
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list
    ) -> str:
        creds = _login(session)
        if creds is not None and self.sender_policy is not None:
            try:
                self.sender_policy.check_envelope(creds.username, address)
            except SenderRefused as exc:
                return replies.sender_refused(exc.login, exc.address, exc.where)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list
    ) -> str:
        if self.needs_login and not session.authenticated:
            return replies.AUTH_REQUIRED
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        creds = _login(session)
        if creds is not None and self.sender_policy is not None:
            try:
                self.sender_policy.check_header(creds.username, envelope.original_content or b"")
            except SenderRefused as exc:
                return replies.sender_refused(exc.login, exc.address, exc.where)
        forward_with = (
            creds if self.authenticator and self.authenticator.forwards_credentials else None
        )
        sub = Submission(
            user=creds.username if creds else (envelope.mail_from or "anonymous"),
            sender=envelope.mail_from or "",
            recipients=list(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            smtputf8=needs_smtputf8(
                envelope.mail_from,
                envelope.rcpt_tos,
                envelope.original_content or b"",
                declared=bool(envelope.smtp_utf8),
            ),
            eight_bit="BODY=8BITMIME" in (o.upper() for o in envelope.mail_options),
            credentials=forward_with,
            client_ip=_client_ip(server),
        )
        async with self.in_flight:
            receipt = await self.relay.submit(sub)
        session.mailping_unheard = receipt.claim  # type: ignore[attr-defined]
        return receipt.reply

    async def reply_heard(self, session: Session) -> None:
        """The client sent another command, so it heard the reply to its last message."""
        claim = getattr(session, "mailping_unheard", None)
        if claim is not None:
            session.mailping_unheard = None  # type: ignore[attr-defined]
            await self.relay.forget_claim(claim)

    async def handle_exception(self, error: Exception) -> str:
        # The default reply would show the exception text to the client.
        log.exception("unexpected error while handling a client", exc_info=error)
        return replies.INTERNAL_ERROR

    # AUTH: aiosmtpd awaits handler-defined auth_* methods, so a login can be checked against
    # the upstream server or the store without blocking the loop.

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        try:
            _authz, login, password = blob.split(b"\x00")
        except ValueError:
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth(SMTP.AuthLoginUsernameChallenge)
        else:
            try:
                login = b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        if login is MISSING:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(SMTP.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, password)

    async def _check(self, server: SMTP, login: bytes, password: bytes) -> AuthResult:
        if self.authenticator is None:
            return _refused(replies.AUTH_INVALID)
        creds = Credentials(login.decode("utf-8", "replace"), password.decode("utf-8", "replace"))
        try:
            attempt = await self.throttle.attempt(creds.username, _client_ip(server))
        except TooManyAttempts:
            return _refused(replies.AUTH_TOO_MANY)
        try:
            ok = await self.authenticator.check(creds)
        except Exception:  # any transport failure: the login could not be checked
            log.warning("could not check a login against the upstream server", exc_info=True)
            await self.throttle.not_checked(attempt)
            return _refused(replies.AUTH_UNAVAILABLE)
        if not ok:
            # Slow down guessing: each failure for this user costs it more time.
            await asyncio.sleep(min(0.2 * attempt.user_attempts, 2.0))
            return _refused(replies.AUTH_INVALID)
        await self.throttle.succeeded(attempt)
        return AuthResult(success=True, auth_data=creds, message=replies.AUTH_OK)
