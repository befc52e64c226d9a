"""Each user's own settings: when their digest comes, and whom never to track.

Stored on the user row with NULL meaning "the [digest] default from the config file", so a
changed default reaches everyone who never chose otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.config import DigestConfig, is_timezone
from pixelserver.store.accounts import get_or_create_user
from pixelserver.store.schema import User
from pixelserver.verdicts import exclusions


class PreferenceError(ValueError):
    """A setting the form cannot take; the message names the field."""


@dataclass(frozen=True)
class DigestPrefs:
    enabled: bool
    hour: int
    timezone: str
    send_empty: bool


@dataclass(frozen=True)
class Preferences:
    digest: DigestPrefs
    exclusions: tuple[str, ...]


def effective(user: User | None, defaults: DigestConfig) -> DigestPrefs:
    def pick(mine: object, default: object) -> object:
        return default if mine is None else mine

    if user is None:
        return DigestPrefs(defaults.enabled, defaults.hour, defaults.timezone, defaults.send_empty)
    return DigestPrefs(
        enabled=bool(pick(user.digest_enabled, defaults.enabled)),
        hour=int(pick(user.digest_hour, defaults.hour)),  # type: ignore[call-overload]
        # A zone removed from tzdata since it was chosen falls back rather than stop digests.
        timezone=user.digest_timezone
        if user.digest_timezone and is_timezone(user.digest_timezone)
        else defaults.timezone,
        send_empty=bool(pick(user.digest_empty, defaults.send_empty)),
    )


def check_digest(enabled: bool, hour: str, timezone: str, send_empty: bool) -> DigestPrefs:
    if not hour.isdigit() or not 0 <= int(hour) <= 23:
        raise PreferenceError(f"Hour: choose an hour from 0 to 23, not {hour!r}.")
    timezone = timezone.strip()
    if not is_timezone(timezone):
        raise PreferenceError(f"Time zone: {timezone!r} is not a time zone such as Europe/Paris.")
    return DigestPrefs(enabled, int(hour), timezone, send_empty)


async def load(session: AsyncSession, address: str, defaults: DigestConfig) -> Preferences:
    user = (
        await session.execute(select(User).where(User.address == address.strip().lower()))
    ).scalar_one_or_none()
    return Preferences(
        effective(user, defaults), tuple(user.exclusions or ()) if user is not None else ()
    )


async def save(
    session: AsyncSession, address: str, digest: DigestPrefs, exclusion_text: str
) -> None:
    try:
        entries = exclusions.parse(exclusion_text)
    except exclusions.ExclusionError as exc:
        raise PreferenceError(f"Never track: {exc}.") from None
    user = await get_or_create_user(session, address)
    await session.execute(
        update(User)
        .where(User.id == user.id)
        .values(
            digest_enabled=digest.enabled,
            digest_hour=digest.hour,
            digest_timezone=digest.timezone,
            digest_empty=digest.send_empty,
            exclusions=entries,
        )
    )
