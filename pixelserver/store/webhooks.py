"""Signed webhooks in the store: endpoints, the events waiting to be sent, and the ledger.

Events are written here by the code that notices them (the hit pipeline, outcomes, message
recording, clicks), in the same transaction as what they report, so an event is never lost
between "it happened" and "it is queued". Each (endpoint, event) row exists at most once
(unique key), however many processes notice it. Sending is relay/webhooks.py's job; it claims
rows by compare-and-set on their status (pixelserver/store/webhookledger.py), like digests.
Nothing here opens a network connection.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, delete, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.store.accounts import get_or_create_user
from pixelserver.store.schema import Delivery, Hit, Message, User, insert_ignore, utcnow
from pixelserver.store.webhookschema import WebhookEndpoint, WebhookMessage
from pixelserver.vocabulary import PERSON_VERDICTS, State, Tracking

OPENED_EVENT = "delivery.opened"  # first human open or probable open, once per delivery
CLICKED_EVENT = "delivery.clicked"  # first human click per link of a delivery
FAILED_EVENT = "delivery.failed"  # the copy will never arrive (rejected, expired, dropped)
UNTRACKED_EVENT = "message.untracked"  # a copy left without a pixel (one event per recipient)
EVENT_TYPES = (OPENED_EVENT, CLICKED_EVENT, FAILED_EVENT, UNTRACKED_EVENT)

PENDING = "pending"  # queued, never tried
SENDING = "sending"  # claimed by one process, being posted
RETRY = "retry"  # the last attempt failed; next_try_at says when to try again
SENT = "sent"  # the receiver answered 2xx
FAILED = "failed"  # given up (a day of retries, or the endpoint's URL is refused)

MAX_URL = 2000
MAX_ENDPOINTS = 20  # per user


class WebhookError(ValueError):
    """An endpoint the user cannot have; the message says why, for a form, the API or the CLI."""


class TooManyEndpoints(WebhookError):
    """The user has MAX_ENDPOINTS already."""


def new_secret() -> str:
    """A Standard Webhooks signing secret: whsec_ and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL as it will be posted to, or WebhookError. Only what can be seen without the
    network is checked here; the addresses the host resolves to are checked at every send
    (relay/webhooks.py), because a name can be pointed elsewhere after it was added."""
    url = url.strip()
    if not url or len(url) > MAX_URL:
        raise WebhookError(f"URL: give an https:// address of at most {MAX_URL} characters.")
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise WebhookError(
            "URL: only https:// addresses can receive webhooks"
            + ("" if allow_private else " (http:// needs [webhooks] allow_private = true)")
            + "."
        )
    if not parts.hostname:
        raise WebhookError("URL: it names no host.")
    if parts.username or parts.password:
        raise WebhookError("URL: a login in the URL is not allowed; use the signature instead.")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise WebhookError("URL: the port is not a number from 1 to 65535.") from None
    if not allow_private:
        refused = refused_address(parts.hostname)
        if refused or parts.hostname.lower().rstrip(".") == "localhost":
            raise WebhookError(
                f"URL: {parts.hostname} is {refused or 'a loopback name'}; only public addresses "
                "receive webhooks unless [webhooks] allow_private = true."
            )
    return url


def refused_address(host: str) -> str:
    """Why this IP address may not receive webhooks ("" when it may, or is not an address)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if not ip.is_global or ip.is_multicast:
        return "a private or reserved address"
    return ""


def check_events(events: Iterable[str]) -> list[str]:
    chosen = sorted({e.strip() for e in events if e.strip()})
    unknown = [e for e in chosen if e not in EVENT_TYPES]
    if unknown:
        raise WebhookError(f"Events: {', '.join(unknown)} unknown; choose from {EVENT_TYPES}.")
    return chosen


# --- endpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    id: int
    user: str
    url: str
    events: tuple[str, ...]  # empty: every event
    created_at: dt.datetime


async def add_endpoint(
    session: AsyncSession,
    address: str,
    url: str,
    *,
    allow_private: bool,
    events: Iterable[str] = (),
    shown: bool = True,
) -> tuple[Endpoint, str]:
    """A new endpoint and its signing secret, to be shown once: by the caller now (`shown`,
    the API and the command), or later by `secret_to_show` (the Settings page, which shows it
    on the page its form redirects to)."""
    url = check_url(url, allow_private=allow_private)
    chosen = check_events(events)
    user = await get_or_create_user(session, address)
    count = len(
        (
            await session.execute(
                select(WebhookEndpoint.id).where(WebhookEndpoint.user_id == user.id)
            )
        ).all()
    )
    if count >= MAX_ENDPOINTS:
        raise TooManyEndpoints(f"Webhooks: at most {MAX_ENDPOINTS} per user; remove one first.")
    secret = new_secret()
    row = WebhookEndpoint(
        user_id=user.id,
        url=url,
        secret=secret,
        events=chosen,
        secret_shown_at=utcnow() if shown else None,
    )
    session.add(row)
    await session.flush()
    return Endpoint(row.id, user.address, url, tuple(chosen), row.created_at), secret


