"""Live pages: a Server-Sent Events stream of the current user's state changes.

The stream asks the store every POLL seconds for deliveries whose state changed since the
last event, so it works the same with one process or many behind a load balancer; the page's
script (static/live.js) updates the chips and can raise a notification on a first read. A
click on a rewritten link changes its delivery too (its clicks are judged and counted in the
same transaction), so clicks travel on the same events: a person's click that came before any
image fetch is the copy's first read ("Read · clicked"), and notifies like a first open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import tornado.iostream
from sqlalchemy.exc import SQLAlchemyError

from pixelserver.store import clickreports, queries
from pixelserver.vocabulary import State
from pixelserver.web.base import BasePage

POLL = 1.0
KEEPALIVE = 15.0
FIRST_OPEN_STATES = (State.OPENED, State.PROBABLY_OPENED)
# A first open at most this long before the page was opened still notifies (the hit pipeline
# writes hits some 100 ms after the fetch).
FIRST_OPEN_GRACE = dt.timedelta(seconds=10)


class EventsHandler(BasePage):
    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # nginx: pass events through unbuffered
        since = started = dt.datetime.now(dt.UTC)
        local = self.local
        idle = 0.0
        try:
            self.write("retry: 2000\n\n")
            await self.flush()
            while True:
                try:
                    async with self.sessions() as session:
                        changes = await queries.changes_since(session, self.user, since)
                        first_clicks = await clickreports.first_person_clicks(
                            session,
                            [c.delivery.id for c in changes if c.delivery.state.human_clicks],
                        )
                except SQLAlchemyError:
                    changes, first_clicks = [], {}  # the store is down for a moment; it waits
                for c in changes:
                    since = max(since, c.changed_at)
                    d = c.delivery
                    first_read, by_click = first_read_of(d.state.first_open, first_clicks.get(d.id))
                    payload = {
                        "delivery": d.id,
                        "message": d.message_id,
                        "subject": c.subject,
                        "recipient": d.recipient,
                        "state": d.state.state,
                        "chip": d.chip,
                        "humans": d.state.human_hits,
                        "machines": d.state.machine_hits,
                        "clicks": d.state.human_clicks,
                        "first_open": local(d.state.first_open),
                        "last_open": local(d.state.last_open),
                        # A first read (an open, or a person's click before any open) while
                        # the page is open: what a notification is for.
                        "first_open_now": d.state.state in FIRST_OPEN_STATES
                        and first_read is not None
                        and first_read >= started - FIRST_OPEN_GRACE,
                        "read_by_click": by_click,
                        "opened_at": local.clock(first_read),
                        "after_sending": local.after_sending(first_read, c.accepted_at),
                    }
                    self.write(f"event: state\ndata: {json.dumps(payload)}\n\n")
                if changes:
                    await self.flush()
                    idle = 0.0
                elif (idle := idle + POLL) >= KEEPALIVE:
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    idle = 0.0
                await asyncio.sleep(POLL)
        except tornado.iostream.StreamClosedError:
            return


def first_read_of(
    first_open: dt.datetime | None, first_click: dt.datetime | None
) -> tuple[dt.datetime | None, bool]:
    """When the copy was first read, and whether a person's click (not an image) told."""
    if first_click is not None and (first_open is None or first_click < first_open):
        return first_click, True
    return first_open, False
