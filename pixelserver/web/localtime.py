"""Times as the user reads them: in the time zone chosen in Settings, and relative where a
duration says more than a clock ("2 h after sending").

The store keeps UTC; only what is shown (pages, exports, notifications) is converted, here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.config import DigestConfig
from pixelserver.store.preferences import effective
from pixelserver.store.schema import User


async def user_zone(session: AsyncSession, address: str | None, defaults: DigestConfig) -> str:
    """The user's time zone from Settings; the configured default for the demo (no user)."""
    user = None
    if address is not None:
        user = (
            await session.execute(select(User).where(User.address == address.strip().lower()))
        ).scalar_one_or_none()
    return effective(user, defaults).timezone


def duration_words(seconds: float) -> str:
    """A duration as people say it: 40 s, 12 min, 2 h, 2 h 30 min, 3 days."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h" + (f" {rest} min" if rest and hours < 10 else "")
    days = hours // 24
    return f"{days} day" + ("s" if days > 1 else "")


@dataclass(frozen=True)
class LocalTime:
    """Formatting for one user's page; made once per request."""

    zone: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    def __call__(self, value: dt.datetime | None, *, seconds: bool = False) -> str:
        """ "2026-12-07 10:15 CET": the user's clock, with the zone's abbreviation so a
        screenshot or a forwarded export cannot be misread."""
        if value is None:
            return "–"
        local = value.astimezone(self.tz)
        return local.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")

    def clock(self, value: dt.datetime | None) -> str:
        """Only the time of day and zone, for a line that already says the day."""
        return value.astimezone(self.tz).strftime("%H:%M %Z") if value else "–"

    def iso(self, value: dt.datetime | None) -> str | None:
        """ISO 8601 with the user's offset, for exports: exact, and readable as local."""
        return value.astimezone(self.tz).isoformat() if value else None

    def after_sending(self, value: dt.datetime | None, sent: dt.datetime | None) -> str:
        """ "2 h after sending" (or "at sending" within a second)."""
        if value is None or sent is None:
            return ""
        seconds = (value - sent).total_seconds()
        return "at sending" if seconds < 1 else f"{duration_words(seconds)} after sending"

    def ago(self, value: dt.datetime | None, now: dt.datetime | None = None) -> str:
        if value is None:
            return ""
        now = now or dt.datetime.now(dt.UTC)
        seconds = (now - value).total_seconds()
        return "just now" if seconds < 60 else f"{duration_words(seconds)} ago"
