"""A small authoritative DNS server for tests: real UDP on loopback, answers built with
dnspython's message API. It answers MX questions from a table, NXDOMAIN for names it is told
do not exist, nothing at all for names it is told to ignore (a dead server), and counts the
questions it received so tests can see the resolver's cache at work."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


@dataclass
class Zone:
    mx: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    nxdomain: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    ttl: int = 3600
    asked: Counter = field(default_factory=Counter)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        self.zone.asked[name] += 1
        if name in self.zone.silent:
            return
        response = dns.message.make_response(query)
        if name in self.zone.nxdomain:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.MX and name in self.zone.mx:
            texts = [f"{pref} {host}." for pref, host in self.zone.mx[name]]
            response.answer.append(
                dns.rrset.from_text(question.name, self.zone.ttl, "IN", "MX", *texts)
            )
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


class DnsServer:
    """Start with `async with DnsServer(zone) as server:`; `server.resolver()` asks it."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self.zone), local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            self._transport.close()

    def resolver(self) -> dns.asyncresolver.Resolver:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        r.retry_servfail = False
        return r
