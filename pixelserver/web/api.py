"""The JSON API (/api/v1): the same per-user reads as the pages, for programs.

Objects, never bare lists; errors are JSON with a code and a message; lists page with an
opaque cursor. Programs authenticate with a personal token (`Authorization: Bearer …`) made
on the Settings page; in the loopback demo mode (auth = "none") the API, like the pages,
answers this machine only. The contract is pixelserver/web/openapi.json.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tornado.ioloop
import tornado.web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.store import clickreports, erasure, queries
from pixelserver.store.accounts import api_token_user
from pixelserver.store.schema import Hit
from pixelserver.verdicts.state import CLICK_WORDS, STATES
from pixelserver.vocabulary import Tracking
from pixelserver.web.base import BasePage
from pixelserver.web.localtime import LocalTime

OPENAPI = Path(__file__).parent / "openapi.json"
MAX_LIMIT = 200
EXPORT_ROWS = 100_000


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A value as a CSV cell a spreadsheet shows as text: one that starts like a formula
    (`=`, `+`, `-`, `@`, tab, CR; OWASP's CSV injection list) gets a leading apostrophe, so
    a hostile subject line cannot run when the export is opened."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


class ApiError(tornado.web.HTTPError):
    def __init__(self, status: int, code: str, message: str) -> None:
        # The status line keeps its standard reason phrase ("401 Unauthorized"); the words
        # for people are in the JSON body (a reason phrase must be Latin-1 and short).
        super().__init__(status)
        self.code = code
        self.message = message


class ApiHandler(BasePage):
    needs_login = False
    allowed = "GET"

    def check_xsrf_cookie(self) -> None:
        return None  # bearer tokens, not cookies: nothing for another site to ride on

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "application/json; charset=utf-8")

    async def prepare(self) -> None:
        if not self.auth.logins:
            await self._demo_access()
            self.api_user: str | None = None
            return
        header = self.request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise ApiError(
                401, "unauthorized", "send a personal API token: Authorization: Bearer …"
            )
        async with self.sessions.begin() as session:
            user = await api_token_user(session, header[7:].strip())
        if user is None:
            raise ApiError(401, "unauthorized", "this API token is not valid (revoked?)")
        self.api_user = user

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, ApiError):
            code, message = exc.code, exc.message
        else:
            code = {
                401: "unauthorized",
                403: "forbidden",
                404: "not_found",
                405: "method_not_allowed",
            }.get(status_code, "error")
            message = self._reason
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="MailPing"')
        if status_code == 405:
            self.set_header("Allow", self.allowed)  # RFC 9110 15.5.6: a 405 says what is allowed
        self.finish({"error": {"code": code, "message": message}})

    # -- parameters --

    def limit(self, default: int = 50) -> int:
        value = self.get_query_argument("limit", str(default))
        if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
            raise ApiError(400, "bad_limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
        return int(value)

    def cursor(self) -> int | None:
        """The id of the last item of the previous page (what next_cursor gave)."""
        value = self.get_query_argument("cursor", None)
        if value is None:
            return None
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            raise ApiError(400, "bad_cursor", "cursor is the next_cursor of a previous page")
        return int(value)

    def date(self, name: str) -> dt.date | None:
        value = self.get_query_argument(name, None)
        if value is None:
            return None
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ApiError(400, "bad_date", f"{name} must be a date like 2026-11-01") from None

    def filters(self) -> queries.Filters:
        state = self.get_query_argument("state", None)
        if state is not None and state not in STATES:
            raise ApiError(400, "bad_state", f"state must be one of {', '.join(STATES)}")
        q = self.get_query_argument("q", "")
        if len(q) > 200:
            raise ApiError(400, "bad_query", "q is at most 200 characters")
        return queries.Filters(
            q=q, state=state or "", since=self.date("since"), until=self.date("until")
        )


def make_cursor(last_id: int) -> str:
    return str(last_id)


def _when(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def delivery_json(d: queries.DeliveryRow) -> dict:
    st = d.state
    return {
        "id": d.id,
        "recipient": d.recipient,
        "outcome": d.outcome,
        "upstream_reply": d.upstream_reply or None,
        "state": st.state,
        "summary": d.chip,
        "tracked": d.tracking == Tracking.TRACKED,
        "untracked_reason": d.untracked_reason,
        "opens": st.human_hits,
        "machine_fetches": st.machine_hits,
        "first_open": _when(st.first_open),
        "last_open": _when(st.last_open),
        "client": st.client or None,
        "place": st.place or None,
        "possibly_forwarded": st.possibly_forwarded,
        "clicks": st.human_clicks,
    }


def message_json(m: queries.MessageRow) -> dict:
    return {
        "id": m.id,
        "subject": m.subject,
        "sent_at": _when(m.accepted_at),
        "source": m.source,
        "deliveries": [delivery_json(d) for d in m.deliveries],
    }


class MessagesApi(ApiHandler):
    async def get(self) -> None:
        limit = self.limit()
        async with self.sessions() as session:
            rows = await queries.list_messages(
                session, self.api_user, self.filters(), before_id=self.cursor(), limit=limit
            )
        nxt = make_cursor(rows[-1].id) if len(rows) == limit else None
        self.write({"messages": [message_json(m) for m in rows], "next_cursor": nxt})


class MessageApi(ApiHandler):
    async def get(self, message_id: str) -> None:
        async with self.sessions() as session:
            detail = await queries.message_detail(session, self.api_user, int(message_id))
            if detail is None:
                raise ApiError(404, "not_found", "no such message")
            per_link = await clickreports.clicks_by_delivery(
                session, [d.id for d in detail.message.deliveries]
            )
        body = message_json(detail.message)
        for d in body["deliveries"]:
            d["links"] = [
                {
                    "n": lc.n,
                    "url": lc.url,
                    "people": lc.people,
                    "machines": lc.machines,
                    "first_click": _when(lc.first_person),
                }
                for lc in per_link.get(d["id"], [])
            ]
        self.write({"message": body})


class ClicksApi(ApiHandler):
    """Every click on a delivery's rewritten links, with its verdict and reasons."""

    async def get(self, delivery_id: str) -> None:
        async with self.sessions() as session:
            if not await queries.delivery_owned(session, self.api_user, int(delivery_id)):
                raise ApiError(404, "not_found", "no such delivery")
            rows = await clickreports.clicks_of_deliveries(session, [int(delivery_id)])
            links = dict(await clickreports.links_of_delivery(session, int(delivery_id)))
        self.write(
            {
                "clicks": [
                    {
                        "id": c.id,
                        "at": _when(c.at),
                        "link": c.n,
                        "url": links.get(c.n),
                        "method": c.method,
                        "verdict": c.verdict,
                        "confidence": c.confidence,
                        "rule": c.rule,
                        "reasons": c.reasons,
                        "seconds_after_send": c.seconds_after_send,
                        "network": c.ip_prefix,
                        "asn": c.asn,
                        "organisation": c.org or None,
                    }
                    for c in rows.get(int(delivery_id), [])
                ]
            }
        )


