"""How often one copy's pixel or link, and one network, is recorded: token buckets checked on
the request path, so that a flood of requests is answered as always but cannot fill the
journal, the store or the report, and push real opens and clicks out. The pixel (hits.py)
and the click links (web/clicks.py) each keep their own buckets."""

from __future__ import annotations

import time
from collections.abc import Sequence

# Networks of the big fetchers (Apple's relays and network, Google's image proxy, mail
# security gateways): at a large send's peak they fetch thousands of copies a second, each a
# real delivery event, so they are never limited per network (each token still is).
PROXY_LISTS = frozenset(
    {
        "apple_relay",
        "apple_network",
        "google_fetcher",
        "microsoft_eop",
        "microsoft_exo",
        "mimecast",
        "proofpoint",
        "barracuda",
        "cisco_secure_email",
    }
)


class RecordLimits:
    """Token buckets per token and per network, checked on the pixel's request path: past
    them a fetch is answered as always but not recorded, so that one token or one network
    fetched thousands of times a second cannot fill the journal and push real opens out.

    Per token: a burst of 60, then 2 a second (a copy opened by a person, prefetched by Apple
    and fetched by Gmail's proxy on every open stays far below). Per network (/24 or /48): a
    burst of 3,000, then 300 a second, except the known fetchers' networks (PROXY_LISTS).
    Buckets live in memory, per process; the table is dropped whole when it grows past
    `max_keys`, which only ever forgives."""

    def __init__(
        self, *, token_burst: int = 60, network_burst: int = 3000, max_keys: int = 200_000
    ) -> None:
        self.token_rate, self.token_burst = token_burst / 30.0, token_burst
        self.network_rate, self.network_burst = network_burst / 10.0, network_burst
        self.max_keys = max_keys
        self._tokens: dict[str, tuple[float, float]] = {}
        self._networks: dict[str, tuple[float, float]] = {}

    def drop(
        self, token: str, network: str, lists: Sequence[str], now: float | None = None
    ) -> str | None:
        """None to record the fetch; otherwise which limit it is over ("token", "network")."""
        now = time.monotonic() if now is None else now
        exempt = not network or any(name in PROXY_LISTS for name in lists)
        if not exempt and not _take(
            self._networks, network, now, self.network_rate, self.network_burst, self.max_keys
        ):
            return "network"
        if not _take(self._tokens, token, now, self.token_rate, self.token_burst, self.max_keys):
            return "token"
        return None


def _take(
    buckets: dict[str, tuple[float, float]],
    key: str,
    now: float,
    rate: float,
    burst: int,
    max_keys: int,
) -> bool:
    """Take one from `key`'s bucket (refilled at `rate` a second up to `burst`)."""
    level, then = buckets.get(key, (float(burst), now))
    level = min(float(burst), level + (now - then) * rate)
    if level < 1.0:
        buckets[key] = (level, now)
        return False
    if len(buckets) >= max_keys and key not in buckets:
        buckets.clear()
    buckets[key] = (level - 1.0, now)
    return True
