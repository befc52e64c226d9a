"""The rules table, case by case, with network facts as the bundled data gives them for real
addresses (IPv4 and IPv6), plus the hard cases named in the verdicts issue."""

from __future__ import annotations

import pytest

from pixelserver.verdicts import classify
from pixelserver.verdicts.classify import HitFacts, PriorHit
from pixelserver.verdicts.classify import classify as judge
from tests.conftest import shared_networks

THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.1"
APPLE_MAIL = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
IOS_MAIL = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)"
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/130.0.0.0 Mobile Safari/537.36"
)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36"
)
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
YAHOO = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
FASTMAIL = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/118.0.5993.117 Safari/537.36 FastmailUA/1.0"
)


def facts(ip: str, ua: str = THUNDERBIRD, t: float | None = 7200, **kw) -> HitFacts:
    return HitFacts(network=shared_networks().facts(ip), ua=ua, seconds_after_send=t, **kw)


# (case, ip, ua, seconds after send, extra facts, expected verdict, expected rule)
CASES = [
    (
        "Gmail proxy 40 minutes after send",
        "66.249.93.84",
        GMAIL,
        2400,
        {},
        "human_via_proxy",
        "gmail-proxy",
    ),
    (
        "Gmail proxy, other Google fetcher range",
        "66.102.6.10",
        GMAIL,
        600,
        {},
        "human_via_proxy",
        "gmail-proxy",
    ),
    (
        "Gmail proxy seconds after delivery",
        "66.249.81.104",
        GMAIL,
        8,
        {},
        "human_via_proxy",
        "gmail-proxy-at-delivery",
    ),
    ("Gmail proxy UA from a home ISP", "73.15.20.9", GMAIL, 600, {}, "bot", "gmail-proxy-spoofed"),
    ("Gmail proxy UA from AWS", "52.1.2.3", GMAIL, 600, {}, "bot", "gmail-proxy-spoofed"),
    (
        "Google network, no proxy UA, at delivery",
        "66.249.93.84",
        CHROME,
        4,
        {},
        "scanner",
        "google-delivery-fetcher",
    ),
    (
        "Gmail proxy on a Yahoo recipient, sender on Google",
        "66.249.93.84",
        GMAIL,
        900,
        {"recipient": "ana@yahoo.com", "upstream_google": True},
        "sender",
        "gmail-sent-folder",
    ),
    (
        "Gmail proxy on a custom domain, sender on Google",
        "66.249.93.84",
        GMAIL,
        900,
        {"recipient": "ana@acme.example", "upstream_google": True},
        "human_via_proxy",
        "gmail-proxy",
    ),
    (
        "Gmail proxy, custom domain on Google Workspace (MX)",
        "66.249.93.84",
        GMAIL,
        900,
        {"recipient": "ana@acme.example", "mailbox_provider": "google", "upstream_google": True},
        "human_via_proxy",
        "gmail-proxy-mailbox",
    ),
    (
        "Gmail proxy, custom domain on Microsoft 365 (MX), sender on Google",
        "66.249.93.84",
        GMAIL,
        900,
        {"recipient": "ana@acme.example", "mailbox_provider": "microsoft", "upstream_google": True},
        "sender",
        "gmail-sent-folder",
    ),
    (
        "Gmail proxy, custom domain behind a Mimecast MX, sender on Google",
        "66.249.93.84",
        GMAIL,
        900,
        {"recipient": "ana@acme.example", "mailbox_provider": "mimecast", "upstream_google": True},
        "human_via_proxy",
        "gmail-proxy",
    ),
    (
        "Outlook proxy later, recipient on Microsoft 365 (MX)",
        "40.107.1.1",
        CHROME,
        3600,
        {"recipient": "ana@acme.example", "mailbox_provider": "microsoft"},
        "human_via_proxy",
        "outlook-proxy-mailbox",
    ),
    ("Yahoo proxy", "74.6.231.20", YAHOO, 3000, {}, "human_via_proxy", "yahoo-proxy"),
    (
        "Yahoo proxy IPv6",
        "2001:4998:c:a06::2:4008",
        YAHOO,
        3000,
        {},
        "human_via_proxy",
        "yahoo-proxy",
    ),
    ("Yahoo proxy UA from a home ISP", "73.15.20.9", YAHOO, 3000, {}, "bot", "yahoo-proxy-spoofed"),
    (
        "Apple MPP 2 s after send",
        "172.225.5.1",
        "Mozilla/5.0",
        2,
        {},
        "privacy_prefetch",
        "apple-relay",
    ),
    (
        "Apple relay on Cloudflare, hours later",
        "104.28.28.1",
        "Mozilla/5.0",
        20000,
        {},
        "privacy_prefetch",
        "apple-relay",
    ),
    (
        "Apple's own network",
        "17.58.1.10",
        "Mozilla/5.0",
        5,
        {},
        "privacy_prefetch",
        "apple-network",
    ),
    (
        "Apple relay IPv6 (Akamai), bare Mozilla/5.0",
        "2a02:26f7:c8c0::1",
        "Mozilla/5.0",
        3,
        {},
        "privacy_prefetch",
        "apple-relay-operator",
    ),
    (
        "Apple relay IPv6 (AS36183), a WebKit UA",
        "2a02:26f7:c8c0::1",
        IOS_MAIL,
        30,
        {},
        "privacy_prefetch",
        "apple-relay-asn",
    ),
    (
        "HEAD request near delivery",
        "73.15.20.9",
        CHROME,
        5,
        {"method": "HEAD"},
        "scanner",
        "prefetch-request",
    ),
    (
        "Prefetch header, later",
        "73.15.20.9",
        CHROME,
        9000,
        {"headers": {"Sec-Purpose": "prefetch"}},
        "bot",
        "prefetch-request-late",
    ),
    ("curl", "73.15.20.9", "curl/8.5.0", 100, {}, "bot", "bot-user-agent"),
    (
        "Googlebot",
        "66.249.66.1",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        86400,
        {},
        "bot",
        "bot-user-agent",
    ),
    (
        "Slack link preview",
        "3.88.1.1",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        600,
        {},
        "bot",
        "bot-user-agent",
    ),
    ("Proofpoint gateway", "148.163.130.1", CHROME, 12, {}, "scanner", "security-gateway"),
    ("Sophos gateway IPv6", "2606:36c0:500::a", CHROME, 12, {}, "scanner", "security-gateway"),
    ("Fastmail proxy", "103.168.172.10", FASTMAIL, 3600, {}, "human_via_proxy", "mail-proxy-ua"),
    (
        "Fastmail proxy at delivery",
        "103.168.172.10",
        FASTMAIL,
        20,
        {},
        "human_via_proxy",
        "mail-proxy-ua-at-delivery",
    ),
    (
        "Fastmail UA from a home ISP",
        "73.15.20.9",
        FASTMAIL,
        3600,
        {},
        "bot",
        "mail-proxy-ua-spoofed",
    ),
    ("Proton proxy", "79.135.106.10", CHROME, 3600, {}, "human_via_proxy", "mail-proxy-network"),
    (
        "Proton proxy at delivery",
        "2a05:2701:f00::a",
        CHROME,
        30,
        {},
        "human_via_proxy",
        "mail-proxy-network-at-delivery",
    ),
    ("Behind Zscaler", "165.225.8.10", CHROME, 5400, {}, "human", "company-web-gateway"),
    ("Mimecast gateway", "205.139.110.20", CHROME, 30, {}, "scanner", "security-gateway"),
    ("Microsoft EOP 20 s after send", "40.107.1.1", CHROME, 20, {}, "scanner", "microsoft-scan"),
    (
        "Microsoft EOP IPv6 at delivery",
        "2a01:111:f400::5",
        CHROME,
        25,
        {},
        "scanner",
        "microsoft-scan",
    ),
    (
        "Microsoft burst later",
        "40.107.1.1",
        CHROME,
        3600,
        {"prior": [PriorHit("40.107.1.0/24", CHROME, 3599.5)]},
        "scanner",
        "microsoft-scan",
    ),
    ("Outlook.com proxy later", "40.107.1.1", CHROME, 3600, {}, "human_via_proxy", "outlook-proxy"),
    ("Empty UA from a datacenter", "52.1.2.3", "", 3600, {}, "scanner", "empty-ua-near-delivery"),
    ("Empty UA from a home ISP, later", "73.15.20.9", "", 3600, {}, "bot", "empty-ua"),
    (
        "Datacenter, desktop Chrome, 3 s after send",
        "52.1.2.3",
        CHROME,
        3,
        {},
        "scanner",
        "datacenter-near-delivery",
    ),
    (
        "Datacenter IPv6 near delivery",
        "2600:1f18::1",
        CHROME,
        30,
        {},
        "scanner",
        "datacenter-near-delivery",
    ),
    ("Datacenter, much later", "52.1.2.3", CHROME, 86400, {}, "bot", "datacenter-later"),
    (
        "Burst of three within a second",
        "81.2.69.160",
        CHROME,
        40.6,
        {"prior": [PriorHit("81.2.69.0/24", CHROME, 40.0), PriorHit("81.2.69.0/24", CHROME, 40.3)]},
        "scanner",
        "burst",
    ),
    (
        "Thunderbird from a home ISP 2 hours later",
        "73.15.20.9",
        THUNDERBIRD,
        7200,
        {},
        "human",
        "consumer-network",
    ),
    ("iOS Mail on a mobile network", "81.2.69.160", IOS_MAIL, 300, {}, "human", "consumer-network"),
    (
        "Outlook desktop, IPv6 home line",
        "2a02:810d:1000::1",
        OUTLOOK,
        900,
        {},
        "human",
        "consumer-network",
    ),
    (
        "The sender's own network",
        "81.2.69.160",
        APPLE_MAIL,
        60,
        {"sender_prefixes": frozenset({"81.2.69.0/24"})},
        "sender",
        "sender-network",
    ),
]


