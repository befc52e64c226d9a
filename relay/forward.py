"""Sending copies upstream, one outcome per recipient.

Transport failures never escape as exceptions: each copy ends as `accepted`, `rejected` (the
upstream said 5xx) or `deferred` (4xx, or it could not be reached), with the words to tell the
user. One connection is reused for all copies of a message and re-opened once if it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import aiosmtplib

from pixelserver.vocabulary import Outcome as StoreOutcome
from relay.oauth import TokenError, Tokens
from relay.smtpdata import END, smtp_data

log = logging.getLogger("mailping.forward")

ACCEPTED, REJECTED, DEFERRED = StoreOutcome.ACCEPTED, StoreOutcome.REJECTED, StoreOutcome.DEFERRED


class CopyKind(StrEnum):
    """What a copy is: its outcome goes to a different record for each."""

    DELIVERY = "delivery"  # a recipient's copy of a spooled message
    SENT_GUARD = "sent-guard"  # the sender's own copy, filed in their Sent folder
    REPORT = "report"  # a delivery status notification to the sender
    DIGEST = "digest"  # a daily digest, or one sent at once from the pages


@dataclass(frozen=True)
class Copy:
    """One message for one recipient, named by what it is and the record it belongs to.

    `ref` is the delivery's token (a delivery or the Sent-folder guard), the spool entry a
    report is about, or the digest run; `index` is the copy's place in its spooled message."""

    kind: CopyKind
    ref: str
    recipient: str
    index: int = 0

    @property
    def name(self) -> str:
        """A unique file name in the local outbox: no copy ever replaces another."""
        if self.kind in (CopyKind.DELIVERY, CopyKind.SENT_GUARD) and self.ref:
            return self.ref
        return f"{self.kind}-{self.ref}"


@dataclass(frozen=True)
class Outcome:
    copy: Copy
    status: str
    code: int
    reply: str
    # The whole message went out but its reply was lost: it may have arrived; never resend.
    uncertain: bool = False

    @property
    def recipient(self) -> str:
        return self.copy.recipient


@dataclass(frozen=True)
class Credentials:
    """A login. The password is left out of repr(): aiosmtpd logs the AuthResult holding it at
    DEBUG, and a traceback or log line must never show a password."""

    username: str
    password: str = dataclasses.field(repr=False)


Chunks = Sequence[bytes | memoryview]
Render = Callable[[Copy], Chunks]
# Awaited just before the final dot of a copy's DATA: past that point the copy may be
# delivered whatever happens next, so the queue records it durably first (exactly once).
OnCommit = Callable[[Copy], Awaitable[None]]
# Awaited before each copy: the queue's pacing of submissions to one account.
Pace = Callable[[], Awaitable[None]]
# Awaited with each copy's outcome as soon as it is known (not when the last copy is done), so
# a crash in the middle of a message loses no outcome already heard.
OnOutcome = Callable[["Outcome"], Awaitable[None]]
WRITE_SLICE = 256 * 1024  # bytes handed to the transport at a time
HIGH_WATER = 1024 * 1024  # wait while more than this is queued unsent


class Upstream(Protocol):
    async def send(
        self,
        sender: str,
        copies: Sequence[Copy],
        render: Render,
        *,
        smtputf8: bool = False,
        eight_bit: bool = False,
        credentials: Credentials | None = None,
        on_commit: OnCommit | None = None,
        pace: Pace | None = None,
        on_outcome: OnOutcome | None = None,
    ) -> list[Outcome]: ...


def status_for(code: int) -> str:
    """The one place SMTP reply codes are sorted into permanent and temporary."""
    return REJECTED if 500 <= code < 600 else DEFERRED


