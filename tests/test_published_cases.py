"""A second labelled set of pixel fetches, built from published sources other than the ones the
rules were written from (not from tests/test_classify.py, not from proxy-detection.md's own
examples). Every label cites the published fact that justifies it.

Network facts come from the bundled data for real addresses inside the networks named. The
agreement on this set is reported in docs/classification.md; the set must stay at 98% or more,
and no automated fetch may be called a person.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pixelserver.verdicts.classify import HUMAN, HUMAN_VIA_PROXY, PERSON, HitFacts
from pixelserver.verdicts.classify import classify as judge
from tests.conftest import shared_networks

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
EDGE = CHROME + " Edg/131.0.0.0"


@dataclass(frozen=True)
class Case:
    name: str
    ip: str
    ua: str
    t: float
    expected: str
    source: str
    extra: dict = field(default_factory=dict)


CASES: tuple[Case, ...] = (
    # --- link previewers, monitors, HTTP libraries: the operators' own documented UAs --------
    Case(
        "Applebot from Apple's network",
        "17.241.219.10",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
        86400,
        "bot",
        "support.apple.com/en-us/119829 'About Applebot': UA and 17.0.0.0/8 origin",
    ),
    Case(
        "Slack image proxy unfurling a pasted pixel URL",
        "54.205.10.10",
        "Slack-ImgProxy (+https://api.slack.com/robots)",
        90000,
        "bot",
        "api.slack.com/robots: Slack-ImgProxy fetches images posted in messages",
    ),
    Case(
        "Slack link expander, near sending",
        "3.88.1.1",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        40,
        "bot",
        "api.slack.com/robots: Slackbot-LinkExpanding",
    ),
    Case(
        "X (Twitter) card fetcher",
        "199.16.156.120",
        "Twitterbot/1.0",
        7200,
        "bot",
        "developer.x.com cards troubleshooting: the crawler identifies as Twitterbot",
    ),
    Case(
        "LinkedIn post inspector",
        "108.174.2.200",
        "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
        7200,
        "bot",
        "linkedin.com/help: LinkedInBot user agent for link previews",
    ),
    Case(
        "WhatsApp link preview",
        "31.13.103.10",
        "WhatsApp/2.23.20.0 A",
        7200,
        "bot",
        "developers.facebook.com sharing docs: WhatsApp fetches link previews",
    ),
    Case(
        "iMessage link preview from a phone's home line",
        "73.15.20.9",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like "
        "Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0",
        3600,
        "bot",
        "developer.apple.com TN3156 'Create rich previews for Messages': the previewer's UA",
    ),
    Case(
        "Teams / Skype link preview",
        "52.114.32.10",
        "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 "
        "skype-url-preview@microsoft.com",
        3600,
        "bot",
        "learn.microsoft.com Teams link unfurling: SkypeUriPreview fetcher",
    ),
    Case(
        "Discord embed fetcher",
        "35.227.62.10",
        "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
        5000,
        "bot",
        "discord.com developers docs: Discordbot user agent for embeds",
    ),
    Case(
        "UptimeRobot monitor",
        "216.144.250.150",
        "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
        600,
        "bot",
        "uptimerobot.com help: monitor requests use the UptimeRobot/2.0 UA from listed IPs",
    ),
    Case(
        "Pingdom probe",
        "5.172.196.188",
        "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
        600,
        "bot",
        "pingdom.com probe server list: UA and probe addresses",
    ),
    Case(
        "Site24x7 monitor",
        "73.15.20.9",
        "Mozilla/5.0 (compatible; Site24x7)",
        900,
        "bot",
        "site24x7.com help: user agent of Site24x7 monitors",
    ),
    Case(
        "python-httpx script",
        "73.15.20.9",
        "python-httpx/0.27.0",
        1200,
        "bot",
        "www.python-httpx.org: default User-Agent python-httpx/<version>",
    ),
    Case(
        "Java HTTP client",
        "81.2.69.160",
        "Java/17.0.2",
        1200,
        "bot",
        "docs.oracle.com HttpURLConnection: default agent Java/<version>",
    ),
    Case(
        "Postman",
        "73.15.20.9",
        "PostmanRuntime/7.36.0",
        1200,
        "bot",
        "learning.postman.com: requests carry PostmanRuntime/<version>",
    ),
    Case(
        "Office link probe",
        "73.15.20.9",
        "Microsoft Office Existence Discovery",
        1800,
        "bot",
        "learn.microsoft.com 'Office Existence Discovery' HEAD/GET probes of linked URLs",
    ),
    Case(
        "Internet-wide scanner",
        "81.2.69.160",
        "Mozilla/5.0 (compatible; InternetMeasurement/1.0; +https://internet-measurement.com/)",
        200000,
        "bot",
        "internet-measurement.com: research scanner UA",
    ),
    # --- mail-security gateways and link scanners: vendor networks, browser UAs --------------
    Case(
        "Trend Micro Email Security at delivery",
        "150.70.180.10",
        CHROME,
        12,
        "scanner",
        "docs.trendmicro.com Trend Micro Email Security; AS16880 Trend Micro (RIR data)",
    ),
    Case(
        "Trend Micro IPv6 at delivery",
        "2620:101:4034::a",
        EDGE,
        20,
        "scanner",
        "AS16880 Trend Micro (RIR data), as above",
    ),
    Case(
        "Sophos Email time-of-click check",
        "103.29.28.10",
        CHROME,
        15,
        "scanner",
        "docs.sophos.com Sophos Email time-of-click URL protection; AS58976 Sophos",
    ),
    Case(
        "Sophos IPv6",
        "2606:36c0:500::a",
        CHROME,
        30,
        "scanner",
        "AS399342 Sophos (RIR data)",
    ),
    Case(
        "Hornetsecurity ATP URL scan",
        "185.140.204.10",
        CHROME,
        8,
        "scanner",
        "cp.hornetsecurity.com manual (Advanced Threat Protection URL scanning); AS401943",
    ),
    Case(
        "Forcepoint Email Security Cloud",
        "85.115.32.10",
        CHROME,
        25,
        "scanner",
        "forcepoint.com Email Security Cloud; AS44444 Forcepoint-Cloud-AS",
    ),
    Case(
        "Cisco Secure Email (IronPort) cloud",
        "23.90.102.10",
        CHROME,
        9,
        "scanner",
        "Cisco Secure Email Cloud Gateway; AS30238 Cisco Systems Ironport Division",
    ),
    Case(
        "Cisco IronPort IPv6",
        "2620:101:2009::a",
        CHROME,
        9,
        "scanner",
        "AS30238 Cisco Systems Ironport Division (RIR data)",
    ),
    Case(
        "Trustwave MailMarshal cloud",
        "38.106.143.10",
        CHROME,
        14,
        "scanner",
        "trustwave.com MailMarshal Cloud; AS33151 Trustwave",
    ),
    Case(
        "Retarus email security",
        "94.199.88.10",
        CHROME,
        30,
        "scanner",
        "retarus.com Email Security (Time-of-Click Protection); AS48328 retarus",
    ),
    Case(
        "Trellix (FireEye) Email Security cloud",
        "199.16.196.10",
        CHROME,
        40,
        "scanner",
        "docs.trellix.com Email Security Cloud URL analysis; AS17330 FIREEYE-AS",
    ),
    Case(
        "AppRiver / Zix gateway",
        "207.195.184.10",
        CHROME,
        18,
        "scanner",
        "appriver.com SecureTide / Zix email threat protection; AS53780 AS-APPRIVER",
    ),
    Case(
        "Proofpoint EU",
        "91.207.212.10",
        CHROME,
        6,
        "scanner",
        "help.proofpoint.com URL Defense sandboxing; AS52129 PROOFPOINT-ASN-EU",
    ),
    Case(
        "Proofpoint EU IPv6",
        "2a0a:2b00::a",
        CHROME,
        6,
        "scanner",
        "AS52129 PROOFPOINT-ASN-EU (RIR data)",
    ),
    Case(
        "Mimecast Germany URL Protect",
        "194.104.108.10",
        CHROME,
        11,
        "scanner",
        "Mimecast Data Centers and URLs (Germany grid); AS39588 MIMECAST-DE",
    ),
    Case(
        "Mimecast Jersey",
        "170.10.141.10",
        CHROME,
        11,
        "scanner",
        "Mimecast Data Centers and URLs (Offshore grid); AS60492 MIMECAST-JE",
    ),
    Case(
        "Mimecast Germany IPv6",
        "2a02:5be0:2::a",
        CHROME,
        11,
        "scanner",
        "AS39588 MIMECAST-DE (RIR data)",
    ),
    # --- mailbox providers' image proxies beyond Gmail, Yahoo and Apple ----------------------
    Case(
        "Fastmail image proxy on open",
        "103.168.172.10",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/118.0.5993.117 Safari/537.36 FastmailUA/1.0",
        3600,
        HUMAN_VIA_PROXY,
        "fastmail.com/policies/bots: image proxy UA with FastmailUA; fastmail.help 'Blocking "
        "remote images': our servers load the images on your behalf",
    ),
    Case(
        "Fastmail image proxy IPv6",
        "2402:5d60::a",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/118.0.5993.117 Safari/537.36 FastmailUA/1.0",
        5400,
        HUMAN_VIA_PROXY,
        "fastmail.com/policies/bots, as above",
    ),
    Case(
        "Fastmail UA from a home line is forged",
        "73.15.20.9",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/118.0.5993.117 Safari/537.36 FastmailUA/1.0",
        5400,
        "bot",
        "fastmail.com/policies/bots: FastmailUA is Fastmail's own fetcher, run from its servers",
    ),
    Case(
        "Proton Mail remote-content proxy",
        "79.135.106.10",
        CHROME,
        2400,
        HUMAN_VIA_PROXY,
        "proton.me/support/email-tracker-protection: remote images downloaded on your behalf "
        "through a proxy with a generic IP address; AS62371 Proton",
    ),
    Case(
        "Proton proxy IPv6",
        "2a05:2701:f00::a",
        CHROME,
        9000,
        HUMAN_VIA_PROXY,
        "proton.me/support/email-tracker-protection; AS62371 Proton",
    ),
    # --- the recipient's mailbox, from the MX of its domain ----------------------------------
    Case(
        "Gmail proxy for a custom domain hosted on Google Workspace",
        "66.249.93.84",
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        1800,
        HUMAN_VIA_PROXY,
        "support.google.com/a/answer/174125: a Workspace domain's MX is smtp.google.com; its "
        "users read in Gmail, whose image proxy fetches on open",
        {"recipient": "ana@acme.example", "mailbox_provider": "google", "upstream_google": True},
    ),
    Case(
        "Gmail proxy for a Microsoft 365 recipient while the sender sends through Google",
        "66.249.93.84",
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        1800,
        "sender",
        "learn.microsoft.com M365 DNS records (MX <domain>.mail.protection.outlook.com): the "
        "recipient does not read in Gmail; Gmail files the sender's copy in Sent Mail",
        {
            "recipient": "bo@contoso.example",
            "mailbox_provider": "microsoft",
            "upstream_google": True,
        },
    ),
    Case(
        "iCloud Private Relay over IPv6 with a WebKit UA",
        "2a02:26f7:c8c0::1",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Mobile/15E148",
        40,
        "privacy_prefetch",
        "developer.apple.com 'Prepare your network or web server for iCloud Private Relay': "
        "relay egress is operated by partners such as Akamai (AS36183)",
    ),
    # --- people's own mail programs, on ordinary networks -------------------------------------
    Case(
        "Samsung Email (Android WebView) on T-Mobile",
        "172.58.20.10",
        "Mozilla/5.0 (Linux; Android 14; SM-S921B; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Version/4.0 Chrome/131.0.6778.39 Mobile Safari/537.36",
        1500,
        HUMAN,
        "developer.chrome.com 'User-Agent strings': '; wv' marks an Android WebView (the mail "
        "app's renderer); AS21928 T-Mobile USA is a cellular access network",
    ),
    Case(
        "Windows Mail app on a cable line",
        "73.15.20.9",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; WebView/3.0) AppleWebKit/537.36 (KHTML, like "
        "Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19045",
        4000,
        HUMAN,
        "learn.microsoft.com EdgeHTML WebView UA; AS7922 Comcast residential",
    ),
    Case(
        "Thunderbird on BT broadband",
        "86.140.10.10",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:128.0) Gecko/20100101 "
        "Thunderbird/128.5.0",
        800,
        HUMAN,
        "developer.mozilla.org User-Agent reference (Gecko/Thunderbird tokens); AS2856 BT",
    ),
    Case(
        "iOS Mail, Privacy Protection off, on Vodafone IPv6",
        "2a02:8108:1000::1",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Mobile/15E148",
        300,
        HUMAN,
        "support.apple.com Mail Privacy Protection (off: images load from the device); AS3209",
    ),
    Case(
        "Outlook for Windows on T-Mobile",
        "172.58.20.10",
        "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
        2000,
        HUMAN,
        "learn.microsoft.com Outlook renders HTML with Word and downloads images itself",
    ),
    Case(
        "Person reading webmail behind Zscaler",
        "165.225.8.10",
        EDGE,
        5400,
        HUMAN,
        "help.zscaler.com: users' web traffic egresses from Zscaler public service edges",
    ),
)


def verdict_of(case: Case) -> str:
    facts = HitFacts(
        network=shared_networks().facts(case.ip),
        ua=case.ua,
        seconds_after_send=case.t,
        **case.extra,
    )
    return judge(facts).kind


def agreement() -> tuple[int, int, list[str]]:
    """(agreeing cases, all cases, descriptions of the disagreements)."""
    misses = []
    for case in CASES:
        got = verdict_of(case)
        if got != case.expected:
            misses.append(f"{case.name}: expected {case.expected}, got {got}")
    return len(CASES) - len(misses), len(CASES), misses


def test_every_label_cites_a_source() -> None:
    assert all(len(c.source) > 20 for c in CASES)
    assert len({c.name for c in CASES}) == len(CASES)


def test_agreement_is_at_least_98_percent() -> None:
    agree, total, misses = agreement()
    assert agree / total >= 0.98, "\n".join(misses)


def test_no_automated_fetch_is_called_a_person() -> None:
    wrong = [
        c.name
        for c in CASES
        if c.expected not in PERSON and c.expected != "sender" and verdict_of(c) in PERSON
    ]
    assert not wrong


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case) -> None:
    assert verdict_of(case) == case.expected, case.source


if __name__ == "__main__":
    agree, total, misses = agreement()
    print(f"{agree}/{total} agree ({agree / total:.1%})")
    print("\n".join(misses))
