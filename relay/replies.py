"""Every SMTP reply the relay gives, by name, and the one rule that turns outcomes into a reply.

Replies are what the user's mail client shows when something goes wrong, so each says in plain
words what happened and whether retrying can help. README.md lists them all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from relay.forward import ACCEPTED, DEFERRED, Outcome

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


def reply_for(outcomes: Sequence[Outcome]) -> str:
    """All accepted: 250. Some accepted: 250 (a DSN reports the rest). None accepted: 451 if any
    failure is temporary, else 550 with the upstream's own words. Never 250 for nothing sent."""
    if not outcomes:
        return NO_RECIPIENTS
    accepted = sum(o.status == ACCEPTED for o in outcomes)
    if accepted == len(outcomes):
        return f"250 2.0.0 Sent to {accepted} recipient{'s' if accepted != 1 else ''}"
    if accepted:
        failed = len(outcomes) - accepted
        return (
            f"250 2.0.0 Sent to {accepted} of {len(outcomes)} recipients; "
            f"{failed} failed, a delivery report follows"
        )
    deferred = [o for o in outcomes if o.status == DEFERRED]
    if deferred:
        return f"451 4.4.1 Not sent, will work on retry: {one_line(deferred[0].reply)}"
    first = outcomes[0]
    text = one_line(first.reply)
    if not _ENHANCED.match(text + " "):
        text = f"5.0.0 {text}"
    who = "" if len(outcomes) == 1 else f" (all {len(outcomes)} recipients)"
    return f"550 {text}{who}"
