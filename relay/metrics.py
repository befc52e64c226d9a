"""Prometheus metrics of the relay: messages, copies, the upstream and digests.

Registered in prometheus-client's default registry, which the pixel server's /metrics serves
(pixelserver/metrics.py), so one scrape shows both halves of MailPing.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RELAY_MESSAGES = Counter(
    "mailping_relay_messages_total",
    "Messages relayed, by result: sent (every copy accepted), partial, failed",
    ["result"],
)
RELAY_COPIES = Counter(
    "mailping_relay_copies_total", "Per-recipient copies, by upstream outcome", ["outcome"]
)
UPSTREAM_SECONDS = Histogram(
    "mailping_upstream_seconds",
    "Time the upstream took for one message's copies",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM_ERRORS = Counter(
    "mailping_upstream_errors_total", "Copies the upstream refused or did not take", ["kind"]
)
DIGESTS = Counter("mailping_digests_total", "Digest attempts, by result", ["result"])
