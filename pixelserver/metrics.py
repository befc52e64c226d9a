"""Prometheus metrics for the pixel and the hit pipeline, served at /metrics (the relay's own
are in relay/metrics.py; one registry serves both).

With `--workers N` every process writes its samples under PROMETHEUS_MULTIPROC_DIR (set by
the parent before the children start; prometheus-client picks its storage at import) and a
scrape of any worker adds all of them up.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

import tornado.web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from pixelserver.verdicts.networks import client_ip

PIXEL_REQUESTS = Counter("mailping_pixel_requests_total", "Pixel requests answered")
HITS = Counter("mailping_hits_total", "Hits stored, by verdict", ["verdict"])
NOT_RECORDED = Counter(
    "mailping_pixel_not_recorded_total",
    "Pixels answered but not recorded: over the per-token or per-network limit",
    ["limit"],
)
CLICKS_NOT_RECORDED = Counter(
    "mailping_clicks_not_recorded_total",
    "Clicks redirected but not recorded: over the per-copy or per-network limit",
    ["limit"],
)
FORGED_TOKENS = Counter(
    "mailping_pixel_forged_tokens_total",
    "Pixels answered but not recorded: the token's tag does not check (random or forged)",
)
UNKNOWN_TOKENS = Counter("mailping_hits_unknown_token_total", "Fetches of tokens nobody minted")
JOURNAL_OVERFLOW = Counter(
    "mailping_journal_overflow_total", "Pixels answered but not recorded: the journal was full"
)
BACKLOG = Gauge(
    "mailping_pipeline_backlog_bytes",
    "Journaled hits not yet in the store (the pipeline's queue)",
    multiprocess_mode="livesum",
)
JOURNAL_BYTES = Gauge(
    "mailping_journal_bytes", "Size of the hit journal files", multiprocess_mode="livesum"
)
BATCH_SECONDS = Histogram(
    "mailping_batch_write_seconds",
    "Time to judge and write one batch of hits",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_HITS = Histogram(
    "mailping_batch_hits", "Hits per batch", buckets=(1, 10, 100, 500, 1000, 2000, 5000)
)


def exposition() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


def _in(ip: str, net: Network) -> bool:
    try:
        return ipaddress.ip_address(ip) in net
    except ValueError:
        return False


class MetricsHandler(tornado.web.RequestHandler):
    """Only for the networks in pixelserver.metrics_allow (this machine by default); others
    get a 404, as if there were nothing here."""

    def initialize(self, allow: Sequence[Network], trusted_proxies: Sequence[Network] = ()) -> None:
        self.allow = allow
        self.trusted_proxies = trusted_proxies

    def get(self) -> None:
        """The allow list is checked against the real client: behind a trusted proxy the one
        it forwards for; a proxied request through any other proxy is refused, since a proxy
        on this machine would otherwise make the whole internet look local."""
        remote = self.request.remote_ip or ""
        proxied = any(h in self.request.headers for h in PROXY_HEADERS)
        if proxied and not any(_in(remote, net) for net in self.trusted_proxies):
            raise tornado.web.HTTPError(404)
        try:
            client = ipaddress.ip_address(
                client_ip(remote, self.request.headers, self.trusted_proxies)
            )
        except ValueError:
            raise tornado.web.HTTPError(404) from None
        if not any(client in net for net in self.allow):
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.write(exposition())
