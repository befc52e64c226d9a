"""Rebuild pixelserver/data/ from the network lists in ../shared/reference/data.

The lists are X4BNet lists_vpn (MIT) snapshots: Apple's iCloud Private Relay egress prefixes
(what Mail Privacy Protection fetches through), and hosting/datacenter ASNs and prefixes. Each
output file starts with its source, date and licence; every prefix is checked and normalised.
It then rebuilds fetcher-networks.txt (mail-security vendors, mailbox providers' image proxies,
company web gateways, cloud networks over IPv4 and IPv6) from the installed plevin-db-network
package and the operators' pages listed in pixelserver/verdicts/netbuild.py.
Run: python scripts/build_networks.py [REFERENCE_DATA_DIR]   (or `make networks`)
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "pixelserver" / "verdicts" / "data"
SOURCE = "X4BNet lists_vpn, MIT, commit 167937a76d424a1a176eccda7d929e40cedd6b40 (2026-08-22)"

FILES = {
    "apple-relay-ipv4.txt": (
        "apple-private-relay-egress-ipv4.txt",
        "input/vpn/ips/apple.txt",
        "Apple iCloud Private Relay egress prefixes (IPv4)",
    ),
    "datacenter-ipv4.txt": (
        "datacenter-ipv4.txt",
        "output/datacenter/ipv4.txt",
        "prefixes of hosting/datacenter networks (IPv4)",
    ),
    "datacenter-ipv6.txt": (
        "datacenter-ipv6.txt",
        "output/datacenter/ipv6.txt",
        "prefixes of hosting/datacenter networks (IPv6)",
    ),
}


def prefixes(path: Path) -> list[str]:
    nets = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            nets.append(ipaddress.ip_network(line, strict=False))
    collapsed = list(ipaddress.collapse_addresses(n for n in nets))  # sorted, no overlaps
    return [str(n) for n in collapsed]


def main(src: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for out, (name, upstream, what) in FILES.items():
        nets = prefixes(src / name)
        header = f"# {what}\n# source: {SOURCE}, {upstream}\n# {len(nets)} prefixes\n"
        (OUT / out).write_text(header + "\n".join(nets) + "\n")
        print(f"{out}: {len(nets)} prefixes")
    asns = []
    for line in (src / "datacenter-asn.txt").read_text().splitlines():
        m = re.match(r"\s*AS(\d+)\s*(?:#\s*(.*))?$", line)
        if m:
            asns.append(f"{int(m.group(1))}\t{(m.group(2) or '').strip()}")
    header = (
        f"# hosting/datacenter ASNs ('not an eyeball network'), tab-separated: ASN, name\n"
        f"# source: {SOURCE}, input/datacenter/ASN.txt\n# {len(asns)} ASNs\n"
    )
    (OUT / "datacenter-asn.txt").write_text(header + "\n".join(asns) + "\n")
    print(f"datacenter-asn.txt: {len(asns)} ASNs")
    from pixelserver.verdicts import netbuild

    print(f"{netbuild.update(OUT).name}: rebuilt from plevin-db-network and the operators' pages")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "reference" / "data")
