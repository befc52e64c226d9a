"""Pure: what a User-Agent says about the program that fetched, from maintained data.

Automated agents (crawlers, link previewers of messaging apps, uptime and synthetic monitors,
HTTP libraries, internet scanners) come from the `crawler-user-agents` package, a community list
refreshed monthly with each operator's URL; then from ua-parser's uap-core rules, which mark
generic robots as the device family "Spider". Client and OS families for the report come from
ua-parser with its `ua-parser-builtins` rules. The only hand-kept list here is SUPPLEMENT: a few
documented agents neither source knows, each with where it is documented.

Mailbox providers' image proxies name themselves too (GoogleImageProxy, YahooMailProxy,
FastmailUA) and are in the crawler list; they are not bots but a person's open seen through the
provider, so they are answered by `mail_proxy` and kept out of `automated_agent`.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from functools import cache, lru_cache

MAIL_PROXY_UAS: dict[str, str] = {
    # token in the User-Agent -> provider, each documented by the provider
    "GoogleImageProxy": "Gmail",  # support.google.com/mail (image proxy), ggpht.com fetcher
    "YahooMailProxy": "Yahoo Mail",  # help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html
    "FastmailUA": "Fastmail",  # fastmail.com/policies/bots (image proxying)
}

SUPPLEMENT: tuple[tuple[str, str, str], ...] = (
    # (regex, name, where it is documented) for automated agents the maintained lists lack
    (
        r"Microsoft Office Existence Discovery",
        "Microsoft Office Existence Discovery",
        "learn.microsoft.com: Office checks that linked URLs exist before opening them",
    ),
    (r"^PostmanRuntime/", "PostmanRuntime", "learning.postman.com: default User-Agent"),
    (r"^Datadog/Synthetics", "Datadog Synthetics", "docs.datadoghq.com synthetics API tests"),
    (r"\(dart:io\)", "Dart HttpClient", "api.dart.dev HttpClient: default User-Agent"),
    (r"^(node|undici)$", "Node.js fetch", "nodejs.org fetch (undici): default User-Agent"),
)


@dataclass(frozen=True, slots=True)
class Agent:
    """An automated agent a User-Agent names, and which data named it (for the reasons)."""

    name: str
    source: str  # "crawler-user-agents", "ua-parser" or "mailping"
    tags: tuple[str, ...] = ()

    @property
    def code(self) -> str:
        return f"ua:{self.source}:{self.name}"


@dataclass(frozen=True, slots=True)
class Client:
    """The program and system a User-Agent names, as ua-parser reads it."""

    family: str = ""
    major: str = ""
    os: str = ""
    device: str = ""


class _AnyOf:
    """Does any of many patterns occur in a text? google-re2 automata (linear time: ~30 µs a
    User-Agent against 1,500 patterns, where Python's backtracking `re` takes ~800 µs), in
    chunks small enough for re2's default DFA memory (one automaton for all overflows it and
    re2 then logs and slows down); patterns re2 cannot take (lookarounds, backreferences) go to
    Python's `re`."""

    CHUNK = 400

    def __init__(self, patterns: list[str]) -> None:
        fast, slow = [], []
        try:
            import re2  # google-re2
        except ImportError:  # still correct without it, only slower
            re2, slow = None, list(patterns)
        self._fast: list = []
        if re2 is not None:
            options = re2.Options()
            options.never_capture = True
            options.log_errors = False
            for pattern in patterns:
                try:
                    re2.compile(pattern, options)
                except Exception:  # noqa: BLE001 - re2 refuses the pattern: Python's re takes it
                    slow.append(pattern)
                else:
                    fast.append(pattern)
            self._fast = [
                re2.compile("|".join(f"(?:{p})" for p in fast[i : i + self.CHUNK]), options)
                for i in range(0, len(fast), self.CHUNK)
            ]
        self._slow = re.compile("|".join(f"(?:{p})" for p in slow)) if slow else None

    def search(self, text: str) -> bool:
        return any(rx.search(text) for rx in self._fast) or bool(
            self._slow is not None and self._slow.search(text)
        )


@cache
def _crawler_data() -> tuple[list[dict], _AnyOf, list[re.Pattern[str]]]:
    """The crawler list without the mail proxies: one combined test of a UA against all of
    them, and the single patterns to name the match (only searched after a hit)."""
    from crawleruseragents import CRAWLER_USER_AGENTS_DATA

    rows = [
        row
        for row in CRAWLER_USER_AGENTS_DATA
        if not any(token in row["pattern"] for token in MAIL_PROXY_UAS)
    ]
    combined = _AnyOf([row["pattern"] for row in rows])
    return rows, combined, [re.compile(row["pattern"]) for row in rows]


