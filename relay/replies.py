"""Every SMTP reply the relay gives, by name, and the one rule that turns outcomes into a reply.

Replies are what the user's mail client shows when something goes wrong, so each says in plain
words what happened and whether retrying can help. README.md lists them all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from relay.spool import ACCEPTED, DEFERRED, REJECTED, CopyState

RCPT_OK = "250 2.1.5 Recipient OK"
AUTH_REQUIRED = "530 5.7.0 Authentication required: log in with your mail account first"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Username or password not accepted"
AUTH_UNAVAILABLE = "454 4.7.0 Cannot check your login right now: the upstream server is unreachable"
AUTH_TOO_MANY = (
    "454 4.7.0 Too many failed logins for this account or from your network; "
    "try again in a few minutes"
)
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections to this relay right now; try again later"
TOO_MANY_FROM_NETWORK = (
    "421 4.7.0 Too many connections from your network; close some and try again later"
)
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients: send the rest in another message"
NO_RECIPIENTS = "554 5.5.1 No valid recipients"
INTERNAL_ERROR = "451 4.3.0 MailPing hit an internal error; nothing was sent, please retry"
NOT_SPOOLED = (
    "451 4.3.0 MailPing cannot queue mail right now (its disk); nothing was sent, please retry"
)
SAME_MESSAGE_BUSY = "451 4.3.0 The same message is being accepted on another connection; retry"
QUEUED = "250 2.0.0 Accepted: queued, MailPing keeps trying"
ALREADY_ACCEPTED = "250 2.0.0 Already accepted (same Message-ID): not sent again"

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\s")


def one_line(text: str, limit: int = 400) -> str:
    """Upstream text made safe for a single SMTP reply line (ASCII, no CR/LF)."""
    text = " ".join(text.split())
    text = text.encode("ascii", "replace").decode("ascii")
    return text[:limit] or "no reason given"


def sender_refused(login: str, address: str, where: str) -> str:
    """A local login tried to send as someone else: at MAIL FROM (553, as Postfix's
    reject_sender_login_mismatch) or for the From: header at the end of DATA (550)."""
    login = one_line(login, 100)
    if where == "envelope":
        return (
            f"553 5.7.1 Sender address rejected: <{one_line(address, 200)}> is not an address "
            f"of login {login}"
        )
    if not address:
        return f"550 5.7.1 From: header rejected: it names no address login {login} may use"
    return (
        f"550 5.7.1 From: header rejected: {one_line(address, 200)} is not an address of "
        f"login {login}"
    )


def reply_for(copies: Sequence[CopyState], finished: bool) -> tuple[str, bool]:
    """The reply once a message is spooled: (reply, whether it told the client of refusals).

    Spooled means accepted: 250, unless the first attempt finished and every copy was refused
    for good (550 with the upstream's own words; nothing was sent). Never 4xx from here on:
    what is deferred is the queue's to retry, and nothing says "not sent" when a copy went out.
    """
    copies = [c for c in copies if not c.guard]
    if not copies:
        return NO_RECIPIENTS, False
    sent = sum(c.status == ACCEPTED for c in copies)
    refused = [c for c in copies if c.status == REJECTED]
    n = len(copies)
    if finished and len(refused) == n:
        first = refused[0]
        text = one_line(first.reply)
        if not _ENHANCED.match(text + " "):
            text = f"5.0.0 {text}"
        who = "" if n == 1 else f" (all {n} recipients)"
        return f"550 {text}{who}", True
    if sent == n:
        return f"250 2.0.0 Sent to {sent} recipient{'s' if sent != 1 else ''}", False
    bits = [f"sent to {sent} of {n} recipients"]
    waiting = [c for c in copies if not c.final]
    if waiting:
        why = next((c.reply for c in waiting if c.status == DEFERRED and c.reply), "")
        bits.append(
            f"{len(waiting)} queued, MailPing keeps trying"
            + (f" ({one_line(why, 200)})" if why else "")
        )
    failed = n - sent - len(waiting)
    if failed:
        bits.append(f"{failed} not delivered, a delivery report follows")
    return f"250 2.0.0 Accepted: {'; '.join(bits)}", False
