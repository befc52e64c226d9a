"""The outbound queue: forwards spooled messages upstream, each copy exactly once.

Every message the client heard 250 for is a file in the spool (relay/spool.py). The runner
works on one entry at a time per task, holding its lock: it records the message in the store,
sends the copies that are due over one upstream connection, reports failures and delays to the
sender, brings the store up to date, and removes the entry once nothing is left to do. The
same code runs for the short first attempt while the client waits and for every retry, so
there is one way a copy leaves.

Exactly once: a copy is marked `committing` (fsync'd) before the final dot of its DATA, and its
outcome is written as soon as it is heard. A copy found `committing` after a crash may have
arrived, so it is reported as uncertain and never sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.vocabulary import Outcome as StoreOutcome
from relay import metrics, rewrite, spool, tracking
from relay.config import QueueConfig, parse_duration
from relay.dsn import DELAYED, FAILED, Item, build_dsn
from relay.forward import ACCEPTED, REJECTED, Copy, CopyKind, Credentials, Outcome, Upstream
from relay.pace import Pacer, is_throttling
from relay.spool import (
    COMMITTING,
    DEFERRED,
    DROPPED,
    EXPIRED,
    QUEUED,
    UNCERTAIN,
    CopyState,
    Entry,
    EntryBusy,
    Spool,
)

log = logging.getLogger("mailping.queue")

# What the store calls each spool status (pixelserver/store/ OUTCOMES).
STORE_OUTCOME = {
    QUEUED: StoreOutcome.QUEUED,
    COMMITTING: StoreOutcome.QUEUED,
    spool.ACCEPTED: StoreOutcome.ACCEPTED,
    spool.REJECTED: StoreOutcome.REJECTED,
    DEFERRED: StoreOutcome.DEFERRED,
    UNCERTAIN: StoreOutcome.UNCERTAIN,
    EXPIRED: StoreOutcome.EXPIRED,
    DROPPED: StoreOutcome.DROPPED,
}
INTERRUPTED = (
    "MailPing stopped after sending this copy, before the mail server confirmed it; it may "
    "have been delivered, so it was not sent again"
)
NO_LOGIN = (
    "MailPing restarted before it could send this copy, and it never keeps your password on "
    "disk: please send the message again"
)
MAX_ENTRIES_AT_ONCE = 8  # entries worked on in parallel by the background pass
REPORT_RETRY = 300.0  # seconds before a report the upstream deferred is tried again
BROKEN_RETRY = 60.0  # seconds before an entry whose handling raised is looked at again


@dataclass(frozen=True)
class QueuePolicy:
    retry_seconds: tuple[int, ...] = (60, 300, 1800, 7200, 21600)
    give_up_after: float = 5 * 86400
    delay_warning_after: float = 4 * 3600  # 0: never warn
    reply_within: float = 20.0
    resubmit_window: float = 86400.0

    @classmethod
    def from_config(cls, q: QueueConfig) -> QueuePolicy:
        return cls(
            retry_seconds=q.retry_seconds,
            give_up_after=parse_duration(q.give_up_after),
            delay_warning_after=parse_duration(q.delay_warning_after),
            reply_within=float(q.reply_within),
            resubmit_window=parse_duration(q.resubmit_window),
        )

    def retry_delay(self, attempts: int) -> float:
        """Wait after the `attempts`-th failed try: the schedule, its last step repeated."""
        return float(self.retry_seconds[min(max(attempts, 1), len(self.retry_seconds)) - 1])


def kind_of(c: CopyState) -> CopyKind:
    return CopyKind.SENT_GUARD if c.guard else CopyKind.DELIVERY


def outcome_event(c: CopyState, o: Outcome, arrival: float, now: float, p: QueuePolicy) -> dict:
    """Pure: the spool event one upstream outcome becomes.

    A throttling reply is a deferral whatever its code; a deferral past the give-up time is
    final (expired); the next try never lies past the give-up time."""
    base: dict[str, Any] = {"e": "status", "c": c.index, "code": o.code, "reply": o.reply[:2000]}
    if o.status == ACCEPTED:
        return {**base, "s": spool.ACCEPTED}
    if o.uncertain:
        return {**base, "s": UNCERTAIN}
    if o.status == REJECTED and not is_throttling(o.code, o.reply):
        return {**base, "s": spool.REJECTED}
    attempts = c.attempts + 1
    deadline = arrival + p.give_up_after
    if now >= deadline:
        reply = gave_up(p, o.code, o.reply)
        return {**base, "s": EXPIRED, "attempts": attempts, "reply": reply}
    nxt = min(now + p.retry_delay(attempts), deadline)
    return {**base, "s": DEFERRED, "attempts": attempts, "next": nxt}


def gave_up(p: QueuePolicy, code: int, reply: str) -> str:
    """The words for a copy the queue stopped trying, with the last answer it had."""
    last = f"; the last answer was {code} {reply}" if code else ""
    return f"gave up after {_span(p.give_up_after)} of retries{last}"[:2000]


@dataclass
class Attempt:
    """A freshly spooled message being tried while its client waits for the reply."""

    entry: Entry
    attempted: asyncio.Future[None]  # the first sending pass is over
    told: asyncio.Future[bool]  # the client's reply is decided (True: it heard the refusals)
    task: asyncio.Task | None = None

    def tell(self, refused_told: bool) -> None:
        if not self.told.done():
            self.told.set_result(refused_told)


@dataclass(frozen=True)
class Route:
    """Where one user's copies go instead of the relay's upstream, and their pacing."""

    upstream: Upstream
    account: str
    pacer: Pacer


@dataclass
class _Due:
    mtime: int
    at: float


@dataclass
class QueueRunner:
    spool: Spool
    upstream: Upstream
    sessions: async_sessionmaker[AsyncSession]
    policy: QueuePolicy
    hostname: str
    public_url: str
    pixel_path: str
    pacer: Pacer = field(default_factory=lambda: Pacer(0))
    account: str = ""  # the relay's own upstream login, if it has one
    relay_login: bool = False  # True: copies can be sent without the user's password
    store_timeout: float = 5.0
    credentials: dict[str, Credentials] = field(default_factory=dict)
    # A user's own connected account (relay/useraccounts.py), else None: the relay's upstream.
    route: Callable[[str], Awaitable[Route | None]] | None = None
    working: dict[str, asyncio.Task] = field(default_factory=dict)
    _due: dict[str, _Due] = field(default_factory=dict)
    _store_retry_at: float = 0.0
    _store_backoff: float = 1.0
    _report_retry: dict[str, float] = field(default_factory=dict)
    _broken: dict[str, float] = field(default_factory=dict)  # entries that raised: rest them
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None
    _slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_ENTRIES_AT_ONCE)
    )

    @property
    def pixel_prefix(self) -> str:
        """This relay's pixel URLs up to the token: earlier copies' pixels are removed by it."""
        return f"{self.public_url.rstrip('/')}/{self.pixel_path}/"

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run_forever(), name="queue")

    async def close(self, grace: float = 5.0) -> None:
        """Stop the pass; give copies being sent a moment to finish (a copy cut mid-DATA is
        simply sent again later; one cut after its final dot is reported as uncertain)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = list(self.working.values())
        if pending:
            _done, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
            for t in still:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        await asyncio.to_thread(self.spool.prune_temporary)
        await self._resume()
        pruned = time.monotonic()
        while True:
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the queue must keep running; logged in full
                log.exception("queue pass failed")
            if time.monotonic() - pruned > 600:
                pruned = time.monotonic()
                await asyncio.to_thread(self.spool.prune_seen, self.policy.resubmit_window)
                await asyncio.to_thread(self.spool.prune_temporary)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()

    async def _resume(self) -> None:
        """On start, whatever waits is tried at once rather than at its scheduled time: the
        relay may have been down for a while, and its upstream may be back."""
        for entry_id in await asyncio.to_thread(self.spool.ids):
            try:
                entry = await asyncio.to_thread(self.spool.acquire, entry_id)
            except (EntryBusy, FileNotFoundError):
                continue
            try:
                events = [
                    {"e": "retry", "c": c.index}
                    for c in entry.copies
                    if not c.final and c.next_try > time.time()
                ]
                await self._append(entry, *events)
            finally:
                self.spool.release(entry)

    # --- the first attempt, while the client waits -----------------------------------------

    def take(
        self,
        entry: Entry,
        credentials: Credentials | None,
        data: bytes,
        prepared: rewrite.Prepared | None = None,
    ) -> Attempt:
        """Work on an entry just spooled (and still locked by this process); `prepared` is the
        message as the submission already walked it (not walked twice)."""
        loop = asyncio.get_running_loop()
        if credentials is not None:
            self.credentials[entry.id] = credentials
        attempt = Attempt(entry, loop.create_future(), loop.create_future())
        attempt.task = loop.create_task(
            self._work(entry, attempt, data, prepared=prepared), name=f"send {entry.id}"
        )
        self.working[entry.id] = attempt.task
        return attempt

    # --- the background pass --------------------------------------------------------------

    async def pass_once(self) -> int:
        """Start work on every entry that is due; returns how many were started."""
        now = time.time()
        ids = await asyncio.to_thread(self.spool.ids)
        for gone in set(self._due) - set(ids):
            self._due.pop(gone, None)
        for gone in set(self._broken) - set(ids):
            self._broken.pop(gone, None)
        started = 0
        for entry_id in ids:
            if entry_id in self.working:
                continue
            try:
                mtime = os.stat(self.spool.path(entry_id)).st_mtime_ns
            except FileNotFoundError:
                continue
            if self._broken.get(entry_id, 0.0) > now:
                continue
            known = self._due.get(entry_id)
            if known is not None and known.mtime == mtime and known.at > now:
                continue
            await self._slots.acquire()
            try:
                entry = await asyncio.to_thread(self.spool.acquire, entry_id)
            except (EntryBusy, FileNotFoundError):
                self._slots.release()
                continue
            at = self._due_at(entry, now)
            if at > now:
                self._due[entry_id] = _Due(mtime, at)
                self.spool.release(entry)
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(
                self._work(entry, None, None, slot=True), name=f"send {entry_id}"
            )
            self.working[entry_id] = task
            started += 1
        return started

    def _due_at(self, entry: Entry, now: float) -> float:
        """When this entry next needs work (now, or later)."""
        if not self._may_send(entry):
            return now + 30  # another live process holds the password: look again later
        times = [self._report_retry.get(entry.id, 0.0)] if self._report_pending(entry, now) else []
        for c in entry.copies:
            if c.status == COMMITTING:
                return now
            if not c.final:
                times.append(c.next_try)
        if not entry.recorded or any(
            entry.synced.get(c.index) != c.status for c in entry.deliveries()
        ):
            times.append(self._store_retry_at)
        warn = self._warn_at(entry)
        if warn is not None:
            times.append(warn)
        return min(times) if times else now

    def _may_send(self, entry: Entry) -> bool:
        if not entry.header.get("login") or entry.id in self.credentials or self.relay_login:
            return True
        return not self.spool.owner_alive(entry.header["owner"])

    # --- one entry ------------------------------------------------------------------------

    async def _work(
        self,
        entry: Entry,
        attempt: Attempt | None,
        data: bytes | None,
        *,
        slot: bool = False,
        prepared: rewrite.Prepared | None = None,
    ) -> None:
        try:
            now = time.time()
            await self._resolve_interrupted(entry, attempt)
            await self._record(entry, fresh=attempt is not None)
            await self._expire(entry, now)
            login, lost = self._login_for(entry)
            if lost:
                await self._fail_without_login(entry)
            due = [c for c in entry.copies if not c.final and c.next_try <= now]
            if due and not lost:
                if data is None:
                    data = await asyncio.to_thread(entry.read_data)
                prepared = prepared or rewrite.prepare(data, own_pixel_prefix=self.pixel_prefix)
                await self._send(entry, due, login, data, prepared)
            if attempt is not None:
                # The report shows the outcome by the time the client hears it (if the store
                # answers within its deadline; otherwise it catches up later).
                await self._sync(entry)
                attempt.attempted.set_result(None)
                if await attempt.told:
                    await self._append(entry, *self._told_events(entry))
            await self._report(entry, login, lost, data)
            await self._sync(entry)
            if entry.done():
                if entry.header.get("claim"):
                    self.spool.finish_claim(entry.header["claim"], entry.id)
                self.spool.remove(entry)
                self.credentials.pop(entry.id, None)
                self._report_retry.pop(entry.id, None)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the entry stays in the spool and is tried again
            log.exception("queue: working on %s failed; it stays queued", entry.id)
            self._broken[entry.id] = time.time() + BROKEN_RETRY
        finally:
            if attempt is not None and not attempt.attempted.done():
                attempt.attempted.set_result(None)
            self.spool.release(entry)
            self.working.pop(entry.id, None)
            self._due.pop(entry.id, None)
            if slot:
                self._slots.release()

    def _told_events(self, entry: Entry) -> list[dict]:
        """The client heard the refusals in its reply: no report is needed for them."""
        return [
            {"e": "reported", "c": c.index}
            for c in entry.copies
            if c.final and c.status != spool.ACCEPTED and not c.reported
        ]

    async def _append(self, entry: Entry, *events: dict, sync: bool = False) -> None:
        """Events reach the page cache at once (that survives the process being killed);
        those that must survive a power cut wait for the disk off the event loop."""
        if not events:
            return
        if sync:
            await asyncio.to_thread(self.spool.append, entry, *events, sync=True)
        else:
            self.spool.append(entry, *events)

    async def _resolve_interrupted(self, entry: Entry, attempt: Attempt | None) -> None:
        if attempt is not None:
            return
        events = [
            {"e": "status", "c": c.index, "s": UNCERTAIN, "code": 0, "reply": INTERRUPTED}
            for c in entry.copies
            if c.status == COMMITTING
        ]
        if events:
            log.warning("queue: %d copies of %s were cut after their data", len(events), entry.id)
        await self._append(entry, *events)

    async def _expire(self, entry: Entry, now: float) -> None:
        deadline = entry.arrival + self.policy.give_up_after
        if now < deadline:
            return
        events = []
        for c in entry.copies:
            if not c.final:
                reply = gave_up(self.policy, c.code, c.reply)
                events.append({"e": "status", "c": c.index, "s": EXPIRED, "reply": reply})
        await self._append(entry, *events)

    def _login_for(self, entry: Entry) -> tuple[Credentials | None, bool]:
        """(the login to forward with, whether it is lost for good)."""
        if not entry.header.get("login"):
            return None, False
        creds = self.credentials.get(entry.id)
        if creds is not None:
            return creds, False
        if self.relay_login:
            return None, False
        return None, not self.spool.owner_alive(entry.header["owner"])

    async def _fail_without_login(self, entry: Entry) -> None:
        events = [
            {"e": "status", "c": c.index, "s": EXPIRED, "code": 0, "reply": NO_LOGIN}
            for c in entry.copies
            if not c.final
        ]
        if events:
            log.error("queue: %s cannot be sent without its sender's password", entry.id)
        await self._append(entry, *events)

    async def _send(
        self,
        entry: Entry,
        due: Sequence[CopyState],
        login: Credentials | None,
        data: bytes,
        prepared: rewrite.Prepared,
    ) -> None:
        h = entry.header

        def render(copy: Copy) -> rewrite.Chunks:
            c = entry.copies[copy.index]
            if c.tracked and prepared.tracked:
                url = tracking.pixel_url(self.public_url, self.pixel_path, c.token)
                return rewrite.render_chunks(prepared, url)
            return rewrite.untouched_chunks(data)

        async def on_commit(copy: Copy) -> None:
            event = {"e": "status", "c": copy.index, "s": COMMITTING}
            await self._append(entry, event, sync=True)

        account = login.username if login else self.account
        upstream, pacer = self.upstream, self.pacer
        if self.route is not None and h.get("user"):
            routed = await self.route(h["user"])
            if routed is not None:  # the user's own connected account, paced on its own
                upstream, account, pacer = routed.upstream, routed.account, routed.pacer

        async def pace() -> None:
            await pacer.wait(account)

        async def on_outcome(o: Outcome) -> None:
            c = entry.copies[o.copy.index]
            event = outcome_event(c, o, entry.arrival, time.time(), self.policy)
            if is_throttling(o.code, o.reply):
                pacer.pause(account)
            metrics.RELAY_COPIES.labels(event["s"]).inc()
            if event["s"] != spool.ACCEPTED:
                metrics.UPSTREAM_ERRORS.labels(event["s"]).inc()
                log.warning("copy to %s %s: %s %s", o.recipient, event["s"], o.code, o.reply)
            await self._append(entry, event)

        started = time.perf_counter()
        await upstream.send(
            h["sender"],
            [Copy(kind_of(c), c.token, c.recipient, c.index) for c in due],
            render,
            smtputf8=bool(h.get("smtputf8")),
            eight_bit=bool(h.get("eight_bit")),
            credentials=login,
            on_commit=on_commit,
            pace=pace,
            on_outcome=on_outcome,
        )
        metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - started)

    # --- reports to the sender ------------------------------------------------------------

    def _warn_at(self, entry: Entry) -> float | None:
        if self.policy.delay_warning_after <= 0:
            return None
        if any(c.status == DEFERRED and not c.warned and not c.guard for c in entry.copies):
            return entry.arrival + self.policy.delay_warning_after
        return None

    def _report_pending(self, entry: Entry, now: float) -> bool:
        failed = any(
            c.final and c.status != spool.ACCEPTED and not c.reported for c in entry.copies
        )
        warn = self._warn_at(entry)
        return failed or (warn is not None and warn <= now)

    async def _report(
        self, entry: Entry, login: Credentials | None, lost: bool, data: bytes | None
    ) -> None:
        now = time.time()
        if not self._report_pending(entry, now) or self._report_retry.get(entry.id, 0.0) > now:
            return
        guard_events = [
            {"e": "reported", "c": c.index}
            for c in entry.copies
            if c.guard and c.final and not c.reported
        ]
        failed = [c for c in entry.deliveries() if c.final and c.status != spool.ACCEPTED]
        failed = [c for c in failed if not c.reported]
        warn = self._warn_at(entry)
        late = [
            c
            for c in entry.deliveries()
            if c.status == DEFERRED and not c.warned and warn is not None and warn <= now
        ]
        done = [
            *guard_events,
            *({"e": "reported", "c": c.index} for c in failed),
            *({"e": "warned", "c": c.index} for c in late),
        ]
        to = entry.header.get("sender") or ""
        if not (failed or late) or not to or lost:
            if (failed or late) and lost:
                log.error("queue: no report for %s: no login to send it with", entry.id)
            await self._append(entry, *done)
            return
        if data is None:
            data = await asyncio.to_thread(entry.read_data)
        report = build_dsn(
            reporting_host=self.hostname,
            from_address=to,
            to_address=to,
            original=data,
            subject=entry.header.get("subject", ""),
            items=[
                *(
                    Item(c.recipient, FAILED, c.code, c.reply, uncertain=c.status == UNCERTAIN)
                    for c in failed
                ),
                *(Item(c.recipient, DELAYED, c.code, c.reply) for c in late),
            ],
            arrival=dt.datetime.fromtimestamp(entry.arrival, dt.UTC),
            retry_until=dt.datetime.fromtimestamp(
                entry.arrival + self.policy.give_up_after, dt.UTC
            ),
        )
        outcome = await self._send_report(to, report, login, entry.id)
        if outcome.status == ACCEPTED:
            log.info("queue: delivery report for %s sent to %s", entry.id, to)
        elif outcome.status == REJECTED:
            log.error("queue: the delivery report to %s was refused: %s", to, outcome.reply)
        else:
            self._report_retry[entry.id] = now + REPORT_RETRY
            log.warning("queue: the delivery report to %s waits: %s", to, outcome.reply)
            return
        await self._append(entry, *done)

    async def _send_report(
        self, to: str, report: bytes, login: Credentials | None, entry_id: str
    ) -> Outcome:
        """The null return path first (RFC 3464: reports must not be bounced); an upstream
        that refuses it gets the user's own address instead."""
        copy = [Copy(CopyKind.REPORT, entry_id, to)]
        sent = await self.upstream.send("", copy, lambda _c: [report], credentials=login)
        if sent[0].status == REJECTED:
            sent = await self.upstream.send(to, copy, lambda _c: [report], credentials=login)
        return sent[0]

    # --- the store follows the spool ------------------------------------------------------

    def _store_failed(self, exc: BaseException) -> None:
        self._store_retry_at = time.time() + self._store_backoff
        if self._store_backoff <= 1.0:
            log.warning("queue: the store is unreachable (%s); records catch up later", exc)
        self._store_backoff = min(self._store_backoff * 2, 30.0)

    def _store_ok(self) -> None:
        self._store_retry_at = 0.0
        self._store_backoff = 1.0

    async def _record(self, entry: Entry, *, fresh: bool = False) -> None:
        if entry.recorded or time.time() < self._store_retry_at:
            return
        h = entry.header
        deliveries = [
            tracking.SpooledDelivery(c["rcpt"], c["token"], c.get("reason"))
            for c in h["copies"]
            if not c.get("guard")
        ]
        try:
            await asyncio.wait_for(
                tracking.record_spooled(
                    self.sessions,
                    user=h["user"],
                    envelope_from=h["sender"],
                    deliveries=deliveries,
                    subject=h.get("subject", ""),
                    message_id_header=h.get("message_id", ""),
                    size=int(h["size"]),
                    sender_prefix=h.get("sender_prefix", ""),
                    accepted_at=dt.datetime.fromtimestamp(entry.arrival, dt.UTC),
                    maybe_recorded=not fresh,
                ),
                self.store_timeout,
            )
        except tracking.STORE_ERRORS as exc:
            self._store_failed(exc)
            return
        self._store_ok()
        await self._append(entry, {"e": "recorded"})

    async def _sync(self, entry: Entry) -> None:
        await self._record(entry)
        if not entry.recorded or time.time() < self._store_retry_at:
            return
        changed = {
            c.index: c.status for c in entry.deliveries() if entry.synced.get(c.index) != c.status
        }
        if not changed:
            return
        rows = [
            (entry.copies[i].token, STORE_OUTCOME[s], entry.copies[i].reply)
            for i, s in changed.items()
        ]
        try:
            await asyncio.wait_for(tracking.sync_outcomes(self.sessions, rows), self.store_timeout)
        except tracking.STORE_ERRORS as exc:
            self._store_failed(exc)
            return
        self._store_ok()
        await self._append(entry, {"e": "synced", "s": {str(k): v for k, v in changed.items()}})


def _span(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:g} {unit}" if value != 1 else f"1 {unit[:-1]}"
    return f"{seconds:g} seconds"
