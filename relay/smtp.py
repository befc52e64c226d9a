"""The relay's SMTP server: aiosmtpd's, with every reply carrying an enhanced status code, and
the limits a server on the internet needs.

MailPing advertises ENHANCEDSTATUSCODES (RFC 2034), which promises a class.subject.detail code
on every 2xx/4xx/5xx reply except the greeting and the EHLO/HELO answer. aiosmtpd's own replies
("250 OK", "503 Error: need MAIL command", ...) carry none, so they are completed here, in one
place, from the basic code; a few are also reworded so a user can act on them.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import logging
import re
import ssl
from asyncio import protocols, sslproto
from base64 import b64decode, b64encode
from typing import Any, AnyStr

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import MISSING, SMTP, syntax

from pixelserver.store.throttle import client_network
from relay import replies
from relay.limits import ConnectionLimits, TooManyConnections

log = logging.getLogger("mailping.smtp")

# Before DATA the reader holds one line of at most this: RFC 4954 allows an AUTH line of
# 12288 octets, and aiosmtpd refuses other commands over 512 octets (plus SMTP extensions).
AUTH_LINE_LIMIT = 12288
COMMAND_LINE_LIMIT = AUTH_LINE_LIMIT + 2
# Inside DATA: RFC 5321 caps lines at 1000 octets, but real mail breaks that and the user's
# provider may well accept it; refusing here would lose mail only because MailPing is in the
# path. The relay never makes a line longer than it was, and the upstream has the last word.
DATA_LINE_LIMIT = 1024 * 1024

# RFC 3463 codes for aiosmtpd replies that lack one, by basic reply code.
_ENHANCED_FOR = {
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "220": "2.0.0",
    "421": "4.3.0",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(\s|$)")
_TOO_BIG = ("552 Error: Too much mail data", "552 Error: message size exceeds fixed maximum")


class RelaySMTP(SMTP):
    """One instance per client connection (aiosmtpd's model).

    `limits`: connection caps shared by all connections of this process. `proxy_wait`: the
    client must begin with a PROXY protocol header (v1 or v2) within that many seconds; the
    address in it is the client's. `tls_after_proxy`: implicit TLS behind such a balancer
    (the header comes in clear text, then the TLS handshake).
    """

    line_length_limit = COMMAND_LINE_LIMIT  # the reader's limit; raised only inside DATA

    _greeted = False
    _in_ehlo = False

    def __init__(
        self,
        handler: Any,
        *,
        limits: ConnectionLimits | None = None,
        proxy_wait: float | None = None,
        tls_after_proxy: ssl.SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        # Per connection: aiosmtpd's table is one dict shared by every connection (each new
        # one clears it, each EHLO adds to MAIL's entry). AUTH gets RFC 4954's 12288 octets.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, {"AUTH": AUTH_LINE_LIMIT}
        )
        self.limits = limits
        self.proxy_wait = proxy_wait
        self.tls_after_proxy = tls_after_proxy
        self._refusal: str | None = None
        self._admitted = False
        self._network: str | None = None
        self._proxy_data: Any = None

    @property
    def client_ip(self) -> str:
        """The client's address: from the PROXY header when there is one, else the peer's."""
        proxy = self._proxy_data
        if proxy and getattr(proxy, "src_addr", None) is not None:
            return str(proxy.src_addr)
        peer = self.session.peer if self.session else None
        return str(peer[0]) if isinstance(peer, tuple) else str(peer or "")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Counts the connection against the caps (the refusal is sent once the client task
        runs). A connection that arrives already encrypted (implicit TLS, port 465 style)
        counts as encrypted: aiosmtpd only counts STARTTLS, so it would never offer AUTH
        beyond loopback."""
        tls_upgrade = self._original_transport is not None
        super().connection_made(transport)
        assert self.session is not None
        if tls_upgrade:
            self.session.proxy_data = self._proxy_data  # aiosmtpd starts a new session here
            return
        if transport.get_extra_info("ssl_object") is not None:
            self._auth_require_tls = False  # the requirement is met: the whole line is TLS
            self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}
        if self.limits is None:
            return
        try:
            self.limits.admit()
            self._admitted = True
            if self.proxy_wait is None:
                self._admit_network()
        except TooManyConnections as exc:
            self._refusal = exc.reply

    def _admit_network(self) -> None:
        assert self.limits is not None
        network = client_network(self.client_ip)
        self.limits.admit_network(network)
        self._network = network

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted and self.limits is not None:
            self._admitted = False
            self.limits.release(self._network)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        proxied = self.proxy_wait is not None and self._refusal is None
        if proxied and not await self._accept_proxy():
            return
        if self._refusal is not None:
            log.warning("%s refused: %s", self.client_ip, self._refusal)
            await self.push(self._refusal)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    async def _accept_proxy(self) -> bool:
        """relay.proxy_protocol: the balancer's PROXY header (v1 or v2) comes first; without
        one the connection is closed (a client must not be able to skip it and be taken for
        the balancer). With implicit TLS the handshake follows the header."""
        self._reset_timeout(self.proxy_wait)
        data = await get_proxy(self._reader)
        if not data:
            log.warning(
                "%s sent no valid PROXY header (relay.proxy_protocol is on): %s",
                self.session.peer if self.session else "?",
                getattr(data, "error", ""),
            )
            assert self.transport is not None
            self.transport.close()
            return False
        self._proxy_data = data
        assert self.session is not None
        self.session.proxy_data = data
        if self.tls_after_proxy is not None:
            await self._start_tls_now(self.tls_after_proxy)
        if self.limits is not None and self._refusal is None:
            try:
                self._admit_network()
            except TooManyConnections as exc:
                self._refusal = exc.reply
        self._reset_timeout()
        return True

    async def _start_tls_now(self, context: ssl.SSLContext) -> None:
        """The TLS handshake on this connection, as aiosmtpd's STARTTLS does it (so aiosmtpd
        counts the connection as encrypted), without the "220 Ready" first. Bytes the client
        sent right after the PROXY header (its TLS hello) are already in the reader's buffer:
        they are handed to the TLS layer."""
        leftover = bytes(self._reader._buffer)  # type: ignore[attr-defined]
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, context, waiter, server_side=True
        )
        self._original_transport = self.transport
        assert self._original_transport is not None
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        if leftover:
            protocols._feed_data_to_buffered_proto(self._tls_protocol, leftover)  # type: ignore[attr-defined]
        await waiter

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, bytes):
            return await super().push(status)
        await super().push(self._complete(status))

    def _complete(self, status: str) -> str:
        first_push = not self._greeted
        self._greeted = True
        if first_push or self._in_ehlo or status[:1] == "3" or _HAS_ENHANCED.match(status):
            return status
        if status.startswith(_TOO_BIG):
            return (
                f"552 5.3.4 Message too big: this relay accepts messages up to "
                f"{self.data_size_limit} bytes"
            )
        code, _, text = status.partition(" ")
        text = text.removeprefix("Error: ")
        enhanced = _ENHANCED_FOR.get(code, f"{code[:1]}.0.0")
        return f"{code} {enhanced} {text}".rstrip()

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_ehlo = False

    # A reply to DATA counts as heard once the client sends its next command on the same
    # connection; until then a re-submission of the same message is taken as a retry after a
    # lost reply (relay/submit.py), and is not sent twice.

    async def _reply_heard(self) -> None:
        heard = getattr(self.event_handler, "reply_heard", None)
        if heard is not None and self.session is not None:
            await heard(self.session)

    async def smtp_MAIL(self, arg: str) -> None:
        await self._reply_heard()
        await super().smtp_MAIL(arg)

    async def smtp_RSET(self, arg: str) -> None:
        await self._reply_heard()
        await super().smtp_RSET(arg)

    async def smtp_NOOP(self, arg: str) -> None:
        await self._reply_heard()
        await super().smtp_NOOP(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        await self._reply_heard()
        await super().smtp_QUIT(arg)

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> Any:
        """aiosmtpd's, except that the client's answer is never logged (it holds the password)
        and an answer longer than the command line limit is drained and refused with RFC 4954's
        500 5.5.6 instead of surfacing as an internal error."""
        raw = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (b64encode(raw) if encode_to_b64 else raw))
        line = await self._read_line()
        if line is None:
            await self.push(replies.AUTH_LINE_TOO_LONG)
            return MISSING
        blob = line.strip()
        if blob == b"*":
            await self.push("501 5.7.0 Auth aborted")
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64")
            return MISSING

    async def _read_line(self) -> bytes | None:
        """One line within the reader's limit, or None once an over-long one was read away."""
        try:
            return await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await self._reader.readexactly(exc.consumed)
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return None
            except asyncio.LimitOverrunError as exc:
                await self._reader.readexactly(exc.consumed)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading into one buffer: aiosmtpd keeps a Python object per line,
        so a message of a million empty lines cost ~75 times its size in memory; here it costs
        about twice its size (the buffer, and the bytes handed on)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and not self._decode_data
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content, refusal = await self._read_data()
        if refusal is not None:
            self._set_post_data_state()
            await self.push(refusal)
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytes, str | None]:
        """The message up to the lone "." line, dot-unstuffed (RFC 5321 4.5.2), or the reply
        for a message over data_size_limit or with a line over DATA_LINE_LIMIT (read to its end
        anyway, as RFC 5321 4.2.5 implies, but not kept)."""
        reader = self._reader
        reader._limit = DATA_LINE_LIMIT  # type: ignore[attr-defined]
        buf = bytearray()
        size = 0
        limit = self.data_size_limit
        refusal: str | None = None
        in_long_line = False
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\r\n")
                except asyncio.LimitOverrunError as exc:
                    await reader.readexactly(exc.consumed)
                    in_long_line = True
                    refusal = refusal or "500 Line too long (see RFC5321 4.5.3.1.6)"
                    buf = bytearray()
                    continue
                if in_long_line:  # the end of a line too long to keep
                    in_long_line = False
                    continue
                if line == b".\r\n":
                    break
                size += len(line)
                if refusal is not None:
                    continue
                if limit and size > limit:
                    refusal = "552 Error: Too much mail data"
                    buf = bytearray()
                    continue
                buf += memoryview(line)[1:] if line[:1] == b"." else line
        finally:
            reader._limit = COMMAND_LINE_LIMIT  # type: ignore[attr-defined]
        if refusal is not None:
            return b"", refusal
        content = bytes(buf)
        del buf
        return content, None
