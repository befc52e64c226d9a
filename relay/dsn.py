"""RFC 3464 delivery status notifications for copies that failed while others went out.

When a message is accepted for some recipients and not others, the client can only be told 250;
the user learns about the rest from this report, as they would from any mail server.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Sequence
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import SMTP

from relay.forward import ACCEPTED, DEFERRED, Outcome


def build_dsn(
    *,
    reporting_host: str,
    user_address: str,
    original: bytes,
    outcomes: Sequence[Outcome],
    arrival: dt.datetime,
) -> bytes:
    failed = [o for o in outcomes if o.status != ACCEPTED]
    headers = BytesHeaderParser().parsebytes(original.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    subject = str(headers.get("Subject", "(no subject)"))

    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"MailPing <mailer-daemon@{reporting_host}>"
    msg["To"] = user_address
    msg["Subject"] = f"Not delivered to {len(failed)} recipient(s): {subject}"[:900]
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain=reporting_host)
    msg["Auto-Submitted"] = "auto-replied"
    lines = [
        "Your message was sent to some recipients, but not to these:",
        "",
        *(
            f"  {o.recipient}: {'will not be retried' if o.status != DEFERRED else 'not sent'}"
            f" - {o.reply}"
            for o in failed
        ),
        "",
        "The reason for each is the answer of your outgoing mail server.",
    ]
    msg.set_content("\n".join(lines))
    msg.make_mixed()
    msg.replace_header("Content-Type", "multipart/report")
    msg.set_param("report-type", "delivery-status")

    # message/delivery-status is a list of header blocks: one per message, one per recipient.
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_host}"
    per_message["Arrival-Date"] = email.utils.format_datetime(arrival)
    blocks = [per_message]
    for o in failed:
        permanent = o.status != DEFERRED
        block = Message()
        block["Final-Recipient"] = f"rfc822; {o.recipient}"
        block["Action"] = "failed" if permanent else "delayed"
        block["Status"] = f"{'5' if permanent else '4'}.0.0"
        block["Diagnostic-Code"] = f"smtp; {o.code} {' '.join(o.reply.split())}"
        blocks.append(block)
    status_part = Message()
    status_part["Content-Type"] = "message/delivery-status"
    status_part.set_payload(blocks)
    msg.attach(status_part)

    headers_part = EmailMessage(policy=SMTP)
    head = original.split(b"\r\n\r\n", 1)[0]
    headers_part.set_payload(head.decode("ascii", "replace") + "\r\n")
    headers_part["Content-Type"] = "text/rfc822-headers"
    msg.attach(headers_part)
    return msg.as_bytes()
