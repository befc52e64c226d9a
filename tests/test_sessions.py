"""Web logins that hold up: `next=` stays on this site, and sessions end on the server (logout,
`mailping user remove`, `mailping user logout`, idle and absolute lifetimes)."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import select, update
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from pixelserver.store.accounts import api_tokens, create_api_token
from pixelserver.store.schema import WebSession
from pixelserver.store.websessions import start_web_session
from relay import cli


@dataclass
class Visitor:
    """A cookie jar over real HTTP, following no redirects (so each Location can be read)."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)

    async def fetch(self, path: str, **kw: object) -> HTTPResponse:
        headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        resp = await AsyncHTTPClient().fetch(
            HTTPRequest(
                self.base + path,
                headers=headers,
                follow_redirects=False,
                request_timeout=30,
                **kw,  # type: ignore[arg-type]
            ),
            raise_error=False,
        )
        for value in resp.headers.get_list("Set-Cookie"):
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return resp

    async def xsrf(self) -> str:
        page = await self.fetch("/login")
        return html.unescape(re.search(r'name="_xsrf" value="([^"]+)"', page.body.decode())[1])

    async def login(self, user: str, password: str, next_: str = "/") -> HTTPResponse:
        token = await self.xsrf()
        body = f"_xsrf={quote(token)}&username={quote(user)}&password={quote(password)}"
        return await self.fetch(
            "/login", method="POST", body=body + f"&next={quote(next_, safe='')}"
        )

    async def logout(self) -> HTTPResponse:
        token = self.cookies.get("_xsrf", "")
        return await self.fetch("/logout", method="POST", body=f"_xsrf={quote(token)}")

    async def sees_report(self) -> bool:
        resp = await self.fetch("/")
        if resp.code == 302:
            assert resp.headers["Location"].startswith("/login?next=")
            return False
        assert resp.code == 200, resp.code
        return True


HOSTILE_NEXT = [
    "//evil.example",
    "//evil.example/path",
    "/\\evil.example",
    "\\\\evil.example",
    "/\\/evil.example",
    "/%5Cevil.example",
    "/%5cevil.example",
    "/%2F%2Fevil.example",
    "/%2fevil.example",
    "/%255Cevil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r\n/evil.example",
    "\t//evil.example",
    " //evil.example",
    "/\x00/evil.example",
    "https://evil.example/",
    "http:evil.example",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "evil.example",
    "/\u3002evil.example",
    "/%E3%80%82evil.example",
    "///evil.example",
]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_login_next_accepts_only_same_site_paths(site) -> None:
    cfg, ids, _ = site
    base = cfg.pixelserver.public_url
    for target in HOSTILE_NEXT:
        visitor = Visitor(base)
        page = await visitor.fetch(f"/login?next={quote(target, safe='')}")
        assert 'name="next" value="/"' in page.body.decode(), target
        resp = await visitor.login("ana@example.org", "ana-password-1", target)
        assert resp.code == 302, (target, resp.code)
        assert resp.headers["Location"] == "/", target
    for target in ("/", f"/messages/{ids['<img src=x onerror=alert(1)> Offer']}?x=1", "/settings"):
        visitor = Visitor(base)
        resp = await visitor.login("ana@example.org", "ana-password-1", target)
        assert resp.headers["Location"] == target
    # What the login redirect itself makes (a path with an encoded address) goes through.
    visitor = Visitor(base)
    first = await visitor.fetch("/recipients/carol%40gmail.com")
    assert first.headers["Location"] == "/login?next=%2Frecipients%2Fcarol%2540gmail.com"
    resp = await visitor.login("ana@example.org", "ana-password-1", "/recipients/carol%40gmail.com")
    assert resp.headers["Location"] == "/recipients/carol%40gmail.com"


async def test_logout_ends_the_session_on_the_server(site) -> None:
    cfg, _, _ = site
    visitor = Visitor(cfg.pixelserver.public_url)
    await visitor.login("ana@example.org", "ana-password-1")
    assert await visitor.sees_report()
    stolen = dict(visitor.cookies)
    resp = await visitor.logout()
    assert resp.code == 302
    assert not await visitor.sees_report()
    # Whoever kept a copy of the cookie (a shared computer, a stolen cookie) is out too.
    replay = Visitor(cfg.pixelserver.public_url, stolen)
    assert not await replay.sees_report()


