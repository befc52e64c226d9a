"""Pure: the facts of one pixel fetch -> a verdict with the reasons that justify it.

The rules are one table (RULES), tried in order; the first that matches decides. Each rule's
evidence and sources are in docs/classification.md and ../shared/reference/proxy-detection.md.
Nothing here does I/O: network facts arrive already looked up, so every case can be tested and
`mailping classify` can explain any hit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from pixelserver.verdicts import agents
from pixelserver.verdicts.networks import NetworkFacts
from pixelserver.vocabulary import PERSON_VERDICTS
from pixelserver.vocabulary import Verdict as Kind

# The verdicts' words live in pixelserver/vocabulary.py; short names for the rules below.
HUMAN = Kind.HUMAN
HUMAN_VIA_PROXY = Kind.HUMAN_VIA_PROXY
PRIVACY_PREFETCH = Kind.PRIVACY_PREFETCH
SCANNER = Kind.SCANNER
BOT = Kind.BOT
SENDER = Kind.SENDER
UNKNOWN = Kind.UNKNOWN
VERDICTS = tuple(Kind)
PERSON = PERSON_VERDICTS

NEAR_DELIVERY = 120.0  # seconds: Defender sandboxes within ~60 s, gophish reports 20-30 s
BURST_WINDOW = 2.0  # seconds between fetches from one network that no person produces

GOOGLE_ASNS = frozenset({15169})
YAHOO_ASNS = frozenset({14777, 26101, 36646, 36647, 34010, 56173, 10310})
APPLE_ASNS = frozenset({714})
RELAY_OPERATOR_ASNS = frozenset({13335, 36183, 20940, 54113})  # Cloudflare, Akamai, Fastly
APPLE_RELAY_ASNS = frozenset({36183})  # Akamai's network that carries only Private Relay
MICROSOFT_ASNS = frozenset({8075})
SECURITY_VENDOR_LISTS = {
    "proofpoint": "Proofpoint",
    "mimecast": "Mimecast",
    "barracuda": "Barracuda",
    "cisco_secure_email": "Cisco Secure Email",
}
PROVIDER_DOMAINS = {
    "google": ("gmail.com", "googlemail.com"),
    "yahoo": (
        "yahoo.com",
        "ymail.com",
        "rocketmail.com",
        "aol.com",
        "yahoo.co.uk",
        "yahoo.fr",
        "yahoo.de",
        "yahoo.co.jp",
        "aim.com",
    ),
    "icloud": ("icloud.com", "me.com", "mac.com"),
    "microsoft": (
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "hotmail.co.uk",
        "hotmail.fr",
        "outlook.de",
        "live.co.uk",
    ),
}


@dataclass(frozen=True)
class PriorHit:
    """An earlier fetch of the same pixel, as stored (network prefix, never the address)."""

    prefix: str
    ua: str
    seconds_after_send: float


@dataclass(frozen=True)
class HitFacts:
    network: NetworkFacts
    ua: str = ""
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    seconds_after_send: float | None = None
    prior: Sequence[PriorHit] = ()  # earlier fetches of this pixel, oldest first
    recipient: str = ""
    sender_prefixes: frozenset[str] = frozenset()  # where the sender submitted or logged in from
    upstream_google: bool = False  # the sender's outgoing server is Google's
    mailbox_provider: str = ""  # the recipient's, from its domain's MX ("" when not known)


@dataclass(frozen=True)
class Reason:
    code: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} ({self.text})"


@dataclass(frozen=True)
class Verdict:
    kind: str
    confidence: float
    rule: str
    reasons: tuple[Reason, ...]
    client: str = ""

    def as_json(self) -> dict:
        return {
            "verdict": self.kind,
            "confidence": self.confidence,
            "rule": self.rule,
            "client": self.client,
            "reasons": [{"code": r.code, "text": r.text} for r in self.reasons],
        }


def provider_of(recipient: str) -> str:
    """The recipient's mailbox provider, as far as the domain alone tells (custom domains on
    Google Workspace or Microsoft 365 cannot be told apart offline: "")."""
    domain = recipient.rpartition("@")[2].lower().rstrip(">").strip()
    for provider, domains in PROVIDER_DOMAINS.items():
        if domain in domains:
            return provider
    return ""


def client_of(ua: str) -> str:
    """The mail program a User-Agent names, in words for the report (from ua-parser)."""
    return agents.client_of(ua)


# --- the context the rules read --------------------------------------------------------------


class _Ctx:
    """The facts with what the rules derive from them, each derived once per hit."""

    def __init__(self, facts: HitFacts) -> None:
        self.f = facts
        self.n = facts.network
        self.t = facts.seconds_after_send
        self.near_delivery = self.t is not None and self.t <= NEAR_DELIVERY

    def asn_in(self, asns: frozenset[int]) -> bool:
        return self.n.asn is not None and self.n.asn in asns

    @cached_property
    def burst(self) -> bool:
        """Another fetch from the same network within BURST_WINDOW seconds before this one.

        `prior` is in time order, so the scan runs backwards and stops at the window's edge:
        a pixel fetched thousands of times costs no more than one fetched twice."""
        if self.t is None:
            return False
        for p in reversed(self.f.prior):
            if p.seconds_after_send < self.t - BURST_WINDOW:
                return False
            if p.prefix == self.n.prefix and p.seconds_after_send <= self.t + BURST_WINDOW:
                return True
        return False

    @cached_property
    def prefetch(self) -> bool:
        if self.f.method.upper() == "HEAD":
            return True
        return any(
            k.lower() in ("sec-purpose", "purpose", "x-purpose") and "prefetch" in v.lower()
            for k, v in self.f.headers.items()
        )

    @cached_property
    def vendor(self) -> str:
        """The mail-security vendor whose network this is: from the fetcher table (by prefix
        or ASN) or the hand-kept documented ranges of known-networks.txt."""
        return self.operator("scanner") or next(
            (SECURITY_VENDOR_LISTS[n] for n in sorted(self.n.lists) if n in SECURITY_VENDOR_LISTS),
            "",
        )

    @cached_property
    def operators(self) -> dict[str, str]:
        """Fetcher-table operators of this network by kind ("scanner" -> "Proofpoint")."""
        found: dict[str, str] = {}
        for label in sorted(self.n.lists):
            kind, sep, name = label.partition(":")
            if sep and kind not in found:
                found[kind] = name
        return found

    def operator(self, kind: str) -> str:
        """The name of the fetcher-table operator of this kind the network belongs to, or ""."""
        return self.operators.get(kind, "")

    @cached_property
    def proxy_ua(self) -> str:
        """A mailbox provider's image proxy named by the UA, other than Gmail's and Yahoo's
        (which have rules of their own)."""
        provider = agents.mail_proxy(self.f.ua)
        return "" if provider in ("Gmail", "Yahoo Mail") else provider

    @cached_property
    def agent(self) -> agents.Agent | None:
        return agents.automated_agent(self.f.ua)

    @property
    def bot_ua(self) -> bool:
        return self.agent is not None


def _net(c: _Ctx) -> Reason:
    return Reason(f"net:AS{c.n.asn}" if c.n.asn else "net:unknown", c.n.describe())


def _timing(c: _Ctx) -> Reason:
    if c.t is None:
        return Reason("timing:unknown", "time since sending not known")
    return Reason(f"timing:{_duration(c.t)}-after-send", f"fetched {_words(c.t)} after sending")


def _ua(c: _Ctx, label: str) -> Reason:
    return Reason(f"ua:{label}", f"User-Agent: {c.f.ua[:120] or '(none)'}")


def _agent(c: _Ctx) -> Reason:
    """The automated agent named, with the data that names it (e.g. crawler-user-agents)."""
    agent = c.agent
    if agent is None:
        return _ua(c, "bot")
    tags = f" ({', '.join(agent.tags)})" if agent.tags else ""
    return Reason(agent.code, f"{agent.source} names {agent.name}{tags}: {c.f.ua[:100]}")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _words(seconds: float) -> str:
    d = _duration(seconds)
    unit = {"s": "second", "m": "minute", "h": "hour", "d": "day"}[d[-1]]
    return f"{d[:-1]} {unit}{'' if d[:-1] == '1' else 's'}"


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    confidence: float
    when: Callable[[_Ctx], bool]
    why: Callable[[_Ctx], list[Reason]]
    summary: str


def _gmail_ua(c: _Ctx) -> bool:
    return "GoogleImageProxy" in c.f.ua


def _from_google(c: _Ctx) -> bool:
    return c.asn_in(GOOGLE_ASNS) or "google_fetcher" in c.n.lists


def _yahoo_ua(c: _Ctx) -> bool:
    return "YahooMailProxy" in c.f.ua


def _proxy_ua_from_its_network(c: _Ctx) -> bool:
    """A mail-proxy UA from that provider's network, or from a hosting network (providers run
    proxies in clouds too); from a person's access network it is a forgery."""
    return bool(c.proxy_ua) and (c.operator("mailproxy") == c.proxy_ua or c.n.hosting)


