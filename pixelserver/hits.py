"""The hit pipeline: a local journal on the request path, batched store writes off it.

Why a journal: the pixel must be answered fast whatever the database is doing, and an answered
hit must not be lost. The handler appends one line to a file (no database, no lookups) and
returns; a background task reads new lines every `interval`, resolves tokens, writes them in one
transaction and then trims the file. Each hit carries a uid minted at request time, so replaying
the journal after a crash stores nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver import metrics
from pixelserver.recordlimits import RecordLimits
from pixelserver.store.hitrecords import (
    HitContext,
    NewHit,
    SenderNetworks,
    add_new_hits,
    encoder,
    first_of_each_uid,
    hit_contexts,
)
from pixelserver.store.states import advance_states
from pixelserver.store.webhooks import enqueue_opens
from pixelserver.verdicts import classify
from pixelserver.verdicts.networks import NetworkFacts, Networks
from pixelserver.verdicts.state import HitView

log = logging.getLogger("mailping.hits")

# Request headers worth keeping: they tell prefetchers and proxies apart (see issue on verdicts).
KEPT_HEADERS = ("Accept", "Accept-Language", "Sec-Purpose", "Purpose", "X-Purpose", "Via", "From")
# Cut at the edge: a client may send 64 KiB headers, which would otherwise be journaled,
# stored, and used as keys of the classifier's caches (4,096 entries each).
MAX_UA = 512
MAX_HEADER = 256
MAX_BATCH = 200  # hits per transaction: small, so no step holds up the pixel (p99)
READ_BYTES = 64 * 1024  # journal bytes parsed per step (about 200 hits)
RETRY_MAX = 0.5  # seconds between attempts while the store is away
BATCH_TIMEOUT = 60.0  # seconds a batch may take before it is abandoned and retried
COMPACT_AT = 4 * 1024 * 1024  # rewrite the journal once this much of it has been consumed


FSYNC_POLICIES = ("batch", "always", "off")


class Journal:
    """Append-only JSON lines in data_dir; the only thing the pixel handler writes to.

    Each hit is written to the file (the kernel's page cache) before its response is sent, so
    killing the process loses nothing that was answered. What a power cut can lose is set by
    `fsync`: "batch" (default) forces the file to disk at every pipeline pass (each 100 ms)
    and before it is trimmed, so at most the last 100 ms; "always" after every hit (safest,
    costs a disk flush per request); "off" leaves it to the kernel (about 30 s).

    At `max_bytes` (the store has been away a long time) new hits are still answered but no
    longer journaled: they are counted in `overflow` and logged once a minute, rather than
    filling the disk or slowing the pixel.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: str = "batch",
        max_bytes: int = 1024 * 1024 * 1024,
        compact_at: int = COMPACT_AT,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}, not {fsync!r}")
        self.path = path
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.compact_at = compact_at
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        self.offset = 0  # bytes already committed to the store
        self.appended = 0
        self.overflow = 0
        self._overflow_logged = 0.0
        self._synced = self._size

    def append(
        self,
        network: str,
        lists: Sequence[str],
        token: str,
        method: str,
        ua: str,
        headers: Mapping[str, str],
    ) -> None:
        """One fetch: its masked network ("n") and the lists its address was in ("l"), never
        the address itself (lines written before this had an "ip"; they are still read)."""
        if self._size >= self.max_bytes:
            self._overflowed()
            return
        record = {
            "u": secrets.token_hex(12),
            "t": token,
            "at": time.time(),
            "m": method,
            "n": network,
            "ua": ua[:MAX_UA],
            "h": {k: v[:MAX_HEADER] for k in KEPT_HEADERS if (v := headers.get(k))},
        }
        if lists:
            record["l"] = list(lists)
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        os.write(self._fd, line)
        self._size += len(line)
        self.appended += 1
        if self.fsync == "always":
            os.fsync(self._fd)

    def _overflowed(self) -> None:
        self.overflow += 1
        metrics.JOURNAL_OVERFLOW.inc()
        now = time.monotonic()
        if now - self._overflow_logged >= 60:
            self._overflow_logged = now
            log.error(
                "hit journal %s is full (%d bytes, pixelserver.journal_max_mb): answering "
                "pixels without recording them; %d not recorded so far",
                self.path,
                self._size,
                self.overflow,
            )

    def sync(self) -> None:
        if self.fsync != "off" and self._synced != self._size:
            os.fsync(self._fd)
            self._synced = self._size

    def read_new(self) -> tuple[list[dict], int]:
        """Complete lines after the committed offset, and the offset just past them."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(READ_BYTES)
            if b"\n" not in data and len(data) == READ_BYTES:  # one very long line
                data += f.read(64 * 1024 * 1024)
        end = data.rfind(b"\n") + 1
        records = []
        for line in data[:end].splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("skipping a damaged journal line (%d bytes)", len(line))
        return records, self.offset + end

    def committed(self, offset: int) -> None:
        """Everything before `offset` is in the store: forget it.

        Runs on the event loop thread, as does `append`, so no line can be written between the
        size check and the truncation.
        """
        self.sync()
        self.offset = offset
        size = os.fstat(self._fd).st_size
        if size == offset:
            os.ftruncate(self._fd, 0)
            self.offset = 0
            self._size = 0
        elif offset >= self.compact_at and (
            size - offset <= self.compact_at // 4
            or (offset >= 16 * self.compact_at and size - offset <= offset)
        ):
            # Only when little is left (the pipeline has nearly caught up), or, under a load it
            # never catches up with, when what was consumed is large and outweighs the rest. A
            # 25 MB backlog drained 64 KB at a time was rewritten (and fsync'd, on the loop
            # answering pixels) from each 4 MB on, about 70 MB of writes; now a drain rewrites
            # at most what it consumed, mostly in steps of at most 1 MB.
            with open(self.path, "rb") as f:
                f.seek(offset)
                rest = f.read()
            _replace_durably(self.path, rest)
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self.offset = 0
            self._size = len(rest)
            self._synced = self._size

    def size(self) -> int:
        return self._size

    def pending_bytes(self) -> int:
        """Journaled but not yet in the store: the pipeline's backlog."""
        return self._size - self.offset

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        os.close(self._fd)