class HitsApi(ApiHandler):
    async def get(self, delivery_id: str) -> None:
        limit, after = self.limit(100), self.cursor()
        async with self.sessions() as session:
            if not await queries.delivery_owned(session, self.api_user, int(delivery_id)):
                raise ApiError(404, "not_found", "no such delivery")
            q = select(Hit).where(Hit.delivery_id == int(delivery_id))
            if after is not None:
                q = q.where(Hit.id > after)
            hits = list((await session.execute(q.order_by(Hit.id).limit(limit))).scalars())
        self.write(
            {
                "hits": [
                    {
                        "id": h.id,
                        "at": _when(h.at),
                        "verdict": h.verdict,
                        "confidence": h.confidence,
                        "rule": h.rule,
                        "reasons": h.reasons,
                        "seconds_after_send": h.seconds_after_send,
                        "network": h.ip_prefix,
                        "asn": h.asn,
                        "organisation": h.org or None,
                        "client": h.client or None,
                        "country": h.country or None,
                        "region": h.region or None,
                        "city": h.city or None,
                        "method": h.method,
                    }
                    for h in hits
                ],
                "next_cursor": make_cursor(hits[-1].id) if len(hits) == limit else None,
            }
        )


EXPORT_FIELDS = (
    "message_id",
    "sent_at",
    "subject",
    "source",
    "recipient",
    "outcome",
    "state",
    "summary",
    "opens",
    "machine_fetches",
    "first_open",
    "last_open",
    "client",
    "place",
)


# Added after EXPORT_FIELDS in the CSV (never renamed, so sheets built on them keep working):
# each delivery's row says kind "delivery" and its count of a person's clicks; under it comes
# one "click" row per click, naming the message and recipient, the link (as the report numbers
# it, and its original address), when (the user's time), the verdict and the reasons. A click
# row leaves the delivery's counts empty, so a column summed over the sheet counts each copy once.
CLICK_FIELDS = (
    "kind",
    "clicks",
    "link_number",
    "link",
    "clicked_at",
    "click_verdict",
    "click_summary",
    "click_reasons",
)
CSV_FIELDS = EXPORT_FIELDS + CLICK_FIELDS
NAMING = EXPORT_FIELDS[:5]  # what a click row repeats from its delivery's row