def _mail_proxy_reasons(c: _Ctx) -> list[Reason]:
    provider = c.proxy_ua or c.operator("mailproxy")
    return [
        Reason(
            f"net:mailproxy:{provider.lower().replace(' ', '-')}",
            f"{provider} loads remote images on the reader's behalf when a message is opened",
        ),
        _ua(c, provider if c.proxy_ua else "browser"),
        _net(c),
        _timing(c),
    ]


def _from_microsoft(c: _Ctx) -> bool:
    return c.asn_in(MICROSOFT_ASNS) or bool({"microsoft_eop", "microsoft_exo"} & c.n.lists)


MAILBOX_PROVIDERS = frozenset(
    {"google", "microsoft", "yahoo", "icloud", "fastmail", "proton", "zoho", "yandex", "mailru"}
    | {"gmx", "webde"}
)  # MX keys that are mailboxes; gateways (an MX at Mimecast, Proofpoint...) hide the mailbox


def mailbox_of(facts: HitFacts) -> str:
    """The recipient's mailbox provider: from the MX when known, else from a well-known
    consumer domain; "" when neither tells (a custom domain behind a gateway, or not looked
    up yet)."""
    if facts.mailbox_provider in MAILBOX_PROVIDERS:
        return facts.mailbox_provider
    return provider_of(facts.recipient)


