"""Webhooks in the API (/api/v1/webhooks) and the Settings page's webhook forms.

The signing secret is answered once, when an endpoint is made, and never shown again. The
Settings form answers its post with a redirect (303), so that reloading the page it leads to
does not post the form again (a second endpoint); the secret is shown on that page, once: a
short-lived, signed, HttpOnly cookie names the new endpoint (never the secret, which is in no
URL and no cookie), and the store hands the secret out only if it was never shown, marking it
shown in the same statement. The targets allowed are pixelserver/store/webhooks.py's (https
and a public host unless [webhooks] allow_private), checked again by the sender at every post.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.config import WebhooksConfig
from pixelserver.store import webhookledger, webhooks
from pixelserver.web.api import ApiError, ApiHandler
from pixelserver.web.base import BasePage

NEW_WEBHOOK_COOKIE = "mailping_new_webhook"
SHOW_WITHIN = 120  # seconds from the post to the page showing the secret

# As openapi.json's addWebhook url: https and a host name, no port (an address, a port or
# http:// with allow_private can be set in Settings or with `mailping webhook add`).
URL_PATTERN = re.compile(
    r"https?://[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,24}"
    r"(/[A-Za-z0-9._~/-]*)?"
)


def _when(value: Any) -> str | None:
    return value.isoformat() if value else None


def endpoint_json(e: webhooks.Endpoint) -> dict[str, Any]:
    return {
        "id": e.id,
        "url": e.url,
        "events": list(e.events) or list(webhooks.EVENT_TYPES),
        "created_at": _when(e.created_at),
    }


def attempt_json(a: webhookledger.AttemptView) -> dict[str, Any]:
    return {
        "webhook_id": a.msg_id,
        "event": a.event_type,
        "url": a.url,
        "at": _when(a.at),
        "status_code": a.status_code,
        "response": a.response,
        "error": a.error or None,
        "state": a.status,
    }


def webhook_config(handler: Any) -> WebhooksConfig:
    return handler.extra.get("webhooks") or WebhooksConfig()


async def add_for(
    session: AsyncSession,
    user: str,
    url: str,
    events: list[str],
    config: WebhooksConfig,
    *,
    shown: bool = True,
) -> tuple[webhooks.Endpoint, str]:
    """Make an endpoint; WebhookError says what is wrong with it. `shown`: its secret is in
    this answer (False: the Settings page shows it on the page it redirects to)."""
    return await webhooks.add_endpoint(
        session, user, url, allow_private=config.allow_private, events=events, shown=shown
    )


def remember_new(handler: BasePage, endpoint_id: int) -> None:
    """After the Settings form made an endpoint: its page view is to show the secret."""
    handler.set_signed_cookie(
        NEW_WEBHOOK_COOKIE,
        str(endpoint_id),
        expires_days=None,
        max_age=SHOW_WITHIN,
        path="/settings",
        httponly=True,
        samesite="Strict",
        secure=handler.auth.secure_cookies,
    )


async def secret_once(handler: BasePage, user: str) -> str | None:
    """The secret of the endpoint the Settings form just made, if this view is the first to
    ask (the cookie is cleared whatever it holds)."""
    if handler.get_cookie(NEW_WEBHOOK_COOKIE) is None:
        return None
    handler.clear_cookie(NEW_WEBHOOK_COOKIE, path="/settings")
    value = handler.get_signed_cookie(NEW_WEBHOOK_COOKIE, max_age_days=SHOW_WITHIN / 86400)
    if not value or not value.isdigit() or len(value) > 18:
        return None
    async with handler.sessions.begin() as session:
        return await webhooks.secret_to_show(session, int(value), user)


class WebhookApiBase(ApiHandler):
    def owner(self) -> str:
        if self.api_user is None:
            raise ApiError(404, "not_found", "webhooks belong to a user; the demo mode has none")
        return self.api_user


class WebhooksApi(WebhookApiBase):
    """GET: the user's webhooks. POST {"url", "events"?}: a new one, with its secret."""

    allowed = "GET, POST"

    async def get(self) -> None:
        async with self.sessions() as session:
            rows = await webhooks.endpoints(session, self.owner())
        self.write({"webhooks": [endpoint_json(e) for e in rows]})

    async def post(self) -> None:
        user = self.owner()
        try:
            body = json.loads(self.request.body or b"")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "bad_request", 'send a JSON object: {"url": ...}') from None
        if not isinstance(body, dict) or set(body) - {"url", "events"}:
            raise ApiError(400, "bad_request", 'the body is {"url": ..., "events": [...]}')
        url, events = body.get("url"), body.get("events", [])
        if not isinstance(url, str) or not URL_PATTERN.fullmatch(url):
            raise ApiError(400, "bad_url", "url is an https:// address with a host name")
        if (
            not isinstance(events, list)
            or not all(isinstance(e, str) and e in webhooks.EVENT_TYPES for e in events)
            or len(set(events)) != len(events)
        ):
            raise ApiError(400, "bad_events", f"events are some of {webhooks.EVENT_TYPES}")
        try:
            async with self.sessions.begin() as session:
                endpoint, secret = await add_for(session, user, url, events, webhook_config(self))
        except webhooks.TooManyEndpoints as exc:
            raise ApiError(409, "too_many", str(exc)) from None
        except webhooks.WebhookError as exc:
            raise ApiError(400, "bad_url", str(exc)) from None
        self.set_status(201)
        self.write({"webhook": endpoint_json(endpoint), "secret": secret})


class WebhookApi(WebhookApiBase):
    """DELETE: remove one of the user's webhooks and its history."""

    allowed = "DELETE"

    async def delete(self, webhook_id: str) -> None:
        if not (webhook_id.isascii() and webhook_id.isdigit() and len(webhook_id) <= 18):
            raise ApiError(404, "not_found", "no such webhook")
        async with self.sessions.begin() as session:
            gone = await webhooks.remove_endpoint(session, int(webhook_id), self.owner())
        if not gone:
            raise ApiError(404, "not_found", "no such webhook")
        self.set_status(204)
        self.clear_header("Content-Type")


class WebhookAttemptsApi(WebhookApiBase):
    """GET: the latest attempts of the user's webhooks and what the receivers answered."""

    async def get(self) -> None:
        limit = self.limit(50)
        async with self.sessions() as session:
            rows = await webhookledger.recent_attempts(session, self.owner(), limit)
        self.write({"attempts": [attempt_json(a) for a in rows]})
