"""Live pages: a Server-Sent Events stream of the current user's state changes.

The stream asks the store every POLL seconds for deliveries whose state changed since the
last event, so it works the same with one process or many behind a load balancer; the page's
script (static/live.js) updates the chips and can raise a notification on a first open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import tornado.iostream
from sqlalchemy.exc import SQLAlchemyError

from pixelserver.store import queries
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
                except SQLAlchemyError:
                    changes = []  # the store is down for a moment; the stream waits
                for c in changes:
                    since = max(since, c.changed_at)
                    d = c.delivery
                    payload = {
                        "delivery": d.id,
                        "message": d.message_id,
                        "subject": c.subject,
                        "recipient": d.recipient,
                        "state": d.state.state,
                        "chip": d.chip,
                        "humans": d.state.human_hits,
                        "machines": d.state.machine_hits,
                        "first_open": local(d.state.first_open),
                        "last_open": local(d.state.last_open),
                        # A first open while the page is open: what a notification is for.
                        "first_open_now": d.state.state in FIRST_OPEN_STATES
                        and d.state.first_open is not None
                        and d.state.first_open >= started - FIRST_OPEN_GRACE,
                        "opened_at": local.clock(d.state.first_open),
                        "after_sending": local.after_sending(d.state.first_open, c.accepted_at),
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