def _sent_folder(c: _Ctx) -> bool:
    provider = mailbox_of(c.f)
    return c.f.upstream_google and provider not in ("", "google")


def _mailbox_reason(c: _Ctx) -> Reason:
    provider = mailbox_of(c.f)
    how = "its MX" if c.f.mailbox_provider == provider else "its domain"
    return Reason(
        f"mailbox:{provider}",
        f"{c.f.recipient.rpartition('@')[2]} receives mail at {provider} ({how})",
    )


RULES: tuple[Rule, ...] = (
    Rule(
        "sender-network",
        SENDER,
        0.8,
        lambda c: c.n.prefix != "" and c.n.prefix in c.f.sender_prefixes,
        lambda c: [
            Reason("net:sender", f"the sender submitted mail or logged in from {c.n.prefix}"),
            _net(c),
        ],
        "The network the sender submitted this mail from, or logged in to MailPing from.",
    ),
    Rule(
        "gmail-sent-folder",
        SENDER,
        0.75,
        lambda c: _gmail_ua(c) and _from_google(c) and _sent_folder(c),
        lambda c: [
            _ua(c, "GoogleImageProxy"),
            _net(c),
            _mailbox_reason(c),
            Reason(
                "recipient:not-gmail",
                f"{c.f.recipient.rpartition('@')[2]} is not a Gmail mailbox, and the "
                "sender sends through Google: this is the sender's Sent folder",
            ),
        ],
        "Gmail's proxy fetching a copy whose recipient is not on Gmail, while the sender's "
        "outgoing server is Google's: the sender reading their Sent Mail.",
    ),
    Rule(
        "gmail-proxy-mailbox",
        HUMAN_VIA_PROXY,
        0.9,
        lambda c: (
            _gmail_ua(c) and _from_google(c) and not c.near_delivery and mailbox_of(c.f) == "google"
        ),
        lambda c: [_ua(c, "GoogleImageProxy"), _net(c), _mailbox_reason(c), _timing(c)],
        "Gmail's image proxy for a recipient whose mailbox is at Google (Gmail, or a Workspace "
        "custom domain by its MX): that recipient opening the message.",
    ),
    Rule(
        "gmail-proxy",
        HUMAN_VIA_PROXY,
        0.85,
        lambda c: _gmail_ua(c) and _from_google(c) and not c.near_delivery,
        lambda c: [_ua(c, "GoogleImageProxy"), _net(c), _timing(c)],
        "Gmail's image proxy fetches when the message is opened.",
    ),
    Rule(
        "gmail-proxy-at-delivery",
        HUMAN_VIA_PROXY,
        0.5,
        lambda c: _gmail_ua(c) and _from_google(c),
        lambda c: [
            _ua(c, "GoogleImageProxy"),
            _net(c),
            _timing(c),
            Reason(
                "timing:near-delivery",
                "Gmail sometimes fetches at delivery; a fast reader looks the same",
            ),
        ],
        "Gmail's proxy within two minutes of sending: an open, or Gmail's delivery-time fetch.",
    ),
    Rule(
        "gmail-proxy-spoofed",
        BOT,
        0.9,
        lambda c: _gmail_ua(c),
        lambda c: [
            _ua(c, "GoogleImageProxy"),
            _net(c),
            Reason("net:not-google", "claims to be Gmail's proxy from outside Google"),
        ],
        "A GoogleImageProxy User-Agent from outside Google's network is a forgery.",
    ),
    Rule(
        "google-delivery-fetcher",
        SCANNER,
        0.7,
        lambda c: _from_google(c) and c.near_delivery and not c.bot_ua,
        lambda c: [_net(c), _timing(c), _ua(c, "other")],
        "Google's network without the image-proxy User-Agent near delivery: Gmail's or "
        "Workspace's delivery-time fetch or security scan.",
    ),
    Rule(
        "yahoo-proxy",
        HUMAN_VIA_PROXY,
        0.85,
        lambda c: _yahoo_ua(c) and c.asn_in(YAHOO_ASNS),
        lambda c: [_ua(c, "YahooMailProxy"), _net(c), _timing(c)],
        "Yahoo/AOL Mail's image proxy fetches when the message is displayed.",
    ),
    Rule(
        "yahoo-proxy-spoofed",
        BOT,
        0.85,
        lambda c: _yahoo_ua(c) and c.n.asn is not None,
        lambda c: [
            _ua(c, "YahooMailProxy"),
            _net(c),
            Reason("net:not-yahoo", "claims to be Yahoo's proxy from outside Yahoo"),
        ],
        "A YahooMailProxy User-Agent from a network not Yahoo's.",
    ),
    Rule(
        "mail-proxy-ua",
        HUMAN_VIA_PROXY,
        0.8,
        lambda c: _proxy_ua_from_its_network(c) and not c.near_delivery,
        _mail_proxy_reasons,
        "A mailbox provider's image proxy naming itself (FastmailUA) from its network: an open.",
    ),
    Rule(
        "mail-proxy-ua-at-delivery",
        HUMAN_VIA_PROXY,
        0.5,
        _proxy_ua_from_its_network,
        lambda c: (
            _mail_proxy_reasons(c)
            + [Reason("timing:near-delivery", "a fast reader, or the provider's own check")]
        ),
        "The same within two minutes of sending: an open, or the provider checking the message.",
    ),
    Rule(
        "mail-proxy-ua-spoofed",
        BOT,
        0.85,
        lambda c: bool(c.proxy_ua),
        lambda c: [
            _ua(c, c.proxy_ua),
            _net(c),
            Reason("net:not-provider", f"claims to be {c.proxy_ua}'s proxy from an access network"),
        ],
        "A mail-proxy User-Agent from a person's access network is a forgery.",
    ),
    Rule(
        "bot-user-agent",
        BOT,
        0.95,
        lambda c: c.bot_ua,
        lambda c: [_agent(c), _net(c)],
        "A crawler, link previewer, monitor, HTTP library or internet scanner naming itself "
        "(crawler-user-agents, ua-parser), wherever it runs, Apple's network included.",
    ),
    Rule(
        "prefetch-request",
        SCANNER,
        0.8,
        lambda c: c.prefetch and c.near_delivery,
        lambda c: [
            Reason("http:prefetch", f"{c.f.method} request or prefetch header"),
            _timing(c),
            _net(c),
        ],
        "HEAD or Sec-Purpose/Purpose: prefetch near delivery: a gateway checking the link.",
    ),
    Rule(
        "prefetch-request-late",
        BOT,
        0.7,
        lambda c: c.prefetch,
        lambda c: [Reason("http:prefetch", f"{c.f.method} request or prefetch header"), _timing(c)],
        "HEAD or a prefetch header: a machine, whatever the User-Agent.",
    ),
    Rule(
        "apple-relay",
        PRIVACY_PREFETCH,
        0.9,
        lambda c: "apple_relay" in c.n.lists,
        lambda c: [
            Reason(
                "net:apple-private-relay",
                "Apple iCloud Private Relay egress, which Mail Privacy Protection fetches through",
            ),
            _net(c),
            _timing(c),
        ],
        "Apple Mail Privacy Protection loads all images through Apple's relay, read or not.",
    ),
    Rule(
        "apple-network",
        PRIVACY_PREFETCH,
        0.6,
        lambda c: "apple_network" in c.n.lists or c.asn_in(APPLE_ASNS),
        lambda c: [Reason("net:AS714", "Apple's own network"), _timing(c)],
        "Apple's own network (17.0.0.0/8): an Apple machine, not a person's connection.",
    ),
    Rule(
        "apple-relay-operator",
        PRIVACY_PREFETCH,
        0.7,
        lambda c: c.f.ua.strip() == "Mozilla/5.0" and c.asn_in(RELAY_OPERATOR_ASNS),
        lambda c: [
            _ua(c, "Mozilla/5.0"),
            _net(c),
            Reason("net:relay-operator", "runs Apple's relay; prefix not in our snapshot"),
        ],
        "The bare Mozilla/5.0 of Mail Privacy Protection from a relay operator's network.",
    ),
    Rule(
        "apple-relay-asn",
        PRIVACY_PREFETCH,
        0.8,
        lambda c: c.asn_in(APPLE_RELAY_ASNS),
        lambda c: [
            _net(c),
            Reason(
                "net:apple-private-relay-asn",
                "AS36183 is Akamai's iCloud Private Relay egress network (IPv4 and IPv6)",
            ),
            _timing(c),
        ],
        "Akamai's Private Relay network (AS36183), any UA: prefixes drift faster than the list.",
    ),
    Rule(
        "mail-proxy-network",
        HUMAN_VIA_PROXY,
        0.7,
        lambda c: bool(c.operator("mailproxy")) and bool(c.f.ua.strip()) and not c.near_delivery,
        _mail_proxy_reasons,
        "A mailbox provider's image-proxy network (Proton Mail, Fastmail): a reader's open.",
    ),
    Rule(
        "mail-proxy-network-at-delivery",
        HUMAN_VIA_PROXY,
        0.45,
        lambda c: bool(c.operator("mailproxy")) and bool(c.f.ua.strip()),
        lambda c: (
            _mail_proxy_reasons(c)
            + [Reason("timing:near-delivery", "a fast reader, or the provider's own check")]
        ),
        "The same within two minutes of sending: an open, or the provider checking the message.",
    ),
    Rule(
        "security-gateway",
        SCANNER,
        0.9,
        lambda c: bool(c.vendor),
        lambda c: [
            Reason(
                f"net:{c.vendor.lower().replace(' ', '-')}", f"{c.vendor} mail-security network"
            ),
            _timing(c),
        ],
        "A mail-security gateway's or link scanner's network (fetcher table: Proofpoint, "
        "Mimecast, Barracuda, Cisco, Trend Micro, Sophos, Hornetsecurity, Trustwave, ...).",
    ),
    Rule(
        "microsoft-scan",
        SCANNER,
        0.8,
        lambda c: _from_microsoft(c) and (c.near_delivery or c.burst),
        lambda c: (
            [_net(c), _timing(c)]
            + (
                [Reason("repeat:same-network-within-2s", "several fetches within two seconds")]
                if c.burst
                else []
            )
        ),
        "Microsoft's network near delivery or in a burst: Defender/EOP scanning.",
    ),
    Rule(
        "outlook-proxy-mailbox",
        HUMAN_VIA_PROXY,
        0.7,
        lambda c: _from_microsoft(c) and bool(c.f.ua) and mailbox_of(c.f) == "microsoft",
        lambda c: [_net(c), _mailbox_reason(c), _timing(c), _ua(c, "browser")],
        "Microsoft's network later, one fetch, for a recipient whose mailbox is at Microsoft "
        "(Outlook.com, or Microsoft 365 by its MX): the Outlook image proxy.",
    ),
    Rule(
        "outlook-proxy",
        HUMAN_VIA_PROXY,
        0.6,
        lambda c: _from_microsoft(c) and bool(c.f.ua),
        lambda c: [_net(c), _timing(c), _ua(c, "browser")],
        "Microsoft's network later, one fetch: Outlook.com / Outlook on the web's image proxy.",
    ),
    Rule(
        "company-web-gateway",
        HUMAN,
        0.6,
        lambda c: bool(c.operator("gateway")) and bool(c.f.ua.strip()) and not c.burst,
        lambda c: [
            Reason(
                f"net:gateway:{c.operator('gateway').lower().replace(' ', '-')}",
                f"{c.operator('gateway')} is a company web gateway people browse through",
            ),
            _net(c),
            _timing(c),
            _ua(c, client_of(c.f.ua).split(" (")[0] or "other"),
        ],
        "A company's secure web gateway (Zscaler, Netskope, Menlo): a person's browser behind it.",
    ),
    Rule(
        "empty-ua-near-delivery",
        SCANNER,
        0.75,
        lambda c: not c.f.ua.strip() and (c.n.hosting or c.near_delivery),
        lambda c: [
            Reason("ua:empty", "no User-Agent: no mail program sends none"),
            _net(c),
            _timing(c),
        ],
        "No User-Agent from a hosting network or near delivery: a scanner.",
    ),
    Rule(
        "empty-ua",
        BOT,
        0.8,
        lambda c: not c.f.ua.strip(),
        lambda c: [Reason("ua:empty", "no User-Agent: no mail program sends none"), _net(c)],
        "No User-Agent: no mail program sends none.",
    ),
    Rule(
        "datacenter-near-delivery",
        SCANNER,
        0.75,
        lambda c: c.n.hosting and c.near_delivery,
        lambda c: [Reason("net:hosting", f"{c.n.describe()} is a hosting network"), _timing(c)],
        "A hosting network within two minutes of sending: a security scan of the new mail.",
    ),
    Rule(
        "datacenter-later",
        BOT,
        0.6,
        lambda c: c.n.hosting,
        lambda c: [
            Reason("net:hosting", f"{c.n.describe()} is a hosting network"),
            _timing(c),
            Reason("caveat:vpn", "a person behind a VPN or company proxy looks the same"),
        ],
        "A hosting network later on: a bot (or a person behind a VPN; see ambiguities).",
    ),
    Rule(
        "burst",
        SCANNER,
        0.7,
        lambda c: c.burst,
        lambda c: [
            Reason("repeat:same-network-within-2s", "several fetches within two seconds"),
            _net(c),
        ],
        "Several fetches from one network within two seconds: no person opens mail like that.",
    ),
    Rule(
        "consumer-network",
        HUMAN,
        0.8,
        lambda c: True,
        lambda c: [_net(c), _timing(c), _ua(c, client_of(c.f.ua).split(" (")[0] or "other")],
        "Anything else: a person's own mail program on an ordinary network.",
    ),
)


def classify(facts: HitFacts) -> Verdict:
    ctx = _Ctx(facts)
    for rule in RULES:
        if rule.when(ctx):
            return Verdict(
                rule.kind, rule.confidence, rule.id, tuple(rule.why(ctx)), client_of(facts.ua)
            )
    raise AssertionError("the last rule always matches")
