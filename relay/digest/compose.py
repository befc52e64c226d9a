"""The daily digest mail: pure, from DigestData to message bytes (HTML and plain text).

Email HTML is not web HTML: Gmail drops <style> blocks in some views and Outlook renders with
Word, so the layout is nested tables with inline styles, fixed to 600 px at most, in system
fonts, and every word the web page would show is in the text part too. Everything that came
from mail (subjects, addresses, programs, places) is escaped; headers are encoded by the email
package (RFC 2047 for non-ASCII subjects). The digest carries no image at all, so it can never
carry a pixel, and it is sent straight to the upstream, never through the rewriter.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from html import escape
from zoneinfo import ZoneInfo

from pixelserver.store.queries import DeliveryRow
from pixelserver.verdicts.state import (
    FAILED,
    NOT_OPENED,
    OPENED,
    PREFETCHED_ONLY,
    PROBABLY_OPENED,
    QUEUED,
    SCANNED_ONLY,
    UNTRACKED,
)
from pixelserver.vocabulary import Source
from relay.digest.query import UNOPENED_DAYS, DigestData

COLOURS = {
    OPENED: ("#dafbe1", "#116329"),
    PROBABLY_OPENED: ("#ddf4ff", "#0550ae"),
    PREFETCHED_ONLY: ("#fff8c5", "#7d4e00"),
    SCANNED_ONLY: ("#fff8c5", "#7d4e00"),
    NOT_OPENED: ("#eaeef2", "#1b1f24"),
    UNTRACKED: ("#eaeef2", "#57606a"),
    QUEUED: ("#ddf4ff", "#0550ae"),
    FAILED: ("#ffebe9", "#a40e26"),
}
SUMMARY_WORDS = {
    OPENED: ("read it", "read it"),
    PROBABLY_OPENED: ("probably read it", "probably read it"),
    NOT_OPENED: ("has not opened it yet", "have not opened it yet"),
    PREFETCHED_ONLY: ("Apple prefetch only", "Apple prefetch only"),
    SCANNED_ONLY: ("scanner only", "scanner only"),
    UNTRACKED: ("not tracked", "not tracked"),
    QUEUED: ("still queued, MailPing keeps trying", "still queued, MailPing keeps trying"),
    FAILED: ("not delivered", "not delivered"),
}
FONT = "font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif"


@dataclass(frozen=True)
class DigestMail:
    subject: str
    text: str
    html: str


def _when(moment: dt.datetime, tz: ZoneInfo, now: dt.datetime) -> str:
    local = moment.astimezone(tz)
    if local.date() == now.astimezone(tz).date():
        return local.strftime("today %H:%M")
    return f"{local.day} {local:%b %H:%M}"


def _day(moment: dt.datetime, tz: ZoneInfo) -> str:
    local = moment.astimezone(tz)
    return f"{local.day} {local:%b %Y}"


def _recipient(d: DeliveryRow) -> str:
    return d.recipient or "anyone with the link"


def summary_line(data: DigestData) -> str:
    """ "You sent 3 messages to 5 recipients: 2 read it, 3 have not opened it yet." """
    deliveries = [d for m in data.sent for d in m.deliveries]
    if not data.sent:
        return "You sent nothing through MailPing in this period."
    counts = Counter(d.state.state for d in deliveries)
    parts = []
    for state in (
        OPENED,
        PROBABLY_OPENED,
        NOT_OPENED,
        PREFETCHED_ONLY,
        SCANNED_ONLY,
        UNTRACKED,
        QUEUED,
        FAILED,
    ):
        if counts[state]:
            one, many = SUMMARY_WORDS[state]
            parts.append(f"{counts[state]} {one if counts[state] == 1 else many}")
    messages = len(data.sent) + data.more_sent
    return (
        f"You sent {messages} message{'s' * (messages != 1)} to {len(deliveries)} "
        f"recipient{'s' * (len(deliveries) != 1)}: {', '.join(parts)}."
    )


def subject_line(data: DigestData, tz: ZoneInfo) -> str:
    read = sum(d.state.state == OPENED for m in data.sent for d in m.deliveries)
    total = sum(len(m.deliveries) for m in data.sent)
    day = _day(data.end, tz)
    if total:
        head = f"{read} of {total} recipient{'s' * (total != 1)} read your mail"
    elif data.late_opens:
        head = f"{len(data.late_opens)} late open{'s' * (len(data.late_opens) != 1)}"
    else:
        head = "nothing new"
    return f"MailPing: {head} — {day}"


def compose(data: DigestData, tz: ZoneInfo, report_url: str, now: dt.datetime) -> DigestMail:
    base = report_url.rstrip("/")
    when = lambda moment: _when(moment, tz, now)  # noqa: E731
    period = f"{when(data.start)} – {when(data.end)} ({tz.key})"
    summary = summary_line(data)

    text = [f"Your mail, {period}", "", summary, ""]
    html = [
        f'<p style="margin:0 0 4px;color:#57606a;font-size:13px">{escape(period)}</p>',
        f'<p style="margin:0 0 16px;font-size:16px">{escape(summary)}</p>',
    ]
    if data.account_problem:
        text += [f"ACTION NEEDED: {data.account_problem} {base}/settings", ""]
        html.append(
            '<p style="margin:0 0 16px;color:#a40e26;font-weight:600">'
            f"{escape(data.account_problem)}"
            f' <a href="{escape(base)}/settings" style="color:#0969da">Settings</a></p>'
        )
    if data.sent:
        text.append("SENT")
        html.append(_heading("Sent"))
        for m in data.sent:
            subject = m.subject or "(no subject)"
            mark = " [manual link]" if m.source == Source.MANUAL else ""
            text.append(f"* {subject}{mark} — {when(m.accepted_at)}")
            text.append(f"  {base}/messages/{m.id}")
            rows = []
            for d in m.deliveries:
                opened = (
                    f", first open {when(d.state.first_open)}"
                    if d.state.state == OPENED and d.state.first_open
                    else ""
                )
                text.append(f"  - {_recipient(d)}: {d.chip}{opened}")
                rows.append(_recipient_row(_recipient(d), d, opened.lstrip(", ")))
            html.append(
                _block(
                    f'<a href="{escape(base)}/messages/{m.id}" style="color:#0969da;'
                    f'text-decoration:none;font-weight:600">{escape(subject)}</a>'
                    + (_chip("manual link", "#fbefff", "#6639ba") if mark else "")
                    + f'<br><span style="color:#57606a;font-size:13px">sent '
                    f"{escape(when(m.accepted_at))}</span>",
                    "".join(rows),
                )
            )
            text.append("")
        if data.more_sent:
            line = f"… and {data.more_sent} more: {base}/"
            text += [line, ""]
            html.append(f'<p style="margin:0 0 16px">{escape(line)}</p>')
    if data.late_opens:
        text.append("OPENED NOW (OLDER MAIL)")
        html.append(_heading("Opened now, older mail"))
        for late in data.late_opens:
            subject = late.subject or "(no subject)"
            line = (
                f"your mail of {_day(late.sent_at, tz)} to {_recipient(late.delivery)} ({subject})"
            )
            text.append(f"* {line}: {late.delivery.chip}")
            html.append(
                _block(
                    f'<a href="{escape(base)}/messages/{late.message_id}" style="color:#0969da;'
                    f'text-decoration:none">{escape(line)}</a>',
                    _recipient_row(
                        _recipient(late.delivery),
                        late.delivery,
                        f"last open {when(late.delivery.state.last_open)}"
                        if late.delivery.state.last_open
                        else "",
                    ),
                )
            )
        text.append("")
    failed = data.failed
    if failed:
        text.append("NOT DELIVERED")
        html.append(_heading("Not delivered"))
        for m, d in failed:
            reply = d.upstream_reply or "refused by the server"
            text.append(f"* {_recipient(d)} ({m.subject or '(no subject)'}): {reply}")
            html.append(
                f'<p style="margin:0 0 8px;color:#a40e26">{escape(_recipient(d))} '
                f'<span style="color:#57606a">({escape(m.subject or "(no subject)")})</span>: '
                f"{escape(reply)}</p>"
            )
        text.append("")
    if data.unopened:
        line = (
            f"{data.unopened} message{'s' * (data.unopened != 1)} of the last "
            f"{UNOPENED_DAYS} days {'have' if data.unopened != 1 else 'has'} no human open yet."
        )
        text += [line, ""]
        html.append(f'<p style="margin:16px 0">{escape(line)}</p>')
    text += [
        "--",
        f"The whole report: {base}/",
        f"Turn this digest off or change its hour: {base}/settings",
        "This digest is not tracked.",
    ]
    html.append(
        f'<p style="margin:24px 0 0;color:#57606a;font-size:13px;border-top:1px solid #d0d7de;'
        f'padding-top:12px"><a href="{escape(base)}/" style="color:#0969da">The whole report</a>'
        f' · <a href="{escape(base)}/settings" style="color:#0969da">Turn this digest off or '
        f"change its hour</a><br>This digest is not tracked.</p>"
    )
    return DigestMail(subject_line(data, tz), "\n".join(text) + "\n", _page("".join(html)))


def _heading(words: str) -> str:
    return (
        f'<h2 style="margin:24px 0 8px;font-size:15px;text-transform:uppercase;'
        f'letter-spacing:.04em;color:#57606a">{escape(words)}</h2>'
    )


def _chip(words: str, bg: str, fg: str) -> str:
    return (
        f' <span style="display:inline-block;padding:1px 8px;border-radius:10px;'
        f'background:{bg};color:{fg};font-size:13px">{escape(words)}</span>'
    )


def _recipient_row(address: str, d: DeliveryRow, detail: str) -> str:
    bg, fg = COLOURS.get(d.state.state, COLOURS[NOT_OPENED])
    return (
        '<tr><td style="padding:6px 0;border-top:1px solid #eaeef2;word-break:break-all">'
        f"{escape(address)}<br>{_chip(d.chip, bg, fg).strip()}"
        + (f' <span style="color:#57606a;font-size:13px">{escape(detail)}</span>' if detail else "")
        + "</td></tr>"
    )


def _block(head: str, rows: str) -> str:
    return (
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" '
        'style="margin:0 0 16px;border:1px solid #d0d7de;border-radius:6px">'
        f'<tr><td style="padding:12px 14px"><p style="margin:0 0 6px">{head}</p>'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">'
        f"{rows}</table></td></tr></table>"
    )


def _page(body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>MailPing digest</title></head>"
        f'<body style="margin:0;padding:0;background:#f6f8fa;{FONT};color:#1b1f24">'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" '
        'style="background:#f6f8fa"><tr><td align="center" style="padding:16px 8px">'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" '
        'style="max-width:600px;background:#ffffff;border-radius:8px">'
        f'<tr><td style="padding:20px 18px;{FONT};font-size:15px;line-height:1.45">'
        '<p style="margin:0 0 12px;font-weight:700;font-size:18px">MailPing</p>'
        f"{body}</td></tr></table></td></tr></table></body></html>"
    )


def to_message(
    mail: DigestMail, *, sender: str, to: str, hostname: str, now: dt.datetime
) -> EmailMessage:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr(("MailPing", sender))
    msg["To"] = to
    msg["Subject"] = mail.subject
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = email.utils.make_msgid("digest", domain=hostname)
    # RFC 3834: an automatic message; vacation responders must not answer it.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    # Quoted-printable: 7-bit clean, so no upstream needs 8BITMIME, and no line over 76.
    msg.set_content(mail.text, cte="quoted-printable")
    msg.add_alternative(mail.html, subtype="html", cte="quoted-printable")
    return msg
