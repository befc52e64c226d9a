"""The fetcher-network table: rebuilt from maintained data, sourced, looked up for v4 and v6."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelserver.verdicts import netbuild
from pixelserver.verdicts.networks import Networks, fetcher_table
from tests.conftest import shared_networks

ROOT = Path(__file__).parent.parent
SHIPPED = ROOT / "pixelserver" / "verdicts" / "data" / netbuild.FILE


def test_shipped_table_equals_a_rebuild() -> None:
    """`mailping networks update` from the installed packages gives exactly the shipped file."""
    header = SHIPPED.read_text().split("@plevin\t", 1)[1].split("\n", 1)[0]
    installed = importlib.metadata.version("plevin-db-network")
    if header != installed:
        pytest.skip(f"plevin-db-network {installed} installed, table built from {header}")
    assert netbuild.build() == SHIPPED.read_text()


def test_networks_update_command_writes_the_table(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "networks", "update", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / netbuild.FILE).read_text() == netbuild.build()
    assert "prefixes" in proc.stdout


def test_every_operator_has_a_source_page_and_a_date() -> None:
    table = fetcher_table(SHIPPED.parent)
    assert {s.name for s in table.sources} == {o.name for o in netbuild.OPERATORS}
    for s in table.sources:
        assert s.url.startswith("https://") and s.checked.startswith("20")


@pytest.mark.parametrize(
    ("ip", "label"),
    [
        ("150.70.180.10", "scanner:Trend Micro Email Security"),
        ("2620:101:4034::a", "scanner:Trend Micro Email Security"),
        ("2a0a:2b00::a", "scanner:Proofpoint"),
        ("52.191.90.77", "scanner:Trustwave"),  # a sandbox range Trustwave publishes on Azure
        ("103.168.172.10", "mailproxy:Fastmail"),
        ("2a05:2701:f00::a", "mailproxy:Proton Mail"),
        ("165.225.8.10", "gateway:Zscaler"),
        ("2600:1f18::1", "cloud:Amazon AWS"),
        ("2a01:4f8:1c1c::1", "cloud:Hetzner"),
        ("2001:41d0:8:1::1", "cloud:OVHcloud"),
    ],
)
def test_addresses_carry_their_operator(ip: str, label: str) -> None:
    facts = shared_networks().facts(ip)
    assert label in facts.lists
    if label.startswith("cloud:"):
        assert facts.hosting


def test_an_operator_is_known_by_asn_from_any_asn_source(tmp_path: Path) -> None:
    """A user's own ASN file (no plevin) still names the vendor of an ASN in the table."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    from pixelserver.verdicts.networks import MaxMindAsn

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
    writer.insert_network(
        IPSet(["198.51.100.0/24"]),
        {"autonomous_system_number": 16880, "autonomous_system_organization": "Trend Micro"},
    )
    writer.to_db_file(str(tmp_path / "asn.mmdb"))
    networks = Networks(asn=MaxMindAsn(tmp_path / "asn.mmdb"))
    assert "scanner:Trend Micro Email Security" in networks.facts("198.51.100.9").lists


def test_sources_show_each_operator_with_its_date() -> None:
    rows = {s.name: s for s in shared_networks().sources()}
    trustwave = next(s for name, s in rows.items() if name.startswith("Trustwave"))
    assert trustwave.date == "2026-12-02"
    assert trustwave.link == "https://support.trustwave.com/kb/print21151.aspx"
    assert any(name.startswith("crawler-user-agents 1.") for name in rows)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_lookups_agree_with_a_linear_scan(value: int) -> None:
    """The bisect tables answer exactly what scanning every row would (IPv4 sample)."""
    import ipaddress

    table = fetcher_table(SHIPPED.parent)
    addr = ipaddress.IPv4Address(value)
    expected = {
        f"{kind}:{name}" for kind, name, net in table.rows if net.version == 4 and addr in net
    }
    assert table.labels(addr) == expected


def test_geoip_status_lists_each_source_with_its_date() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "geoip", "status"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(
        line.startswith("mail-security gateway or link scanner: Trustwave") and "2026-12-02" in line
        for line in lines
    )
    assert any(
        line.startswith("automated agents' User-Agents: crawler-user-agents") for line in lines
    )
    assert any("cloud or hosting network (IPv4 and IPv6): Hetzner" in line for line in lines)


async def test_about_page_shows_each_source_with_its_date(stack) -> None:
    from tests.test_pixel import fetch

    page = (await fetch(f"{stack.pixel_base}/about")).body.decode()
    assert "Trustwave (AS33151; routes from plevin-db-network" in page
    assert '<a href="https://support.trustwave.com/kb/print21151.aspx">' in page
    assert "crawler-user-agents 1." in page and "ua-parser-builtins 2" in page
    assert page.count("2026-12-02") >= len(netbuild.OPERATORS)