def _replace_durably(path: Path, data: bytes) -> None:
    """Replace `path` by a file holding `data`, private (0600) whatever the umask, on disk
    before the rename, and the rename itself on disk: a compacted journal is as safe and as
    private as the journal it replaces."""
    tmp = path.with_suffix(".compact")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an old .compact left by a crash keeps its own mode otherwise
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@dataclass(frozen=True)
class Judge:
    """Turns a journaled fetch into a stored hit with its verdict (off the request path)."""

    networks: Networks
    upstream_google: bool = False
    geo_precision: str = "city"  # city | region | country | off

    def hit(
        self, record: dict, ctx: HitContext, prior: list[classify.PriorHit] | None = None
    ) -> NewHit:
        """One journaled fetch judged; `prior` (oldest first) grows by this hit."""
        if prior is None:
            prior = [classify.PriorHit(p, u, s) for p, u, s in ctx.prior]
        at = dt.datetime.fromtimestamp(record["at"], dt.UTC)
        ua = record.get("ua", "")
        if "n" in record:  # masked at the edge, with the facts that needed the address
            net = self.networks.facts_of(str(record["n"]), record.get("l") or ())
        else:  # a journal written by an older MailPing
            net = self.networks.facts(str(record.get("ip", "")))
        seconds = max(0.0, (at - ctx.accepted_at).total_seconds())
        facts = classify.HitFacts(
            network=net,
            ua=ua,
            method=record.get("m", "GET"),
            headers=record.get("h", {}),
            seconds_after_send=seconds,
            prior=prior,
            recipient=ctx.recipient,
            sender_prefixes=ctx.sender_prefixes,
            upstream_google=self.upstream_google,
            mailbox_provider=ctx.mailbox_provider,
        )
        verdict = classify.classify(facts)
        prior.append(classify.PriorHit(net.prefix, ua, seconds))  # later hits see this one
        # A place is kept only where it is the reader's own (a direct open), never a proxy's.
        country, region, city = (
            self._precise(net) if verdict.kind == classify.HUMAN else ("", "", "")
        )
        return NewHit(
            uid=record["u"],
            token=record["t"],
            at=at,
            method=facts.method,
            ip_prefix=net.prefix,
            user_agent=ua,
            headers=dict(facts.headers),
            verdict=verdict.kind,
            reasons=tuple({"code": r.code, "text": r.text} for r in verdict.reasons),
            confidence=verdict.confidence,
            rule=verdict.rule,
            seconds_after_send=seconds,
            asn=net.asn,
            org=net.org,
            net_lists=tuple(net.lists),
            hosting=net.hosting,
            country=country,
            region=region,
            city=city,
            client=verdict.client,
            delivery_id=ctx.delivery_id,
        )

    def _precise(self, net: NetworkFacts) -> tuple[str, str, str]:
        level = self.geo_precision
        if level == "off":
            return "", "", ""
        if level == "country":
            return net.country, "", ""
        if level == "region":
            return net.country, net.region, ""
        return net.country, net.region, net.city

    def batch(self, records: list[dict], contexts: dict[str, HitContext]) -> list[NewHit]:
        ordered = sorted(records, key=lambda r: r["at"])
        priors = {
            token: [classify.PriorHit(p, u, s) for p, u, s in ctx.prior]
            for token, ctx in contexts.items()
        }
        return [
            self.hit(r, contexts[r["t"]], priors[r["t"]]) for r in ordered if r["t"] in contexts
        ]


