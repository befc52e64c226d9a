"""Pacing submissions to each upstream account, and telling a provider's throttling apart.

Providers count every SMTP submission: Exchange Online takes 30 messages a minute per mailbox
over SMTP AUTH, and a message to 40 recipients is 40 submissions here. Sending them as fast as
possible gets the account throttled (or its later mail refused), so the queue spaces them out
and treats the providers' "slow down" replies as a deferral, never as a refusal.
"""

from __future__ import annotations

import asyncio
import re
import time

# Documented per-minute submission limits for SMTP AUTH, by host suffix.
# Exchange Online: "Message rate limit (SMTP client submission only): 30 messages per minute"
# (learn.microsoft.com, Exchange Online limits, "Sending limits"); Outlook.com uses the same
# submission service.
KNOWN_LIMITS: tuple[tuple[str, int], ...] = (
    ("office365.com", 30),
    ("outlook.com", 30),
    ("hotmail.com", 30),
    ("live.com", 30),
)

# Replies that mean "too much, later" whatever their first digit: Exchange's submission quota
# comes as 554 5.2.0 ...SubmissionQuotaExceededException, Gmail's daily limit as 550 5.4.5.
_THROTTLING = re.compile(
    r"\b(4\.7\.0\b.*(try again later|too many)|4\.3\.2\b|5\.4\.5\b|4\.4\.2\b.*rate|"
    r"SubmissionQuotaExceeded|concurrent connections limit|rate limit|too many messages|"
    r"sending quota|sending limit|throttl)",
    re.I,
)
THROTTLE_PAUSE = 60.0  # seconds an account rests after the provider asked us to slow down


def limit_for(host: str, configured: int) -> int:
    """Submissions a minute for this upstream (0: unpaced)."""
    if configured:
        return configured
    host = host.lower().rstrip(".")
    for suffix, limit in KNOWN_LIMITS:
        if host == suffix or host.endswith("." + suffix):
            return limit
    return 0


def is_throttling(code: int, reply: str) -> bool:
    """The provider asks us to slow down: retry later, even if the code starts with 5."""
    return code in (421, 450, 451, 452, 454, 550, 554) and bool(_THROTTLING.search(reply))


class Pacer:
    """Evenly spaced submissions per account, shared by every sender in this process.

    With `--workers N` each process takes 1/N of the limit, so together they keep it."""

    def __init__(self, per_minute: int, share: int = 1) -> None:
        self.interval = 60.0 * max(share, 1) / per_minute if per_minute > 0 else 0.0
        self._next: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def wait(self, account: str) -> None:
        if self.interval <= 0 and account not in self._next:
            return
        lock = self._locks.setdefault(account, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            at = self._next.get(account, now)
            if at > now:
                await asyncio.sleep(at - now)
            self._next[account] = max(at, now) + self.interval
            if len(self._next) > 10_000:  # bounded: forget accounts idle for long
                cutoff = time.monotonic() - 3600
                for k in [k for k, v in self._next.items() if v < cutoff]:
                    self._next.pop(k, None)
                    self._locks.pop(k, None)

    def pause(self, account: str, seconds: float = THROTTLE_PAUSE) -> None:
        """The provider throttled this account: nothing more goes to it for a while."""
        self._next[account] = max(self._next.get(account, 0.0), time.monotonic() + seconds)
