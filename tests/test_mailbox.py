"""Mailbox providers from MX records: pure mapping, a real DNS server on loopback, the
background refresher against the store, and the column the report shows."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update

from pixelserver.store.hitrecords import hit_contexts
from pixelserver.store.mailboxes import MailboxRefresher
from pixelserver.store.messages import NewDelivery, add_message
from pixelserver.store.schema import Delivery, make_engine
from pixelserver.verdicts import mailbox
from pixelserver.verdicts.mailbox import MxResolver, provider_from_mx
from tests.dns_server import DnsServer, Zone

ZONE = {
    "acme.example": [(1, "smtp.google.com")],
    "legacy-workspace.example": [(10, "alt1.aspmx.l.google.com"), (1, "aspmx.l.google.com")],
    "contoso.example": [(0, "contoso-example.mail.protection.outlook.com")],
    "fabrikam.example": [(10, "eu-smtp-inbound-1.mimecast.com")],
    "self-hosted.example": [(10, "mx.self-hosted.example")],
}


@pytest.mark.parametrize(
    ("records", "provider"),
    [
        ([(1, "smtp.google.com.")], "google"),
        ([(5, "ALT2.ASPMX.L.GOOGLE.COM")], "google"),
        ([(0, "contoso-com.mail.protection.outlook.com.")], "microsoft"),
        ([(5, "hotmail-com.olc.protection.outlook.com")], "microsoft"),
        ([(1, "mta5.am0.yahoodns.net")], "yahoo"),
        ([(10, "mx01.mail.icloud.com")], "icloud"),
        ([(10, "in1-smtp.messagingengine.com")], "fastmail"),
        ([(10, "mail.protonmail.ch")], "proton"),
        ([(10, "mx.example.org"), (20, "mx.zoho.com")], "zoho"),  # the preferred host is unknown
        ([(10, "mx0a-001.pphosted.com")], "proofpoint"),
        ([(10, "mx.example.org")], ""),
        ([], ""),
        ([(10, "notgoogle.com")], ""),  # a suffix match needs a dot boundary
    ],
)
def test_provider_from_mx(records: list[tuple[int, str]], provider: str) -> None:
    assert provider_from_mx(records) == provider


@given(
    st.sampled_from(mailbox.MX_SUFFIXES),
    st.lists(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), max_size=3),
    st.booleans(),
)
def test_any_host_under_a_known_suffix_names_its_provider(
    entry: tuple[str, str], labels: list[str], dot: bool
) -> None:
    suffix, provider = entry
    host = ".".join([*labels, suffix]) + ("." if dot else "")
    assert provider_from_mx([(10, host.upper())]) == provider


async def test_mx_lookups_through_a_real_dns_server() -> None:
    zone = Zone(mx=ZONE, nxdomain={"gone.example"}, ttl=3600)
    async with DnsServer(zone) as server:
        resolver = MxResolver(server.resolver())
        assert await resolver.provider("acme.example") == "google"
        assert await resolver.provider("Legacy-Workspace.example.") == "google"
        assert await resolver.provider("contoso.example") == "microsoft"
        assert await resolver.provider("fabrikam.example") == "mimecast"
        assert await resolver.provider("self-hosted.example") == ""
        assert await resolver.provider("gone.example") == ""  # NXDOMAIN: known to have none
        assert await resolver.provider("no-mx.example") == ""  # NOERROR, no answer
        # Asked once per domain: the answers are remembered for their TTL.
        for _ in range(3):
            assert await mailbox.resolve_mailbox_provider("acme.example", resolver) == "google"
        assert zone.asked["acme.example"] == 1
        assert resolver.queries == 7


async def test_answers_expire_with_their_ttl() -> None:
    now = [1000.0]
    zone = Zone(mx=dict(ZONE), ttl=60)
    async with DnsServer(zone) as server:
        resolver = MxResolver(server.resolver(), clock=lambda: now[0], min_ttl=0)
        assert await resolver.provider("acme.example") == "google"
        now[0] += 59
        zone.mx["acme.example"] = [(0, "acme-example.mail.protection.outlook.com")]
        assert await resolver.provider("acme.example") == "google"  # still cached
        now[0] += 2
        assert await resolver.provider("acme.example") == "microsoft"  # TTL over: asked again
        assert zone.asked["acme.example"] == 2


async def test_a_dead_server_gives_no_answer_and_is_not_asked_again_at_once() -> None:
    zone = Zone(mx=ZONE, silent={"acme.example"})
    async with DnsServer(zone) as server:
        resolver = MxResolver(server.resolver(), lifetime=0.3)
        assert await resolver.provider("acme.example") is None
        assert await resolver.provider("acme.example") is None
        assert zone.asked["acme.example"] >= 1
        asked = zone.asked["acme.example"]
        await resolver.provider("acme.example")
        assert zone.asked["acme.example"] == asked  # the failure is remembered for a while


async def _deliveries(store, recipients: list[str]) -> list[int]:
    async with store.begin() as session:
        _, rows = await add_message(
            session,
            user_address="sender@example.org",
            envelope_from="sender@example.org",
            subject="quote",
            message_id_header=f"<{secrets.token_hex(6)}@example.org>",
            size=100,
            deliveries=[NewDelivery(r, secrets.token_hex(8), "tracked", None) for r in recipients],
        )
        return [d.id for d in rows]


async def _providers(store) -> dict[str, str | None]:
    async with store() as session:
        rows = await session.execute(select(Delivery.recipient, Delivery.mailbox_provider))
        return dict(rows.all())


async def test_the_refresher_fills_in_deliveries_and_leaves_failures_unknown(store) -> None:
    await _deliveries(
        store,
        ["ana@acme.example", "bo@acme.example", "cy@contoso.example", "di@dead.example"],
    )
    zone = Zone(mx=ZONE, silent={"dead.example"})
    async with DnsServer(zone) as server:
        refresher = MailboxRefresher(store, MxResolver(server.resolver(), lifetime=0.3))
        assert await refresher.refresh_once() == 3
        assert await _providers(store) == {
            "ana@acme.example": "google",
            "bo@acme.example": "google",
            "cy@contoso.example": "microsoft",
            "di@dead.example": None,
        }
        assert zone.asked["acme.example"] == 1  # one question for both acme recipients
        assert await refresher.refresh_once() == 0  # only the failed one is left, and remembered


async def test_the_judge_uses_the_stored_provider(store) -> None:
    """A Gmail-proxy fetch for a Workspace custom domain: the provider recorded from the MX
    reaches the rules through the hit context."""
    import datetime as dt

    from pixelserver.hits import Judge
    from tests.conftest import shared_networks

    (delivery_id,) = await _deliveries(store, ["ana@acme.example"])
    async with store.begin() as session:
        await session.execute(
            update(Delivery).where(Delivery.id == delivery_id).values(mailbox_provider="google")
        )
        token = (
            await session.execute(select(Delivery.token).where(Delivery.id == delivery_id))
        ).scalar_one()
    async with store() as session:
        ctx = (await hit_contexts(session, [token]))[token]
    assert ctx.mailbox_provider == "google"
    record = {
        "u": "x",
        "t": token,
        "at": (ctx.accepted_at + dt.timedelta(minutes=30)).timestamp(),
        "ip": "66.249.93.84",
        "ua": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com "
        "GoogleImageProxy)",
    }
    hit = Judge(shared_networks(), upstream_google=True).hit(record, ctx)
    assert (hit.verdict, hit.rule) == ("human_via_proxy", "gmail-proxy-mailbox")
    assert any(r["code"] == "mailbox:google" for r in hit.reasons)


async def test_migration_0011_goes_down_and_up_again(db_url: str) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from pixelserver.store import migrate

    engine = make_engine(db_url)
    try:
        await migrate.upgrade(engine)

        def columns(sync) -> set[str]:
            return {c["name"] for c in inspect(sync).get_columns("delivery")}

        async with engine.connect() as conn:
            assert "mailbox_provider" in await conn.run_sync(columns)
        async with engine.begin() as conn:
            await conn.run_sync(
                lambda sync: command.downgrade(migrate._alembic_config(sync), "0010")
            )
        async with engine.connect() as conn:
            assert "mailbox_provider" not in await conn.run_sync(columns)
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


async def test_the_pixel_server_fills_in_providers_from_configured_nameservers(
    tmp_path, db_url: str, store
) -> None:
    """`mailping serve` runs the refresher; [geoip] mx_nameservers points it at a DNS server."""
    import asyncio
    import dataclasses

    from pixelserver.config import GeoipConfig
    from tests.conftest import make_config, start_pixelserver

    await _deliveries(store, ["ana@acme.example", "cy@contoso.example"])
    async with DnsServer(Zone(mx=ZONE)) as server:
        cfg = make_config(tmp_path, db_url, None)
        cfg = dataclasses.replace(
            cfg,
            geoip=GeoipConfig(mx_nameservers=(f"127.0.0.1:{server.port}",), mx_refresh_seconds=1),
        )
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        pixel = await start_pixelserver(cfg, store)
        try:
            for _ in range(100):
                if None not in (await _providers(store)).values():
                    break
                await asyncio.sleep(0.05)
        finally:
            await pixel.close()
    assert await _providers(store) == {
        "ana@acme.example": "google",
        "cy@contoso.example": "microsoft",
    }


def test_nameservers_take_an_optional_port() -> None:
    r = mailbox.make_resolver(("127.0.0.1:5353", "::1"))
    assert r.nameservers == ["127.0.0.1", "::1"] and r.port == 5353
    with pytest.raises(ValueError, match="one port"):
        mailbox.make_resolver(("127.0.0.1:5353", "127.0.0.2:53"))


async def test_the_recipient_row_shows_the_mailbox_provider(stack) -> None:
    from tests.test_pixel import fetch

    async with stack.store.begin() as session:
        message, rows = await add_message(
            session,
            user_address="me@example.com",
            envelope_from="me@example.com",
            subject="proposal",
            message_id_header="<p1@example.com>",
            size=100,
            deliveries=[
                NewDelivery("ana@acme.example", secrets.token_hex(8), "tracked", None),
                NewDelivery("bo@unknown.example", secrets.token_hex(8), "tracked", None),
            ],
        )
        rows[0].mailbox_provider = "google"
    page = (await fetch(f"{stack.pixel_base}/messages/{message.id}")).body.decode()
    ana, bo = page.split('data-recipient="ana@acme.example"')[1].split("data-recipient=")[:2]
    assert "<dt>Mailbox</dt><dd>Google (Gmail / Workspace)</dd>" in ana
    assert "<dt>Mailbox</dt><dd>–</dd>" in bo


async def test_without_any_dns_configuration_lookups_fail_softly(tmp_path) -> None:
    """A resolver whose configuration file does not exist: no answer, no exception."""
    import dns.asyncresolver

    assert mailbox.make_resolver(()) is None
    broken = dns.asyncresolver.Resolver(
        filename=str(tmp_path / "missing-resolv.conf"), configure=False
    )
    broken.nameservers = []
    assert await MxResolver(broken, lifetime=0.3).provider("acme.example") is None


def test_classify_command_takes_the_mailbox() -> None:
    import subprocess
    import sys

    gmail = (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    )
    args = ["--ip", "66.249.93.84", "--ua", gmail, "--after", "40m"]
    args += ["--recipient", "ana@acme.example", "--mailbox", "google"]
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "classify", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("human_via_proxy (confidence 0.90, rule gmail-proxy-mailbox)")
    assert "mailbox:google: acme.example receives mail at google (its MX)" in proc.stdout
