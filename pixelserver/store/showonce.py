"""One-time values waiting to be shown: a new API token or mail-program password, made by a
Settings form whose post answers with a redirect, waits here until the page it leads to shows
it. The store keeps only the hashes of tokens and passwords, so the value itself must wait
somewhere: here, for SHOW_WITHIN seconds at most, sealed with a key the store never sees (the
web layer gives it to the browser in a short-lived cookie). Taking a value deletes it in the
same statement that proves it was still there, so two page views, in any processes, cannot
both get it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String, Text, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from pixelserver.store.accounts import get_or_create_user, user_id_of
from pixelserver.store.schema import Base, BigId, UTCDateTime, utcnow

SHOW_WITHIN = 120  # seconds from the post to the page that shows the value
API_TOKEN, MAIL_PASSWORD = "api_token", "mail_password"


class ShownOnce(Base):
    """A value to show its user once; `sealed` is ciphertext whose key only their browser
    holds (never the value in clear)."""

    __tablename__ = "shown_once"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("user_account.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    sealed: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


async def hold(session: AsyncSession, address: str, kind: str, sealed: str) -> int:
    """Keep a sealed value for `address` to take once; returns its id. Values held past their
    time (never shown) are dropped here, so nothing waits longer than SHOW_WITHIN."""
    now = utcnow()
    await session.execute(delete(ShownOnce).where(ShownOnce.expires_at <= now))
    user = await get_or_create_user(session, address)
    row = ShownOnce(
        user_id=user.id,
        kind=kind,
        sealed=sealed,
        expires_at=now + dt.timedelta(seconds=SHOW_WITHIN),
    )
    session.add(row)
    await session.flush()
    return row.id


async def take(session: AsyncSession, held_id: int, address: str) -> tuple[str, str] | None:
    """(kind, sealed value) of this user's held value if still in time, deleted by the same
    compare-and-set (only the view whose delete removed the row gets it); None otherwise."""
    mine = (
        ShownOnce.id == held_id,
        ShownOnce.user_id == user_id_of(address),
        ShownOnce.expires_at > utcnow(),
    )
    row = (await session.execute(select(ShownOnce.kind, ShownOnce.sealed).where(*mine))).first()
    if row is None:
        return None
    taken = await session.execute(delete(ShownOnce).where(ShownOnce.id == held_id))
    if taken.rowcount != 1:
        return None
    return row.kind, row.sealed
