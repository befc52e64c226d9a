"""Sending as a connected Google user through the Gmail API (users.messages.send).

Why not SMTP: Google's SMTP with XOAUTH2 needs the https://mail.google.com/ scope, which can
read and delete the whole mailbox; MailPing promises no inbox access, and the Gmail API's
gmail.send scope can only send.

What the API cannot do: it has no envelope. It sends to the To, Cc and Bcc fields of the
message itself (and removes Bcc), so one copy per recipient, each with its own pixel, is only
possible when the message names exactly that one recipient. A message to several people goes
out once, to all of them, untracked (the submission decides that: relay/submit.py); recipients
only in the envelope (a client's Bcc) are added as Bcc.

Sent folder: Gmail files what it sends in Sent Mail, one message per Message-ID. The guard
copy (relay/submit.py) goes first, without a pixel and addressed to the sender alone, so it is
the one filed; the tracked copy that follows has the same Message-ID.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import json
import logging
import re
from collections.abc import Sequence

import tornado.httpclient

from relay.forward import (
    ACCEPTED,
    DEFERRED,
    REJECTED,
    Copy,
    CopyKind,
    Credentials,
    OnCommit,
    OnOutcome,
    Outcome,
    Pace,
    Render,
)
from relay.oauth import TokenError, Tokens

log = logging.getLogger("mailping.gmailapi")

SEND_PATH = "/gmail/v1/users/me/messages/send"
UNCERTAIN = "uncertain"  # sent, answer lost: never sent again
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)
ADDRESS_FIELDS = (b"to", b"cc", b"bcc")


def header_recipients(message: bytes) -> set[str]:
    """Every address in To, Cc and Bcc, lower-cased: whom the Gmail API would send to."""
    end = _HEAD_END.search(message)
    head = _HEADERS.parsebytes(message[: end.end()] if end else message)
    values = [v for name in ("To", "Cc", "Bcc") for v in head.get_all(name) or []]
    return {addr.lower() for _name, addr in email.utils.getaddresses(values) if addr}


def readdressed(message: bytes, *, to: Sequence[str] = (), bcc: Sequence[str] = ()) -> bytes:
    """The message with To/Cc/Bcc replaced (to given) or Bcc added (bcc given); the body and
    every other header field are the same bytes."""
    end = _HEAD_END.search(message)
    head, body = (message[: end.start()], message[end.start() :]) if end else (message, b"")
    lines = head.split(b"\n")
    kept: list[bytes] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = bool(to) and name in ADDRESS_FIELDS
        if not dropping:
            kept.append(line)
    eol = b"\r\n" if b"\r\n" in head else b"\n"
    added = []
    if to:
        added.append(b"To: " + ", ".join(to).encode("utf-8"))
    if bcc:
        added.append(b"Bcc: " + ", ".join(bcc).encode("utf-8"))
    return b"".join(a + eol for a in added) + b"\n".join(kept) + body


class GmailApiUpstream:
    """One connected Google user's mail, sent with an access token for gmail.send."""

    def __init__(
        self, api_url: str, tokens: Tokens, *, address: str = "", timeout: float = 60
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.tokens = tokens
        self.address = address
        self.timeout = timeout

    def describe(self) -> str:
        return f"the Gmail API as {self.address}"

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
        outcomes: list[Outcome] = []
        pending = list(copies)
        broken: tuple[int, str, str] | None = None  # once the API is unusable, the rest wait
        while pending:
            copy = pending.pop(0)
            batch = [copy]
            if broken is None:
                if pace is not None:
                    await pace()
                data = b"".join(bytes(c) for c in render(copy))
                if copy.kind == CopyKind.SENT_GUARD:
                    raw = readdressed(data, to=[sender])
                else:
                    named = header_recipients(data)
                    if named != {copy.recipient.lower()}:
                        # Several recipients: one send reaches them all (untracked copies).
                        batch += [c for c in pending if c.kind != CopyKind.SENT_GUARD]
                        pending = [c for c in pending if c.kind == CopyKind.SENT_GUARD]
                        extra = [c.recipient for c in batch if c.recipient.lower() not in named]
                        raw = readdressed(data, bcc=extra) if extra else data
                    else:
                        raw = data
                if on_commit is not None:
                    for c in batch:
                        await on_commit(c)
                code, reply, status = await self._post(raw)
                uncertain = status == UNCERTAIN
                if uncertain:
                    status = DEFERRED
                elif status == DEFERRED:
                    broken = (code, reply, status)
            else:
                code, reply, status = broken
                uncertain = False
            for c in batch:
                outcome = Outcome(c, status, code, reply, uncertain=uncertain)
                outcomes.append(outcome)
                if on_outcome is not None:
                    await on_outcome(outcome)
        return outcomes

    async def _post(self, raw: bytes) -> tuple[int, str, str]:
        """(code, words, status) for one users.messages.send; a refused token is renewed
        once."""
        body = json.dumps({"raw": base64.urlsafe_b64encode(raw).decode("ascii")})
        for attempt in (1, 2):
            try:
                token = await self.tokens.token()
            except TokenError as exc:
                return 451, str(exc), DEFERRED
            request = tornado.httpclient.HTTPRequest(
                self.api_url + SEND_PATH,
                method="POST",
                body=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                request_timeout=self.timeout,
                connect_timeout=min(self.timeout, 30),
                follow_redirects=False,
            )
            try:
                response = await tornado.httpclient.AsyncHTTPClient().fetch(
                    request, raise_error=False
                )
            except OSError as exc:
                return 451, f"could not reach the Gmail API: {exc}", DEFERRED
            if response.code == 200:
                return 250, "accepted by the Gmail API", ACCEPTED
            if response.code == 599:
                if isinstance(response.error, TimeoutError) or "Timeout" in str(response.error):
                    words = (
                        "the Gmail API did not answer in time after the whole message was "
                        "sent; it may have been delivered, so it was not sent again"
                    )
                    return 451, words, UNCERTAIN
                return 451, f"could not reach the Gmail API: {response.error}", DEFERRED
            reason = _reason(response.body)
            if response.code == 401 and attempt == 1:
                self.tokens.invalidate(token)
                continue
            if response.code in (400, 413):
                return 550, f"the Gmail API refused the message: {reason}", REJECTED
            if response.code == 403 and "insufficient" in reason.lower():
                return 451, f"the Gmail API refused: {reason} (connect again in Settings)", DEFERRED
            return 451, f"the Gmail API answered {response.code}: {reason}", DEFERRED
        raise AssertionError("unreachable")


def _reason(body: bytes | None) -> str:
    """Google's error message, one line, short."""
    try:
        error = json.loads(body or b"").get("error", {})
        text = error.get("message", "") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        text = ""
    return " ".join(str(text).split())[:200] or "no reason given"
