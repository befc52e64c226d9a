"""`mailping queue`: list what waits in the spool, retry it now, or drop it.

It works on the spool files directly, with the same locks the running relays take, so it is
safe while they run: a message being sent right now is reported as busy, not touched. A running
relay notices the change within a second (the file changes) and acts on it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Sequence

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


def retry_now(spool: Spool, ids: Sequence[str]) -> list[str]:
    """Make every waiting copy due now (all messages, or the ones named)."""
    out = []
    for entry_id in _targets(spool, ids):
        try:
            with spool.locked(entry_id) as entry:
                events = [{"e": "retry", "c": c.index} for c in entry.copies if not c.final]
                if events:
                    spool.append(entry, *events)
                out.append(f"{entry_id}: {len(events)} copies will be tried now")
        except EntryBusy:
            out.append(f"{entry_id}: being sent right now")
        except FileNotFoundError:
            out.append(f"{entry_id}: finished meanwhile")
    return out


def drop(spool: Spool, ids: Sequence[str]) -> list[str]:
    """Stop trying the waiting copies of the messages named. Copies already sent stay sent;
    the report shows the dropped ones as not delivered."""
    if not ids:
        raise QueueAdminError("name the messages to drop (ids from `mailping queue list`)")
    out = []
    for entry_id in _targets(spool, ids):
        try:
            with spool.locked(entry_id) as entry:
                events = []
                for c in entry.copies:
                    if not c.final:
                        events.append(
                            {"e": "status", "c": c.index, "s": DROPPED, "reply": DROP_REPLY}
                        )
                        events.append({"e": "reported", "c": c.index})
                if events:
                    spool.append(entry, *events, sync=True)
                out.append(f"{entry_id}: {len(events) // 2} copies dropped")
        except EntryBusy:
            out.append(f"{entry_id}: being sent right now; try again in a moment")
        except FileNotFoundError:
            out.append(f"{entry_id}: finished meanwhile")
    return out
