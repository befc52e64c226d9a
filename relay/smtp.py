"""The relay's SMTP server: aiosmtpd's, with every reply carrying an enhanced status code.

MailPing advertises ENHANCEDSTATUSCODES (RFC 2034), which promises a class.subject.detail code
on every 2xx/4xx/5xx reply except the greeting and the EHLO/HELO answer. aiosmtpd's own replies
("250 OK", "503 Error: need MAIL command", ...) carry none, so they are completed here, in one
place, from the basic code; a few are also reworded so a user can act on them.
"""

from __future__ import annotations

import re
from typing import AnyStr

from aiosmtpd.smtp import SMTP

from relay.auth import LOGIN_CLIENT

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
    """One instance per client connection (aiosmtpd's model)."""

    # RFC 5321 caps lines at 1000 octets, but real mail breaks that and the user's provider may
    # well accept it; refusing here would lose mail only because MailPing is in the path. The
    # relay never makes a line longer than it was, and the upstream has the last word.
    line_length_limit = 1024 * 1024

    _greeted = False
    _in_ehlo = False

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

    async def smtp_AUTH(self, arg: str) -> None:
        """Says whose AUTH this is to the login throttle (relay/auth.py LOGIN_CLIENT)."""
        peer = self.session.peer if self.session is not None else None
        token = LOGIN_CLIENT.set(str(peer[0]) if isinstance(peer, tuple) and peer else "")
        try:
            await super().smtp_AUTH(arg)
        finally:
            LOGIN_CLIENT.reset(token)

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
