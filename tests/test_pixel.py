"""The pixel server over real HTTP: the GIF contract, hits reaching the store (through the
journal), trusted proxies, surviving a database outage, and who may read the report page."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from pixelserver.pixel import GIF
from pixelserver.store.hitrecords import hits_for_delivery
from pixelserver.store.messages import delivery_by_id
from pixelserver.store.schema import Delivery, Hit, make_engine, make_sessionmaker
from relay import tracking
from tests.conftest import Stack, free_port, make_config, start_pixelserver

NO_CACHE = "no-store, no-cache, must-revalidate, max-age=0, private"


async def fetch(url: str, **kw: object) -> HTTPResponse:
    try:
        return await AsyncHTTPClient().fetch(HTTPRequest(url, **kw), raise_error=False)
    except HTTPClientError as exc:  # pragma: no cover - raise_error=False returns it
        assert exc.response is not None
        return exc.response


async def a_delivery(store, recipient: str = "ana@example.org") -> Delivery:
    """A message recorded the way the relay records one."""
    recorded = await tracking.record_message(
        store,
        user="me@example.com",
        envelope_from="me@example.com",
        recipients=[recipient],
        subject="Quarterly numbers",
        message_id_header="<q@example.com>",
        size=1000,
        untracked_reason=None,
    )
    async with store() as session:
        d = await delivery_by_id(session, recorded.deliveries[0].id)
        assert d is not None
        return d


async def hits_of(store, delivery_id: int) -> list[Hit]:
    async with store() as session:
        return await hits_for_delivery(session, delivery_id)


async def wait_for_hits(store, delivery_id: int, n: int) -> list[Hit]:
    for _ in range(100):
        hits = await hits_of(store, delivery_id)
        if len(hits) >= n:
            return hits
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {n} hits, store has {len(hits)}")


def assert_pixel(resp: HTTPResponse, *, body: bool = True) -> None:
    assert resp.code == 200
    assert resp.headers["Content-Type"] == "image/gif"
    assert resp.headers["Cache-Control"] == NO_CACHE
    assert resp.headers["Pragma"] == "no-cache"
    assert resp.headers["Expires"] == "0"
    assert "Etag" not in resp.headers
    assert resp.headers["Content-Length"] == "43"
    if body:
        assert resp.body == GIF


async def test_known_token_gets_gif_and_is_recorded(stack: Stack) -> None:
    d = await a_delivery(stack.store)
    ua = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.1"
    resp = await fetch(f"{stack.pixel_base}/p/{d.token}.gif", headers={"User-Agent": ua})
    assert_pixel(resp)
    (hit,) = await wait_for_hits(stack.store, d.id, 1)
    assert hit.user_agent == ua
    assert hit.method == "GET"
    assert hit.ip_prefix == "127.0.0.0/24"  # masked: never the full address


async def test_head_gets_headers_only_and_is_recorded_as_head(stack: Stack) -> None:
    d = await a_delivery(stack.store)
    resp = await fetch(f"{stack.pixel_base}/p/{d.token}.gif", method="HEAD")
    assert_pixel(resp, body=False)
    assert resp.body == b""
    (hit,) = await wait_for_hits(stack.store, d.id, 1)
    assert hit.method == "HEAD"


@pytest.mark.parametrize(
    "name",
    ["AAAAAAAAAAAAAAAAAAAAAA.gif", "short.gif", "x" * 300 + ".gif", "%00%ff.gif", "token.png", ""],
)
async def test_unknown_and_malformed_tokens_get_the_same_gif_and_record_nothing(
    stack: Stack, name: str
) -> None:
    resp = await fetch(f"{stack.pixel_base}/p/{name}")
    assert_pixel(resp)
    await asyncio.sleep(0.3)
    async with stack.store() as session:
        assert (await session.execute(select(func.count(Hit.id)))).scalar() == 0


async def test_conditional_request_still_gets_the_image(stack: Stack) -> None:
    d = await a_delivery(stack.store)
    resp = await fetch(
        f"{stack.pixel_base}/p/{d.token}.gif",
        headers={"If-None-Match": "*", "If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"},
    )
    assert_pixel(resp)


async def test_forwarded_for_is_believed_only_from_trusted_proxies(stack: Stack) -> None:
    d = await a_delivery(stack.store)
    url = f"{stack.pixel_base}/p/{d.token}.gif"
    headers = {"X-Forwarded-For": "198.51.100.23, 203.0.113.77"}
    # 127.0.0.1 is not a trusted proxy in the test config: its header is ignored.
    assert_pixel(await fetch(url, headers=headers))
    # 127.0.0.2 is: the right-most address it reports is the client.
    assert_pixel(await fetch(url, headers=headers, network_interface="127.0.0.2"))
    assert_pixel(
        await fetch(
            url, headers={"X-Real-IP": "2001:db8:1234:5678::1"}, network_interface="127.0.0.2"
        )
    )
    hits = await wait_for_hits(stack.store, d.id, 3)
    assert [h.ip_prefix for h in hits] == ["127.0.0.0/24", "203.0.113.0/24", "2001:db8:1234::/48"]


async def test_hits_survive_a_database_outage_through_the_journal(
    tmp_path: Path, db_url: str, store
) -> None:
    """The pixel is served while the store is unreachable; the journal delivers later."""
    d = await a_delivery(store)
    dead = make_config(
        tmp_path, f"postgresql+asyncpg://nobody:x@127.0.0.1:{free_port()}/none", None
    )
    dead_engine = make_engine(dead.database_url)
    pixel = await start_pixelserver(dead, make_sessionmaker(dead_engine))
    try:
        for _ in range(5):
            assert_pixel(await fetch(f"{dead.pixelserver.public_url}/p/{d.token}.gif"))
        await asyncio.sleep(0.3)
        assert pixel.pipeline.journal.size() > 0
    finally:
        await pixel.close()
        await dead_engine.dispose()
    assert await hits_of(store, d.id) == []

    # Same data_dir (same journal), store reachable again: everything answered is stored once.
    healthy = make_config(tmp_path, db_url, None)
    pixel = await start_pixelserver(healthy, store)
    try:
        assert len(await hits_of(store, d.id)) == 5
        assert pixel.pipeline.journal.size() == 0
    finally:
        await pixel.close()


async def test_replaying_a_journal_twice_stores_each_hit_once(stack: Stack) -> None:
    d = await a_delivery(stack.store)
    for _ in range(3):
        assert_pixel(await fetch(f"{stack.pixel_base}/p/{d.token}.gif"))
    await wait_for_hits(stack.store, d.id, 3)
    # A crash after the commit but before the trim leaves the lines in place: replay them.
    lines = [
        {"u": h.uid, "t": d.token, "at": h.at.timestamp(), "m": "GET", "ip": "127.0.0.1", "ua": ""}
        for h in await hits_of(stack.store, d.id)
    ]
    import json

    with open(stack.config.journal_path, "a") as f:
        for rec in lines:
            f.write(json.dumps(rec) + "\n")
    await asyncio.sleep(0.4)
    assert len(await hits_of(stack.store, d.id)) == 3


async def test_report_page_lists_messages_with_hits(stack: Stack) -> None:
    d = await a_delivery(stack.store, recipient="<b>ana</b>@example.org")
    await fetch(f"{stack.pixel_base}/p/{d.token}.gif")
    await wait_for_hits(stack.store, d.id, 1)
    resp = await fetch(f"{stack.pixel_base}/")
    assert resp.code == 200
    page = resp.body.decode()
    assert "Quarterly numbers" in page
    assert "&lt;b&gt;ana&lt;/b&gt;@example.org" in page  # escaped, never markup
    assert '<td class="humans">1</td>' in page  # a fetch from an ordinary network: a person
    assert '<span class="chip opened"' in page


async def test_report_page_is_for_this_machine_only(stack: Stack) -> None:
    assert (await fetch(f"{stack.pixel_base}/")).code == 200
    # A proxied request (even one from loopback) is someone else's.
    assert (
        await fetch(f"{stack.pixel_base}/", headers={"X-Forwarded-For": "203.0.113.9"})
    ).code == 403
    resp = await fetch(
        f"{stack.pixel_base}/",
        headers={"X-Forwarded-For": "203.0.113.9"},
        network_interface="127.0.0.2",
    )
    assert resp.code == 403
    assert "only shown on this machine" in resp.body.decode()


async def test_report_password_opens_the_page_from_elsewhere(
    tmp_path: Path, db_url: str, store, monkeypatch
) -> None:
    monkeypatch.setenv("TEST_REPORT_PASSWORD", "correct horse")
    base = make_config(tmp_path, db_url, None)
    from dataclasses import replace

    cfg = replace(
        base, pixelserver=replace(base.pixelserver, report_password_env="TEST_REPORT_PASSWORD")
    )
    pixel = await start_pixelserver(cfg, store)
    try:
        url = f"{cfg.pixelserver.public_url}/"
        hdr = {"X-Forwarded-For": "203.0.113.9"}
        assert (await fetch(url, headers=hdr, network_interface="127.0.0.2")).code == 401
        wrong = "Basic " + base64.b64encode(b"me:wrong").decode()
        assert (await fetch(url, headers={**hdr, "Authorization": wrong})).code == 401
        right = "Basic " + base64.b64encode(b"me:correct horse").decode()
        resp = await fetch(
            url, headers={**hdr, "Authorization": right}, network_interface="127.0.0.2"
        )
        assert resp.code == 200
    finally:
        await pixel.close()
