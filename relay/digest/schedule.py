"""When a digest is due: pure, with the clock passed in, so DST and downtime can be tested.

A user's digest for local day D is due at D's `hour`:00 in their time zone. On the day a
clock skips that hour (spring forward) it comes at the first moment that exists after it; on
the day the hour happens twice (fall back) it comes the first time. After downtime only the
latest due day is sent: older ones are not worth an email any more.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo


def send_moment(day: dt.date, hour: int, tz: ZoneInfo) -> dt.datetime:
    """D at hour:00 local, in UTC. zoneinfo maps a skipped wall time with fold=0 to the
    offset before the change (02:00 that does not exist -> 03:00 new time) and picks the first
    of a repeated one, which is what a person would expect from an alarm clock."""
    local = dt.datetime.combine(day, dt.time(hour), tzinfo=tz)
    return local.astimezone(dt.UTC)


def due_day(
    now: dt.datetime, hour: int, tz: ZoneInfo, not_before: dt.datetime | None = None
) -> dt.date | None:
    """The latest local day whose send moment has passed at `now`; None when that moment is
    before `not_before` (a user who signed up after this morning's hour gets tomorrow's)."""
    today = now.astimezone(tz).date()
    for day in (today, today - dt.timedelta(days=1)):
        moment = send_moment(day, hour, tz)
        if moment <= now:
            if not_before is not None and moment < not_before:
                return None
            return day
    return None  # unreachable: yesterday's moment is always past


def period(
    now: dt.datetime, day: dt.date, hour: int, tz: ZoneInfo, previous_end: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    """What a digest covers: since the previous digest's end, or else the 24 hours before its
    send moment, up to now (a late digest includes what happened while it waited)."""
    start = previous_end or send_moment(day, hour, tz) - dt.timedelta(days=1)
    return start, now