def click_event(c: clickreports.ClickWithLink, when: Any) -> dict:
    """One click as the export gives it: as the report shows it, in the user's time."""
    return {
        "link_number": c.n + 1,
        "url": c.url,
        "at": when(c.at),
        "verdict": c.verdict,
        "summary": CLICK_WORDS.get(c.verdict, c.verdict),
        "reasons": [r.get("text", "") for r in c.reasons if isinstance(r, dict)],
    }


async def export_rows(
    session: AsyncSession,
    user: str | None,
    filters: queries.Filters,
    local: LocalTime | None = None,
) -> list[dict]:
    """Every delivery of the messages matching `filters`, one flat row each (newest first),
    with its clicks in `click_events`; times in the user's zone (`local`) as ISO 8601 with
    its offset, so still exact."""
    when = local.iso if local is not None else _when
    rows: list[dict] = []
    before = None
    while len(rows) < EXPORT_ROWS:
        page = await queries.list_messages(session, user, filters, before_id=before, limit=500)
        clicks = await clickreports.clicks_with_links(
            session, [d.id for m in page for d in m.deliveries]
        )
        for m in page:
            for d in m.deliveries:
                j = delivery_json(d)
                rows.append(
                    {
                        "message_id": m.id,
                        "sent_at": when(m.accepted_at),
                        "subject": m.subject,
                        "source": m.source,
                        **{k: j[k] for k in EXPORT_FIELDS[4:]},
                        "first_open": when(d.state.first_open),
                        "last_open": when(d.state.last_open),
                        "clicks": d.state.human_clicks,
                        "click_events": [click_event(c, when) for c in clicks.get(d.id, [])],
                    }
                )
        if len(page) < 500:
            break
        before = page[-1].id
    return rows


def csv_rows(rows: list[dict]) -> Iterator[dict]:
    """The export's rows flattened for a sheet: each delivery, then a row per click."""
    for r in rows:
        yield {
            **{k: r[k] for k in EXPORT_FIELDS},
            "kind": "delivery",
            "clicks": r["clicks"],
        }
        for c in r["click_events"]:
            yield {
                **{k: r[k] for k in NAMING},
                "kind": "click",
                "link_number": c["link_number"],
                "link": c["url"],
                "clicked_at": c["at"],
                "click_verdict": c["verdict"],
                "click_summary": c["summary"],
                "click_reasons": "; ".join(c["reasons"]),
            }


def write_csv(handler: tornado.web.RequestHandler, rows: list[dict]) -> None:
    """The rows as a CSV download, every cell safe to open in a spreadsheet (the link's
    address included: it is the sender's text, like the subject)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(
        {k: ("" if v is None else csv_cell(v)) for k, v in r.items()} for r in csv_rows(rows)
    )
    handler.set_header("Content-Type", "text/csv; charset=utf-8")
    handler.set_header("Content-Disposition", 'attachment; filename="mailping-export.csv"')
    handler.write(out.getvalue())


class ExportApi(ApiHandler):
    """Every delivery of the messages sent in a date range, as CSV or JSON."""

    async def get(self) -> None:
        fmt = self.get_query_argument("format", "json")
        if fmt not in ("json", "csv"):
            raise ApiError(400, "bad_format", "format must be json or csv")
        filters = queries.Filters(since=self.date("since"), until=self.date("until"))
        local = await self.local_time(self.api_user)
        async with self.sessions() as session:
            rows = await export_rows(session, self.api_user, filters, local)
        if fmt == "json":
            self.write({"deliveries": rows})
            return
        write_csv(self, rows)


ADDRESS = re.compile(r"[^/@\x00-\x20\x7f]+@[^/@\x00-\x20\x7f]+")  # as in openapi.json


class RecipientApi(ApiHandler):
    """DELETE: forget a recipient on their request (GDPR art. 17), as the recipient page's
    button does. Forgetting an address never seen still keeps it from being tracked."""

    allowed = "DELETE"

    async def delete(self, address: str) -> None:
        # Tornado has decoded the path argument already: decoding it again would turn the
        # "+" of ana+tag@example.com into a space.
        if not (3 <= len(address) <= 320 and ADDRESS.fullmatch(address)):
            raise ApiError(400, "bad_request", "not an email address")
        done = await erasure.forget_recipient(
            self.sessions, address, user=self.api_user, outbox_dir=self.outbox_dir, vacuum=False
        )
        tornado.ioloop.IOLoop.current().spawn_callback(erasure.vacuum_later, self.sessions)
        self.write({"forgotten": {"deliveries": done.deliveries, "messages": done.messages}})


class OpenApiDocument(ApiHandler):
    async def prepare(self) -> None:
        return None  # the contract itself is public

    def get(self) -> None:
        self.write(json.loads(OPENAPI.read_text()))


class NotFoundApi(ApiHandler):
    def get(self) -> None:
        raise ApiError(404, "not_found", "no such API path (see /api/v1/openapi.json)")
