"""Pure: one click on a rewritten link -> who clicked it (a person, a scanner, a bot, the sender).

A click proves a read only when a person made it. Mail security gateways (Microsoft Defender
Safe Links, Mimecast, Proofpoint, Barracuda, Cisco) and link scanners follow the links of a
message when it arrives: seconds after sending, often with HEAD, often every link of the copy
within a second or two, often from one network for many recipients. Those signals (the ones
deliverability people document; see docs/clicks.md) are checked first; a click that shows
none of them is a person's. There are no hidden "honeypot" links: every signal here comes from
the links the sender wrote.

The verdict words and Verdict/Reason types are the pixel's (pixelserver/verdicts/classify.py),
so the report shows a click's reasons the way it shows an open's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pixelserver.verdicts import agents
from pixelserver.verdicts.classify import (
    BOT,
    HUMAN,
    NEAR_DELIVERY,
    SCANNER,
    SECURITY_VENDOR_LISTS,
    SENDER,
    Reason,
    Verdict,
    client_of,
)
from pixelserver.verdicts.networks import NetworkFacts

# Two links of one copy clicked this close together: a program walking the links, not a person
# (who reads a page before coming back for the next link).
CLICK_BURST = 2.0
# One network clicking for this many recipients of a message within NETWORK_WINDOW seconds: a
# gateway checking every copy it receives.
MANY_RECIPIENTS = 3
NETWORK_WINDOW = 600.0
# Known networks of mail gateways (known-networks.txt lists and fetcher-table operators).
GATEWAY_LISTS = frozenset({*SECURITY_VENDOR_LISTS, "microsoft_eop", "microsoft_exo"})
GATEWAY_WORDS = {
    **SECURITY_VENDOR_LISTS,
    "microsoft_eop": "Microsoft Exchange Online Protection",
    "microsoft_exo": "Microsoft Exchange Online",
}


@dataclass(frozen=True)
class OtherClick:
    """Another click on a link of the same copy (before or after this one)."""

    seconds_after_send: float
    n: int
    method: str = "GET"
    prefix: str = ""
    ua: str = ""


@dataclass(frozen=True)
class ClickFacts:
    network: NetworkFacts
    ua: str = ""
    method: str = "GET"
    seconds_after_send: float | None = None
    n: int = 0  # which link of the copy
    others: Sequence[OtherClick] = ()  # the copy's other clicks
    recipients_from_network: int = 1  # copies of this message clicked from this network lately
    sender_prefixes: frozenset[str] = field(default_factory=frozenset)


def _gateway(n: NetworkFacts) -> str:
    """The mail gateway whose network this is ("" if none is known)."""
    for label in sorted(n.lists):
        kind, sep, name = label.partition(":")
        if sep and kind == "scanner":
            return name
        if label in GATEWAY_LISTS:
            return GATEWAY_WORDS[label]
    return ""


def _net(f: ClickFacts) -> Reason:
    n = f.network
    return Reason(f"net:AS{n.asn}" if n.asn else "net:unknown", n.describe())


def _timing(f: ClickFacts) -> Reason:
    if f.seconds_after_send is None:
        return Reason("timing:unknown", "time since sending not known")
    s = int(f.seconds_after_send)
    words = f"{s} seconds" if s < 120 else f"{s // 60} minutes" if s < 7200 else f"{s // 3600} h"
    return Reason(f"timing:{s}s-after-send", f"clicked {words} after sending")


def _burst(f: ClickFacts) -> OtherClick | None:
    """Another link of the copy clicked within CLICK_BURST seconds of this click from the same
    network (a person clicking while a gateway checks another link elsewhere is a coincidence,
    not a burst; a browser's User-Agent is too common to tell them apart)."""
    if f.seconds_after_send is None:
        return None
    for o in f.others:
        same = o.prefix == f.network.prefix
        near = abs(o.seconds_after_send - f.seconds_after_send) <= CLICK_BURST
        if o.n != f.n and near and same:
            return o
    return None


def judge(f: ClickFacts) -> Verdict:
    """The verdict on one click; the first signal that holds decides."""
    client = client_of(f.ua)

    def verdict(kind: str, confidence: float, rule: str, *reasons: Reason) -> Verdict:
        return Verdict(kind, confidence, rule, (*reasons, _net(f), _timing(f)), client)

    if f.network.prefix and f.network.prefix in f.sender_prefixes:
        return verdict(
            SENDER, 0.9, "click-sender", Reason("net:sender", "the network the mail was sent from")
        )
    if f.method.upper() == "HEAD":
        return verdict(
            SCANNER,
            0.95,
            "click-head",
            Reason("method:HEAD", "asked for the headers only, as link checkers do"),
        )
    if gateway := _gateway(f.network):
        return verdict(
            SCANNER,
            0.95,
            "click-gateway-network",
            Reason("net:gateway", f"a network of {gateway}, which follows links on delivery"),
        )
    agent = agents.automated_agent(f.ua)
    if agent is not None or not f.ua.strip():
        text = f"{agent.source} names {agent.name}" if agent else "no User-Agent"
        return verdict(BOT, 0.9, "click-automated-agent", Reason("ua:bot", f"{text}: {f.ua[:100]}"))
    if agents.mail_proxy(f.ua):
        return verdict(
            SCANNER,
            0.8,
            "click-mail-proxy",
            Reason("ua:mail-proxy", f"a mail provider's fetcher: {f.ua[:100]}"),
        )
    if f.seconds_after_send is not None and f.seconds_after_send <= NEAR_DELIVERY:
        return verdict(
            SCANNER,
            0.8,
            "click-at-delivery",
            Reason("timing:at-delivery", "clicked as the mail arrived, as gateways do"),
        )
    if (other := _burst(f)) is not None:
        gap = abs(other.seconds_after_send - (f.seconds_after_send or 0.0))
        return verdict(
            SCANNER,
            0.85,
            "click-burst",
            Reason(
                "burst:links",
                f"link {other.n + 1} of the same copy clicked {gap:.1f} s apart: "
                "a program walking the links",
            ),
        )
    if f.recipients_from_network >= MANY_RECIPIENTS:
        return verdict(
            SCANNER,
            0.8,
            "click-many-recipients",
            Reason(
                "net:many-recipients",
                f"this network clicked the copies of {f.recipients_from_network} recipients "
                f"within {int(NETWORK_WINDOW // 60)} minutes",
            ),
        )
    if f.network.hosting:
        return verdict(
            BOT,
            0.6,
            "click-datacenter",
            Reason("net:hosting", "a datacenter network, where browsers of people rarely are"),
        )
    return verdict(
        HUMAN,
        0.9,
        "click-person",
        Reason(f"ua:{(client or 'browser').split(' (')[0]}", f"User-Agent: {f.ua[:120]}"),
    )


RULE_SUMMARIES = (
    ("click-sender", "From the network the sender submitted the mail from: the sender."),
    ("click-head", "A HEAD request: link checkers ask for the headers only."),
    ("click-gateway-network", "From a known mail gateway's network (Defender, Mimecast, ...)."),
    ("click-automated-agent", "A User-Agent naming a bot or library, or none at all."),
    ("click-mail-proxy", "A mail provider's fetcher (its User-Agent says so)."),
    ("click-at-delivery", f"Within {int(NEAR_DELIVERY)} s of sending: gateways click on arrival."),
    ("click-burst", f"Another link of the copy within {CLICK_BURST:g} s: a program."),
    (
        "click-many-recipients",
        f"One network clicking {MANY_RECIPIENTS}+ recipients' copies within "
        f"{int(NETWORK_WINDOW // 60)} minutes.",
    ),
    ("click-datacenter", "From a datacenter network."),
    ("click-person", "Anything else: a person's browser."),
)


def judge_all(facts: Sequence[ClickFacts]) -> list[Verdict]:
    return [judge(f) for f in facts]
