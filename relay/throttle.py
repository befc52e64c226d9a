"""Login throttling that holds under parallel guessing and across worker processes.

Each attempt is counted *before* its password is checked (a check takes a while: an argon2
hash, or a login at the upstream), so attempts made at the same moment cannot all slip under
the limit. Counts are kept per user and per client network (/24, /64) in the store, which
every relay process shares; a window of `window` seconds starts with a user's or network's
first attempt, and rows of ended windows are pruned, so the table holds only what the last
window saw. If the store is unreachable, counting falls back to this process alone rather
than stopping logins (the mail must not wait on the tracking side).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import storage
from relay.limits import client_network

log = logging.getLogger("mailping.throttle")

USER, NETWORK = "user", "network"
PRUNE_EVERY = 60.0  # seconds between prunes of ended windows, per process


class TooManyAttempts(Exception):
    """The user or the client network used up its attempts for this window."""


@dataclass(frozen=True)
class Attempt:
    """One counted login attempt: its keys, and the counts it brought them to."""

    user: str
    network: str
    user_attempts: int
    network_attempts: int


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

    async def attempt(self, username: str, client_ip: str | None) -> Attempt:
        """Count an attempt; raises TooManyAttempts when the user or network is over its limit
        (the attempt stays counted: hammering a locked account keeps it locked). Without a
        client address (the report pages count those themselves) only the user is counted."""
        user = user_key(username)
        network = client_network(client_ip) if client_ip is not None else ""
        now = int(self.clock())
        counts = None
        if self.sessions is not None:
            try:
                counts = await self._count_in_store(user, network, now)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("store unreachable (%s): login attempts counted in this process", exc)
        if counts is None:
            nets = self._count_here(NETWORK, network, now) if network else 0
            counts = (self._count_here(USER, user, now), nets)
        attempt = Attempt(user, network, *counts)
        if attempt.user_attempts > self.per_user or attempt.network_attempts > self.per_network:
            raise TooManyAttempts()
        return attempt

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the user's count is cleared, and this attempt no longer
        counts against the network (colleagues behind one NAT are not locked out)."""
        await self._forgive(attempt, whole_user=True)

    async def not_checked(self, attempt: Attempt) -> None:
        """The password could not be checked (the upstream is away): it was no guess."""
        await self._forgive(attempt, whole_user=False)

    async def _forgive(self, attempt: Attempt, *, whole_user: bool) -> None:
        self._forgive_here(USER, attempt.user, whole=whole_user)
        self._forgive_here(NETWORK, attempt.network, whole=False)
        if self.sessions is None:
            return
        try:
            async with self.sessions.begin() as session:
                await storage.forgive_login_attempt(session, USER, attempt.user, all_=whole_user)
                if attempt.network:
                    await storage.forgive_login_attempt(
                        session, NETWORK, attempt.network, all_=False
                    )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("store unreachable (%s): a login attempt stays counted", exc)

    async def _count_in_store(self, user: str, network: str, now: int) -> tuple[int, int]:
        assert self.sessions is not None
        async with self.sessions.begin() as session:
            users = await storage.count_login_attempt(session, USER, user, now, self.window)
            nets = (
                await storage.count_login_attempt(session, NETWORK, network, now, self.window)
                if network
                else 0
            )
            if now - self._last_prune >= PRUNE_EVERY:
                self._last_prune = now
                await storage.prune_login_attempts(session, now - self.window)
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
