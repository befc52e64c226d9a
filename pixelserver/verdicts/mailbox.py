"""The recipient's mailbox provider, from the MX of its domain (not from the domain name).

A company domain on Google Workspace or Microsoft 365 looks like any other domain; its MX names
the provider (`smtp.google.com`, `<domain>.mail.protection.outlook.com`). Lookups run in the
background (pixelserver/store/mailboxes.py), never on a pixel's request path: each domain is
resolved once with dnspython's async resolver and remembered for its record's TTL. A failed
lookup leaves the delivery's provider unknown (NULL), so verdicts stay as they are without it.

Stored values: a provider key below, "" when the domain has no MX or an MX no entry names, NULL
when it was not (yet) looked up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import dns.asyncresolver
import dns.exception
import dns.resolver

log = logging.getLogger(__name__)

# MX host suffix -> provider key, from each provider's own set-up instructions.
MX_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("google.com", "google"),  # support.google.com/a/answer/174125 (smtp.google.com, aspmx.l.)
    ("googlemail.com", "google"),
    ("mail.protection.outlook.com", "microsoft"),  # learn.microsoft.com M365 DNS records
    ("olc.protection.outlook.com", "microsoft"),  # Outlook.com / Hotmail
    ("yahoodns.net", "yahoo"),  # Yahoo / AOL (mta5.am0.yahoodns.net)
    ("mail.icloud.com", "icloud"),  # support.apple.com custom email domains (mx01.mail.icloud.com)
    ("messagingengine.com", "fastmail"),  # fastmail.help DNS set-up (in1-smtp.messagingengine.com)
    ("protonmail.ch", "proton"),  # proton.me/support custom domain (mail.protonmail.ch)
    ("zoho.com", "zoho"),  # zoho.com/mail/help MX (mx.zoho.com)
    ("zoho.eu", "zoho"),
    ("zoho.in", "zoho"),
    ("yandex.net", "yandex"),
    ("yandex.ru", "yandex"),
    ("mail.ru", "mailru"),
    ("gmx.net", "gmx"),
    ("web.de", "webde"),
    ("mimecast.com", "mimecast"),  # gateways in front of the mailbox
    ("pphosted.com", "proofpoint"),
    ("ppe-hosted.com", "proofpoint"),
    ("iphmx.com", "cisco"),
    ("barracudanetworks.com", "barracuda"),
    ("messagelabs.com", "broadcom"),
)
PROVIDER_WORDS = {
    "google": "Google (Gmail / Workspace)",
    "microsoft": "Microsoft (Outlook.com / Microsoft 365)",
    "yahoo": "Yahoo / AOL",
    "icloud": "iCloud Mail",
    "fastmail": "Fastmail",
    "proton": "Proton Mail",
    "zoho": "Zoho Mail",
    "yandex": "Yandex Mail",
    "mailru": "Mail.ru",
    "gmx": "GMX",
    "webde": "WEB.DE",
    "mimecast": "behind Mimecast",
    "proofpoint": "behind Proofpoint",
    "cisco": "behind Cisco Secure Email",
    "barracuda": "behind Barracuda",
    "broadcom": "behind Broadcom Email Security.cloud",
}
MIN_TTL = 300.0  # seconds: a very short TTL still should not mean a query per delivery
MAX_TTL = 86400.0
FAILED_TTL = 300.0  # a timeout or SERVFAIL is asked again after this long


def provider_words(key: str | None) -> str:
    """The provider in the report's words: "–" when unknown or not looked up."""
    return PROVIDER_WORDS.get(key or "", "–")


def domain_of(recipient: str) -> str:
    return recipient.rpartition("@")[2].strip().strip("<>").rstrip(".").lower()


def provider_from_mx(records: Iterable[tuple[int, str]]) -> str:
    """Pure: (preference, host) MX records -> provider key, or "" when none is known.

    The most preferred host that a known suffix names decides."""
    for _, host in sorted(records):
        name = host.rstrip(".").lower()
        for suffix, provider in MX_SUFFIXES:
            if name == suffix or name.endswith("." + suffix):
                return provider
    return ""


class MxResolver:
    """Domain -> mailbox provider, asking DNS once per domain per TTL.

    `resolver` defaults to the system's (dnspython reads /etc/resolv.conf); tests pass one
    pointed at a DNS server on loopback. `clock` is time.monotonic, a parameter so that TTL
    expiry can be tested without waiting."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_ttl: float = MIN_TTL,
        lifetime: float = 5.0,
    ) -> None:
        self._resolver = resolver
        self._lifetime = lifetime
        self._clock = clock
        self._min_ttl = min_ttl
        self._cache: dict[str, tuple[str | None, float]] = {}
        self.queries = 0  # DNS questions actually sent (the cache's effect is visible)

    def _dns(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = dns.asyncresolver.Resolver()
        return self._resolver

    async def provider(self, domain: str) -> str | None:
        """The provider key, "" for no MX or an unknown one, None when DNS could not answer."""
        domain = domain.strip().rstrip(".").lower()
        if not domain:
            return ""
        cached = self._cache.get(domain)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        value, ttl = await self._ask(domain)
        self._cache[domain] = (value, self._clock() + ttl)
        return value

    async def _ask(self, domain: str) -> tuple[str | None, float]:
        self.queries += 1
        try:
            answer = await self._dns().resolve(domain, "MX", lifetime=self._lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return "", max(self._min_ttl, FAILED_TTL)
        except (dns.exception.DNSException, OSError) as exc:
            log.info("MX lookup for %s failed: %s", domain, exc.__class__.__name__)
            return None, FAILED_TTL
        ttl = min(MAX_TTL, max(self._min_ttl, float(answer.rrset.ttl if answer.rrset else 0)))
        records = [(r.preference, r.exchange.to_text()) for r in answer]
        return provider_from_mx(records), ttl


DEFAULT_RESOLVER = MxResolver()


def _split(server: str) -> tuple[str, int | None]:
    """ "host", "host:port" or "[v6]:port" -> (host, port or None)."""
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if server.count(":") == 1:
        host, port = server.split(":")
        return host, int(port)
    return server, None


def make_resolver(nameservers: tuple[str, ...]) -> dns.asyncresolver.Resolver | None:
    """A resolver for [geoip] mx_nameservers ("host", "host:port", "[v6]:port"; one port for
    all); None for the system's, made at the first lookup so that a machine without DNS
    configuration still starts (its lookups fail and leave the verdicts as they are)."""
    if not nameservers:
        return None
    parsed = [_split(s.strip()) for s in nameservers]
    ports = {port for _, port in parsed if port is not None}
    if len(ports) > 1:
        raise ValueError("mx_nameservers: give one port for all servers")
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host for host, _ in parsed]
    resolver.port = ports.pop() if ports else 53
    return resolver


async def resolve_mailbox_provider(domain: str, resolver: MxResolver | None = None) -> str | None:
    """The mailbox provider of a recipient domain from its MX ("" unknown, None on failure).

    Cached per domain for the MX record's TTL; meant for background use only."""
    return await (resolver or DEFAULT_RESOLVER).provider(domain)
