"""The daily digest: when it is due (injected clock, DST), exactly once across racing processes
on SQLite and PostgreSQL, retried and reported when the upstream fails, what it says for each
state, that it carries no pixel or token, and how it looks in Chromium at phone and desktop
width."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.policy
import logging
import re
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from pixelserver.config import DigestConfig
from pixelserver.store import digests
from pixelserver.store.accounts import get_or_create_user
from pixelserver.store.hitrecords import add_hits
from pixelserver.store.schema import DigestRun, Message, User, make_engine, make_sessionmaker
from pixelserver.store.states import refresh_states
from relay import service, tracking
from relay.digest import compose, schedule
from relay.digest.query import collect
from tests.conftest import SHOTS, capture_upstream, free_port, make_config
from tests.test_store import hit

PARIS = ZoneInfo("Europe/Paris")
UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# --- when: pure ---------------------------------------------------------------------------


def test_due_at_the_local_hour_across_both_dst_changes() -> None:
    # Paris is UTC+1 in winter, UTC+2 in summer; clocks go forward on 29 March 2026 and back
    # on 25 October 2026.
    assert schedule.send_moment(dt.date(2026, 3, 28), 8, PARIS) == at(2026, 3, 28, 7)
    assert schedule.send_moment(dt.date(2026, 3, 29), 8, PARIS) == at(2026, 3, 29, 6)
    assert schedule.send_moment(dt.date(2026, 10, 25), 8, PARIS) == at(2026, 10, 25, 7)
    assert schedule.due_day(at(2026, 3, 29, 5, 59), 8, PARIS) == dt.date(2026, 3, 28)
    assert schedule.due_day(at(2026, 3, 29, 6, 0), 8, PARIS) == dt.date(2026, 3, 29)
    # 02:00 does not exist on 29 March: the digest comes at the first moment after (03:00).
    assert schedule.send_moment(dt.date(2026, 3, 29), 2, PARIS) == at(2026, 3, 29, 1)
    # 02:00 happens twice on 25 October: the first time (CEST) counts.
    assert schedule.send_moment(dt.date(2026, 10, 25), 2, PARIS) == at(2026, 10, 25, 0)
    # A day of 23 and one of 25 hours still get exactly one digest each.
    for start in (at(2026, 3, 27, 12), at(2026, 10, 23, 12)):
        days = {
            schedule.due_day(start + dt.timedelta(minutes=m), 8, PARIS) for m in range(0, 4320, 1)
        }
        assert len(days) == 4  # the day before, then three mornings


def test_a_new_user_waits_for_the_next_morning_and_downtime_sends_only_the_latest() -> None:
    joined = at(2026, 5, 12, 9, 30)  # after 08:00 UTC
    assert schedule.due_day(at(2026, 5, 12, 10), 8, UTC, not_before=joined) is None
    assert schedule.due_day(at(2026, 5, 13, 8), 8, UTC, not_before=joined) == dt.date(2026, 5, 13)
    # Down from the 13th to the 16th at noon: only the 16th is due.
    assert schedule.due_day(at(2026, 5, 16, 12), 8, UTC) == dt.date(2026, 5, 16)
    start, end = schedule.period(at(2026, 5, 16, 12), dt.date(2026, 5, 16), 8, UTC, None)
    assert (start, end) == (at(2026, 5, 15, 8), at(2026, 5, 16, 12))
    previous = at(2026, 5, 13, 8, 0, 30)
    assert (
        schedule.period(at(2026, 5, 16, 12), dt.date(2026, 5, 16), 8, UTC, previous)[0] == previous
    )


# --- a seeded store ---------------------------------------------------------------------------

ME = "me@example.com"


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


JOINED = at(2026, 1, 1)


async def new_user(store, address: str = ME, joined: dt.datetime = JOINED, **prefs):
    async with store.begin() as s:
        user = await get_or_create_user(s, address)
        await s.execute(update(User).where(User.id == user.id).values(created_at=joined, **prefs))


async def sent(store, subject: str, recipients: list[str], when: dt.datetime, user: str = ME):
    """A message recorded as the relay records one, then dated `when`."""
    recorded = await tracking.record_message(
        store,
        user=user,
        envelope_from=user,
        recipients=recipients,
        subject=subject,
        message_id_header="<x@example.com>",
        size=100,
        untracked_reason=None,
    )
    async with store.begin() as s:
        await s.execute(update(Message).where(Message.id == recorded.id).values(accepted_at=when))
    await tracking.record_outcomes(
        store, [(d.id, "accepted", "250 ok") for d in recorded.deliveries]
    )
    return recorded


def runner_for(tmp_path, db_url, store, port: int | None, clock: Clock, **digest_kw):
    cfg = make_config(tmp_path, db_url, port)
    cfg = dataclasses.replace(
        cfg, digest=DigestConfig(from_address="digest@relay.test", **digest_kw)
    )
    return service.make_digest_runner(cfg, store, clock=clock)


def bodies(raw: bytes) -> tuple[email.message.EmailMessage, str, str]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = msg.get_body(("html",)).get_content().replace("\r\n", "\n")
    return msg, text, html


# --- when: the runner with an injected clock ---------------------------------------------------


async def test_one_digest_a_day_at_the_users_hour_across_dst(tmp_path, db_url, store) -> None:
    # Joined after the 27th's hour: the first digest is the 28th's.
    await new_user(store, joined=at(2026, 3, 27, 12), digest_timezone="Europe/Paris")
    await sent(store, "Before the change", ["ana@example.org"], at(2026, 3, 28, 5))
    clock = Clock(at(2026, 3, 28, 6, 59))
    async with capture_upstream() as up:
        runner = runner_for(tmp_path, db_url, store, up.port, clock)
        assert await runner.tick() == []  # 07:59 in Paris
        clock.now = at(2026, 3, 28, 7, 0)
        assert [s.status for s in await runner.tick()] == ["sent"]
        assert await runner.tick() == []  # never twice
        await sent(store, "After the change", ["bob@example.org"], at(2026, 3, 28, 20))
        clock.now = at(2026, 3, 29, 5, 59)  # 07:59 CEST
        assert await runner.tick() == []
        clock.now = at(2026, 3, 29, 6, 0)  # 08:00 CEST: an hour earlier in UTC
        assert [(s.day, s.status) for s in await runner.tick()] == [(dt.date(2026, 3, 29), "sent")]
    assert [m.rcpt_tos for m in up.messages] == [[ME], [ME]]
    assert up.messages[0].mail_from == "digest@relay.test"
    first, second = (bodies(m.data)[1] for m in up.messages)
    assert "Before the change" in first and "After the change" not in first
    assert "After the change" in second and "Before the change" not in second  # since the last


async def test_two_schedulers_racing_on_one_store_send_one_digest(tmp_path, db_url, store) -> None:
    """Like two MailPing processes: separate engines and connection pools on one database."""
    for i in range(5):
        await new_user(store, f"user{i}@example.com")
        await sent(
            store, f"Mail {i}", ["ana@example.org"], at(2026, 6, 1, 7), user=f"user{i}@example.com"
        )
    clock = Clock(at(2026, 6, 1, 8, 0, 5))
    engines = [make_engine(db_url) for _ in range(2)]
    try:
        async with capture_upstream(data_delay=0.05) as up:
            runners = [
                runner_for(tmp_path, db_url, make_sessionmaker(e), up.port, clock) for e in engines
            ]
            for tick in range(3):
                results = await asyncio.gather(*(r.tick() for r in runners * 2))
                clock.now += dt.timedelta(seconds=20)
                if tick == 0:
                    assert sorted(s.user for batch in results for s in batch) == sorted(
                        f"user{i}@example.com" for i in range(5)
                    )
    finally:
        for e in engines:
            await e.dispose()
    assert sorted(m.rcpt_tos[0] for m in up.messages) == sorted(
        f"user{i}@example.com" for i in range(5)
    )
    async with store() as s:
        runs = (await s.execute(select(DigestRun))).scalars().all()
    assert len(runs) == 5 and {r.status for r in runs} == {"sent"}


async def test_a_failing_upstream_is_retried_with_backoff_then_reported(
    tmp_path, db_url, store, caplog
) -> None:
    await new_user(store)
    await sent(store, "Numbers", ["ana@example.org"], at(2026, 6, 1, 7))
    clock = Clock(at(2026, 6, 1, 8, 0))
    caplog.set_level(logging.WARNING, "mailping.digest")
    async with capture_upstream(refuse={ME: "451 4.3.0 Mailbox busy, try later"}) as up:
        runner = runner_for(tmp_path, db_url, store, up.port, clock)
        runner.retry_delays = (60, 300)
        (first,) = await runner.tick()
        assert (first.status, first.error) == ("retry", "451 4.3.0 Mailbox busy, try later")
        clock.now += dt.timedelta(seconds=59)
        assert await runner.tick() == []  # not before its backoff
        clock.now += dt.timedelta(seconds=1)
        assert [s.status for s in await runner.tick()] == ["retry"]
        clock.now += dt.timedelta(seconds=300)
        assert [s.status for s in await runner.tick()] == ["failed"]
        clock.now += dt.timedelta(hours=3)
        assert await runner.tick() == []  # given up for that day
    assert "retrying in 60 s" in caplog.text
    assert "not sent after 3 attempts: 451 4.3.0 Mailbox busy" in caplog.text
    async with store() as s:
        run = await digests.latest(s, ME)
    assert (run.status, run.attempts, run.last_error) == (
        "failed",
        3,
        "451 4.3.0 Mailbox busy, try later",
    )
    # The next morning, with the server back, the digest covers what the failed one would have.
    async with capture_upstream() as up:
        runner = runner_for(tmp_path, db_url, store, up.port, clock)
        clock.now = at(2026, 6, 2, 8, 0)
        assert [s.status for s in await runner.tick()] == ["sent"]
    assert "Numbers" in bodies(up.messages[0].data)[1]


async def test_an_unreachable_upstream_and_downtime(tmp_path, db_url, store) -> None:
    await new_user(store)
    await sent(store, "Numbers", ["ana@example.org"], at(2026, 6, 1, 7))
    clock = Clock(at(2026, 6, 1, 8, 0))
    runner = runner_for(tmp_path, db_url, store, free_port(), clock)
    (result,) = await runner.tick()
    assert result.status == "retry" and "could not reach the upstream server" in result.error
    # Down for three days: one digest, for the latest morning, covering everything since.
    clock.now = at(2026, 6, 4, 11, 0)
    async with capture_upstream() as up:
        runner = runner_for(tmp_path, db_url, store, up.port, clock)
        results = await runner.tick()
    assert [(s.day, s.status) for s in results] == [(dt.date(2026, 6, 4), "sent")]
    assert "Numbers" in bodies(up.messages[0].data)[1]
    async with store() as s:
        runs = {r.day: r for r in (await s.execute(select(DigestRun))).scalars()}
    assert runs[dt.date(2026, 6, 1)].status == "failed"
    assert runs[dt.date(2026, 6, 1)].last_error.endswith("(given up: the next digest was due)")


async def test_quiet_days_are_skipped_unless_asked_for(tmp_path, db_url, store) -> None:
    await new_user(store, "quiet@example.com")
    await new_user(store, "keen@example.com", digest_empty=True)
    await new_user(store, "off@example.com", digest_enabled=False)
    await sent(store, "Old", ["x@example.org"], at(2026, 5, 1, 7), user="off@example.com")
    clock = Clock(at(2026, 6, 1, 8, 0))
    async with capture_upstream() as up:
        runner = runner_for(tmp_path, db_url, store, up.port, clock)
        results = {s.user: s.status for s in await runner.tick()}
    assert results == {"quiet@example.com": "skipped", "keen@example.com": "sent"}
    assert [m.rcpt_tos for m in up.messages] == [["keen@example.com"]]
    assert "You sent nothing through MailPing in this period." in bodies(up.messages[0].data)[1]


# --- what: content ----------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script> Réunion à Genève — Ελλάδα"
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.0"


async def seeded(store) -> dict[str, int]:
    """One message with a recipient in every state, an older one read today, a manual link."""
    await new_user(store, digest_timezone="Europe/Paris")
    recipients = [
        "reader@example.org",
        "apple@icloud.com",
        "scanned@corp.example",
        "waiting@example.org",
        "lawyer@firm.example",
        "gone@example.org",
    ]
    async with store.begin() as s:
        user = await get_or_create_user(s, ME)
        user.exclusions = ["firm.example"]
    rec = await sent(store, HOSTILE, recipients, at(2026, 6, 1, 9))
    ids = {d.recipient: d.id for d in rec.deliveries}
    tokens = {d.recipient: d.token for d in rec.deliveries}
    await tracking.record_outcomes(
        store, [(ids["gone@example.org"], "rejected", "550 5.1.1 No such user")]
    )
    old = await sent(store, "Quote from May", ["late@example.org"], at(2026, 5, 12, 9))
    hits = [
        dataclasses.replace(
            hit("h1", tokens["reader@example.org"], 5),
            client="Thunderbird 128",
            city="Lyon",
            country="FR",
            at=at(2026, 6, 1, 12, 5),
        ),
        dataclasses.replace(
            hit("h2", tokens["reader@example.org"], 9),
            client="Thunderbird 128",
            city="Lyon",
            country="FR",
            at=at(2026, 6, 1, 15),
        ),
        dataclasses.replace(
            hit("h3", tokens["apple@icloud.com"], 1, "privacy_prefetch"), at=at(2026, 6, 1, 9, 0, 3)
        ),
        dataclasses.replace(
            hit("h4", tokens["scanned@corp.example"], 1, "scanner"), at=at(2026, 6, 1, 9, 0, 2)
        ),
        dataclasses.replace(
            hit("h5", old.deliveries[0].token, 1), client="Apple Mail", at=at(2026, 6, 1, 18)
        ),
    ]
    async with store.begin() as s:
        await add_hits(s, hits)
        await refresh_states(s, [*ids.values(), old.deliveries[0].id])
    return tokens | {"late@example.org": old.deliveries[0].token}


async def test_each_state_in_the_web_pages_words_and_no_pixel_or_token(
    tmp_path, db_url, store
) -> None:
    tokens = await seeded(store)
    clock = Clock(at(2026, 6, 2, 6, 0))  # 08:00 in Paris
    async with capture_upstream() as up:
        runner = runner_for(tmp_path, db_url, store, up.port, clock)
        assert [s.status for s in await runner.tick()] == ["sent"]
    raw = up.messages[0].data
    msg, text, html = bodies(raw)
    assert msg["Subject"] == "MailPing: 1 of 6 recipients read your mail — 2 Jun 2026"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert (
        "You sent 1 message to 6 recipients: 1 read it, 1 has not opened it yet, "
        "1 Apple prefetch only, 1 scanner only, 1 not tracked, 1 not delivered." in text
    )
    lines = {
        "reader@example.org": "Read 2× · Thunderbird 128 · Lyon, FR, first open 1 Jun 14:05",
        "apple@icloud.com": "Apple privacy prefetch — reading can't be seen",
        "scanned@corp.example": "Scanner only",
        "waiting@example.org": "Not opened yet",
        "lawyer@firm.example": "Not tracked: excluded",
        "gone@example.org": "Not delivered",
    }
    for address, words in lines.items():
        assert f"  - {address}: {words}\n" in text, address
        assert words.split(", first open")[0].replace("'", "&#x27;") in html, address
    assert (
        "* your mail of 12 May 2026 to late@example.org (Quote from May): Read · Apple Mail" in text
    )
    assert "* gone@example.org (" in text and ": 550 5.1.1 No such user" in text
    assert "1 message of the last 30 days has no human open yet." not in text  # it was read
    # Escaped and encoded: the hostile subject is text in HTML, intact in both parts, and the
    # mail itself is 7-bit with short lines (any upstream takes it, 8BITMIME or not).
    assert max(raw) < 128 and max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert HOSTILE in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Réunion à Genève — Ελλάδα" in html
    assert "<script" not in html
    # Never tracked: no image at all, no pixel path, no token of any copy.
    assert "<img" not in html.lower() and "/p/" not in html and "/p/" not in text
    for token in tokens.values():
        assert token.encode() not in raw
    assert "http://127.0.0.1" in html and "/settings" in html  # report and settings links


async def test_counts_of_unopened_mail_and_the_cap_on_messages(tmp_path, db_url, store) -> None:
    await new_user(store)
    for i in range(3):
        await sent(store, f"Unread {i}", ["x@example.org"], at(2026, 5, 20 + i, 9))
    async with store() as s:
        data = await collect(s, ME, at(2026, 5, 22, 0), at(2026, 5, 23, 0))
    assert [m.subject for m in data.sent] == ["Unread 2"] and data.unopened == 3
    mail = compose.compose(data, ZoneInfo("UTC"), "https://mp.example", at(2026, 5, 23, 0))
    assert "3 messages of the last 30 days have no human open yet." in mail.text


# --- how it looks: Chromium ---------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_digest_renders_at_phone_and_desktop_width(
    tmp_path, db_url, store, browser
) -> None:
    await seeded(store)
    clock = Clock(at(2026, 6, 2, 6, 0))
    async with capture_upstream() as up:
        runner = runner_for(tmp_path, db_url, store, up.port, clock)
        await runner.tick()
    _, _, html = bodies(up.messages[0].data)
    requests: list[str] = []
    for name, width in (("phone", 390), ("desktop", 1000)):
        page = await browser.new_page(viewport={"width": width, "height": 800})
        page.on("request", lambda r: requests.append(r.url))
        await page.set_content(html)
        assert await page.evaluate("document.documentElement.scrollWidth") <= width, name
        assert "Read 2× · Thunderbird 128 · Lyon, FR" in await page.inner_text("body")
        await page.screenshot(path=str(SHOTS / f"digest-{name}.png"), full_page=True)
        assert requests == []  # nothing to load: no image, no font, no pixel
        await page.close()


# --- commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_preview_and_send_now_commands(tmp_path: Path, db_url, store) -> None:
    await new_user(store)
    now = dt.datetime.now(UTC)
    await sent(store, "Fresh quote", ["ana@example.org"], now - dt.timedelta(hours=1))
    config = tmp_path / "mailping.toml"
    async with capture_upstream() as up:
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\n[database]\nurl = "{db_url}"\n'
            f'[upstream]\nhost = "127.0.0.1"\nport = {up.port}\ntls = "none"\n'
            '[relay]\nauth = "none"\n[digest]\nfrom_address = "digest@relay.test"\n'
        )

        def mailping(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "relay.cli", "--config", str(config), *args],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                timeout=60,
            )

        shown = await asyncio.to_thread(mailping, "digest", "--user", ME, "--preview")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith("Subject: MailPing: 0 of 1 recipient read your mail")
        assert "* Fresh quote" in shown.stdout and "ana@example.org: Not opened yet" in shown.stdout
        assert "Fresh quote" in (tmp_path / "digest-preview.html").read_text()
        assert up.messages == []
        sent_now = await asyncio.to_thread(mailping, "digest", "--user", ME, "--send-now")
        assert sent_now.returncode == 0, sent_now.stderr
        assert re.search(r"digest for me@example.com sent through", sent_now.stdout)
        unknown = await asyncio.to_thread(
            mailping, "digest", "--user", "who@x.example", "--preview"
        )
    assert [m.rcpt_tos for m in up.messages] == [[ME]]
    assert unknown.returncode == 2
    assert (
        unknown.stderr.strip().splitlines()[-1]
        == "mailping: no user 'who@x.example': nobody with that address sent mail"
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_failed_digest_is_reported_on_the_settings_page(site, tmp_path, db_url, store):
    from tests.test_links_settings import WebSession

    cfg, _, _ = site
    # The first 08:00 after the site's mail was sent: its digest covers the day before it.
    now = dt.datetime.now(UTC)
    eight = dt.datetime.combine(now.date(), dt.time(8), UTC)
    clock = Clock(eight if now < eight else eight + dt.timedelta(days=1))
    async with capture_upstream(refuse={"ana@example.org": "451 4.7.1 Greylisted"}) as up:
        runner = runner_for(tmp_path, db_url, store, up.port, clock)
        results = {s.user: s.status for s in await runner.tick()}
    assert results["ana@example.org"] == "retry"
    ana = await WebSession.logged_in(
        cfg.pixelserver.public_url, "ana@example.org", "ana-password-1"
    )
    page = (await ana.request("/settings")).body.decode()
    status = re.search(
        r'<p class="digest-status retry" id="digest-status">\s*(.*?)\s*</p>', page, re.S
    )
    assert status is not None, page
    assert (
        "could not be sent yet (451 4.7.1 Greylisted); it will be tried again at" in status.group(1)
    )
    assert "Bob" not in page
