"""One submission: check it, spool it durably, try it once while the client waits, reply.

This is the domain code the SMTP handler calls; it knows nothing of SMTP sessions. The spool
write is the point of no return: before it the client may hear 451 and nothing was sent;
after it the message is the queue's (relay/queue.py) and the reply is 250, or 550 when the
first attempt found every recipient refused for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.tokens import mint_token
from pixelserver.verdicts.networks import mask
from pixelserver.vocabulary import UntrackedReason
from relay import metrics, replies, rewrite, tracking
from relay.forward import Credentials
from relay.gmailapi import header_recipients
from relay.providers import is_google_host as is_google_host  # its callers import it here
from relay.queue import QueueRunner
from relay.spool import ACCEPTED, BUSY, CLAIMED, TAKEN, Entry, SpoolError

log = logging.getLogger("mailping.relay")


@dataclass(frozen=True)
class Submission:
    user: str
    sender: str
    recipients: Sequence[str]
    data: bytes
    smtputf8: bool = False
    eight_bit: bool = False
    client_ip: str = ""
    credentials: Credentials | None = None


def unique_recipients(recipients: Sequence[str]) -> list[str]:
    """A recipient named twice in RCPT gets one copy, not two."""
    seen: set[str] = set()
    out = []
    for r in recipients:
        if r.lower() not in seen:
            seen.add(r.lower())
            out.append(r)
    return out


@dataclass(frozen=True)
class Claim:
    """A message whose Message-ID is held against re-submission until its reply is heard."""

    sender: str
    key: str


@dataclass(frozen=True)
class Receipt:
    reply: str
    claim: Claim | None = None  # set when the message was taken and its reply may be lost


class Relay:
    """Takes a message from the client: spool it, try it once, tell the client."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        queue: QueueRunner,
        *,
        guard_sent_copy: bool = False,
        exclusions: tracking.ExclusionCache | None = None,
        account_kind: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.queue = queue
        self.spool = queue.spool
        self.policy = queue.policy
        self.guard_sent_copy = guard_sent_copy
        self.exclusions = exclusions or tracking.ExclusionCache()
        # The provider of the user's own connected account (relay/useraccounts.py), if any.
        self.account_kind = account_kind

    async def forget_claim(self, claim: Claim) -> None:
        self.spool.unclaim_message_id(claim.sender, claim.key)  # one unlink: not worth a thread

    async def submit(self, sub: Submission) -> Receipt:
        """The SMTP reply for one submission (relay/replies.py).

        A client whose connection died before it heard the reply sends the message again;
        that second submission (same Message-ID, recipients and bytes, within
        `[queue] resubmit_window`) is answered 250 and not sent. Once the client sends another
        command on the connection, it heard the reply, and the claim is dropped: sending the
        same message again later is then the user's wish.

        Shielded: a client that hangs up mid-way cancels the SMTP session, but a message
        once claimed is carried through to the spool and the queue, never left half taken
        (a claim without a spooled message would swallow the client's retry)."""
        return await asyncio.shield(asyncio.ensure_future(self._submit(sub)))

    async def _submit(self, sub: Submission) -> Receipt:
        prepared = rewrite.prepare(sub.data, own_pixel_prefix=self.queue.pixel_prefix)
        recipients = unique_recipients(sub.recipients)
        if not recipients:
            return Receipt(replies.NO_RECIPIENTS)
        key = resubmission_key(prepared.message_id, recipients)
        claimed = (
            self.spool.claim_message_id(sub.sender, key, self.policy.resubmit_window)
            if key
            else CLAIMED
        )
        if claimed == TAKEN:
            log.info("message from %s re-submitted (same Message-ID): not sent again", sub.user)
            metrics.RELAY_MESSAGES.labels("resubmitted").inc()
            return Receipt(replies.ALREADY_ACCEPTED, Claim(sub.sender, key))
        if claimed == BUSY:  # the same message is being taken on another connection right now
            return Receipt(replies.SAME_MESSAGE_BUSY)
        # Whom the user never tracks (exclusions, forgotten recipients) and the token key, in
        # one short store read; an untracked message needs only the key, if it is known.
        kind = await self.account_kind(sub.user) if self.account_kind is not None else None
        untracked = prepared.untracked_reason
        if kind == "google" and not untracked and not names_only(sub.data, recipients):
            untracked = UntrackedReason.ONE_GMAIL_SEND_FOR_ALL
        facts = await self.exclusions.get(self.sessions, sub.user) if not untracked else None
        plan = tracking.plan_deliveries(recipients, untracked, facts, self.exclusions.token_key)
        # Both providers users connect file what they send in Sent: the guard covers them
        # (not needed, and only confusing in Sent Mail, for a Gmail API send without a pixel).
        guard = self.guard_sent_copy if kind is None else not (kind == "google" and untracked)
        header = self._header(sub, prepared, plan, guard)
        entry_id = self.spool.new_id()
        try:
            if key:
                # Named before the entry is written: a crash between the two leaves a claim
                # whose entry is missing and whose process is dead, which a retry may take.
                self.spool.settle_claim(sub.sender, key, entry_id)
                header["claim"] = self.spool.claim_name(sub.sender, key)
            entry = await asyncio.to_thread(self.spool.put, header, sub.data, entry_id)
        except (SpoolError, OSError):
            log.exception("cannot spool a message from %s", sub.user)
            if key:
                self.spool.unclaim_message_id(sub.sender, key)
            metrics.RELAY_MESSAGES.labels("not_spooled").inc()
            return Receipt(replies.NOT_SPOOLED)
        # From here on the message is ours: nothing below can make the reply a 4xx.
        attempt = self.queue.take(entry, sub.credentials, sub.data, prepared)
        told = False
        try:
            try:
                await asyncio.wait_for(asyncio.shield(attempt.attempted), self.policy.reply_within)
                finished = True
            except TimeoutError:
                finished = False
            reply, told = replies.reply_for(entry.copies, finished)
            self._log(sub, entry, prepared, reply)
        except Exception:  # noqa: BLE001 - spooled is accepted, whatever went wrong after it
            log.exception("after spooling %s", entry.id)
            reply, told = replies.QUEUED, False
        finally:
            attempt.tell(told)
        if told and key:  # refused outright: nothing was taken, the client may send it again
            await self.forget_claim(Claim(sub.sender, key))
            return Receipt(reply)
        return Receipt(reply, Claim(sub.sender, key) if key else None)

    def _header(
        self,
        sub: Submission,
        prepared: rewrite.Prepared,
        plan: list[tracking.SpooledDelivery],
        guard_sent_copy: bool,
    ) -> dict:
        copies = [
            {"rcpt": d.recipient, "token": d.token, "tracked": not d.untracked_reason}
            | ({"reason": d.untracked_reason} if d.untracked_reason else {})
            for d in plan
        ]
        if guard_sent_copy and sub.sender:
            # Gmail files the first copy of a Message-ID in the sender's Sent Mail and ignores
            # later ones: make that first copy one without a pixel, addressed to the sender, so
            # re-reading Sent never looks like a recipient opening the mail.
            guard = {
                "rcpt": sub.sender,
                "token": mint_token(self.exclusions.token_key),
                "tracked": False,
                "guard": True,
            }
            copies.insert(0, guard)
        return {
            "user": sub.user,
            "sender": sub.sender,
            "smtputf8": sub.smtputf8,
            "eight_bit": sub.eight_bit,
            "login": sub.credentials is not None,
            "arrival": time.time(),
            "subject": prepared.subject,
            "message_id": prepared.message_id,
            "sender_prefix": mask(sub.client_ip),
            "copies": copies,
        }

    def _log(self, sub: Submission, entry: Entry, prepared: rewrite.Prepared, reply: str) -> None:
        copies = entry.deliveries()
        sent = sum(c.status == ACCEPTED for c in copies)
        result = "sent" if sent == len(copies) else "partial" if sent else reply[:1] + "xx"
        metrics.RELAY_MESSAGES.labels(result).inc()
        log.info(
            "message %s from %s: %d/%d copies accepted at once, %s; replied %s",
            entry.id,
            sub.user,
            sent,
            len(copies),
            prepared.untracked_reason or "tracked",
            reply[:3],
        )


def names_only(message: bytes, recipients: Sequence[str]) -> bool:
    """Whether the message's To/Cc/Bcc name exactly its one envelope recipient: the only case
    where the Gmail API (which sends to the header's addresses) can carry one recipient's
    own copy."""
    return len(recipients) == 1 and header_recipients(message) == {recipients[0].lower()}


def resubmission_key(message_id: str, recipients: Sequence[str]) -> str:
    """What makes a submission "the same message again": its Message-ID and its recipients
    (a client that splits one message into several transactions, as some do for Bcc, reuses
    the Message-ID with other recipients). Not its bytes: a client that builds the message
    again for its retry picks a new MIME boundary and a new Date."""
    if not message_id.strip():
        return ""
    return message_id.strip() + "\0" + ",".join(sorted(r.lower() for r in recipients))
