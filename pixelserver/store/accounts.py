"""Who may use MailPing: users (one row per normalised sender address), local logins, API
tokens and the networks users log in from (their own fetches are told apart by them).

Addresses are normalised in one place (`get_or_create_user`), so a user found by the relay is
the same row the pages and the API find.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import (
    delete,
    select,
    update,
)
from sqlalchemy.ext.asyncio import (
    AsyncSession,
)

from pixelserver.store.schema import ApiToken, LocalUser, User, UserNetwork, insert_ignore, utcnow


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_api_token(session: AsyncSession, user_address: str, name: str) -> str:
    """Returns the token itself, which is shown once and never stored."""
    user = await get_or_create_user(session, user_address)
    token = "mp_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name[:100] or "token", token_hash=token_hash(token)))
    await session.flush()
    return token


async def api_token_user(session: AsyncSession, token: str) -> str | None:
    row = (
        await session.execute(
            select(ApiToken.id, User.address)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == token_hash(token))
        )
    ).first()
    if row is None:
        return None
    await session.execute(
        update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=utcnow())
    )
    return row.address


async def api_tokens(session: AsyncSession, user_address: str) -> list[ApiToken]:
    return list(
        (
            await session.execute(
                select(ApiToken)
                .join(User, User.id == ApiToken.user_id)
                .where(User.address == user_address.lower())
                .order_by(ApiToken.id)
            )
        ).scalars()
    )


async def revoke_api_token(session: AsyncSession, user_address: str, token_id: int) -> bool:
    owner = select(User.id).where(User.address == user_address.lower()).scalar_subquery()
    result = await session.execute(
        delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == owner)
    )
    return bool(result.rowcount)


async def user_exists(session: AsyncSession, user_address: str) -> bool:
    return (await session.execute(select(user_id_of(user_address)))).scalar() is not None


def user_id_of(user_address: str) -> Any:
    return select(User.id).where(User.address == user_address.strip().lower()).scalar_subquery()


async def revoke_user_tokens(session: AsyncSession, user_address: str) -> int:
    result = await session.execute(
        delete(ApiToken).where(ApiToken.user_id == user_id_of(user_address))
    )
    return result.rowcount or 0


async def get_or_create_user(session: AsyncSession, address: str) -> User:
    address = address.strip().lower()
    user = (await session.execute(select(User).where(User.address == address))).scalar_one_or_none()
    if user is None:
        ins = insert_ignore(session, User.__table__).values(address=address, created_at=utcnow())
        await session.execute(ins)
        user = (await session.execute(select(User).where(User.address == address))).scalar_one()
    return user


async def local_user_hash(session: AsyncSession, username: str) -> str | None:
    return (
        await session.execute(
            select(LocalUser.password_hash).where(LocalUser.username == username.lower())
        )
    ).scalar_one_or_none()


async def set_local_user(session: AsyncSession, username: str, password_hash: str) -> bool:
    """Create or replace; True when the user is new."""
    user = (
        await session.execute(select(LocalUser).where(LocalUser.username == username.lower()))
    ).scalar_one_or_none()
    if user is None:
        session.add(LocalUser(username=username.lower(), password_hash=password_hash))
        return True
    user.password_hash = password_hash
    return False


async def remove_local_user(session: AsyncSession, username: str) -> bool:
    user = (
        await session.execute(select(LocalUser).where(LocalUser.username == username.lower()))
    ).scalar_one_or_none()
    if user is None:
        return False
    await session.delete(user)
    return True


async def local_usernames(session: AsyncSession) -> list[str]:
    return list((await session.execute(select(LocalUser.username).order_by("username"))).scalars())


async def add_user_network(session: AsyncSession, user_address: str, prefix: str) -> None:
    """Remember a network the user logged in from (idempotent)."""
    if not prefix:
        return
    user = await get_or_create_user(session, user_address)
    await session.execute(
        insert_ignore(session, UserNetwork.__table__).values(
            user_id=user.id, prefix=prefix, seen_at=utcnow()
        )
    )
