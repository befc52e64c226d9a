"""User-Agents judged from maintained data: crawler-user-agents, ua-parser (uap-core rules)."""

from __future__ import annotations

import pytest
from crawleruseragents import CRAWLER_USER_AGENTS_DATA
from hypothesis import given
from hypothesis import strategies as st

from pixelserver.verdicts import agents

HUMAN_UAS = [
    "Mozilla/5.0",  # Apple Mail Privacy Protection: a machine, but not a bot by its UA
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)",
    "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/130.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
]
PROXY_UAS = {
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)": (
        "Gmail"
    ),
    "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html": "Yahoo Mail",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/118.0.5993.117 Safari/537.36 FastmailUA/1.0": "Fastmail",
}


SLACK = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
DISCORD = "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)"
UPTIME = "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)"


@pytest.mark.parametrize(
    ("ua", "code"),
    [
        (SLACK, "crawler-user-agents:Slackbot"),
        (DISCORD, "crawler-user-agents:Discordbot"),
        (UPTIME, "crawler-user-agents:UptimeRobot"),
        ("python-requests/2.32.3", "crawler-user-agents:python-requests"),
        ("Microsoft Office Existence Discovery", "mailping:Microsoft-Office-Existence-Discovery"),
        ("PostmanRuntime/7.36.0", "mailping:PostmanRuntime"),
        ("Java/17.0.2", "ua-parser:Java"),
        ("AcmeFetcher crawler 0.1", "ua-parser:AcmeFetcher-crawler"),
    ],
)
def test_automated_agents_are_named_with_their_source(ua: str, code: str) -> None:
    agent = agents.automated_agent(ua)
    assert agent is not None
    assert agent.code == f"ua:{code}"


@pytest.mark.parametrize("ua", HUMAN_UAS)
def test_mail_programs_and_browsers_are_not_automated(ua: str) -> None:
    assert agents.automated_agent(ua) is None


@pytest.mark.parametrize(("ua", "provider"), PROXY_UAS.items())
def test_mail_proxies_are_providers_not_bots(ua: str, provider: str) -> None:
    assert agents.mail_proxy(ua) == provider
    assert agents.automated_agent(ua) is None
    assert agents.client_of(ua) == provider


def test_every_published_crawler_example_is_recognised() -> None:
    """Each example UA the maintained list publishes (mail proxies aside) is automated."""
    missed = [
        ua
        for row in CRAWLER_USER_AGENTS_DATA
        for ua in row.get("instances", [])
        if not agents.mail_proxy(ua) and agents.automated_agent(ua) is None
    ]
    assert not missed, missed[:5]


@given(st.text(max_size=200))
def test_any_text_is_answered(ua: str) -> None:
    agent = agents.automated_agent(ua)
    assert agent is None or agent.code.startswith("ua:")
    assert isinstance(agents.client_of(ua), str)


@given(st.sampled_from(HUMAN_UAS), st.sampled_from(["", " (KHTML)", " Mobile"]))
def test_human_programs_stay_human_with_small_changes(ua: str, tail: str) -> None:
    assert agents.automated_agent(ua + tail) is None


@pytest.mark.parametrize(
    ("ua", "client"),
    [
        (HUMAN_UAS[1], "Thunderbird 128"),
        (HUMAN_UAS[2], "Apple Mail (or Outlook for Mac)"),
        (HUMAN_UAS[3], "iOS Mail"),
        (HUMAN_UAS[4], "Outlook"),
        (HUMAN_UAS[6], "Android mail app"),
        (HUMAN_UAS[7], "Chrome (webmail)"),
        (HUMAN_UAS[8], "Firefox (webmail)"),
        ("", ""),
    ],
)
def test_clients_come_from_ua_parser(ua: str, client: str) -> None:
    assert agents.client_of(ua) == client


def test_sources_name_the_packages() -> None:
    names = " ".join(s[1] for s in agents.sources())
    assert all(s[2][:2] == "20" for s in agents.sources())
    assert "crawler-user-agents 1." in names
    assert "ua-parser-builtins 2" in names


def test_patterns_re2_refuses_still_match() -> None:
    """A lookahead (which re2 cannot take) is searched with Python's re; the rest with re2."""
    both = agents._AnyOf([r"Foo(?=Bot)", r"Plain\/"])
    assert both.search("xx FooBot/1") and both.search("Plain/2")
    assert not both.search("Foo Bar") and not both.search("Plain 2")


def test_new_user_agents_are_judged_quickly() -> None:
    """Thousands of distinct browser versions a day: each new UA costs microseconds, not ms."""
    import time

    uas = [
        f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/131.0.{n}.{n % 97} Safari/537.36 Test/{n}"
        for n in range(500)
    ]
    agents.automated_agent(uas[0])
    start = time.perf_counter()
    for ua in uas[1:]:
        agents.automated_agent(ua)
        agents.client_of(ua)
    assert (time.perf_counter() - start) / (len(uas) - 1) < 0.0005  # 500 µs: a tenth of before


def test_judging_many_user_agents_writes_nothing_to_stderr() -> None:
    """re2 logs to stderr when an automaton outgrows its memory; the chunks must not."""
    import subprocess
    import sys

    code = (
        "from crawleruseragents import CRAWLER_USER_AGENTS_DATA as D\n"
        "from pixelserver.verdicts import agents\n"
        "uas = [u for r in D for u in r.get('instances', [])]\n"
        "uas += [f'Mozilla/5.0 (X11; Linux) Chrome/{n}.0 Safari/537.36' for n in range(3000)]\n"
        "print(sum(agents.automated_agent(u) is not None for u in uas))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and int(proc.stdout) > 2000
    assert proc.stderr == ""
