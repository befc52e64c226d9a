"""Who may relay: checking a client's login, for auth = "upstream" and auth = "local".

"upstream": the login is the user's own account at their provider; it is checked by logging in
there and then used to forward their mail. Nothing is stored but, for a few minutes after a
successful check, a salted hash of it, so a client that reconnects for every message does not
cost an upstream login each time.
"local": users made with `mailping user add`, stored as argon2id hashes; mail is forwarded
with the relay account from the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import storage
from pixelserver.throttle import LoginThrottle, network_key, user_key
from relay.forward import Credentials

log = logging.getLogger("mailping.auth")

CHECK_TTL = 600.0
# The address of the SMTP client whose AUTH is being checked (set by RelaySMTP.smtp_AUTH), so
# that the throttle can count its network without the handler passing it through.
LOGIN_CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("login_client", default="")


class Authenticator:
    """Checks a login; `forwards_credentials` says whether mail goes upstream with it."""

    forwards_credentials: bool

    async def check(self, creds: Credentials) -> bool:
        raise NotImplementedError


@dataclass
class UpstreamLogin(Authenticator):
    login: Callable[[Credentials], Awaitable[bool]]
    ttl: float = CHECK_TTL
    forwards_credentials: bool = True
    _recent: dict[str, tuple[bytes, bytes, float]] = field(default_factory=dict)

    async def check(self, creds: Credentials) -> bool:
        now = time.monotonic()
        entry = self._recent.get(creds.username)
        if entry is not None:
            salt, digest, expires = entry
            if now < expires and hmac.compare_digest(digest, _digest(salt, creds.password)):
                return True
            self._recent.pop(creds.username, None)
        ok = await self.login(creds)
        if ok:
            salt = secrets.token_bytes(16)
            self._recent[creds.username] = (salt, _digest(salt, creds.password), now + self.ttl)
        return ok


def _digest(salt: bytes, password: str) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 10_000)


HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters


def hash_password(password: str) -> str:
    return HASHER.hash(password)


@dataclass
class LocalLogin(Authenticator):
    sessions: async_sessionmaker[AsyncSession]
    forwards_credentials: bool = False

    async def check(self, creds: Credentials) -> bool:
        async with self.sessions() as session:
            stored = await storage.local_user_hash(session, creds.username)
        # Verify even for an unknown user, so timing does not tell which names exist.
        target = stored or _DUMMY_HASH
        ok = await asyncio.to_thread(_verify, target, creds.password)
        return ok and stored is not None


@dataclass
class Throttled(Authenticator):
    """The relay's side of the one login throttle (pixelserver/throttle.py): each attempt
    counts against its username and its client's network before the slow check, with the
    report pages' attempts and every other process's. If the store cannot be reached, the
    check goes on unthrottled (mail must flow; the handler's own per-client limit holds)."""

    inner: Authenticator
    throttle: LoginThrottle

    @property
    def forwards_credentials(self) -> bool:  # type: ignore[override]
        return self.inner.forwards_credentials

    async def check(self, creds: Credentials) -> bool:
        client = LOGIN_CLIENT.get()
        keys = (user_key(creds.username), *((network_key(client),) if client else ()))
        try:
            if await self.throttle.attempt(*keys) > self.throttle.limit:
                return False
        except (SQLAlchemyError, OSError) as exc:
            log.warning("login throttle unavailable (%s); checking without it", exc)
        ok = await self.inner.check(creds)
        if ok:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await self.throttle.passed(*keys)
        return ok


def _verify(stored_hash: str, password: str) -> bool:
    try:
        return HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))
