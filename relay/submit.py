"""One submission, end to end: prepare once, record, render per recipient, forward, report.

This is the domain code the SMTP handler calls; it knows nothing of SMTP sessions, so it can be
driven directly by benchmarks and by the digest sender later.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import metrics
from pixelserver.networks import mask
from relay import rewrite, tracking
from relay.dsn import build_dsn
from relay.forward import ACCEPTED, Copy, Credentials, Outcome, Render, Upstream
from relay.providers import is_google_host as is_google_host  # its callers import it here

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


@dataclass(frozen=True)
class Result:
    message_id: int | None
    outcomes: list[Outcome]
    untracked_reason: str | None


def unique_recipients(recipients: Sequence[str]) -> list[str]:
    """A recipient named twice in RCPT gets one copy, not two."""
    seen: set[str] = set()
    out = []
    for r in recipients:
        if r.lower() not in seen:
            seen.add(r.lower())
            out.append(r)
    return out


GUARD_KEY = 0  # the Sent-folder guard copy: sent, but not a delivery


def _count(outcomes: list[Outcome], accepted: int) -> None:
    result = "sent" if accepted == len(outcomes) else "partial" if accepted else "failed"
    metrics.RELAY_MESSAGES.labels(result).inc()
    for o in outcomes:
        metrics.RELAY_COPIES.labels(o.status).inc()
        if o.status != ACCEPTED:
            metrics.UPSTREAM_ERRORS.labels("uncertain" if o.uncertain else o.status).inc()


class Relay:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        upstream: Upstream,
        *,
        public_url: str,
        pixel_path: str,
        hostname: str,
        guard_sent_copy: bool = False,
    ) -> None:
        self.sessions = sessions
        self.upstream = upstream
        self.public_url = public_url
        self.pixel_path = pixel_path
        self.hostname = hostname
        self.guard_sent_copy = guard_sent_copy

    async def submit(self, sub: Submission) -> Result:
        arrival = dt.datetime.now(dt.UTC)
        prepared = rewrite.prepare(sub.data)
        recipients = unique_recipients(sub.recipients)
        recorded = await self._record(sub, prepared, recipients)
        copies, render = self._plan(sub, prepared, recorded, recipients)
        started = time.perf_counter()
        sent = await self.upstream.send(
            sub.sender,
            copies,
            render,
            smtputf8=sub.smtputf8,
            eight_bit=sub.eight_bit,
            credentials=sub.credentials,
        )
        metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - started)
        outcomes = [o for o in sent if o.key != GUARD_KEY]
        for o in sent:
            if o.key == GUARD_KEY and o.status != ACCEPTED:
                log.warning("the Sent-folder guard copy was not accepted: %s", o.reply)
        if recorded is not None:
            try:
                await tracking.record_outcomes(
                    self.sessions, [(o.key, o.status, o.reply) for o in outcomes]
                )
            except SQLAlchemyError:
                log.exception("could not record delivery outcomes for message %s", recorded.id)
        accepted = sum(o.status == ACCEPTED for o in outcomes)
        _count(outcomes, accepted)
        log.info(
            "message %s from %s: %d/%d copies accepted, %s",
            recorded.id if recorded else "-",
            sub.user,
            accepted,
            len(outcomes),
            prepared.untracked_reason or "tracked",
        )
        for o in outcomes:
            if o.status != ACCEPTED:
                log.warning("copy to %s %s: %s %s", o.recipient, o.status, o.code, o.reply)
        if 0 < accepted < len(outcomes):
            await self._report_failures(sub, outcomes, arrival)
        return Result(recorded.id if recorded else None, outcomes, prepared.untracked_reason)

    async def _record(
        self, sub: Submission, prepared: rewrite.Prepared, recipients: list[str]
    ) -> tracking.RecordedMessage | None:
        try:
            return await tracking.record_message(
                self.sessions,
                user=sub.user,
                envelope_from=sub.sender,
                recipients=recipients,
                subject=prepared.subject,
                message_id_header=prepared.message_id,
                size=len(sub.data),
                untracked_reason=prepared.untracked_reason,
                sender_prefix=mask(sub.client_ip),
            )
        except SQLAlchemyError:
            # The store is down: the mail still goes out, untracked, rather than waiting on us.
            log.exception("could not record the message; forwarding it untracked")
            return None

    def _plan(
        self,
        sub: Submission,
        prepared: rewrite.Prepared,
        recorded: tracking.RecordedMessage | None,
        recipients: list[str],
    ) -> tuple[list[Copy], Render]:
        """The copies to send, in order, and how to render each (one copy at a time, so a
        large message to many recipients never holds more than one rendered copy)."""
        if recorded is None:
            copies = [Copy(-i - 1, r) for i, r in enumerate(recipients)]
        else:
            copies = [Copy(d.id, d.recipient) for d in recorded.deliveries]
        if recorded is None or not prepared.tracked:
            return copies, lambda _c: rewrite.untouched_chunks(sub.data)
        tokens = {d.id: d.token for d in recorded.deliveries if d.tracked}

        def render(copy: Copy) -> rewrite.Chunks:
            if copy.key not in tokens:  # the Sent-folder guard, an excluded recipient
                return rewrite.untouched_chunks(sub.data)
            url = tracking.pixel_url(self.public_url, self.pixel_path, tokens[copy.key])
            return rewrite.render_chunks(prepared, url)

        if self.guard_sent_copy and sub.sender:
            # Gmail files the first copy of a Message-ID in the sender's Sent Mail and ignores
            # later ones: make that first copy one without a pixel, addressed to the sender, so
            # re-reading Sent never looks like a recipient opening the mail.
            copies.insert(0, Copy(GUARD_KEY, sub.sender))
        return copies, render

    async def _report_failures(
        self, sub: Submission, outcomes: list[Outcome], arrival: dt.datetime
    ) -> None:
        report = build_dsn(
            reporting_host=self.hostname,
            user_address=sub.sender or sub.user,
            original=sub.data,
            outcomes=outcomes,
            arrival=arrival,
        )
        to = sub.sender or sub.user
        sent = await self.upstream.send(
            to, [Copy(0, to)], lambda _c: [report], credentials=sub.credentials
        )
        if sent[0].status != ACCEPTED:
            log.error("could not send the delivery report to %s: %s", to, sent[0].reply)
