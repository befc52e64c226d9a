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
from pixelserver.web.base import BasePage

POLL = 1.0
KEEPALIVE = 15.0


class EventsHandler(BasePage):
    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # nginx: pass events through unbuffered
        since = dt.datetime.now(dt.UTC)
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
                        "first_open": _minute(d.state.first_open),
                        "last_open": _minute(d.state.last_open),
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


def _minute(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "–"
