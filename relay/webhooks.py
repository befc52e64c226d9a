"""Sends the signed webhooks queued in the store, from the process that runs the relay.

Every couple of seconds: claim the due rows of the ledger (pixelserver/store/webhooks.py; the
claim is committed before anything is posted, so several MailPing processes on one store never
post the same event at once), post each one signed per Standard Webhooks, and record the attempt
and the answer. A receiver that does not answer 2xx is tried again with backoff for a day.

Server-side request forgery: the host is resolved at every send by the client's own resolver,
which refuses loopback, private and reserved addresses (unless [webhooks] allow_private), so
the address checked is the address connected to. Redirects are never followed; the timeout is
short; only the start of an answer is kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tornado.httpclient import HTTPRequest
from tornado.netutil import DefaultLoopResolver, Resolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from pixelserver.store import webhookledger as ledger
from pixelserver.store import webhooks
from pixelserver.store.webhooks import refused_address
from relay.passes import run_passes

log = logging.getLogger("mailping.webhooks")

# Seconds before the 2nd, 3rd, ... try; the last repeats until a day has passed since the event.
RETRY_DELAYS = (5, 60, 300, 1800, 7200, 18000)
GIVE_UP_AFTER = dt.timedelta(days=1)
INTERRUPTED_AFTER = dt.timedelta(minutes=5)  # a claim older than this died with its process
MAX_ANSWER = 64 * 1024  # bytes of an answer read at most (its start is kept)
USER_AGENT = "MailPing-Webhooks/1"
Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sign(secret: str, msg_id: str, timestamp: int, payload: bytes) -> str:
    """`v1,` and the base64 HMAC-SHA256 of "id.timestamp.body" under the secret's bytes (the
    base64 after whsec_), as the Standard Webhooks specification says."""
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class RefusedTarget(OSError):
    """The webhook's host resolves to an address webhooks may not reach."""


class GuardedResolver(Resolver):
    """Resolves as usual, then refuses the whole answer if any address in it is loopback,
    private or reserved: what is checked here is what the client connects to."""

    def initialize(self, allow_private: bool = False) -> None:  # type: ignore[override]
        self.allow_private = allow_private
        self.inner = DefaultLoopResolver()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        addresses = await self.inner.resolve(host, port, family)
        if not self.allow_private:
            for _family, sockaddr in addresses:
                if why := refused_address(sockaddr[0]):
                    raise RefusedTarget(
                        f"{host} resolves to {why}; webhooks go to public addresses only "
                        "([webhooks] allow_private)"
                    )
        return addresses


@dataclass(frozen=True)
class Attempt:
    """What one post did, for logs and tests."""

    msg_id: str
    event_type: str
    status: str
    status_code: int | None
    error: str = ""


class WebhookRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        allow_private: bool = False,
        timeout: float = 10.0,
        clock: Clock = system_clock,
        worker: str | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        give_up_after: dt.timedelta = GIVE_UP_AFTER,
        batch: int = 50,
    ) -> None:
        self.sessions = sessions
        self.allow_private = allow_private
        self.timeout = timeout
        self.clock = clock
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.retry_delays = tuple(retry_delays)
        self.give_up_after = give_up_after
        self.batch = batch
        self.client = SimpleAsyncHTTPClient(
            force_instance=True,
            resolver=GuardedResolver(allow_private=allow_private),
            max_body_size=MAX_ANSWER,
            max_clients=20,
        )

    def close(self) -> None:
        self.client.close()

    async def tick(self) -> list[Attempt]:
        """One pass: claim every due row (committed before posting), post them, record."""
        now = self.clock()
        async with self.sessions.begin() as session:
            await ledger.release_interrupted(session, now - INTERRUPTED_AFTER)
            claims = await ledger.claim_due(session, self.worker, now, self.batch)
        return list(await asyncio.gather(*(self._deliver(c) for c in claims)))

    async def post(self, claim: ledger.Claim) -> tuple[int | None, str, str]:
        """(status code, start of the answer, error) of one signed POST."""
        url = webhooks.check_url(claim.url, allow_private=self.allow_private)
        body = claim.payload.encode()
        stamp = int(time.time())  # the real send time, whatever clock schedules retries
        kept = bytearray()

        def keep(chunk: bytes) -> None:
            if len(kept) < ledger.RESPONSE_KEPT:
                kept.extend(chunk[: ledger.RESPONSE_KEPT - len(kept)])

        request = HTTPRequest(
            url,
            method="POST",
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "webhook-id": claim.msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": sign(claim.secret, claim.msg_id, stamp, body),
            },
            follow_redirects=False,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            streaming_callback=keep,
            decompress_response=False,
        )
        response = await self.client.fetch(request, raise_error=False)
        answer = bytes(kept).decode("utf-8", "replace")
        if response.code == 599:  # no HTTP answer: timeout, refused connection, TLS...
            return None, answer, f"{type(response.error).__name__}: {response.error}"
        return response.code, answer, ""

    async def _deliver(self, claim: ledger.Claim) -> Attempt:
        started = time.perf_counter()
        at = self.clock()
        try:
            code, answer, error = await self.post(claim)
        except webhooks.WebhookError as exc:
            code, answer, error = None, "", str(exc)
        except Exception as exc:  # noqa: BLE001 - one failed post is recorded and retried
            code, answer, error = None, "", f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        if code is not None and 200 <= code < 300:
            status, next_try = webhooks.SENT, None
        else:
            delay = self.retry_delays[min(claim.attempts, len(self.retry_delays) - 1)]
            next_try = at + dt.timedelta(seconds=delay)
            if next_try > claim.created_at + self.give_up_after:
                status, next_try = webhooks.FAILED, None
            else:
                status = webhooks.RETRY
            if code is not None and not error:
                error = f"HTTP {code}" + (" (redirects are not followed)" if code < 400 else "")
        async with self.sessions.begin() as session:
            await ledger.record_attempt(
                session,
                claim,
                at=at,
                status=status,
                status_code=code,
                response=answer,
                error=error,
                seconds=seconds,
                next_try_at=next_try,
            )
        if status != webhooks.SENT:
            log.warning(
                "webhook %s (%s) to %s: %s; %s",
                claim.msg_id,
                claim.event_type,
                claim.url.split("?")[0],
                error,
                "given up" if status == webhooks.FAILED else f"next try at {next_try:%H:%M:%S}",
            )
        return Attempt(claim.msg_id, claim.event_type, status, code, error)

    async def run_forever(self, interval: float = 2.0) -> None:
        """Pass after pass for as long as the process runs; a failed pass (the store away) is
        logged once and the next one tries again."""
        try:
            await run_passes(self.tick, "webhook", interval, log)
        finally:
            with contextlib.suppress(Exception):
                self.close()
