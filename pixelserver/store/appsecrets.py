"""Secrets every process must share (the token tag key, the session key): made once in the
store by whichever process needs one first, then cached per process.
"""

from __future__ import annotations

import secrets

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.ext.asyncio import (
    AsyncSession,
)

from pixelserver.store.schema import AppSecret, Delivery, insert_ignore

_SECRETS: dict[tuple[str, str], str] = {}


async def cached_secret(session: AsyncSession, name: str) -> str:
    """app_secret, read once per process and store: shared secrets never change."""
    where = (str(session.bind.url), name)
    if where not in _SECRETS:
        _SECRETS[where] = await app_secret(session, name)
    return _SECRETS[where]


async def token_key(session: AsyncSession) -> bytes:
    """The key tokens are tagged with (pixelserver/tokens.py), shared by every process."""
    return (await cached_secret(session, "token_key")).encode()


async def has_untagged_tokens(session: AsyncSession) -> bool:
    """Whether any delivery still has a token minted before tags (last character with its
    four low bits clear: A, Q, g or w)."""
    row = await session.execute(
        select(Delivery.id)
        .where(func.substr(Delivery.token, 22, 1).in_(("A", "Q", "g", "w")))
        .limit(1)
    )
    return row.first() is not None


async def app_secret(session: AsyncSession, name: str) -> str:
    """A shared secret, made once by whichever process asks first."""
    await session.execute(
        insert_ignore(session, AppSecret.__table__).values(
            name=name, value=secrets.token_urlsafe(48)
        )
    )
    return (
        await session.execute(select(AppSecret.value).where(AppSecret.name == name))
    ).scalar_one()
