"""Verdicts end to end: a mail through the relay, its pixels fetched as Gmail's proxy, Apple's
relay, Thunderbird at home and a datacenter (client addresses through a trusted proxy), and
the states in the store and on the report page; then the classify and reclassify commands,
and the retention purge."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select, update

from pixelserver.store import retention
from pixelserver.store.hitrecords import HitContext, NewHit, add_hits
from pixelserver.store.schema import Delivery, Hit, Message
from relay import tracking
from tests.conftest import CaptureUpstream, Stack
from tests.test_classify import CHROME, GMAIL, THUNDERBIRD
from tests.test_pixel import assert_pixel, fetch
from tests.test_relay import send_smtplib

RECIPIENTS = ["ana@gmail.com", "bob@example.org", "carol@icloud.com", "dave@example.net"]
HTML = (
    b"From: me@example.com\r\nTo: team@example.org\r\nSubject: Offer\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Offer</p></body></html>\r\n"
)


async def pixel_urls(upstream: CaptureUpstream) -> dict[str, str]:
    urls = {}
    for m in upstream.messages:
        found = re.search(rb'src="(http://[^"]+/p/[\w-]{22}\.gif)"', m.data)
        assert found is not None
        urls[m.rcpt_tos[0]] = found.group(1).decode()
    return urls


async def fetch_as(url: str, ip: str, ua: str) -> None:
    """Through the trusted proxy (127.0.0.2), as a client at `ip`."""
    resp = await fetch(
        url, headers={"X-Forwarded-For": ip, "User-Agent": ua}, network_interface="127.0.0.2"
    )
    assert_pixel(resp)


async def stored(store) -> dict[str, list[str]]:
    async with store() as s:
        rows = await s.execute(
            select(Delivery.recipient, Hit.verdict)
            .join(Hit, Hit.delivery_id == Delivery.id)
            .order_by(Hit.at)
        )
        out: dict[str, list[str]] = {}
        for recipient, verdict in rows:
            out.setdefault(recipient, []).append(verdict)
        return out


async def wait_hits(store, n: int) -> dict[str, list[str]]:
    for _ in range(100):
        got = await stored(store)
        if sum(map(len, got.values())) >= n:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {n} hits, have {got}")


async def test_states_in_the_store_and_on_the_page(stack: Stack, upstream: CaptureUpstream) -> None:
    _, reply = await asyncio.to_thread(
        send_smtplib, stack.relay_port, "me@example.com", RECIPIENTS, HTML
    )
    assert reply == "250"
    urls = await pixel_urls(upstream)
    await fetch_as(urls["ana@gmail.com"], "66.249.93.84", GMAIL)
    await fetch_as(urls["bob@example.org"], "172.225.5.1", "Mozilla/5.0")
    await fetch_as(urls["bob@example.org"], "73.15.20.9", THUNDERBIRD)
    await fetch_as(urls["carol@icloud.com"], "2a02:26f7:c8c0::1", "Mozilla/5.0")
    await fetch_as(urls["dave@example.net"], "52.1.2.3", CHROME)

    verdicts = await wait_hits(stack.store, 5)
    assert verdicts == {
        "ana@gmail.com": ["human_via_proxy"],
        "bob@example.org": ["privacy_prefetch", "human"],
        "carol@icloud.com": ["privacy_prefetch"],
        "dave@example.net": ["scanner"],
    }
    async with stack.store() as s:
        bob = (await s.execute(select(Hit).where(Hit.verdict == "human"))).scalar_one()
    assert (bob.ip_prefix, bob.asn, bob.client) == ("73.15.20.0/24", 7922, "Thunderbird 128")
    assert (bob.country, bob.city) == ("US", "Pinole")

    page = (await fetch(f"{stack.pixel_base}/")).body.decode()
    chips = dict(re.findall(r'data-recipient="([^"]+)" data-state="(\w+)"', page))
    assert chips == {
        # Gmail's proxy a second after sending may be Gmail's own check: honest, not certain.
        "ana@gmail.com": "probably_opened",
        "bob@example.org": "opened",
        "carol@icloud.com": "prefetched_only",
        "dave@example.net": "scanned_only",
    }
    assert "Probably read · Gmail · location hidden by Gmail" in page
    assert "Read · Thunderbird 128 · Pinole, California, US" in page
    assert "Apple privacy prefetch — reading can&#x27;t be seen" in page
    assert "Scanner only" in page


async def test_reclassify_rejudges_stored_hits(stack: Stack, upstream: CaptureUpstream) -> None:
    _, reply = await asyncio.to_thread(
        send_smtplib, stack.relay_port, "me@example.com", RECIPIENTS[:2], HTML
    )
    urls = await pixel_urls(upstream)
    await fetch_as(urls["bob@example.org"], "172.225.5.1", "Mozilla/5.0")
    await fetch_as(urls["ana@gmail.com"], "66.249.93.84", GMAIL)
    await wait_hits(stack.store, 2)
    # As if an older rule set had judged them: everything "unknown".
    async with stack.store.begin() as s:
        await s.execute(update(Hit).values(verdict="unknown", rule="old"))
    from pixelserver.store.reclassify import reclassify

    report = await reclassify(stack.store)
    assert (report.checked, report.changed) == (2, 2)
    assert report.transitions == {
        ("unknown", "privacy_prefetch"): 1,
        ("unknown", "human_via_proxy"): 1,
    }
    assert await stored(stack.store) == {
        "bob@example.org": ["privacy_prefetch"],
        "ana@gmail.com": ["human_via_proxy"],
    }
    again = await reclassify(stack.store)
    assert (again.checked, again.changed) == (2, 0)


def test_classify_command_reads_json_lines() -> None:
    lines = [
        {"ip": "172.225.5.1", "ua": "Mozilla/5.0", "seconds_after_send": 2},
        {"ip": "73.15.20.9", "ua": THUNDERBIRD, "seconds_after_send": 7200},
        {
            "ip": "81.2.69.160",
            "ua": CHROME,
            "seconds_after_send": 40.6,
            "prior_hits": [{"ip": "81.2.69.161", "ua": CHROME, "seconds_after_send": 40.1}],
        },
        {
            "ip": "66.249.93.84",
            "ua": GMAIL,
            "seconds_after_send": 900,
            "method": "GET",
            "recipient": "ana@gmail.com",
        },
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "classify"],
        input="\n".join(json.dumps(x) for x in lines) + "\n{oops\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [o.get("verdict") for o in out] == [
        "privacy_prefetch",
        "human",
        "scanner",
        "human_via_proxy",
        None,
    ]
    assert out[1]["client"] == "Thunderbird 128"
    assert all({"code", "text"} <= set(r) for o in out[:4] for r in o["reasons"])
    assert out[4]["error"].startswith("line 5:")
    assert proc.returncode == 1


def test_classify_command_explains_one_fetch_in_words() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "classify",
            "--ip",
            "66.249.93.84",
            "--ua",
            GMAIL,
            "--after",
            "40m",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "human_via_proxy (confidence 0.85, rule gmail-proxy)"
    assert "timing:40m-after-send: fetched 40 minutes after sending" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "relay.cli", "classify", "--ip", "1.2.3.4", "--after", "forty"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "not a duration" in bad.stderr


async def test_retention_purges_old_mail_and_hits(store) -> None:
    recorded = await tracking.record_message(
        store,
        user="me@example.com",
        envelope_from="me@example.com",
        recipients=["a@x.org"],
        subject="old",
        message_id_header="",
        size=1,
        untracked_reason=None,
    )
    fresh = await tracking.record_message(
        store,
        user="me@example.com",
        envelope_from="me@example.com",
        recipients=["b@x.org"],
        subject="new",
        message_id_header="",
        size=1,
        untracked_reason=None,
    )
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    async with store.begin() as s:
        await s.execute(
            update(Message).where(Message.id == recorded.id).values(accepted_at=long_ago)
        )
        await add_hits(
            s,
            [
                NewHit(
                    uid="old-hit",
                    token=fresh.deliveries[0].token,
                    at=long_ago,
                    method="GET",
                    ip_prefix="192.0.2.0/24",
                    user_agent="",
                    headers={},
                )
            ],
        )
    assert await retention.purge_once(store, days=395) == (1, 1)
    async with store() as s:
        subjects = list((await s.execute(select(Message.subject))).scalars())
    assert subjects == ["new"]
    assert await retention.purge_once(store, days=395) == (0, 0)


def test_network_data_rebuilds_to_what_is_shipped(tmp_path: Path) -> None:
    """scripts/build_networks.py turns the reference snapshot into exactly the shipped files."""
    from tests.helpers import MAILGEM_DIR

    reference = MAILGEM_DIR.parent.parent / "reference" / "data"
    if not reference.exists():
        import pytest

        pytest.skip("the shared reference data is not beside this checkout")
    root = Path(__file__).parent.parent
    shipped = {
        p.name: p.read_bytes() for p in (root / "pixelserver" / "verdicts" / "data").glob("*.txt")
    }
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "build_networks.py"), str(reference)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rebuilt = {
        p.name: p.read_bytes() for p in (root / "pixelserver" / "verdicts" / "data").glob("*.txt")
    }
    assert rebuilt == shipped


async def test_about_page_names_the_data_and_its_attribution(stack: Stack) -> None:
    page = (await fetch(f"{stack.pixel_base}/about")).body.decode()
    assert "DB-IP City Lite" in page and "CC BY 4.0" in page
    assert '<a href="https://db-ip.com">IP Geolocation by DB-IP</a>' in page
    assert "plevin-db-network" in page and "2026-10-04" in page
    assert "X4BNet lists_vpn, MIT" in page


def test_geoip_status_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "geoip", "status"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("location: DB-IP City Lite")
    assert "IP Geolocation by DB-IP <https://db-ip.com>" in lines[0]
    assert lines[1].startswith("ASN, operator and network category: plevin-db-network")


def test_geo_precision_and_no_place_for_proxies() -> None:
    from pixelserver.hits import Judge
    from tests.conftest import shared_networks

    def judged(precision: str, ip: str, ua: str) -> NewHit:
        ctx = HitContext(
            1, "bob@example.org", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), frozenset(), []
        )
        record = {
            "u": "x",
            "t": "tok",
            "at": dt.datetime(2026, 1, 1, 2, tzinfo=dt.UTC).timestamp(),
            "ip": ip,
            "ua": ua,
        }
        return Judge(shared_networks(), geo_precision=precision).hit(record, ctx)

    home = "73.15.20.9"
    assert [
        (h.country, h.region, h.city)
        for h in (
            judged("city", home, THUNDERBIRD),
            judged("region", home, THUNDERBIRD),
            judged("country", home, THUNDERBIRD),
            judged("off", home, THUNDERBIRD),
        )
    ] == [("US", "California", "Pinole"), ("US", "California", ""), ("US", "", ""), ("", "", "")]
    proxy = judged("city", "66.249.93.84", GMAIL)
    assert proxy.verdict == "human_via_proxy" and (proxy.country, proxy.city) == ("", "")
    assert home not in repr(judged("city", home, THUNDERBIRD))  # only the /24 is kept


def test_own_mmdb_files_for_asn_and_location(tmp_path: Path) -> None:
    """[geoip] asn_db / city_db take the user's own MaxMind-format files (GeoLite2 schema)."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    from relay import service
    from relay.config import load_config

    asn = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
    asn.insert_network(
        IPSet(["203.0.113.0/24"]),
        {"autonomous_system_number": 64500, "autonomous_system_organization": "Example Fibre"},
    )
    asn.to_db_file(str(tmp_path / "asn.mmdb"))
    city = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    city.insert_network(
        IPSet(["203.0.113.0/24"]),
        {
            "country": {"iso_code": "NZ"},
            "subdivisions": [{"names": {"en": "Otago"}}],
            "city": {"names": {"en": "Dunedin"}},
        },
    )
    city.to_db_file(str(tmp_path / "city.mmdb"))
    cfg_file = tmp_path / "mailping.toml"
    cfg_file.write_text('[geoip]\nasn_db = "asn.mmdb"\ncity_db = "city.mmdb"\n')

    networks = service.make_networks(load_config(cfg_file))
    facts = networks.facts("203.0.113.7")
    assert (facts.asn, facts.org, facts.country, facts.region, facts.city) == (
        64500,
        "Example Fibre",
        "NZ",
        "Otago",
        "Dunedin",
    )
    sources = {s.what: s for s in networks.sources()}
    assert sources["location"].name.startswith("GeoLite2-City")
    assert sources["ASN and organisation"].name.startswith("GeoLite2-ASN")
