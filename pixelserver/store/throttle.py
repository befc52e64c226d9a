"""Login throttling, one implementation for the relay's AUTH, the report pages' logins and the
demo report password; it holds under parallel guessing and across worker processes.

Each attempt is counted *before* its password is checked (a check takes a while: an argon2
hash, or a login at the upstream), so attempts made at the same moment cannot all slip under
the limit. Counts are kept per user and per client network (/24, /64) in the store (table
login_throttle), which every relay and pixel server process shares; a window of `window`
seconds starts with a user's or network's first attempt, and rows of ended windows are pruned,
so the table holds only what the last window saw. Only a hash of the user name is stored. If
the store is unreachable, counting falls back to this process alone rather than stopping
logins (the mail must not wait on the tracking side).

It lives in pixelserver so that the pages can use it (pixelserver never imports the relay);
the relay imports it from here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import (
    case,
    delete,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_sessionmaker,
)

from pixelserver.store.schema import LoginThrottle as AttemptRow

log = logging.getLogger("mailping.throttle")

USER, NETWORK = "user", "network"
PRUNE_EVERY = 60.0  # seconds between prunes of ended windows, per process
RETENTION_WINDOW = 86400  # retention drops windows older than this (the throttle prunes too)


def client_network(address: str) -> str:
    """The /24 or /64 holding `address` (an IPv4-mapped IPv6 address counts as IPv4); a value
    that is no IP address (a Unix socket peer) stands for itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class TooManyAttempts(Exception):
    """The user or the client network used up its attempts for this window."""


@dataclass(frozen=True)
class Attempt:
    """One counted login attempt: its keys, and the counts it brought them to."""

    user: str
    network: str
    user_attempts: int
    network_attempts: int

    @property
    def highest(self) -> int:
        return max(self.user_attempts, self.network_attempts)


def user_key(username: str) -> str:
    """A hash of the login name: a password typed into the name field is never stored."""
    return hashlib.sha256(username.strip().lower().encode()).hexdigest()


