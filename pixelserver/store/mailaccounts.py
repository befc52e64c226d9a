"""Users' own mail accounts connected with OAuth 2.0 (Settings, "Connect your Microsoft 365
account" / "... Google account"), so the relay forwards each user's mail as that user.

The refresh token is a key to someone's mailbox: it is kept only encrypted (Fernet: AES-128-CBC
with an HMAC-SHA256 tag) with a key from the environment (connect.key_env), never in the
database in clear and never in a log. Access tokens are never stored at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import ForeignKey, String, Text, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from pixelserver.store.accounts import get_or_create_user, user_id_of
from pixelserver.store.schema import Base, BigId, UTCDateTime, utcnow

PROVIDERS = ("microsoft", "google")
OK, BROKEN = "ok", "broken"


class MailAccount(Base):
    """One connected account per user (connecting another replaces it)."""

    __tablename__ = "mail_account"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("user_account.id", ondelete="CASCADE"), unique=True
    )
    provider: Mapped[str] = mapped_column(String(20))
    address: Mapped[str] = mapped_column(String(320))  # the mailbox the tokens are for
    refresh_token: Mapped[str] = mapped_column(Text)  # Fernet ciphertext, never clear text
    scope: Mapped[str] = mapped_column(String(1000), default="")
    status: Mapped[str] = mapped_column(String(20), default=OK)
    problem: Mapped[str] = mapped_column(String(500), default="")
    connected_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    refreshed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SealError(Exception):
    """The key cannot open a stored token (the key changed): the user must connect again."""


class Sealer:
    """Encrypts refresh tokens at rest with the key from connect.key_env.

    Several keys, comma-separated, rotate it: the first seals, every one opens (a token sealed
    with an older key is sealed again with the first at its next refresh)."""

    def __init__(self, keys: str) -> None:
        # ValueError for a malformed key: load_config reports it as a config error first.
        fernets = [Fernet(k.strip()) for k in keys.split(",") if k.strip()]
        self._first = fernets[0]
        self._fernet = MultiFernet(fernets)

    def seal(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode("ascii")

    def current(self, sealed: str) -> bool:
        """Whether `sealed` is sealed with the first (current) key."""
        try:
            self._first.decrypt(sealed.encode("ascii"))
            return True
        except (InvalidToken, ValueError):
            return False

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, ValueError):
            raise SealError("the stored token cannot be decrypted with connect.key_env") from None


@dataclass(frozen=True)
class Connection:
    """What the relay and the pages need of a connected account (the token still sealed)."""

    user: str
    provider: str
    address: str
    sealed_refresh_token: str
    status: str
    problem: str
    connected_at: dt.datetime
    refreshed_at: dt.datetime | None


async def connect(
    session: AsyncSession,
    user: str,
    provider: str,
    address: str,
    sealed_refresh_token: str,
    scope: str,
) -> None:
    """Store a new connection for `user`, replacing any earlier one."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}")
    owner = await get_or_create_user(session, user)
    await session.execute(delete(MailAccount).where(MailAccount.user_id == owner.id))
    session.add(
        MailAccount(
            user_id=owner.id,
            provider=provider,
            address=address.strip().lower(),
            refresh_token=sealed_refresh_token,
            scope=scope[:1000],
            status=OK,
            problem="",
            connected_at=utcnow(),
        )
    )
    await session.flush()


async def connection(session: AsyncSession, user: str) -> Connection | None:
    row = (
        await session.execute(select(MailAccount).where(MailAccount.user_id == user_id_of(user)))
    ).scalar_one_or_none()
    if row is None:
        return None
    return Connection(
        user=user.strip().lower(),
        provider=row.provider,
        address=row.address,
        sealed_refresh_token=row.refresh_token,
        status=row.status,
        problem=row.problem,
        connected_at=row.connected_at,
        refreshed_at=row.refreshed_at,
    )


async def disconnect(session: AsyncSession, user: str) -> Connection | None:
    """Forget the connection (the caller revokes the token at the provider first)."""
    found = await connection(session, user)
    if found is not None:
        await session.execute(delete(MailAccount).where(MailAccount.user_id == user_id_of(user)))
    return found


async def refreshed(
    session: AsyncSession, user: str, sealed_refresh_token: str | None = None
) -> None:
    """A refresh worked (and perhaps rotated the refresh token): the connection is healthy."""
    values: dict = {"status": OK, "problem": "", "refreshed_at": utcnow()}
    if sealed_refresh_token is not None:
        values["refresh_token"] = sealed_refresh_token
    await session.execute(
        update(MailAccount).where(MailAccount.user_id == user_id_of(user)).values(**values)
    )


async def broken(session: AsyncSession, user: str, problem: str) -> None:
    """The refresh token stopped working (password change, revoked consent): Settings and the
    digest say so, and the user's copies wait until they connect again."""
    await session.execute(
        update(MailAccount)
        .where(MailAccount.user_id == user_id_of(user))
        .values(status=BROKEN, problem=problem[:500])
    )
