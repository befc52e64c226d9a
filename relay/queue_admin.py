"""`mailping queue`: list what waits in the spool, retry it now, or drop it.

It works on the spool files directly, with the same locks the running relays take, so it is
safe while they run: a message being sent right now is reported as busy, not touched. A running
relay notices the change within a second (the file changes) and acts on it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence

from relay.spool import ACCEPTED, DROPPED, Entry, EntryBusy, Spool

DROP_REPLY = "dropped from the queue by the administrator"


class QueueAdminError(Exception):
    """An id that is not in the queue."""


def describe(entry: Entry, now: float) -> Iterator[str]:
    """One line for the message, one per copy, in words a person reads."""
    h = entry.header
    arrived = dt.datetime.fromtimestamp(entry.arrival, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    subject = h.get("subject") or "(no subject)"
    yield f"{entry.id}  {arrived}  from {h.get('sender') or '<>'}  {subject!r}"
    for c in entry.copies:
        what = "sent-folder copy" if c.guard else c.recipient
        line = f"    {what}: {c.status}"
        if c.attempts:
            line += f" after {c.attempts} tr{'y' if c.attempts == 1 else 'ies'}"
        if not c.final and c.next_try > now:
            line += f", next try in {int(c.next_try - now)} s"
        if c.reply and c.status != ACCEPTED:
            line += f" — {c.code or ''} {c.reply}".replace("  ", " ")
        yield line


def list_queue(spool: Spool) -> list[str]:
    now = time.time()
    lines: list[str] = []
    for entry_id in spool.ids():
        try:
            lines.extend(describe(spool.load(entry_id), now))
        except FileNotFoundError:
            continue
    return lines or ["the queue is empty"]


def _targets(spool: Spool, ids: Sequence[str]) -> list[str]:
    present = spool.ids()
    if not ids:
        return present
    missing = [i for i in ids if i not in present]
    if missing:
        raise QueueAdminError(f"not in the queue: {', '.join(missing)}")
    return list(ids)


def _each(spool: Spool, ids: Sequence[str], change: Callable[[Entry], str], busy: str) -> list[str]:
    """Apply `change` to each entry under its lock; one line of words per entry."""
    out = []
    for entry_id in ids:
        try:
            with spool.locked(entry_id) as entry:
                out.append(f"{entry_id}: {change(entry)}")
        except EntryBusy:
            out.append(f"{entry_id}: {busy}")
        except FileNotFoundError:
            out.append(f"{entry_id}: finished meanwhile")
    return out


def retry_now(spool: Spool, ids: Sequence[str]) -> list[str]:
    """Make every waiting copy due now (all messages, or the ones named)."""

    def retry(entry: Entry) -> str:
        events = [{"e": "retry", "c": c.index} for c in entry.copies if not c.final]
        if events:
            spool.append(entry, *events)
        return f"{len(events)} copies will be tried now"

    return _each(spool, _targets(spool, ids), retry, "being sent right now")


def drop(spool: Spool, ids: Sequence[str]) -> list[str]:
    """Stop trying the waiting copies of the messages named. Copies already sent stay sent;
    the report shows the dropped ones as not delivered."""
    if not ids:
        raise QueueAdminError("name the messages to drop (ids from `mailping queue list`)")

    def stop(entry: Entry) -> str:
        waiting = [c.index for c in entry.copies if not c.final]
        events: list[dict] = []
        for i in waiting:
            events.append({"e": "status", "c": i, "s": DROPPED, "reply": DROP_REPLY})
            events.append({"e": "reported", "c": i})
        if events:
            spool.append(entry, *events, sync=True)
        return f"{len(waiting)} copies dropped"

    return _each(spool, _targets(spool, ids), stop, "being sent right now; try again in a moment")
