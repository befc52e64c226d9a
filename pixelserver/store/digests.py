"""The digest ledger: one row per user and local day, claimed in the database before sending.

The unique (user, day) row is the lock. Whoever inserts it sends; everyone else's insert does
nothing. A retry is claimed by a compare-and-set on its status, so two processes never both
pick up the same failed digest either. Nothing here knows how mail is sent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.store.schema import DigestRun, User, insert_ignore

SENDING = "sending"  # claimed; the mail is being composed or sent
SENT = "sent"
SKIPPED = "skipped"  # nothing to report and the user did not ask for empty digests
RETRY = "retry"  # the last attempt failed; next_try_at says when to try again
FAILED = "failed"  # given up after the last retry, or interrupted mid-send (never resent)


@dataclass(frozen=True)
class Claim:
    run_id: int
    user_id: int
    user: str
    day: dt.date
    start: dt.datetime
    end: dt.datetime
    attempts: int


async def next_period_start(session: AsyncSession, user_id: int) -> dt.datetime | None:
    """Where the next digest starts: the end of the latest one sent or skipped, or, when
    digests failed after it, the start of the first of those (so nothing goes unreported)."""
    done = (
        await session.execute(
            select(func.max(DigestRun.period_end)).where(
                DigestRun.user_id == user_id, DigestRun.status.in_((SENT, SKIPPED))
            )
        )
    ).scalar_one_or_none()
    failed = select(func.min(DigestRun.period_start)).where(
        DigestRun.user_id == user_id, DigestRun.status == FAILED
    )
    if done is not None:
        failed = failed.where(DigestRun.period_start >= done)
    return (await session.execute(failed)).scalar_one_or_none() or done


async def supersede(session: AsyncSession, user_id: int, day: dt.date) -> None:
    """A digest still waiting for a retry when the next one is due is dropped: one mail a day,
    and the new one covers its period."""
    await session.execute(
        update(DigestRun)
        .where(DigestRun.user_id == user_id, DigestRun.status == RETRY, DigestRun.day < day)
        .values(
            status=FAILED,
            next_try_at=None,
            last_error=DigestRun.last_error + " (given up: the next digest was due)",
        )
    )


async def claimed_days(
    session: AsyncSession, pairs: list[tuple[int, dt.date]]
) -> set[tuple[int, dt.date]]:
    """Which of these (user, day) digests already have a row (sent, skipped, failed or busy)."""
    if not pairs:
        return set()
    days = {d for _, d in pairs}
    rows = await session.execute(
        select(DigestRun.user_id, DigestRun.day).where(
            DigestRun.user_id.in_({u for u, _ in pairs}), DigestRun.day.in_(days)
        )
    )
    return {(u, d) for u, d in rows.all()}


async def claim(
    session: AsyncSession,
    *,
    user_id: int,
    user: str,
    day: dt.date,
    start: dt.datetime,
    end: dt.datetime,
    worker: str,
    now: dt.datetime,
) -> Claim | None:
    """Insert the (user, day) row; None when another process (or an earlier run) has it."""
    result = await session.execute(
        insert_ignore(session, DigestRun.__table__)
        .values(
            user_id=user_id,
            day=day,
            period_start=start,
            period_end=end,
            status=SENDING,
            claimed_by=worker[:100],
            claimed_at=now,
            attempts=0,
            last_error="",
        )
        .returning(DigestRun.__table__.c.id)
    )
    run_id = result.scalar_one_or_none()
    if run_id is None:
        return None
    return Claim(run_id, user_id, user, day, start, end, 0)


async def claim_retries(session: AsyncSession, worker: str, now: dt.datetime) -> list[Claim]:
    """Failed digests whose next try is due, each taken by compare-and-set on its status."""
    due = (
        await session.execute(
            select(DigestRun, User.address)
            .join(User, User.id == DigestRun.user_id)
            .where(DigestRun.status == RETRY, DigestRun.next_try_at <= now)
        )
    ).all()
    claims = []
    for run, address in due:
        taken = await session.execute(
            update(DigestRun)
            .where(DigestRun.id == run.id, DigestRun.status == RETRY)
            .values(status=SENDING, claimed_by=worker[:100], claimed_at=now)
        )
        if taken.rowcount == 1:
            claims.append(
                Claim(
                    run.id,
                    run.user_id,
                    address,
                    run.day,
                    run.period_start,
                    run.period_end,
                    run.attempts,
                )
            )
    return claims


async def finish(
    session: AsyncSession,
    run_id: int,
    status: str,
    *,
    now: dt.datetime,
    error: str = "",
    next_try_at: dt.datetime | None = None,
) -> None:
    values: dict[str, object] = {
        "status": status,
        "last_error": error[:2000],
        "next_try_at": next_try_at,
        "attempts": DigestRun.attempts + (0 if status == SKIPPED else 1),
    }
    if status == SENT:
        values["sent_at"] = now
    await session.execute(update(DigestRun).where(DigestRun.id == run_id).values(**values))


async def abandon_interrupted(session: AsyncSession, older_than: dt.datetime) -> int:
    """Digests left "sending" by a process that died: it may have sent them, so they are
    marked failed (and shown as such) instead of being sent a second time."""
    result = await session.execute(
        update(DigestRun)
        .where(DigestRun.status == SENDING, DigestRun.claimed_at < older_than)
        .values(
            status=FAILED,
            last_error="interrupted while sending; not sent again in case it went out",
        )
    )
    return result.rowcount or 0


async def latest(session: AsyncSession, address: str) -> DigestRun | None:
    """The user's most recent digest, for the Settings page."""
    return (
        await session.execute(
            select(DigestRun)
            .join(User, User.id == DigestRun.user_id)
            .where(User.address == address.strip().lower(), DigestRun.status != SKIPPED)
            .order_by(DigestRun.day.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