@pytest.mark.parametrize(
    ("case", "ip", "ua", "t", "extra", "kind", "rule"), CASES, ids=[c[0] for c in CASES]
)
def test_rule(case: str, ip: str, ua: str, t: float, extra: dict, kind: str, rule: str) -> None:
    verdict = judge(facts(ip, ua, t, **extra))
    assert (verdict.kind, verdict.rule) == (kind, rule), verdict.reasons
    assert verdict.reasons, "a verdict without reasons cannot be explained"
    assert 0 < verdict.confidence <= 1


def test_every_rule_is_exercised() -> None:
    covered = {c[6] for c in CASES}
    assert covered == {r.id for r in classify.RULES}


def test_every_rule_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "classification.md").read_text()
    for rule in classify.RULES:
        assert f"`{rule.id}`" in doc, rule.id


@pytest.mark.parametrize(
    ("ua", "client"),
    [
        (THUNDERBIRD, "Thunderbird 128"),
        (APPLE_MAIL, "Apple Mail (or Outlook for Mac)"),
        (IOS_MAIL, "iOS Mail"),
        (OUTLOOK, "Outlook"),
        (ANDROID, "Android mail app"),
        (CHROME, "Chrome (webmail)"),
        (GMAIL, "Gmail"),
        ("", ""),
    ],
)
def test_clients_are_named(ua: str, client: str) -> None:
    assert classify.client_of(ua) == client


def test_mailbox_providers_from_the_domain() -> None:
    assert classify.provider_of("ana@gmail.com") == "google"
    assert classify.provider_of("Bob <bob@Hotmail.com>") == "microsoft"
    assert classify.provider_of("c@me.com") == "icloud"
    assert classify.provider_of("d@acme.example") == ""


def test_reasons_carry_codes_and_words() -> None:
    verdict = judge(facts("172.225.5.1", "Mozilla/5.0", 2))
    codes = [r.code for r in verdict.reasons]
    assert codes[0] == "net:apple-private-relay"
    assert "timing:2s-after-send" in codes
    assert all(r.text for r in verdict.reasons)


def test_bot_reasons_name_the_maintained_data() -> None:
    verdict = judge(facts("3.88.1.1", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"))
    assert verdict.reasons[0].code == "ua:crawler-user-agents:Slackbot"
    assert "social-preview" in verdict.reasons[0].text


def test_a_crawler_on_apples_network_is_a_bot_not_privacy_protection() -> None:
    applebot = (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)"
    )
    verdict = judge(facts("17.241.219.10", applebot, 86400))
    assert (verdict.kind, verdict.reasons[0].code) == ("bot", "ua:crawler-user-agents:Applebot")
