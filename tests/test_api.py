"""The JSON API over HTTP: tokens, isolation, cursor pages, JSON errors, export, and
schemathesis generating requests from the OpenAPI document against the running server."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shutil
import subprocess
import sys

import pytest
from sqlalchemy import select

from pixelserver.store.accounts import create_api_token
from pixelserver.store.schema import Delivery
from tests.conftest import BOB, XSS, send_as
from tests.test_classify import THUNDERBIRD
from tests.test_pixel import fetch

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def token_for(store, user: str) -> str:
    async with store.begin() as s:
        return await create_api_token(s, user, "test")


async def api(base: str, path: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await fetch(base + path, headers=headers)
    body = resp.body.decode()
    return resp.code, (
        json.loads(body)
        if resp.headers.get("Content-Type", "").startswith("application/json")
        else body
    )


async def test_tokens_and_isolation(site, store) -> None:
    cfg, ids, upstream = site
    base = cfg.pixelserver.public_url
    code, body = await api(base, "/api/v1/messages")
    assert code == 401 and body["error"]["code"] == "unauthorized"
    code, body = await api(base, "/api/v1/messages", "mp_not-a-real-token")
    assert code == 401
    ana = await token_for(store, "ana@example.org")
    code, body = await api(base, "/api/v1/messages", ana)
    assert code == 200 and [m["subject"] for m in body["messages"]] == [XSS]
    assert body["next_cursor"] is None
    code, body = await api(base, f"/api/v1/messages/{ids[BOB]}", ana)
    assert code == 404 and body == {"error": {"code": "not_found", "message": "no such message"}}
    async with store() as s:
        bob_delivery = (
            await s.execute(select(Delivery.id).where(Delivery.message_id == ids[BOB]))
        ).scalar_one()
    code, _ = await api(base, f"/api/v1/deliveries/{bob_delivery}/hits", ana)
    assert code == 404
    code, body = await api(base, "/api/v1/nothing-here", ana)
    assert code == 404 and body["error"]["code"] == "not_found"


async def test_message_hits_pages_and_errors(site, store) -> None:
    cfg, ids, upstream = site
    base = cfg.pixelserver.public_url
    ana = await token_for(store, "ana@example.org")
    port = int(cfg.relay.listen.rsplit(":", 1)[1])
    for i in range(4):
        await asyncio.to_thread(
            send_as, port, "ana@example.org", f"Follow-up {i}", ["dan@example.net"]
        )
    seen, cursor = [], None
    for _ in range(10):
        code, body = await api(
            base, "/api/v1/messages?limit=2" + (f"&cursor={cursor}" if cursor else ""), ana
        )
        assert code == 200
        seen += [m["id"] for m in body["messages"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)
    for bad, error in (
        ("limit=0", "bad_limit"),
        ("cursor=xyz", "bad_cursor"),
        ("q=" + "x" * 201, "bad_query"),
        ("state=happy", "bad_state"),
        ("since=yesterday", "bad_date"),
    ):
        code, body = await api(base, f"/api/v1/messages?{bad}", ana)
        assert code == 400 and isinstance(body, dict), (bad, code, body)
        assert body["error"]["code"] == error
    code, body = await api(base, "/api/v1/messages?q=follow-up%203", ana)
    assert [m["subject"] for m in body["messages"]] == ["Follow-up 3"]

    url = next(
        re.search(rb'src="(http://[^"]+\.gif)"', m.data).group(1).decode()
        for m in upstream.messages
        if m.rcpt_tos == ["dan@example.net"]
    )
    await fetch(
        url,
        headers={"X-Forwarded-For": "73.15.20.9", "User-Agent": THUNDERBIRD},
        network_interface="127.0.0.2",
    )
    code, body = await api(base, f"/api/v1/messages/{ids[XSS]}", ana)
    dan = next(d for d in body["message"]["deliveries"] if d["recipient"] == "dan@example.net")
    for _ in range(50):
        code, hits = await api(base, f"/api/v1/deliveries/{dan['id']}/hits", ana)
        if hits["hits"]:
            break
        await asyncio.sleep(0.1)
    (hit,) = hits["hits"]
    assert (hit["verdict"], hit["network"], hit["client"], hit["city"]) == (
        "human",
        "73.15.20.0/24",
        "Thunderbird 128",
        "Pinole",
    )
    assert "73.15.20.9" not in json.dumps(hits)


async def test_export_csv_and_json(site, store) -> None:
    cfg, ids, _ = site
    base = cfg.pixelserver.public_url
    ana = await token_for(store, "ana@example.org")
    code, body = await api(base, "/api/v1/export", ana)
    assert code == 200 and sorted(r["recipient"] for r in body["deliveries"]) == [
        "carol@gmail.com",
        "dan@example.net",
    ]
    resp = await fetch(
        base + "/api/v1/export?format=csv&since=2000-01-01",
        headers={"Authorization": f"Bearer {ana}"},
    )
    assert resp.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.body.decode())))
    assert {r["subject"] for r in rows} == {XSS} and {r["state"] for r in rows} == {"not_opened"}
    code, body = await api(base, "/api/v1/export?until=2000-01-01", ana)
    assert body == {"deliveries": []}


async def test_schemathesis_finds_no_failure(site, store) -> None:
    if shutil.which("schemathesis") is None and not (
        __import__("importlib.util").util.find_spec("schemathesis")
    ):
        pytest.fail("schemathesis is a test dependency and must be installed")
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    ana = await token_for(store, "ana@example.org")
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{base}/api/v1/openapi.json",
        "--url",
        base,
        "-H",
        f"Authorization: Bearer {ana}",
        "--checks",
        "all",
        "--max-examples",
        "30",
        "--request-timeout",
        "10",
    ]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
