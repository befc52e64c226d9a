"""RFC 3464 delivery status notifications: failed, delayed and uncertain copies.

The report leaves through the user's own upstream account, so its `From:` is the user's own
address (a provider refuses mail "from" an address the account may not use) and its envelope
sender is the null path where the upstream allows it. Each recipient's block carries the
upstream's own enhanced status code (`5.1.1`, not a generic `5.0.0`) and its words.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.policy import SMTP

FAILED, DELAYED = "failed", "delayed"
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Item:
    """One recipient's line in a report."""

    recipient: str
    action: str  # failed | delayed (RFC 3464 2.3.3)
    code: int  # the upstream's reply code (0: none, e.g. never reached)
    reply: str
    uncertain: bool = False  # the whole copy went out but its reply was lost


def status_code(action: str, code: int, reply: str) -> str:
    """The enhanced status code for the block: the upstream's own when it gave one whose class
    agrees with the action, else the class of the action with `.0.0`."""
    wanted = "4" if action == DELAYED else "5"
    m = _ENHANCED.search(reply)
    if m and m.group(1) == wanted:
        return m.group(0)
    if m and action == FAILED and m.group(1) == "4":
        return f"5.{m.group(2)}.{m.group(3)}"  # a temporary cause that became final (expired)
    return f"{wanted}.0.0"


def build_dsn(
    *,
    reporting_host: str,
    from_address: str,
    to_address: str,
    original: bytes,
    subject: str,
    items: Sequence[Item],
    arrival: dt.datetime,
    retry_until: dt.datetime | None = None,
) -> bytes:
    """A multipart/report the user's mail program shows as a bounce, with the headers of the
    message it is about (never its body: the body may be large, and the user has it).
    `subject` is the original's, decoded and unfolded (rewrite.prepare does that)."""
    subject = " ".join("".join(ch for ch in subject if ch.isprintable()).split()) or "(no subject)"
    failed = [i for i in items if i.action == FAILED]
    delayed = [i for i in items if i.action == DELAYED]
    msg = EmailMessage(policy=SMTP)
    msg["From"] = email.utils.formataddr(("Mail Delivery (MailPing)", from_address))
    msg["To"] = to_address
    if failed:
        title = f"Not delivered to {len(failed)} recipient{'s' if len(failed) != 1 else ''}"
    else:
        title = f"Delayed for {len(delayed)} recipient{'s' if len(delayed) != 1 else ''}"
    msg["Subject"] = f"{title}: {subject}"[:900]
    msg["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    msg["Message-ID"] = email.utils.make_msgid(domain=reporting_host)
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(_words(items, retry_until))
    msg.make_mixed()
    msg.replace_header("Content-Type", "multipart/report")
    msg.set_param("report-type", "delivery-status")

    # message/delivery-status is a list of header blocks: one per message, one per recipient.
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_host}"
    per_message["Arrival-Date"] = email.utils.format_datetime(arrival)
    blocks = [per_message]
    for i in items:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {i.recipient}"
        block["Action"] = i.action
        block["Status"] = status_code(i.action, i.code, i.reply)
        if i.code:
            block["Diagnostic-Code"] = f"smtp; {i.code} {_one_line(i.reply)}"
        else:
            block["Diagnostic-Code"] = f"X-MailPing; {_one_line(i.reply)}"
        if i.action == DELAYED and retry_until is not None:
            block["Will-Retry-Until"] = email.utils.format_datetime(retry_until)
        blocks.append(block)
    status_part = Message()
    status_part["Content-Type"] = "message/delivery-status"
    status_part.set_payload(blocks)
    msg.attach(status_part)

    headers_part = EmailMessage(policy=SMTP)
    head = original.split(b"\r\n\r\n", 1)[0]
    # 8-bit headers (SMTPUTF8 clients, raw non-ASCII subjects) travel encoded, never raw.
    headers_part.set_content(head.decode("utf-8", "replace") + "\r\n", subtype="rfc822-headers")
    msg.attach(headers_part)
    return msg.as_bytes()


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text.encode("ascii", "replace").decode("ascii")[:900] or "no reason given"


def _words(items: Sequence[Item], retry_until: dt.datetime | None) -> str:
    lines: list[str] = []
    failed = [i for i in items if i.action == FAILED and not i.uncertain]
    uncertain = [i for i in items if i.uncertain]
    delayed = [i for i in items if i.action == DELAYED]
    if failed:
        lines += ["Your message could not be delivered to:", ""]
        lines += [f"  {i.recipient}: {_one_line(i.reply)}" for i in failed]
        lines += ["", "It will not be tried again.", ""]
    if uncertain:
        lines += ["Your message may or may not have reached:", ""]
        lines += [f"  {i.recipient}: {_one_line(i.reply)}" for i in uncertain]
        lines += [
            "",
            "The mail server took the whole message but the connection was lost before it",
            "confirmed it. To avoid a duplicate it was not sent again; ask the recipient, or",
            "send it again yourself.",
            "",
        ]
    if delayed:
        until = f" until {retry_until:%Y-%m-%d %H:%M} UTC" if retry_until else ""
        lines += ["Your message has not been delivered yet to:", ""]
        lines += [f"  {i.recipient}: {_one_line(i.reply)}" for i in delayed]
        lines += ["", f"MailPing keeps trying{until}. You do not need to send it again.", ""]
    lines.append("Each reason is the answer of your outgoing mail server.")
    return "\n".join(lines)