class HitPipeline:
    """Moves journaled hits into the store in batches; survives store outages by waiting."""

    def __init__(
        self,
        journal: Journal,
        sessions: async_sessionmaker[AsyncSession],
        judge: Judge,
        *,
        interval: float = 0.1,
        limits: RecordLimits | None = None,
    ) -> None:
        self.journal = journal
        self.sessions = sessions
        self.judge = judge
        self.interval = interval
        self.stored = 0
        self.unknown = 0
        self._task: asyncio.Task | None = None
        self._failing = False
        self.sender_networks = SenderNetworks()
        self.limits = limits or RecordLimits()

    def record(self, ip: str, token: str, method: str, ua: str, headers: Mapping[str, str]) -> None:
        """On the request path: the address is masked here, before anything is written, and
        a fetch over its token's or network's limit is not recorded at all."""
        network, lists = self.judge.networks.at_edge(ip)
        if (over := self.limits.drop(token, network, lists)) is not None:
            metrics.NOT_RECORDED.labels(over).inc()
            return
        self.journal.append(network, lists, token, method, ua, headers)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hit-pipeline")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
        self.journal.close()

    async def flush(self) -> int:
        """Write everything journaled so far; returns how many hits were taken from it."""
        total = 0
        self.journal.sync()  # the "batch" fsync policy: what was answered so far is on disk
        while True:
            # Parsing, judging and encoding are pure Python over whole batches: they run on
            # worker threads, which yield the interpreter every few milliseconds, so the loop
            # answering pixels never waits for a whole batch (on the loop, p99 was 90 ms).
            records, end = await asyncio.to_thread(self.journal.read_new)
            metrics.BACKLOG.set(self.journal.pending_bytes())
            metrics.JOURNAL_BYTES.set(self.journal.size())
            if not records:
                if end != self.journal.offset:
                    self.journal.committed(end)
                return total
            for i in range(0, len(records), MAX_BATCH):
                started = time.perf_counter()
                batch = [r for r in records[i : i + MAX_BATCH] if _well_formed(r)]
                # Earlier hits matter only within the burst window of this batch's first one.
                start = min((r["at"] for r in batch), default=0) - classify.BURST_WINDOW
                # A batch stuck on a connection that died without a reset (no RST from a
                # host gone away) would hold the journal forever: give up and retry.
                async with asyncio.timeout(BATCH_TIMEOUT), self.sessions.begin() as session:
                    contexts = await hit_contexts(
                        session,
                        (r["t"] for r in batch),
                        dt.datetime.fromtimestamp(start, dt.UTC),
                        self.sender_networks,
                    )
                    # Network lookups can take milliseconds when cold, and judging and encoding
                    # are pure Python over the batch: one trip to a worker thread for both,
                    # off the loop that answers pixels.
                    encode = await encoder(session)
                    hits, rows = await asyncio.to_thread(self._judged, batch, contexts, encode)
                    stored, fresh = await add_new_hits(session, hits, rows)
                    moved = views_by_delivery(fresh)
                    await advance_states(session, moved)
                    # In the same transaction: a first open is queued with the hit that made it.
                    await enqueue_opens(session, moved.keys())
                self.stored += stored
                self.unknown += len(batch) - len(hits)
                metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
                metrics.BATCH_HITS.observe(len(batch))
                metrics.UNKNOWN_TOKENS.inc(len(batch) - len(hits))
                for verdict, n in Counter(h.verdict for h in hits).items():
                    metrics.HITS.labels(verdict).inc(n)
            self.journal.committed(end)
            total += len(records)

    def _judged(
        self, batch: list[dict], contexts: dict[str, HitContext], encode: Callable
    ) -> tuple[Sequence[NewHit], Any]:
        hits = first_of_each_uid(self.judge.batch(batch, contexts))
        return hits, encode(hits)

    async def _run(self) -> None:
        delay = self.interval
        while True:
            try:
                await self.flush()
                if self._failing:
                    log.info("store reachable again; journal drained")
                self._failing = False
                delay = self.interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._failing:
                    log.error(
                        "cannot write hits to the store (%s); keeping them in the journal", exc
                    )
                self._failing = True
                # Short: a refused connection costs nothing to retry, and each second waited
                # after the store is back is a second of fetches more to drain (a backoff that
                # doubled to 5 s left the store behind a loaded server for good).
                delay = min(max(delay * 2, 0.25), RETRY_MAX)
            await asyncio.sleep(delay)


def views_by_delivery(hits: Sequence[NewHit]) -> dict[int, list[HitView]]:
    """New rows as the state computation sees them, per delivery, in insertion order."""
    out: dict[int, list[HitView]] = {}
    for h in hits:
        assert h.delivery_id is not None
        out.setdefault(h.delivery_id, []).append(
            HitView(
                h.at,
                h.verdict,
                h.rule,
                h.ip_prefix,
                h.client[:60],
                h.country[:2],
                h.region[:100],
                h.city[:100],
                h.confidence,
            )
        )
    return out


def _well_formed(record: dict) -> bool:
    return (
        isinstance(record.get("u"), str)
        and isinstance(record.get("t"), str)
        and isinstance(record.get("at"), int | float)
    )
