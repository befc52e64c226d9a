"""Recording each delivery's mailbox provider: the store side of pixelserver/verdicts/mailbox.py.

The lookups are the verdicts' facts; writing their answers into deliveries belongs to the
store, so the judging layer never imports it.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.store.schema import Delivery
from pixelserver.verdicts.mailbox import DEFAULT_RESOLVER, MxResolver, domain_of

log = logging.getLogger("pixelserver.verdicts.mailbox")


class MailboxRefresher:
    """Fills in the mailbox provider of deliveries that lack one, a batch at a time.

    Runs beside the hit pipeline; the relay's writes need not know about it. Domains are
    resolved once per pass (and cached for their TTL); deliveries whose domain could not be
    resolved stay NULL and are tried again later."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        resolver: MxResolver | None = None,
        *,
        interval: float = 30.0,
        batch: int = 500,
        concurrency: int = 16,
    ) -> None:
        self.sessions = sessions
        self.resolver = resolver or DEFAULT_RESOLVER
        self.interval = interval
        self.batch = batch
        self._limit = asyncio.Semaphore(concurrency)

    async def refresh_once(self) -> int:
        """One pass; returns how many deliveries got a provider (known or "")."""
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Delivery.id, Delivery.recipient)
                    .where(Delivery.mailbox_provider.is_(None))
                    .order_by(Delivery.id.desc())
                    .limit(self.batch)
                )
            ).all()
        by_domain: dict[str, list[int]] = {}
        for delivery_id, recipient in rows:
            by_domain.setdefault(domain_of(recipient or ""), []).append(delivery_id)

        async def one(domain: str) -> tuple[str, str | None]:
            async with self._limit:
                return domain, await self.resolver.provider(domain)

        answers = await asyncio.gather(*(one(d) for d in by_domain))
        done = 0
        async with self.sessions.begin() as session:
            for domain, provider in answers:
                if provider is None:
                    continue
                ids = by_domain[domain]
                await session.execute(
                    update(Delivery).where(Delivery.id.in_(ids)).values(mailbox_provider=provider)
                )
                done += len(ids)
        return done

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store may be away; try next time
                log.warning("mailbox provider refresh failed: %s", exc)