def _config_file(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "admin.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n[database]\nurl = "{db_url}"\n')
    return str(path)


async def test_removing_a_user_ends_their_sessions_and_revokes_their_tokens(
    site, store, tmp_path: Path, db_url: str
) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    ana, bob = Visitor(base), Visitor(base)
    await ana.login("ana@example.org", "ana-password-1")
    await bob.login("bob@example.org", "bob-password-2")
    async with store.begin() as session:
        token = await create_api_token(session, "ana@example.org", "script")
    api = await AsyncHTTPClient().fetch(
        HTTPRequest(base + "/api/v1/messages", headers={"Authorization": f"Bearer {token}"}),
        raise_error=False,
    )
    assert api.code == 200
    assert await ana.sees_report()

    code = await asyncio.to_thread(
        cli.main, ["--config", _config_file(tmp_path, db_url), "user", "remove", "ana@example.org"]
    )
    assert code == 0
    assert not await ana.sees_report()
    api = await AsyncHTTPClient().fetch(
        HTTPRequest(base + "/api/v1/messages", headers={"Authorization": f"Bearer {token}"}),
        raise_error=False,
    )
    assert api.code == 401
    assert await bob.sees_report()  # nobody else is touched
    # And the password no longer logs in.
    again = Visitor(base)
    assert (await again.login("ana@example.org", "ana-password-1")).code == 401


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_administrator_ends_every_session_of_a_user(
    site, tmp_path: Path, db_url: str
) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    laptop, phone, bob = Visitor(base), Visitor(base), Visitor(base)
    await laptop.login("ana@example.org", "ana-password-1")
    await phone.login("ana@example.org", "ana-password-1")
    await bob.login("bob@example.org", "bob-password-2")
    assert await laptop.sees_report() and await phone.sees_report()
    code = await asyncio.to_thread(
        cli.main, ["--config", _config_file(tmp_path, db_url), "user", "logout", "ANA@example.org"]
    )
    assert code == 0
    assert not await laptop.sees_report()
    assert not await phone.sees_report()
    assert await bob.sees_report()
    # Ana can log in again: her account is untouched, only her sessions ended.
    fresh = Visitor(base)
    assert (await fresh.login("ana@example.org", "ana-password-1")).code == 302
    assert await fresh.sees_report()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sessions_end_after_idle_and_absolute_lifetimes(site, store) -> None:
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    idle, old, fresh = Visitor(base), Visitor(base), Visitor(base)
    for v in (idle, old, fresh):
        await v.login("ana@example.org", "ana-password-1")
    now = dt.datetime.now(dt.UTC)
    rows = WebSession.__table__
    async with store.begin() as session:
        ids = [
            r[0]
            for r in await session.execute(
                select(rows.c.id).order_by(rows.c.id)  # in login order
            )
        ]
        # Idle past the limit (30 minutes by default).
        await session.execute(
            update(rows)
            .where(rows.c.id == ids[0])
            .values(last_seen_at=now - dt.timedelta(minutes=31))
        )
        # Used a minute ago, but started longer ago than the absolute limit (12 hours).
        await session.execute(
            update(rows)
            .where(rows.c.id == ids[1])
            .values(
                created_at=now - dt.timedelta(hours=12, minutes=1),
                last_seen_at=now - dt.timedelta(minutes=1),
            )
        )
    assert not await idle.sees_report()
    assert not await old.sees_report()
    assert await fresh.sees_report()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_removing_a_user_without_a_local_login_still_ends_their_access(
    store, tmp_path: Path, db_url: str
) -> None:
    """With relay.auth = "upstream" users have no local login, but they have sessions and
    tokens, which `mailping user remove` must still end."""
    async with store.begin() as session:
        await create_api_token(session, "zoe@example.org", "script")
        await start_web_session(session, "zoe@example.org")
    code = await asyncio.to_thread(
        cli.main, ["--config", _config_file(tmp_path, db_url), "user", "remove", "zoe@example.org"]
    )
    assert code == 0
    async with store() as session:
        assert await api_tokens(session, "zoe@example.org") == []
        left = (await session.execute(select(WebSession))).scalars().all()
    assert left == []
    code = await asyncio.to_thread(
        cli.main, ["--config", _config_file(tmp_path, db_url), "user", "remove", "nobody@x.org"]
    )
    assert code == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_user_ends_their_other_sessions_from_settings(site) -> None:
    """ASVS 3.3.4: a user can see their active sessions and end the others (a laptop left
    logged in somewhere), keeping the one they are using."""
    cfg, _, _ = site
    base = cfg.pixelserver.public_url
    here, elsewhere, bob = Visitor(base), Visitor(base), Visitor(base)
    await here.login("ana@example.org", "ana-password-1")
    await elsewhere.login("ana@example.org", "ana-password-1")
    await bob.login("bob@example.org", "bob-password-2")
    page = await here.fetch("/settings")
    assert "2 active sessions" in page.body.decode()
    token = await here.xsrf()
    resp = await here.fetch(
        "/settings", method="POST", body=f"_xsrf={quote(token)}&action=logout_others"
    )
    assert resp.code == 200
    assert "1 active session" in resp.body.decode()
    assert await here.sees_report()
    assert not await elsewhere.sees_report()
    assert await bob.sees_report()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_new_password_ends_the_users_sessions(site, tmp_path: Path, db_url: str) -> None:
    import subprocess
    import sys

    cfg, _, _ = site
    ana = Visitor(cfg.pixelserver.public_url)
    await ana.login("ana@example.org", "ana-password-1")
    assert await ana.sees_report()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay.cli", "--config", _config_file(tmp_path, db_url)]
        + ["user", "add", "ana@example.org", "--password-stdin"],
        input="a-brand-new-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ended 1 web session" in proc.stdout
    assert not await ana.sees_report()