@dataclass
class LoginThrottle:
    sessions: async_sessionmaker[AsyncSession] | None
    per_user: int = 5
    per_network: int = 20
    window: int = 600
    clock: Callable[[], float] = time.time
    _local: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _last_prune: float = 0.0

    async def attempt(self, username: str | None, client_ip: str | None) -> Attempt:
        """Count an attempt; raises TooManyAttempts when the user or network is over its limit
        (the attempt stays counted: hammering a locked account keeps it locked). Without a
        client address only the user is counted; without a user name (the demo report
        password) only the network."""
        user = user_key(username) if username is not None else ""
        network = client_network(client_ip) if client_ip is not None else ""
        now = int(self.clock())
        counts = None
        if self.sessions is not None:
            try:
                counts = await self._count_in_store(user, network, now)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("store unreachable (%s): login attempts counted in this process", exc)
        if counts is None:
            users = self._count_here(USER, user, now) if user else 0
            nets = self._count_here(NETWORK, network, now) if network else 0
            counts = (users, nets)
        attempt = Attempt(user, network, *counts)
        if attempt.user_attempts > self.per_user or attempt.network_attempts > self.per_network:
            raise TooManyAttempts()
        return attempt

    async def network_locked(self, client_ip: str) -> bool:
        """Whether the client's network used up its attempts, without counting one (the demo
        report password is sent with every request: only failures are counted)."""
        network = client_network(client_ip)
        now = int(self.clock())
        if self.sessions is not None:
            try:
                async with self.sessions() as session:
                    n = (
                        await session.execute(
                            select(AttemptRow.attempts).where(
                                AttemptRow.scope == NETWORK,
                                AttemptRow.key == network,
                                AttemptRow.window_start > now - self.window,
                            )
                        )
                    ).scalar_one_or_none()
                return (n or 0) >= self.per_network
            except (SQLAlchemyError, OSError) as exc:
                log.warning("store unreachable (%s): login attempts counted in this process", exc)
        attempts, start = self._local.get((NETWORK, network), (0, now))
        return start > now - self.window and attempts >= self.per_network

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the user's count is cleared, and this attempt no longer
        counts against the network (colleagues behind one NAT are not locked out)."""
        await self._forgive(attempt, whole_user=True)

    async def not_checked(self, attempt: Attempt) -> None:
        """The password could not be checked (the upstream is away): it was no guess."""
        await self._forgive(attempt, whole_user=False)

    async def _forgive(self, attempt: Attempt, *, whole_user: bool) -> None:
        if attempt.user:
            self._forgive_here(USER, attempt.user, whole=whole_user)
        if attempt.network:
            self._forgive_here(NETWORK, attempt.network, whole=False)
        if self.sessions is None:
            return
        try:
            async with self.sessions.begin() as session:
                if attempt.user:
                    await forgive_login_attempt(session, USER, attempt.user, all_=whole_user)
                if attempt.network:
                    await forgive_login_attempt(session, NETWORK, attempt.network, all_=False)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("store unreachable (%s): a login attempt stays counted", exc)

    async def _count_in_store(self, user: str, network: str, now: int) -> tuple[int, int]:
        assert self.sessions is not None
        async with self.sessions.begin() as session:
            users = await count_login_attempt(session, USER, user, now, self.window) if user else 0
            nets = (
                await count_login_attempt(session, NETWORK, network, now, self.window)
                if network
                else 0
            )
            if now - self._last_prune >= PRUNE_EVERY:
                self._last_prune = now
                await prune_login_attempts(session, now - self.window)
        return users, nets

    def _count_here(self, scope: str, key: str, now: int) -> int:
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            cutoff = now - self.window
            self._local = {k: v for k, v in self._local.items() if v[1] > cutoff}
        attempts, start = self._local.get((scope, key), (0, now))
        if start <= now - self.window:
            attempts, start = 0, now
        self._local[(scope, key)] = (attempts + 1, start)
        return attempts + 1

    def _forgive_here(self, scope: str, key: str, *, whole: bool) -> None:
        entry = self._local.get((scope, key))
        if entry is None:
            return
        if whole or entry[0] <= 1:
            del self._local[(scope, key)]
        else:
            self._local[(scope, key)] = (entry[0] - 1, entry[1])


async def purge(session: AsyncSession, window: int = RETENTION_WINDOW) -> int:
    """Retention: forget windows that ended long ago (each throttle also prunes its own)."""
    return await prune_login_attempts(session, int(time.time()) - window)


async def count_login_attempt(
    session: AsyncSession, scope: str, key: str, now: int, window: int
) -> int:
    """One more attempt for (scope, key); returns the attempts in its window, this one included.
    One statement (an upsert), so attempts made at the same moment by any number of processes
    are all counted. A window older than `window` seconds starts again at 1."""
    table = AttemptRow.__table__
    dialect = session.bind.dialect.name
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).values(
        scope=scope, key=key, attempts=1, window_start=now
    )
    expired = table.c.window_start <= now - window
    stmt = ins.on_conflict_do_update(
        index_elements=[table.c.scope, table.c.key],
        set_={
            "attempts": case((expired, 1), else_=table.c.attempts + 1),
            "window_start": case((expired, now), else_=table.c.window_start),
        },
    ).returning(table.c.attempts)
    return int((await session.execute(stmt)).scalar_one())


async def forgive_login_attempt(session: AsyncSession, scope: str, key: str, *, all_: bool) -> None:
    """A login succeeded: take back its attempt (or, `all_`, the key's whole count)."""
    cond = (AttemptRow.scope == scope) & (AttemptRow.key == key)
    if all_:
        await session.execute(delete(AttemptRow).where(cond))
    else:
        await session.execute(
            update(AttemptRow)
            .where(cond & (AttemptRow.attempts > 0))
            .values(attempts=AttemptRow.attempts - 1)
        )


async def prune_login_attempts(session: AsyncSession, before: int) -> int:
    """Drop windows that ended: the table holds only keys seen in the last window."""
    result = await session.execute(delete(AttemptRow).where(AttemptRow.window_start <= before))
    return result.rowcount or 0
