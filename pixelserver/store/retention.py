"""Retention: what is older than [privacy] retention_days is deleted, checked every hour.

Everything that holds people's data is covered: messages, deliveries and hits; the networks
users logged in from (kept only as long as they are used, 30 days); the digest ledger;
expired web sessions and login-attempt windows; the copies in the local outbox; hit journals
left behind by processes that no longer run. With several processes on one PostgreSQL each
purges; the deletes are idempotent, so that is only repeated work, never wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import (
    delete,
    select,
)
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_sessionmaker,
)

from pixelserver.store import throttle
from pixelserver.store.hitrecords import SENDER_NETWORK_DAYS
from pixelserver.store.schema import Delivery, DigestRun, Hit, Message, UserNetwork
from pixelserver.store.websessions import SessionLimits, purge_web_sessions

log = logging.getLogger("mailping.retention")
INTERVAL = 3600.0
JOURNAL_PATTERNS = ("hits*.journal", "hits*.compact")


async def purge_once(
    sessions: async_sessionmaker[AsyncSession],
    days: int,
    *,
    outbox_dir: Path | None = None,
    data_dir: Path | None = None,
    keep_journals: Iterable[Path] = (),
    limits: SessionLimits | None = None,
) -> tuple[int, int]:
    """One pass; returns (messages, hits) deleted (the rest is logged)."""
    now = dt.datetime.now(dt.UTC)
    cutoff = now - dt.timedelta(days=days)
    async with sessions.begin() as session:
        messages, hits = await purge_before(session, cutoff)
        others = await purge_people_data(session, cutoff, now)
        others["web sessions"] = await purge_web_sessions(session, limits or SessionLimits(), now)
        others["login attempt windows"] = await throttle.purge(session)
    files = 0
    if outbox_dir is not None:
        files += purge_files(outbox_dir, ("*.eml", "digests/*.eml"), cutoff)
    if data_dir is not None:
        files += purge_files(data_dir, JOURNAL_PATTERNS, cutoff, keep=keep_journals)
    others["files"] = files
    if messages or hits or any(others.values()):
        log.info(
            "retention: deleted %d messages and %d hits older than %d days; %s",
            messages,
            hits,
            days,
            ", ".join(f"{n} {what}" for what, n in others.items() if n) or "nothing else",
        )
    return messages, hits


def purge_files(
    folder: Path, patterns: Iterable[str], cutoff: dt.datetime, *, keep: Iterable[Path] = ()
) -> int:
    """Delete files under `folder` matching `patterns` last written before `cutoff`, except
    `keep` (a running process's own journal is never pulled from under it)."""
    kept = {p.resolve() for p in keep}
    gone = 0
    for pattern in patterns:
        for path in folder.glob(pattern):
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
                if path.resolve() in kept or not path.is_file():
                    continue
                if dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC) < cutoff:
                    path.unlink()
                    gone += 1
    return gone


async def purge_forever(
    sessions: async_sessionmaker[AsyncSession],
    days: int,
    interval: float = INTERVAL,
    **where: object,
) -> None:
    """Purge every `interval` seconds, for as long as the process runs: any failure (the
    store away, a file that cannot be removed) is logged and tried again next time."""
    while True:
        try:
            await purge_once(sessions, days, **where)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
            log.warning("retention purge failed (%s); will try again", exc)
        await asyncio.sleep(interval)


async def purge_before(session: AsyncSession, cutoff: dt.datetime) -> tuple[int, int]:
    """Delete messages accepted before `cutoff` (with their deliveries and hits) and any hit
    older than it; returns (messages, hits) deleted."""
    hits = (await session.execute(delete(Hit).where(Hit.at < cutoff))).rowcount or 0
    old = select(Message.id).where(Message.accepted_at < cutoff)
    await session.execute(
        delete(Hit).where(
            Hit.delivery_id.in_(select(Delivery.id).where(Delivery.message_id.in_(old)))
        )
    )
    await session.execute(delete(Delivery).where(Delivery.message_id.in_(old)))
    messages = (
        await session.execute(delete(Message).where(Message.accepted_at < cutoff))
    ).rowcount or 0
    return messages, hits


async def purge_people_data(
    session: AsyncSession, cutoff: dt.datetime, now: dt.datetime
) -> dict[str, int]:
    """What retention deletes beside messages and hits: digest ledger rows claimed before
    `cutoff`, and networks users logged in from that are older than `cutoff` or than the
    30 days they serve for (SenderNetworks), whichever is sooner."""
    networks_cutoff = max(cutoff, now - dt.timedelta(days=SENDER_NETWORK_DAYS))
    networks = await session.execute(
        delete(UserNetwork).where(UserNetwork.seen_at < networks_cutoff)
    )
    digests = await session.execute(delete(DigestRun).where(DigestRun.claimed_at < cutoff))
    return {"user networks": networks.rowcount or 0, "digest ledger rows": digests.rowcount or 0}