class SmtpUpstream:
    """The user's real submission server."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: str,
        *,
        credentials: Credentials | None = None,
        timeout: float = 60,
        verify_certificate: bool = True,
        local_hostname: str | None = None,
        oauth: OAuthLogin | None = None,
    ) -> None:
        self.host = host
        self.oauth = oauth
        self.port = port
        self.tls = tls
        self.credentials = credentials
        self.timeout = timeout
        self.verify_certificate = verify_certificate
        self.local_hostname = local_hostname
        # Made once: loading the CA bundle costs tens of milliseconds and blocks the loop.
        self.tls_context = _client_tls_context(verify_certificate) if tls != "none" else None

    def describe(self) -> str:
        return f"{self.host}:{self.port}"

    def _client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.tls == "implicit",
            start_tls=self.tls == "starttls",
            tls_context=self.tls_context,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
        )

    async def connect(self, credentials: Credentials | None) -> aiosmtplib.SMTP:
        smtp = self._client()
        await smtp.connect()
        creds = credentials or self.credentials
        try:
            if creds is not None:
                await smtp.login(creds.username, creds.password)
            elif self.oauth is not None:
                await self.oauth.login(smtp)
        except BaseException:
            smtp.close()
            raise
        if smtp.last_ehlo_response is None:
            await smtp.ehlo()  # so its extensions (SMTPUTF8, 8BITMIME) are known before sending
        return smtp

    async def check_login(self, credentials: Credentials) -> bool:
        """Whether the upstream accepts these credentials (auth = "upstream")."""
        smtp = self._client()
        try:
            await smtp.connect()
            await smtp.login(credentials.username, credentials.password)
            return True
        except aiosmtplib.SMTPAuthenticationError:
            return False
        finally:
            if smtp.is_connected:
                try:
                    await smtp.quit()
                except aiosmtplib.SMTPException:
                    smtp.close()

    async def send(
        self,
        sender: str,
        copies: Sequence[Copy],
        render: Render,
        *,
        smtputf8: bool = False,
        eight_bit: bool = False,
        credentials: Credentials | None = None,
        on_commit: OnCommit | None = None,
        pace: Pace | None = None,
        on_outcome: OnOutcome | None = None,
    ) -> list[Outcome]:
        link = _Link(self, credentials)
        envelope = _Envelope(sender, smtputf8, eight_bit)
        outcomes: list[Outcome] = []
        broken: Outcome | None = None  # once the upstream is unusable, the rest fail alike
        try:
            for copy in copies:
                if broken is not None:
                    outcome = _same_failure(broken, copy)
                else:
                    if pace is not None:
                        await pace()
                    outcome, usable = await self._send_copy(link, envelope, copy, render, on_commit)
                    if not usable:
                        broken = outcome
                outcomes.append(outcome)
                if on_outcome is not None:
                    await on_outcome(outcome)
        finally:
            await link.close()
        return outcomes

    async def _send_copy(
        self,
        link: _Link,
        envelope: _Envelope,
        copy: Copy,
        render: Render,
        on_commit: OnCommit | None = None,
    ) -> tuple[Outcome, bool]:
        """One copy to its one recipient; (outcome, whether the upstream is still usable).

        The copy is rendered only once the connection is up, so a message to many recipients
        holds one rendered copy at a time."""

        def failed(code: int, reply: str) -> Outcome:
            return Outcome(copy, status_for(code), code, reply)

        for attempt in (1, 2):
            try:
                smtp = await link.get()
                if envelope.smtputf8 and not smtp.supports_extension("smtputf8"):
                    # Checked before the first copy, so nothing has been sent to anyone.
                    return failed(550, f"5.6.7 {NO_SMTPUTF8.format(host=self.host)}"), False
                commit = (lambda: on_commit(copy)) if on_commit is not None else None
                await _transmit(smtp, envelope, copy.recipient, render(copy), self.timeout, commit)
                return Outcome(copy, ACCEPTED, 250, "accepted"), True
            except UncertainDelivery:
                link.drop()
                reply = (
                    f"{self.host} closed the connection after the whole message was sent, "
                    "before confirming it; it may have been delivered, so it was not sent "
                    "again"
                )
                return dataclasses.replace(failed(451, reply), uncertain=True), True
            except aiosmtplib.SMTPAuthenticationError as exc:
                how = ""
                if self.oauth is not None and (link.credentials or self.credentials) is None:
                    how = f" (XOAUTH2 as {self.oauth.username})"
                return failed(451, f"{self.host} refused the login{how}: {exc.message}"), False
            except TokenError as exc:
                return failed(451, str(exc)), False
            except aiosmtplib.SMTPConnectResponseError as exc:
                return failed(exc.code, f"{self.host} refused the connection: {exc.message}"), False
            except aiosmtplib.SMTPResponseException as exc:
                return failed(exc.code, exc.message), True
            except (aiosmtplib.SMTPException, OSError) as exc:
                was_open = link.drop()
                if attempt == 1 and was_open:
                    log.info("upstream connection dropped (%s); re-opening it once", exc)
                    continue
                reply = f"could not reach the upstream server {self.describe()}: {_words(exc)}"
                return failed(451, reply), False
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class OAuthLogin:
    """SASL XOAUTH2 as `username` with a token from `tokens` (upstream.auth = "xoauth2").

    A refused token is renewed once and tried again: it may have been revoked or have
    expired early (the provider's clock, a cache that outlived it)."""

    username: str
    tokens: Tokens

    async def login(self, smtp: aiosmtplib.SMTP) -> None:
        token = await self.tokens.token()
        try:
            await smtp.auth_xoauth2(self.username, token)
            return
        except aiosmtplib.SMTPAuthenticationError as exc:
            if exc.code not in (535, 454, 334):
                raise
            self.tokens.invalidate(token)
            log.info(
                "%s refused the access token (%s); asking for a new one", smtp.hostname, exc.code
            )
        await smtp.auth_xoauth2(self.username, await self.tokens.token())


class UncertainDelivery(Exception):
    """The whole message was sent but its reply never came: the upstream may have it.

    Sending it again could deliver it twice (RFC 5321 6.1), so it is reported, not retried."""


NO_SMTPUTF8 = (
    "This message needs SMTPUTF8 (non-ASCII characters in an address or address field), "
    "which the upstream server {host} does not support; nothing was sent"
)


@dataclass(frozen=True)
class _Envelope:
    sender: str
    smtputf8: bool
    eight_bit: bool


async def _transmit(
    smtp: aiosmtplib.SMTP,
    envelope: _Envelope,
    recipient: str,
    chunks: Chunks,
    timeout: float,
    commit: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """One SMTP transaction, with the message streamed from its chunks.

    aiosmtplib's sendmail() wants the whole message as one bytes object and then copies it
    three times more (line endings for SIZE, again for DATA, the final dot); for a 20 MB
    message that is most of the relay's memory. Here the DATA phase writes views of the
    original message, paced by the transport's buffer, so memory stays flat.
    """
    payload = list(smtp_data(chunks))
    options = ["SMTPUTF8"] if envelope.smtputf8 else []
    if envelope.eight_bit and smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    if smtp.supports_extension("size"):
        options.insert(0, f"SIZE={sum(len(c) for c in payload)}")
    encoding = "utf-8" if envelope.smtputf8 else "ascii"
    # The commit record is written to disk while the envelope and the body travel, so its
    # fsync costs the copy nothing; it must be done before the final dot. (A crash between the
    # two leaves a copy marked as maybe sent that was not: reported, never duplicated.)
    committed = asyncio.ensure_future(commit()) if commit is not None else None
    try:
        await smtp.mail(envelope.sender, options=options, encoding=encoding)
        await smtp.rcpt(recipient, encoding=encoding)
        start = await smtp.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = smtp.protocol
        if protocol is None or protocol.transport is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost before the message")
        for chunk in payload:
            for i in range(0, len(chunk), WRITE_SLICE):
                protocol.write(chunk[i : i + WRITE_SLICE])
                await _drained(protocol.transport)
        if committed is not None:
            await committed
        if protocol.transport is None or protocol.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection lost before the final dot")
        protocol.write(END)
        try:
            done = await protocol.read_response(timeout=timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
            raise UncertainDelivery(str(exc)) from exc
        if done.code != 250:
            raise aiosmtplib.SMTPDataError(done.code, done.message)
    except aiosmtplib.SMTPResponseException:
        if smtp.is_connected:  # leave the connection ready for the next copy
            with contextlib.suppress(aiosmtplib.SMTPException):
                await smtp.rset()
        raise
    finally:
        if committed is not None and not committed.done():
            await asyncio.wait([committed])  # the record is written either way; never orphaned


async def _drained(transport: asyncio.BaseTransport) -> None:
    """Wait until little of what was written is still queued (memory stays bounded)."""
    delay = 0.0005
    while transport.get_write_buffer_size() > HIGH_WATER:  # type: ignore[attr-defined]
        if transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection lost while sending")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


class _Link:
    """The one upstream connection a message's copies share, opened on first use."""

    def __init__(self, upstream: SmtpUpstream, credentials: Credentials | None) -> None:
        self.upstream = upstream
        self.credentials = credentials
        self.smtp: aiosmtplib.SMTP | None = None

    async def get(self) -> aiosmtplib.SMTP:
        if self.smtp is None or not self.smtp.is_connected:
            self.smtp = None
            self.smtp = await self.upstream.connect(self.credentials)
        return self.smtp

    def drop(self) -> bool:
        """Forget a broken connection; True if one had been open."""
        was_open = self.smtp is not None
        if self.smtp is not None:
            self.smtp.close()
        self.smtp = None
        return was_open

    async def close(self) -> None:
        if self.smtp is not None and self.smtp.is_connected:
            try:
                await self.smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                self.smtp.close()


def _client_tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _same_failure(first: Outcome, copy: Copy) -> Outcome:
    return Outcome(copy, first.status, first.code, first.reply)


def _words(exc: BaseException) -> str:
    """The failure in words a user understands (aiosmtplib wraps the socket error it met)."""
    if isinstance(exc.__cause__, OSError) and not isinstance(exc, TimeoutError):
        exc = exc.__cause__
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return "it did not answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS failed: its certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "it closed the connection"
    return str(exc) or type(exc).__name__


class OutboxUpstream:
    """No upstream configured: each copy is stored as a file so a newcomer can look at it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> str:
        return f"local outbox {self.directory}"

    async def send(
        self,
        sender: str,
        copies: Sequence[Copy],
        render: Render,
        *,
        smtputf8: bool = False,
        eight_bit: bool = False,
        credentials: Credentials | None = None,
        on_commit: OnCommit | None = None,
        pace: Pace | None = None,
        on_outcome: OnOutcome | None = None,
    ) -> list[Outcome]:
        self.directory.mkdir(parents=True, exist_ok=True)
        outcomes = []
        for copy in copies:
            chunks = render(copy)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.writelines(chunks)
                if on_commit is not None:
                    await on_commit(copy)
                os.replace(tmp, self.directory / f"{copy.name}.eml")
            except OSError as exc:
                Path(tmp).unlink(missing_ok=True)
                outcome = Outcome(copy, DEFERRED, 451, f"local outbox: {exc}")
            else:
                outcome = Outcome(copy, ACCEPTED, 250, "stored in the local outbox")
            outcomes.append(outcome)
            if on_outcome is not None:
                await on_outcome(outcome)
        return outcomes