async def endpoints(session: AsyncSession, address: str | None = None) -> list[Endpoint]:
    """A user's endpoints (all users' when address is None: the administrator's list)."""
    query = (
        select(WebhookEndpoint, User.address)
        .join(User, User.id == WebhookEndpoint.user_id)
        .order_by(WebhookEndpoint.id)
    )
    if address is not None:
        query = query.where(User.address == address.strip().lower())
    return [
        Endpoint(e.id, a, e.url, tuple(e.events or ()), e.created_at)
        for e, a in (await session.execute(query)).all()
    ]


async def secret_to_show(session: AsyncSession, endpoint_id: int, address: str) -> str | None:
    """The signing secret of this user's endpoint if it was never shown, marked shown by the
    same compare-and-set (so two page views, in any processes, cannot both get it); None
    otherwise."""
    owner = select(User.id).where(User.address == address.strip().lower()).scalar_subquery()
    taken = await session.execute(
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.id == endpoint_id,
            WebhookEndpoint.user_id == owner,
            WebhookEndpoint.secret_shown_at.is_(None),
        )
        .values(secret_shown_at=utcnow())
    )
    if taken.rowcount != 1:
        return None
    return (
        await session.execute(
            select(WebhookEndpoint.secret).where(WebhookEndpoint.id == endpoint_id)
        )
    ).scalar_one()


async def remove_endpoint(session: AsyncSession, endpoint_id: int, address: str | None) -> bool:
    """Remove one endpoint with its ledger; only the owner's when address is given."""
    query = delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if address is not None:
        owner = select(User.id).where(User.address == address.strip().lower())
        query = query.where(WebhookEndpoint.user_id.in_(owner.scalar_subquery()))
    return ((await session.execute(query)).rowcount or 0) > 0