@cache
def _supplement() -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(rx), name) for rx, name, _ in SUPPLEMENT]


def mail_proxy(ua: str) -> str:
    """The mailbox provider whose image proxy this User-Agent names, or ""."""
    for token, provider in MAIL_PROXY_UAS.items():
        if token in ua:
            return provider
    return ""


def _pattern_name(pattern: str) -> str:
    """A short readable name for a crawler pattern: `Googlebot\\/` -> `Googlebot`."""
    name = re.sub(r"\\(.)", r"\1", pattern)
    name = re.sub(r"\[(\w)\w\]", r"\1", name)  # [pP]ingdom -> pingdom
    name = re.sub(r"[\^$()|?*+\[\]{}/]", "", name).strip()
    return name.replace(" ", "-")[:60] or "pattern"


@lru_cache(maxsize=8192)
def automated_agent(ua: str) -> Agent | None:
    """The automated agent a User-Agent names, or None for a (possibly) human program.

    Mail proxies are not automated agents here: see `mail_proxy`."""
    if not ua.strip() or mail_proxy(ua):
        return None
    rows, combined, singles = _crawler_data()
    if combined.search(ua):
        for row, rx in zip(rows, singles, strict=True):
            if rx.search(ua):
                return Agent(
                    _pattern_name(row["pattern"]),
                    "crawler-user-agents",
                    tuple(row.get("tags", ())),
                )
    for rx, name in _supplement():
        if rx.search(ua):
            return Agent(name.replace(" ", "-"), "mailping")
    client = parse_client(ua)
    if client.device == "Spider":
        return Agent((client.family or "Spider").replace(" ", "-"), "ua-parser", ("spider",))
    return None


@lru_cache(maxsize=8192)
def parse_client(ua: str) -> Client:
    """ua-parser's reading of a User-Agent (cached; with the ua-parser-rs accelerator a parse
    costs ~15 µs, without it about a millisecond)."""
    if not ua.strip():
        return Client()
    from ua_parser import parse

    result = parse(ua)
    agent, system, device = result.user_agent, result.os, result.device
    return Client(
        family=agent.family if agent and agent.family != "Other" else "",
        major=(agent.major or "") if agent else "",
        os=system.family if system and system.family != "Other" else "",
        device=device.family if device and device.family != "Other" else "",
    )


WEBMAIL_BROWSERS = {
    "Chrome": "Chrome",
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Edge": "Edge",
    "Edge Mobile": "Edge",
    "Firefox": "Firefox",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Safari": "Safari",
    "Mobile Safari": "Safari",
    "Opera": "Opera",
    "Samsung Internet": "Samsung Internet",
    "IE": "Internet Explorer",
}


@lru_cache(maxsize=8192)
def client_of(ua: str) -> str:
    """The mail program a User-Agent names, in the report's words ("" when it names none)."""
    if not ua.strip():
        return ""
    if provider := mail_proxy(ua):
        return provider
    c = parse_client(ua)
    if c.family == "Thunderbird":
        return f"Thunderbird {c.major}".strip()
    if c.family.startswith("Outlook"):
        return "Outlook"
    if c.family == "Apple Mail" or (c.os == "Mac OS X" and c.family == "AppleMail"):
        return "Apple Mail (or Outlook for Mac)"
    if c.os == "iOS" and c.family == "Mobile Safari UI/WKWebView":
        return "iOS Mail"
    if c.family == "Chrome Mobile WebView":
        return "Android mail app"
    if c.family in WEBMAIL_BROWSERS:
        return f"{WEBMAIL_BROWSERS[c.family]} (webmail)"
    return c.family


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def sources() -> list[tuple[str, str, str, str]]:
    """(what, package and version, date of the data, licence) for the About page: the crawler
    list's date is its newest entry's, the uap-core rules' is their release month."""
    from crawleruseragents import CRAWLER_USER_AGENTS_DATA

    newest = max((r.get("addition_date", "") for r in CRAWLER_USER_AGENTS_DATA), default="")
    builtins = _version("ua-parser-builtins")
    month = f"{builtins[:4]}-{builtins[4:6]}" if builtins[:6].isdigit() else ""
    return [
        (
            "automated agents' User-Agents",
            f"crawler-user-agents {_version('crawler-user-agents')}",
            newest.replace("/", "-"),
            "MIT",
        ),
        (
            "client and OS families",
            f"ua-parser {_version('ua-parser')}, ua-parser-builtins {builtins}",
            month,
            "Apache-2.0 (uap-core rules)",
        ),
    ]
