"""Click tracking end to end: the relay over SMTP rewrites links, the capture upstream gets the
copies, the pixel server answers the rewritten URLs over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
import subprocess
import sys
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from pixelserver.recordlimits import RecordLimits
from pixelserver.store import erasure
from pixelserver.store.clickrecords import Click, ClickLink
from pixelserver.store.clickreports import clicks_by_delivery
from pixelserver.store.schema import Delivery, Message, User
from relay import service
from relay.config import ClicksConfig
from tests.conftest import CaptureUpstream, make_config, start_pixelserver
from tests.helpers import eventually, smtp_send
from tests.test_pixel import fetch

PERSON_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
LINKS = {
    "shop": "https://shop.example.com/spring?utm_source=mail&id=7#offers",
    "docs": "http://docs.example.org/guide",
    "unsub": "https://news.example.com/u/3f9a",
    "optout": "https://news.example.com/preferences/opt-out?u=1",
}
HTML = f"""<html><body>
<p>Hello! See <a href="{LINKS["shop"].replace("&", "&amp;")}">our spring offers</a> and
<a href='{LINKS["docs"]}'>the guide</a>.</p>
<p><a href="mailto:sales@example.com">Write to us</a> or <a href="tel:+15551234">call</a>,
<a href="#top">back to top</a>.</p>
<p><a href="{LINKS["unsub"]}">Unsubscribe</a> | <a href="{LINKS["optout"]}">preferences</a></p>
</body></html>
"""


def message(html: str = HTML, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "me@example.com", "ana@example.org", "Spring"
    msg["Message-ID"] = f"<{id(html)}.{len(headers)}@example.com>"
    msg["List-Unsubscribe"] = f"<{LINKS['unsub']}>, <mailto:u@news.example.com>"
    for k, v in headers.items():
        msg[k] = v
    msg.set_content("See https://shop.example.com/spring in the text part too.")
    msg.add_alternative(html, subtype="html")
    return msg.as_bytes(policy=policy.SMTP)  # CRLF, as a mail client sends it


def html_of(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    part = msg.get_body(("html",))
    assert part is not None
    return part.get_content()


def text_of(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    part = msg.get_body(("plain",))
    assert part is not None
    return part.get_content()


HREF = re.compile(r"""href=["']([^"']*)["']""")


@pytest.fixture
async def clicks_stack(tmp_path: Path, db_url: str, store, upstream: CaptureUpstream):
    cfg = make_config(tmp_path, db_url, upstream.port)
    cfg = dataclasses.replace(cfg, clicks=ClicksConfig(enabled=True))
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    relay = await service.start_relay(cfg, store)
    pixel = await start_pixelserver(cfg, store)
    yield cfg, store, upstream
    await relay.close()
    await pixel.close()


async def send(cfg, upstream: CaptureUpstream, raw: bytes, rcpts: list[str]) -> list[bytes]:
    port = int(cfg.relay.listen.rsplit(":", 1)[1])
    before = len(upstream.messages)
    reply = await asyncio.to_thread(smtp_send, port, "me@example.com", rcpts, raw)
    assert reply.startswith("250"), reply
    await eventually(lambda: len(upstream.messages) >= before + len(rcpts))
    return [m.data for m in upstream.messages[before:]]


def click_links(html: str, base: str) -> list[str]:
    return [u for u in HREF.findall(html) if u.startswith(f"{base}/c/")]


async def backdate(store, seconds: float) -> None:
    """As if the mail had been sent `seconds` ago (clicks at delivery are a gateway's)."""
    async with store.begin() as s:
        await s.execute(
            update(Message).values(
                accepted_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
            )
        )


async def click(url: str, ip: str, *, method: str = "GET", ua: str = PERSON_UA):
    return await fetch(
        url,
        method=method,
        follow_redirects=False,
        headers={"X-Forwarded-For": ip, "User-Agent": ua},
        network_interface="127.0.0.2",
    )


async def delivery(store, recipient: str) -> Delivery:
    async with store() as s:
        return (
            await s.execute(select(Delivery).where(Delivery.recipient == recipient))
        ).scalar_one()


async def test_rewritten_links_redirect_to_exactly_the_original(clicks_stack) -> None:
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    (copy,) = await send(cfg, upstream, message(), ["ana@example.org"])
    html = html_of(copy)
    ours = click_links(html, base)
    assert len(ours) == 2, html  # the offer and the guide; nothing else
    for keep in ("mailto:sales@example.com", "tel:+15551234", "#top", *LINKS.values()):
        if keep not in (LINKS["shop"], LINKS["docs"]):
            assert f'"{keep}"' in html, keep
    assert ">our spring offers</a>" in html and ">the guide</a>" in html  # visible text kept
    assert "https://shop.example.com/spring" in text_of(copy)  # text part untouched
    assert b"X-MailPing-Clicks" not in copy
    for url in ours:
        assert re.fullmatch(
            rf"{re.escape(base)}/c/[A-Za-z0-9_-]{{22}}/\d+/[A-Za-z0-9_-]{{12}}", url
        )

    await backdate(store, 3600)
    answers = [await click(u, "73.15.20.9") for u in ours]
    assert [a.code for a in answers] == [302, 302]
    assert {a.headers["Location"] for a in answers} == {LINKS["shop"], LINKS["docs"]}


async def test_tampered_unknown_and_foreign_links_never_redirect(clicks_stack) -> None:
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    (copy,) = await send(cfg, upstream, message(), ["ana@example.org"])
    url = click_links(html_of(copy), base)[0]
    token, n, tag = url.rsplit("/", 3)[1:]
    flipped = ("A" if tag[0] != "A" else "B") + tag[1:]
    bad = [
        f"{base}/c/{token}/{n}/{flipped}",  # tag changed
        f"{base}/c/{token}/{int(n) + 1}/{tag}",  # another link number
        f"{base}/c/{token}/9/{tag}",  # a link that does not exist
        f"{base}/c/{'x' * 22}/{n}/{tag}",  # a token of nobody
        f"{base}/c/{token}/{n}/{tag}?to=https://evil.example",  # a query is not a target
    ]
    for b in bad[:4]:
        r = await click(b, "73.15.20.9")
        assert r.code in (400, 404), (b, r.code)
        assert "Location" not in r.headers
        assert r.headers["Content-Type"].startswith("text/html")
    r = await click(bad[4], "73.15.20.9")
    assert r.headers.get("Location") == LINKS["shop"]  # the stored address, not the query's
    async with store() as s:
        assert len((await s.execute(select(Click))).all()) == 1  # only the real one recorded


async def test_scanner_clicks_are_labelled_and_a_person_click_makes_it_read(clicks_stack) -> None:
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    rcpts = ["ana@example.org", "bob@example.net", "cy@example.net", "di@example.com"]
    copies = await send(cfg, upstream, message(), rcpts)
    links = {m.rcpt_tos[0]: click_links(html_of(m.data), base) for m in upstream.messages}
    assert all(len(v) == 2 for v in links.values())
    assert len(copies) == 4

    # At delivery, seconds after sending: a gateway (Defender-like) follows ana's links.
    await click(links["ana@example.org"][0], "73.15.20.9", method="HEAD")
    await click(links["ana@example.org"][0], "73.15.20.9")
    # Later: bob's copy has both links clicked within a second (a link walker).
    await backdate(store, 3600)
    await click(links["bob@example.net"][0], "198.51.100.7")
    await click(links["bob@example.net"][1], "198.51.100.7")
    # A known gateway network (Microsoft EOP) clicks cy's link.
    await click(links["cy@example.net"][1], "40.107.22.5")
    # A library, not a browser.
    await click(links["cy@example.net"][0], "203.0.113.50", ua="python-requests/2.32.3")
    # A person clicks di's offer link.
    r = await click(links["di@example.com"][0], "73.15.20.9")
    assert r.code == 302

    async with store() as s:
        rows = (await s.execute(select(Click).order_by(Click.id))).scalars().all()
    rules = [(c.method, c.verdict, c.rule) for c in rows]
    assert rules == [
        ("HEAD", "scanner", "click-head"),
        ("GET", "scanner", "click-at-delivery"),
        ("GET", "scanner", "click-burst"),
        ("GET", "scanner", "click-burst"),  # the first of the pair, re-judged by the second
        ("GET", "scanner", "click-gateway-network"),
        ("GET", "bot", "click-automated-agent"),
        ("GET", "human", "click-person"),
    ]
    for c in rows:
        assert c.reasons and all({"code", "text"} <= set(r) for r in c.reasons)
    for scanned in ("ana@example.org", "bob@example.net", "cy@example.net"):
        d = await delivery(store, scanned)
        assert (d.state, d.human_clicks) == ("not_opened", 0), scanned  # not counted
    di = await delivery(store, "di@example.com")
    assert (di.state, di.human_clicks, di.human_hits) == ("opened", 1, 0)  # no image fetched
    async with store() as s:
        per_link = await clicks_by_delivery(s, [di.id])
    (only,) = per_link[di.id]
    assert (only.url, only.people, only.machines) == (LINKS["shop"], 1, 0)


async def test_one_network_for_many_recipients_is_a_gateway(clicks_stack) -> None:
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    rcpts = [f"r{i}@corp.example" for i in range(3)]
    await send(cfg, upstream, message(), rcpts)
    await backdate(store, 3600)
    for m in upstream.messages:
        await click(click_links(html_of(m.data), base)[0], "192.0.2.80")
        await asyncio.sleep(0.05)
    async with store() as s:
        rows = (await s.execute(select(Click).order_by(Click.id))).scalars().all()
    assert [c.rule for c in rows] == ["click-many-recipients"] * 3
    for r in rcpts:
        assert (await delivery(store, r)).state == "not_opened"


async def test_off_by_header_by_user_and_for_untouched_mail(clicks_stack) -> None:
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    (copy,) = await send(cfg, upstream, message(**{"X-MailPing-Clicks": "off"}), ["a@x.example"])
    assert click_links(html_of(copy), base) == [] and b"X-MailPing-Clicks" not in copy
    assert LINKS["docs"] in HREF.findall(html_of(copy))
    (copy,) = await send(cfg, upstream, message(**{"X-MailPing": "off"}), ["b@x.example"])
    assert click_links(html_of(copy), base) == []
    async with store.begin() as s:
        await s.execute(update(User).values(clicks_enabled=False))
    (copy,) = await send(cfg, upstream, message(), ["c@x.example"])
    assert click_links(html_of(copy), base) == []


async def test_links_of_an_earlier_copy_are_put_back_before_rewriting(clicks_stack) -> None:
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    (first,) = await send(cfg, upstream, message(), ["ana@example.org"])
    quoted = html_of(first)
    old = click_links(quoted, base)
    forward = f"<html><body><p>Look at this:</p><blockquote>{quoted}</blockquote></body></html>"
    (second,) = await send(cfg, upstream, message(forward), ["eve@example.com"])
    html = html_of(second)
    assert not set(old) & set(HREF.findall(html))  # none of ana's links travel on
    new = click_links(html, base)
    assert len(new) == 2
    await backdate(store, 3600)
    answers = {(await click(u, "73.15.20.9")).headers["Location"] for u in new}
    assert answers == {LINKS["shop"], LINKS["docs"]}
    eve = await delivery(store, "eve@example.com")
    async with store() as s:
        clicked = (await s.execute(select(Click.delivery_id))).scalars().all()
    assert clicked == [eve.id, eve.id]  # eve's copy, never ana's


def test_classify_command_judges_click_events() -> None:
    """`mailping classify` takes clicks ("kind": "click") beside fetches, as JSON lines."""
    lines = [
        {"kind": "click", "ip": "73.15.20.9", "ua": PERSON_UA, "method": "HEAD",
         "seconds_after_send": 3600, "link": 0},
        {"kind": "click", "ip": "73.15.20.9", "ua": PERSON_UA, "seconds_after_send": 4,
         "link": 0},
        {"kind": "click", "ip": "198.51.100.7", "ua": PERSON_UA, "seconds_after_send": 3600,
         "link": 1, "other_clicks": [{"link": 0, "seconds_after_send": 3599.4}]},
        {"kind": "click", "ip": "40.107.22.5", "ua": PERSON_UA, "seconds_after_send": 3600},
        {"kind": "click", "ip": "192.0.2.80", "ua": PERSON_UA, "seconds_after_send": 3600,
         "recipients_from_network": 5},
        {"kind": "click", "ip": "73.15.20.9", "ua": "curl/8.5.0", "seconds_after_send": 3600},
        {"kind": "click", "ip": "73.15.20.9", "ua": PERSON_UA, "seconds_after_send": 3600,
         "link": 1, "other_clicks": [{"link": 0, "seconds_after_send": 3000}]},
        {"kind": "click", "ua": PERSON_UA},
        {"kind": "print", "ip": "73.15.20.9"},
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "classify"],
        input="\n".join(json.dumps(x) for x in lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [(o.get("kind"), o.get("verdict"), o.get("rule")) for o in out[:7]] == [
        ("click", "scanner", "click-head"),
        ("click", "scanner", "click-at-delivery"),
        ("click", "scanner", "click-burst"),
        ("click", "scanner", "click-gateway-network"),
        ("click", "scanner", "click-many-recipients"),
        ("click", "bot", "click-automated-agent"),
        ("click", "human", "click-person"),
    ]
    assert all({"code", "text"} <= set(r) for o in out[:7] for r in o["reasons"])
    assert out[7]["error"].startswith("line 8:") and "ip" in out[7]["error"]
    assert out[8]["error"].startswith("line 9:") and "kind" in out[8]["error"]
    assert proc.returncode == 1


async def test_the_digest_lists_a_persons_clicks_not_a_scanners(clicks_stack) -> None:
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    await send(cfg, upstream, message(), ["ana@example.org", "bob@example.net"])
    ana, bob = (click_links(html_of(m.data), base) for m in upstream.messages)
    await click(bob[1], "40.107.22.5")  # a gateway: not news
    await backdate(store, 3600)
    await click(ana[1], "73.15.20.9")  # a person: news
    runner = service.make_digest_runner(cfg, store)
    before = len(upstream.messages)
    assert (await runner.send_now("me@example.com")).status == "sent"
    digest = upstream.messages[before].data
    text = message_from_bytes(digest, policy=policy.default).get_body(("plain",)).get_content()
    assert "LINKS CLICKED" in text
    assert f"* ana@example.org clicked {LINKS['docs']} in Spring" in text
    assert "bob@example.net clicked" not in text
    assert "ana@example.org: Read · clicked" in text


async def test_forgetting_a_recipient_erases_their_clicks_and_personal_links(clicks_stack) -> None:
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    personal = "https://news.example.com/read?who=zoe%40example.com&n=1"
    html = f'<html><body><p><a href="{personal}">Read it</a></p></body></html>'
    (copy,) = await send(cfg, upstream, message(html), ["zoe@example.com"])
    (link,) = click_links(html_of(copy), base)
    await backdate(store, 3600)
    assert (await click(link, "73.15.20.9")).headers["Location"] == personal
    await erasure.forget_recipient(store, "zoe@example.com", user=None, vacuum=False)
    async with store() as s:
        assert (await s.execute(select(Click))).all() == []
        assert (await s.execute(select(ClickLink))).all() == []
    r = await click(link, "73.15.20.9")
    assert r.code == 404 and "Location" not in r.headers


def test_config_loads_clicks_and_warns_of_addresses_filters_distrust(tmp_path: Path) -> None:
    from relay.config import config_warnings, load_config

    path = tmp_path / "mailping.toml"
    base = '[relay]\nlisten = "127.0.0.1:2525"\n'
    path.write_text(base)
    assert load_config(path).clicks.enabled is False  # off by default
    path.write_text(
        base + '[clicks]\nenabled = true\n[pixelserver]\npublic_url = "http://127.0.0.1:8025"\n'
    )
    cfg = load_config(path)
    assert cfg.clicks.enabled is True
    (warning,) = [w for w in config_warnings(cfg) if "clicks.enabled" in w]
    assert "not https" in warning and "port 8025" in warning and str(path) in warning
    path.write_text(
        base + '[clicks]\nenabled = true\n[pixelserver]\npublic_url = "https://t.example.com"\n'
    )
    assert not [w for w in config_warnings(load_config(path)) if "clicks" in w]
    path.write_text(base + "[clicks]\nenabled = 1\n")
    with pytest.raises(Exception, match="clicks.enabled"):
        load_config(path)
    path.write_text(base + "[clicks]\nenable = true\n")
    with pytest.raises(Exception, match="clicks.enable"):
        load_config(path)


def test_the_pixel_path_cannot_take_the_click_links_path(tmp_path: Path) -> None:
    from pixelserver.tokens import CLICK_PATH
    from relay.config import load_config

    path = tmp_path / "mailping.toml"
    path.write_text(
        f'[relay]\nlisten = "127.0.0.1:2525"\n[pixelserver]\npixel_path = "{CLICK_PATH}"\n'
    )
    with pytest.raises(Exception, match="pixelserver.pixel_path"):
        load_config(path)


async def test_a_scanner_clicking_every_link_at_once_is_answered_and_labelled(clicks_stack) -> None:
    """Gateways follow links in parallel: every request is answered with its redirect, and
    the clicks, arriving together, are judged together (none left a person's)."""
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    html = (
        "<html><body>"
        + "".join(f'<p><a href="https://shop.example.com/p/{i}">item {i}</a></p>' for i in range(6))
        + "</body></html>"
    )
    (copy,) = await send(cfg, upstream, message(html), ["ana@example.org"])
    links = click_links(html_of(copy), base)
    assert len(links) == 6
    await backdate(store, 3600)
    answers = await asyncio.gather(*(click(u, "198.51.100.7") for u in links))
    assert [a.code for a in answers] == [302] * 6
    assert sorted(a.headers["Location"] for a in answers) == [
        f"https://shop.example.com/p/{i}" for i in range(6)
    ]
    async with store() as s:
        rows = (await s.execute(select(Click))).scalars().all()
    assert sorted(c.rule for c in rows) == ["click-burst"] * 6
    assert (await delivery(store, "ana@example.org")).human_clicks == 0


async def test_a_persons_first_click_per_link_is_told_apart(store) -> None:
    """What a `delivery.clicked` event needs: the first click a person makes on each link."""
    from pixelserver.store import clickrecords, webhooks
    from pixelserver.store.webhookschema import WebhookMessage
    from pixelserver.verdicts.networks import NetworkFacts
    from relay import tracking

    recorded = await tracking.record_message(
        store,
        user="me@example.com",
        envelope_from="me@example.com",
        recipients=["ana@example.org"],
        subject="s",
        message_id_header="<s@x>",
        size=10,
        untracked_reason=None,
    )
    token = recorded.deliveries[0].token
    async with store.begin() as s:
        await clickrecords.add_links(s, recorded.id, ["https://a.example/", "https://b.example/"])
        await webhooks.add_endpoint(
            s, "me@example.com", "https://hooks.example.com/in", allow_private=False
        )
    await backdate(store, 3600)

    async def one(n: int, ip: str, minutes: float, ua: str = PERSON_UA):
        at = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
        async with store.begin() as s:
            target = await clickrecords.find_target(s, token, n)
            assert target is not None
            net = NetworkFacts(prefix=ip)
            return await clickrecords.add_click(
                s, target, clickrecords.NewClick(n, at, "GET", net, ua)
            )

    results = [
        await one(0, "198.51.100.0/24", 0, ua="python-requests/2.32"),
        await one(0, "73.15.20.0/24", 1),
        await one(0, "73.15.20.0/24", 5),
        await one(1, "73.15.20.0/24", 9),
    ]
    assert [(r.verdict, r.first_by_person) for r in results] == [
        ("bot", False),
        ("human", True),
        ("human", False),
        ("human", True),
    ]
    async with store() as s:
        events = (await s.execute(select(WebhookMessage.event_key, WebhookMessage.payload))).all()
    # One delivery.clicked per link a person clicked, naming the link's original address.
    assert sorted(k for k, _ in events) == [
        f"delivery.clicked:{recorded.deliveries[0].id}:0",
        f"delivery.clicked:{recorded.deliveries[0].id}:1",
    ]
    assert {json.loads(b)["data"]["url"] for _, b in events} == {
        "https://a.example/",
        "https://b.example/",
    }


async def test_a_link_clicked_in_a_flood_is_recorded_only_up_to_its_limit(clicks_stack) -> None:
    """Anyone holding a copy's link can request it without end: every request is redirected,
    but past the per-copy limit of the pixel (a burst of 60, then 2 a second) a click is not
    stored, so a flood fills neither the store, the report nor the export. Another copy's
    click, in the middle of it, is stored."""
    cfg, store, upstream = clicks_stack
    base = cfg.pixelserver.public_url
    flooded, other = await send(cfg, upstream, message(), ["ana@example.org", "bob@example.net"])
    await backdate(store, 3600)
    link = click_links(html_of(flooded), base)[0]
    answers = [await click(link, "73.15.20.9") for _ in range(150)]
    assert {a.code for a in answers} == {302} and {a.headers["Location"] for a in answers} == {
        LINKS["shop"]
    }
    assert (await click(click_links(html_of(other), base)[0], "98.4.1.7")).code == 302
    async with store() as s:
        counts = dict(
            (
                await s.execute(
                    select(Delivery.recipient, func.count(Click.id))
                    .join(Click, Click.delivery_id == Delivery.id)
                    .group_by(Delivery.recipient)
                )
            ).all()
        )
    limits = RecordLimits()
    assert counts.get("bob@example.net") == 1
    assert limits.token_burst <= counts["ana@example.org"] < limits.token_burst + 20, counts
