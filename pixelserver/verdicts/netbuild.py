"""Build pixelserver/data/fetcher-networks.txt: the networks of known fetchers, with sources.

Each entry below names an operator whose fetches a pixel sees (a mail-security gateway or link
scanner, a mailbox provider's image proxy, a company web gateway that people browse through, a
cloud or hosting network) with the page that says what the operator does and when it was
checked. The prefixes, IPv4 and IPv6, are the routes its ASNs announce, read from the installed
plevin-db-network package (RIPE RIS / RIR data, refreshed monthly), plus prefixes a vendor
publishes inside other networks (a scanner running on Azure). Rebuilding is deterministic for
one plevin-db-network version, so a test can check the shipped file equals a rebuild.

Run: `mailping networks update` or `make networks`.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"
FILE = "fetcher-networks.txt"
CHECKED = "2026-12-02"
KINDS = ("scanner", "mailproxy", "gateway", "cloud")


@dataclass(frozen=True)
class Operator:
    """One operator: kind (see KINDS), name, ASNs, published prefixes, and the page behind it."""

    kind: str
    name: str
    asns: tuple[int, ...]
    url: str
    prefixes: tuple[str, ...] = ()
    checked: str = CHECKED


OPERATORS: tuple[Operator, ...] = (
    # mail-security gateways and link scanners: fetch pixels and links at delivery
    Operator(
        "scanner",
        "Proofpoint",
        (26211, 22843, 13916, 52129),
        "https://proofpoint.my.site.com/support/PPSup_SupportInfo",
    ),
    Operator(
        "scanner",
        "Mimecast",
        (30031, 42427, 39588, 60492, 37235, 136792),
        "https://community.mimecast.com/docs/DOC-1607",
    ),
    Operator(
        "scanner",
        "Barracuda",
        (15324,),
        "https://campus.barracuda.com/product/essentials/doc/78810332/"
        "barracuda-email-security-service/",
        ("209.222.80.0/21",),
    ),
    Operator(
        "scanner",
        "Cisco Secure Email",
        (16417, 30238, 40427),
        "https://community.cisco.com/t5/security-knowledge-base/"
        "office-365-configuration-for-cloud-email-security-bypass/ta-p/3189638",
    ),
    Operator(
        "scanner",
        "Trend Micro Email Security",
        (16880,),
        "https://success.trendmicro.com/solution/000199043",
    ),
    Operator(
        "scanner",
        "Sophos Email",
        (399342, 58976),
        "https://docs.sophos.com/central/customer/help/en-us/ManageYourProducts/PhishThreat/"
        "SystemSettings/PhishThreatSettings/index.html",
    ),
    Operator(
        "scanner",
        "Hornetsecurity",
        (401943,),
        "https://help.cumulussmtp.com/article/25-firewalling",
    ),
    Operator(
        "scanner",
        "Forcepoint Email Security",
        (44444,),
        "https://help.forcepoint.com/fpone/cloud-web/onlinehelp/"
        "guid-dec7d861-339e-4e66-b15a-c9dda594e081.html",
    ),
    Operator(
        "scanner",
        "Trustwave",
        (33151,),
        "https://support.trustwave.com/kb/print21151.aspx",
        ("52.191.90.76/30", "13.91.203.24/30", "20.31.9.32/31", "20.105.76.250/31"),
    ),
    Operator(
        "scanner",
        "Retarus Email Security",
        (48328,),
        "https://docs.retarus.com/seg/retarus-email-security-data-center-operations-cust",
    ),
    Operator(
        "scanner",
        "Trellix Email Security",
        (17330, 46484),
        "https://docs.trellix.com/network-and-platform/docs/"
        "email-analysis-allowed-list-sender-ip-ip-address.md",
    ),
    Operator(
        "scanner",
        "AppRiver / Zix",
        (53780, 59519),
        "https://pypi.org/project/plevin-db-network/ (registry: AS-APPRIVER, Zix International)",
    ),
    Operator(
        "scanner",
        "Broadcom Email Security.cloud",
        (26282,),
        "https://knowledge.broadcom.com/external/article/421057/restricting-your-email-traffic.html",
    ),
    # mailbox providers' image proxies: fetch when a person opens the message
    Operator("mailproxy", "Fastmail", (151847,), "https://fastmail.com/policies/bots"),
    Operator(
        "mailproxy", "Proton Mail", (62371,), "https://proton.me/support/email-tracker-protection"
    ),
    # company secure web gateways: people's browsers reach the internet through them
    Operator(
        "gateway",
        "Zscaler",
        (53813, 22616, 62044, 53444),
        "https://help.zscaler.com (Zscaler Internet Access public service edges)",
    ),
    Operator("gateway", "Netskope", (55256,), "https://www.netskope.com (Netskope SWG)"),
    Operator("gateway", "Menlo Security", (62654,), "https://www.menlosecurity.com"),
    # cloud and hosting: no person's own connection (IPv4 and IPv6 alike)
    Operator(
        "cloud", "Amazon AWS", (16509, 14618), "https://ip-ranges.amazonaws.com/ip-ranges.json"
    ),
    Operator("cloud", "Google Cloud", (396982,), "https://www.gstatic.com/ipranges/cloud.json"),
    Operator(
        "cloud",
        "Microsoft Azure",
        (8075,),
        "https://www.microsoft.com/download/details.aspx?id=56519 (Azure service tags)",
    ),
    Operator(
        "cloud",
        "Oracle Cloud",
        (31898,),
        "https://docs.oracle.com/iaas/tools/public_ip_ranges.json",
    ),
    Operator("cloud", "DigitalOcean", (14061,), "https://digitalocean.com/geo/google.csv"),
    Operator("cloud", "Hetzner", (24940,), "https://www.hetzner.com/unternehmen/rechenzentrum"),
    Operator("cloud", "OVHcloud", (16276,), "https://www.ovhcloud.com"),
    Operator("cloud", "Akamai Linode", (63949,), "https://geoip.linode.com/"),
    Operator("cloud", "Vultr", (20473,), "https://geofeed.constant.com/?json"),
    Operator("cloud", "Alibaba Cloud", (45102,), "https://www.alibabacloud.com"),
    Operator("cloud", "Tencent Cloud", (132203,), "https://www.tencentcloud.com"),
    Operator("cloud", "Scaleway", (12876,), "https://www.scaleway.com"),
    Operator("cloud", "Contabo", (51167,), "https://contabo.com"),
    Operator("cloud", "Leaseweb", (60781,), "https://www.leaseweb.com"),
    Operator("cloud", "IONOS", (8560,), "https://www.ionos.com"),
    Operator("cloud", "Huawei Cloud", (136907,), "https://www.huaweicloud.com"),
    Operator("cloud", "IBM Cloud", (36351,), "https://cloud.ibm.com/docs/cloud-infrastructure"),
)


def _routes(asn: int) -> list[str]:
    """The prefixes an ASN announces (IPv4 and IPv6), from plevin-db-network."""
    import plevin

    routes = plevin.routes(asn)
    return [span.cidr for span in (*routes.ipv4, *routes.ipv6)]


def _sweep(rows: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, int]]) -> list:
    """Drop rows inside an earlier, wider row of the same kind: lookups need disjoint ranges."""
    rows.sort(key=lambda r: (r[0].version, int(r[0].network_address), -r[0].prefixlen))
    kept: list = []
    last_end = {4: -1, 6: -1}
    for net, name, asn in rows:
        if int(net.network_address) <= last_end[net.version]:
            continue
        kept.append((net, name, asn))
        last_end[net.version] = int(net.broadcast_address)
    return kept


def build() -> str:
    """The whole file's text: a header, one `@source` line per operator, one row per prefix."""
    version = importlib.metadata.version("plevin-db-network")
    lines = [
        "# Networks of known fetchers, with the page behind each operator and when it was checked.",
        "# Built by `mailping networks update` (pixelserver/verdicts/netbuild.py);"
        " do not edit by hand.",
        f"# prefixes: routes announced by each ASN, plevin-db-network {version}, and the "
        "prefixes the pages publish",
        "# @source kind name asns url checked   /   kind name asn prefix   (tab-separated)",
        f"@plevin\t{version}",
    ]
    for op in OPERATORS:
        asns = ",".join(str(a) for a in op.asns)
        lines.append(f"@source\t{op.kind}\t{op.name}\t{asns}\t{op.url}\t{op.checked}")
    for kind in KINDS:
        rows = []
        for op in (o for o in OPERATORS if o.kind == kind):
            for asn in op.asns:
                nets = [ipaddress.ip_network(p) for p in _routes(asn)]
                for version in (4, 6):
                    same = (n for n in nets if n.version == version)
                    rows += [(n, op.name, asn) for n in ipaddress.collapse_addresses(same)]
            for prefix in op.prefixes:
                rows.append((ipaddress.ip_network(prefix), op.name, 0))
        v4 = [r for r in rows if r[0].version == 4]
        v6 = [r for r in rows if r[0].version == 6]
        for net, name, asn in _sweep(v4) + _sweep(v6):
            lines.append(f"{kind}\t{name}\t{asn}\t{net}")
    return "\n".join(lines) + "\n"


def update(data_dir: Path = DATA) -> Path:
    """Rewrite the fetcher table in `data_dir`; returns its path."""
    path = data_dir / FILE
    path.write_text(build())
    return path
