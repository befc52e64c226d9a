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
import email.parser
import email.policy
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.store.accounts import local_user_hash
from relay.forward import Credentials

CHECK_TTL = 600.0


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
            stored = await local_user_hash(session, creds.username)
        # Verify even for an unknown user, so timing does not tell which names exist.
        target = stored or _DUMMY_HASH
        ok = await asyncio.to_thread(_verify, target, creds.password)
        return ok and stored is not None


def _verify(stored_hash: str, password: str) -> bool:
    try:
        return HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))


# --- who may log in, and as whom they may send --------------------------------------------


def address_matches(address: str, entries: Iterable[str]) -> bool:
    """`address` is one of `entries` (any case), in a listed "@domain", or an entry is "*"."""
    address = address.strip().lower()
    _, at, domain = address.rpartition("@")
    for entry in entries:
        entry = entry.lower()
        if entry == "*" or entry == address or (at and entry == "@" + domain):
            return True
    return False


@dataclass
class Allowlisted(Authenticator):
    """relay.allowed_senders: a login not on the list is refused before it is checked, so the
    relay never asks a shared provider about the passwords of strangers (no oracle, no cost)."""

    inner: Authenticator
    allowed: tuple[str, ...]

    @property
    def forwards_credentials(self) -> bool:  # type: ignore[override]
        return self.inner.forwards_credentials

    async def check(self, creds: Credentials) -> bool:
        if not address_matches(creds.username, self.allowed):
            return False
        return await self.inner.check(creds)


def allowlisted(inner: Authenticator, allowed: tuple[str, ...]) -> Authenticator:
    """`inner`, limited to `allowed` when the list is not empty (empty: everyone inner takes)."""
    return Allowlisted(inner, allowed) if allowed else inner


class SenderRefused(Exception):
    """A login tried to send as an address that is not its own."""

    def __init__(self, login: str, address: str, where: str) -> None:
        super().__init__(f"{login} may not send as {address!r} ({where})")
        self.login = login
        self.address = address
        self.where = where  # "envelope" (MAIL FROM) or "header" (From:)


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.default)


def header_from_addresses(message: bytes) -> list[str]:
    """Every address in the message's From: header fields (there may be several); raises
    ValueError when a From: field is there but no address can be read from it."""
    end = _HEAD_END.search(message)
    head = message[: end.end()] if end else message
    found: list[str] = []
    for value in _HEADERS.parsebytes(head).get_all("From") or []:
        addresses = [a.addr_spec for a in getattr(value, "addresses", ()) if a.addr_spec]
        if not addresses:
            raise ValueError(f"unreadable From: {str(value)[:80]!r}")
        found.extend(addresses)
    return found


@dataclass(frozen=True)
class SenderPolicy:
    """auth = "local": each login sends only as its own address (its name) and the addresses
    relay.sender_login_maps gives it, in MAIL FROM and in From: alike (Postfix's
    smtpd_sender_login_maps with reject_sender_login_mismatch). Without it any user could
    send as the boss, and the report would credit the forged mail to them."""

    maps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "maps", {k.lower(): v for k, v in self.maps.items()})

    def owns(self, login: str, address: str) -> bool:
        login = login.strip().lower()
        own = (login,) if "@" in login else ()
        return address_matches(address, (*own, *self.maps.get(login, ())))

    def check_envelope(self, login: str, address: str) -> None:
        # The null sender (<>) identifies nobody; the From: check still applies to it.
        if address and not self.owns(login, address):
            raise SenderRefused(login, address, "envelope")

    def check_header(self, login: str, message: bytes) -> None:
        try:
            addresses = header_from_addresses(message)
        except ValueError:
            raise SenderRefused(login, "", "header") from None
        for address in addresses:
            if not self.owns(login, address):
                raise SenderRefused(login, address, "header")
