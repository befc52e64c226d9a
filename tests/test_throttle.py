"""Login throttling: one implementation for the pages and the relay, counted before the slow
check, per username and per network, shared by every process on the store."""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import USERS, _site, capture_upstream, free_port, start_pixelserver
from tests.test_sessions import Visitor

PER_NETWORK = 5  # relay.login_failures_per_network here (default 20: offices behind one NAT)


@pytest.fixture
async def site(tmp_path: Path, db_url: str, store):
    """conftest's site, with a per-network limit these tests reach quickly."""
    async with capture_upstream(logins={"relay@example.com": "x"}) as upstream:
        limits = {"login_failures_per_network": PER_NETWORK}
        async for value in _site(tmp_path, db_url, store, upstream, limits):
            yield value


def proxied(visitor: Visitor, ip: str) -> Visitor:
    """The same visitor, arriving through the trusted proxy on behalf of `ip`."""
    original = visitor.fetch

    async def fetch(path: str, **kw: object):
        headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
        headers["X-Forwarded-For"] = ip
        return await original(path, headers=headers, network_interface="127.0.0.2", **kw)

    visitor.fetch = fetch  # type: ignore[method-assign]
    return visitor


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_username_is_throttled_whatever_network_the_guesses_come_from(site) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    codes = []
    for i in range(5):
        v = proxied(Visitor(base), f"198.51.{100 + i}.7")
        codes.append((await v.login("ana@example.org", f"guess {i}")).code)
    right = proxied(Visitor(base), "203.0.113.50")
    codes.append((await right.login("ana@example.org", USERS["ana@example.org"])).code)
    assert codes == [401] * 5 + [429]
    # Bob is not locked out by guesses at Ana.
    bob = proxied(Visitor(base), "203.0.113.51")
    assert (await bob.login("bob@example.org", USERS["bob@example.org"])).code == 302


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_network_is_throttled_whatever_usernames_it_tries(site) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    codes = []
    for i in range(6):  # two addresses of one /24: one network
        v = proxied(Visitor(base), f"192.0.2.{10 + i % 2}")
        codes.append((await v.login(f"nobody{i}@example.org", "guess")).code)
    assert codes == [401] * 5 + [429]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_attempts_are_counted_before_the_slow_check(site) -> None:
    """Ten guesses sent at once: only the first five may reach the password check."""
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    visitors = [proxied(Visitor(base), f"198.51.100.{i}") for i in range(10)]
    for v in visitors:
        await v.xsrf()
    codes = await asyncio.gather(*(v.login("ana@example.org", "guess") for v in visitors))
    assert sorted(c.code for c in codes) == [401] * 5 + [429] * 5


async def test_the_count_is_shared_by_every_process_on_the_store(
    site, store, tmp_path: Path
) -> None:
    cfg, _, _ = site
    port = free_port()
    second = replace(
        cfg,
        data_dir=tmp_path / "second",
        pixelserver=replace(
            cfg.pixelserver, listen=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}"
        ),
    )
    other = await start_pixelserver(second, store)
    try:
        codes = []
        for i in range(6):
            base = (cfg if i % 2 else second).pixelserver.public_url
            codes.append((await Visitor(base).login("ana@example.org", "guess")).code)
        assert codes == [401] * 5 + [429]
    finally:
        await other.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_relay_and_the_pages_share_one_throttle(site) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    for i in range(5):
        v = proxied(Visitor(base), f"198.51.{100 + i}.7")
        assert (await v.login("ana@example.org", "guess")).code == 401
    port = int(cfg.relay.listen.rsplit(":", 1)[1])

    def smtp_login() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.login("ana@example.org", USERS["ana@example.org"])

    with pytest.raises(smtplib.SMTPAuthenticationError):
        await asyncio.to_thread(smtp_login)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_relay_counts_its_clients_network_in_the_shared_throttle(site) -> None:
    """Guesses at many usernames from one network on the pages hold back that network's
    SMTP logins too (the relay's own per-connection count would not see them)."""
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    for i in range(5):  # from 127.0.0.1, as the SMTP client below
        assert (await Visitor(base).login(f"nobody{i}@example.org", "guess")).code == 401
    port = int(cfg.relay.listen.rsplit(":", 1)[1])

    def smtp_login() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.login("bob@example.org", USERS["bob@example.org"])

    with pytest.raises(smtplib.SMTPAuthenticationError):
        await asyncio.to_thread(smtp_login)
