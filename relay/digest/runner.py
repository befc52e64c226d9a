"""Sends each user's digest once a day, from the process that runs the relay.

Every minute: find users whose digest hour has passed, claim their (user, day) row in the
database (the claim is committed before anything is sent, so several MailPing processes on one
PostgreSQL send one digest), compose it from the stored states and hand it to the upstream
directly — never through the relay's rewriting. A refused or failed send is retried with
backoff by whichever process gets there first, then given up and shown on the Settings page.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.config import DigestConfig
from pixelserver.store import digests
from pixelserver.store.preferences import DigestPrefs, effective
from pixelserver.store.schema import User
from relay import metrics
from relay.digest import compose, schedule
from relay.digest.query import DigestData, collect
from relay.forward import ACCEPTED, Copy, CopyKind, Credentials, Upstream
from relay.passes import run_passes

log = logging.getLogger("mailping.digest")

RETRY_DELAYS = (60, 300, 1800, 7200)  # seconds after the 1st, 2nd, 3rd and 4th failure
INTERRUPTED_AFTER = dt.timedelta(minutes=30)  # a claim older than this died with its process
Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UnknownUser(LookupError):
    """No user with this address has sent mail through MailPing."""


@dataclass(frozen=True)
class Sent:
    """What one attempt did, for logs and tests."""

    user: str
    day: dt.date
    status: str
    error: str = ""


class DigestRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        upstream: Upstream,
        config: DigestConfig,
        *,
        report_url: str,
        hostname: str,
        credentials: Credentials | None = None,
        clock: Clock = system_clock,
        worker: str | None = None,
        retry_delays: Sequence[int] = RETRY_DELAYS,
    ) -> None:
        self.sessions = sessions
        self.upstream = upstream
        self.config = config
        self.report_url = config.report_url or report_url
        self.hostname = hostname
        self.sender = config.from_address or f"mailping@{hostname}"
        self.credentials = credentials
        self.clock = clock
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.retry_delays = tuple(retry_delays)

    @property
    def upstream_name(self) -> str:
        describe = getattr(self.upstream, "describe", None)
        return describe() if describe else type(self.upstream).__name__

    async def tick(self) -> list[Sent]:
        """One pass: claim and send every digest due now, and every retry due now."""
        now = self.clock()
        claims: list[tuple[digests.Claim, DigestPrefs]] = []
        async with self.sessions.begin() as session:
            await digests.abandon_interrupted(session, now - INTERRUPTED_AFTER)
            users = list((await session.execute(select(User))).scalars())
            due = []
            for user in users:
                prefs = effective(user, self.config)
                if not prefs.enabled:
                    continue
                tz = ZoneInfo(prefs.timezone)
                day = schedule.due_day(now, prefs.hour, tz, not_before=user.created_at)
                if day is not None:
                    due.append((user, prefs, day))
            taken = await digests.claimed_days(session, [(u.id, d) for u, _, d in due])
            prefs_of = {u.id: p for u, p, _ in due}
            for user, prefs, day in due:
                if (user.id, day) in taken:
                    continue
                await digests.supersede(session, user.id, day)
                start, end = schedule.period(
                    now,
                    day,
                    prefs.hour,
                    ZoneInfo(prefs.timezone),
                    await digests.next_period_start(session, user.id),
                )
                c = await digests.claim(
                    session,
                    user_id=user.id,
                    user=user.address,
                    day=day,
                    start=start,
                    end=end,
                    worker=self.worker,
                    now=now,
                )
                if c is not None:
                    claims.append((c, prefs))
            for c in await digests.claim_retries(session, self.worker, now):
                user = next((u for u in users if u.id == c.user_id), None)
                claims.append((c, prefs_of.get(c.user_id) or effective(user, self.config)))
        # Committed: every claim above is ours alone. Now compose and send, one at a time.
        return [await self._deliver(c, prefs, now) for c, prefs in claims]

    async def _deliver(self, c: digests.Claim, prefs: DigestPrefs, now: dt.datetime) -> Sent:
        async with self.sessions() as session:
            data = await collect(session, c.user, c.start, c.end)
        if data.empty and not prefs.send_empty:
            await self._finish(c, digests.SKIPPED, now)
            return Sent(c.user, c.day, digests.SKIPPED)
        raw = self.render(data, prefs, now)
        try:
            (outcome,) = await self.upstream.send(
                self.sender,
                [Copy(CopyKind.DIGEST, str(c.run_id), c.user)],
                lambda _copy: [raw],
                credentials=self.credentials,
            )
        except Exception as exc:  # noqa: BLE001 - any failure of one digest is retried, not fatal
            log.exception("digest for %s could not be sent", c.user)
            return await self._failed(c, now, f"{type(exc).__name__}: {exc}", retry=True)
        if outcome.status == ACCEPTED:
            await self._finish(c, digests.SENT, now)
            log.info("digest for %s (%s) sent", c.user, c.day)
            return Sent(c.user, c.day, digests.SENT)
        reply = f"{outcome.code} {outcome.reply}"
        return await self._failed(c, now, reply, retry=not outcome.uncertain)

    def render(self, data: DigestData, prefs: DigestPrefs, now: dt.datetime) -> bytes:
        mail = compose.compose(data, ZoneInfo(prefs.timezone), self.report_url, now)
        msg = compose.to_message(
            mail, sender=self.sender, to=data.user, hostname=self.hostname, now=now
        )
        return msg.as_bytes()

    async def _current(self, address: str) -> tuple[User, DigestPrefs, DigestData, dt.datetime]:
        """The user, their settings and what their digest would say now (since their last
        one, or the last 24 hours), without claiming or recording anything."""
        now = self.clock()
        async with self.sessions() as session:
            user = (
                await session.execute(select(User).where(User.address == address.lower()))
            ).scalar_one_or_none()
            if user is None:
                raise UnknownUser(address)
            start = await digests.next_period_start(session, user.id)
            data = await collect(session, user.address, start or now - dt.timedelta(days=1), now)
        return user, effective(user, self.config), data, now

    async def preview(self, address: str) -> tuple[DigestData, compose.DigestMail]:
        _, prefs, data, now = await self._current(address)
        return data, compose.compose(data, ZoneInfo(prefs.timezone), self.report_url, now)

    async def send_now(self, address: str) -> Sent:
        """Send the digest at once. Not recorded in the ledger: the scheduled digest still
        comes at its hour."""
        user, prefs, data, now = await self._current(address)
        raw = self.render(data, prefs, now)
        (outcome,) = await self.upstream.send(
            self.sender,
            [Copy(CopyKind.DIGEST, f"now-{user.id}", user.address)],
            lambda _c: [raw],
            credentials=self.credentials,
        )
        day = now.astimezone(ZoneInfo(prefs.timezone)).date()
        if outcome.status == ACCEPTED:
            return Sent(user.address, day, digests.SENT)
        return Sent(user.address, day, digests.FAILED, f"{outcome.code} {outcome.reply}")

    async def _failed(self, c: digests.Claim, now: dt.datetime, error: str, retry: bool) -> Sent:
        attempt = c.attempts + 1
        if retry and attempt <= len(self.retry_delays):
            delay = self.retry_delays[attempt - 1]
            log.warning(
                "digest for %s (%s) failed (attempt %d), retrying in %d s: %s",
                c.user,
                c.day,
                attempt,
                delay,
                error,
            )
            await self._finish(
                c,
                digests.RETRY,
                now,
                error=error,
                next_try_at=now + dt.timedelta(seconds=delay),
            )
            return Sent(c.user, c.day, digests.RETRY, error)
        log.error(
            "digest for %s (%s) not sent after %d attempts: %s", c.user, c.day, attempt, error
        )
        await self._finish(c, digests.FAILED, now, error=error)
        return Sent(c.user, c.day, digests.FAILED, error)

    async def _finish(
        self,
        c: digests.Claim,
        status: str,
        now: dt.datetime,
        error: str = "",
        next_try_at: dt.datetime | None = None,
    ) -> None:
        metrics.DIGESTS.labels(status).inc()
        async with self.sessions.begin() as session:
            await digests.finish(
                session, c.run_id, status, now=now, error=error, next_try_at=next_try_at
            )

    async def run_forever(self, interval: float = 60.0) -> None:
        """Pass after pass for as long as the process runs. Any error of one pass (the store
        away: asyncpg's connection errors are OSErrors, not SQLAlchemy's) is logged and the
        next pass tries again; a digest that fell due meanwhile is sent then."""
        await run_passes(self.tick, "digest", interval, log)
