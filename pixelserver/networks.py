"""IP addresses: who really fetched (through trusted proxies only) and what may be kept of it.

Only the network prefix is ever stored (/24 for IPv4, /48 for IPv6): enough to say which
provider or network fetched a pixel, not enough to single out a household.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

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