# --- events ------------------------------------------------------------------------------


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def body(event_type: str, at: dt.datetime | None, data: dict[str, Any]) -> str:
    """The JSON posted: the Standard Webhooks shape (type, timestamp, data)."""
    return json.dumps(
        {"type": event_type, "timestamp": _iso(at or utcnow()), "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


async def _enqueue(
    session: AsyncSession,
    event_type: str,
    items: Sequence[tuple[int, str, dict[str, Any], dt.datetime | None, int, int | None]],
) -> int:
    """(user id, event key, data, time, message id, delivery id) -> one ledger row per
    endpoint of that user that takes this event. Existing rows are left alone."""
    users = {u for u, *_ in items}
    if not users:
        return 0
    by_user: dict[int, list[WebhookEndpoint]] = {}
    for e in (
        await session.execute(select(WebhookEndpoint).where(WebhookEndpoint.user_id.in_(users)))
    ).scalars():
        if not e.events or event_type in e.events:
            by_user.setdefault(e.user_id, []).append(e)
    rows = []
    now = utcnow()
    for user_id, key, data, at, message_id, delivery_id in items:
        for e in by_user.get(user_id, ()):
            rows.append(
                {
                    "endpoint_id": e.id,
                    "msg_id": "msg_" + secrets.token_hex(16),
                    "event_type": event_type,
                    "event_key": key[:200],
                    "message_id": message_id,
                    "delivery_id": delivery_id,
                    "payload": body(event_type, at, data),
                    "created_at": now,
                    "status": PENDING,
                    "attempts": 0,
                    "next_try_at": now,
                    "claimed_by": "",
                    "last_error": "",
                }
            )
    if rows:
        await session.execute(insert_ignore(session, WebhookMessage.__table__), rows)
    return len(rows)


def _delivery_data(d: Any, verdict: str | None, at: dt.datetime | None) -> dict[str, Any]:
    return {
        "message": d.message_id,
        "delivery": d.id,
        "recipient": d.recipient,
        "subject": d.subject,
        "state": d.state,
        "verdict": verdict,
        "time": _iso(at),
    }


def _deliveries_with_endpoints(event_type: str | None, delivery_ids: Iterable[int]) -> Any:
    """Deliveries among these whose user has an endpoint and (with an event type) that have
    no row for this event yet: nothing more is read for users without webhooks."""
    has_endpoint = exists().where(WebhookEndpoint.user_id == Message.user_id)
    query = (
        select(
            Delivery.id,
            Delivery.message_id,
            Delivery.recipient,
            Delivery.state,
            Delivery.first_open,
            Delivery.finished_at,
            Delivery.upstream_reply,
            Delivery.untracked_reason,
            Message.subject,
            Message.user_id,
            Message.accepted_at,
        )
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.id.in_(sorted(set(delivery_ids))), has_endpoint)
    )
    if event_type is None:
        return query
    already = exists().where(
        and_(WebhookMessage.delivery_id == Delivery.id, WebhookMessage.event_type == event_type)
    )
    return query.where(~already)


async def enqueue_opens(session: AsyncSession, delivery_ids: Iterable[int]) -> int:
    """delivery.opened for each of these deliveries that is now read or probably read, once
    per delivery. Called by the hit pipeline in the transaction of the hits that did it."""
    ids = list(delivery_ids)
    if not ids:
        return 0
    found = (
        await session.execute(
            _deliveries_with_endpoints(OPENED_EVENT, ids).where(
                Delivery.state.in_((State.OPENED, State.PROBABLY_OPENED))
            )
        )
    ).all()
    if not found:
        return 0
    verdicts: dict[int, str] = {}
    for delivery_id, verdict in (
        await session.execute(
            select(Hit.delivery_id, Hit.verdict)
            .where(Hit.delivery_id.in_([d.id for d in found]), Hit.verdict.in_(PERSON_VERDICTS))
            .order_by(Hit.at.desc())
        )
    ).all():
        verdicts[delivery_id] = verdict  # the earliest person's hit wins (read last)
    return await _enqueue(
        session,
        OPENED_EVENT,
        [
            (
                d.user_id,
                f"{OPENED_EVENT}:{d.id}",
                _delivery_data(d, verdicts.get(d.id), d.first_open),
                d.first_open,
                d.message_id,
                d.id,
            )
            for d in found
        ],
    )


async def enqueue_failures(session: AsyncSession, delivery_ids: Iterable[int]) -> int:
    """delivery.failed for each of these deliveries whose copy will never arrive."""
    ids = list(delivery_ids)
    if not ids:
        return 0
    found = (
        await session.execute(
            _deliveries_with_endpoints(FAILED_EVENT, ids).where(Delivery.state == State.FAILED)
        )
    ).all()
    return await _enqueue(
        session,
        FAILED_EVENT,
        [
            (
                d.user_id,
                f"{FAILED_EVENT}:{d.id}",
                {**_delivery_data(d, None, d.finished_at), "reply": d.upstream_reply[:500]},
                d.finished_at,
                d.message_id,
                d.id,
            )
            for d in found
        ],
    )


async def enqueue_failures_by_token(session: AsyncSession, tokens: Iterable[str]) -> int:
    tokens = list(tokens)
    if not tokens:  # the relay's usual case: every copy accepted, nothing read
        return 0
    ids = (await session.execute(select(Delivery.id).where(Delivery.token.in_(tokens)))).scalars()
    return await enqueue_failures(session, list(ids))


async def enqueue_untracked(session: AsyncSession, tokens: Iterable[str]) -> int:
    """message.untracked for each of these copies that left without a pixel (one event per
    recipient, with the reason: the sender's header, an exclusion, the store away...)."""
    wanted = list(tokens)
    if not wanted:
        return 0
    ids = (
        await session.execute(
            select(Delivery.id).where(
                Delivery.token.in_(wanted), Delivery.tracking == Tracking.UNTRACKED
            )
        )
    ).scalars()
    found = (await session.execute(_deliveries_with_endpoints(UNTRACKED_EVENT, list(ids)))).all()
    return await _enqueue(
        session,
        UNTRACKED_EVENT,
        [
            (
                d.user_id,
                f"{UNTRACKED_EVENT}:{d.id}",
                # "untracked" whatever the queue says yet: the event is about tracking.
                {
                    **_delivery_data(d, None, d.accepted_at),
                    "state": State.UNTRACKED,
                    "reason": d.untracked_reason,
                },
                d.accepted_at,
                d.message_id,
                d.id,
            )
            for d in found
        ],
    )


async def enqueue_click(
    session: AsyncSession,
    delivery_id: int,
    *,
    link: str,
    url: str,
    at: dt.datetime,
    verdict: str,
) -> int:
    """delivery.clicked, for the click-tracking code to call in the transaction that stores a
    click judged a person's (verdict human): once per (delivery, link) — `link` is the link's
    stable identifier in the copy, `url` its original address (sent in the body). Returns how
    many endpoints take clicks (a link already reported adds no second row)."""
    key = f"{CLICKED_EVENT}:{delivery_id}:{link}"
    # Per link, not per delivery: the unique (endpoint, key) keeps a link's repeat out.
    found = (await session.execute(_deliveries_with_endpoints(None, [delivery_id]))).all()
    return await _enqueue(
        session,
        CLICKED_EVENT,
        [
            (
                d.user_id,
                key,
                {**_delivery_data(d, verdict, at), "link": link, "url": url[:MAX_URL]},
                at,
                d.message_id,
                d.id,
            )
            for d in found
        ],
    )
