"""The aiosmtpd handler: who may relay, and SMTP in/out translation around `Relay.submit`.

Handlers translate, they do not work: DATA is parsed into a Submission, handed to the domain
code, and its outcomes become one reply (relay/replies.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from base64 import b64decode

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from relay import replies
from relay.auth import Authenticator
from relay.forward import Credentials
from relay.rewrite import needs_smtputf8
from relay.submit import Relay, Submission

log = logging.getLogger("mailping.handler")

FAILURE_WINDOW = 600.0  # seconds over which failed logins from one address are counted
FAILURES_BEFORE_LOCKOUT = 5


def _refused(reply: str) -> AuthResult:
    # handled=False: aiosmtpd is to send `reply` (handled=True means we already answered).
    return AuthResult(success=False, handled=False, message=reply)


class RelayHandler:
    def __init__(
        self,
        relay: Relay,
        *,
        authenticator: Authenticator | None,
        in_flight: int,
    ) -> None:
        self.relay = relay
        self.authenticator = authenticator
        self.in_flight = asyncio.Semaphore(in_flight)
        self._failures: dict[str, list[float]] = {}

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

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list
    ) -> str:
        if self.needs_login and not session.authenticated:
            return replies.AUTH_REQUIRED
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        creds = session.auth_data if isinstance(session.auth_data, Credentials) else None
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
            client_ip=str(session.peer[0]) if session.peer else "",
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
        peer = str(server.session.peer[0]) if server.session and server.session.peer else "?"
        now = time.monotonic()
        recent = [t for t in self._failures.get(peer, []) if now - t < FAILURE_WINDOW]
        self._failures[peer] = recent
        if len(recent) >= FAILURES_BEFORE_LOCKOUT:
            return _refused(replies.AUTH_TOO_MANY)
        creds = Credentials(login.decode("utf-8", "replace"), password.decode("utf-8", "replace"))
        try:
            ok = await self.authenticator.check(creds)
        except Exception:  # any transport failure: the login could not be checked
            log.warning("could not check a login against the upstream server", exc_info=True)
            return _refused(replies.AUTH_UNAVAILABLE)
        if not ok:
            recent.append(now)
            # Slow down guessing: each failure from this address costs it more time.
            await asyncio.sleep(min(0.2 * len(recent), 2.0))
            return _refused(replies.AUTH_INVALID)
        self._failures.pop(peer, None)
        return AuthResult(success=True, auth_data=creds, message=replies.AUTH_OK)
