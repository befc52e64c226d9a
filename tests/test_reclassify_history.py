"""Re-judging keeps history (previous verdict, rule, time, why) and shows its progress."""

from __future__ import annotations

import io
import secrets

from sqlalchemy import select

from pixelserver.store import reclassify
from pixelserver.store.messages import NewDelivery, add_message
from pixelserver.store.schema import Hit, VerdictChange, utcnow

SLACK = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"


async def _message_with_hit(store, verdict: str, rule: str) -> tuple[int, int]:
    async with store.begin() as session:
        message, (delivery,) = await add_message(
            session,
            user_address="me@example.com",
            envelope_from="me@example.com",
            subject="s",
            message_id_header=f"<{secrets.token_hex(4)}@x>",
            size=1,
            deliveries=[NewDelivery("ana@acme.example", secrets.token_hex(8), "tracked", None)],
        )
        hit = Hit(
            uid=secrets.token_hex(8),
            delivery_id=delivery.id,
            at=utcnow(),
            method="GET",
            ip_prefix="73.15.20.0/24",
            user_agent=SLACK,
            headers={},
            verdict=verdict,
            reasons=[],
            confidence=0.8,
            rule=rule,
            seconds_after_send=600.0,
            asn=7922,
            org="Comcast Cable",
            net_lists=[],
            hosting=False,
            country="",
            region="",
            city="",
            client="",
        )
        session.add(hit)
        await session.flush()
        return message.id, hit.id


async def test_a_changed_verdict_records_what_it_was_and_why(store) -> None:
    message_id, hit_id = await _message_with_hit(store, "human", "consumer-network")
    report = await reclassify.reclassify(store)
    assert (report.checked, report.changed) == (1, 1)
    async with store() as session:
        (change,) = (await session.execute(select(VerdictChange))).scalars().all()
        hit = await session.get(Hit, hit_id)
    assert (change.hit_id, change.old_verdict, change.old_rule) == (
        hit_id,
        "human",
        "consumer-network",
    )
    assert (
        (change.new_verdict, change.new_rule)
        == ("bot", "bot-user-agent")
        == (hit.verdict, hit.rule)
    )
    assert "Slackbot" in change.why
    assert change.at is not None
    # Judging again changes nothing and records nothing.
    again = await reclassify.reclassify(store)
    assert again.changed == 0
    async with store() as session:
        assert len((await session.execute(select(VerdictChange))).scalars().all()) == 1


async def test_the_message_page_says_what_changed(stack) -> None:
    from tests.test_pixel import fetch

    message_id, _ = await _message_with_hit(stack.store, "human", "consumer-network")
    await reclassify.reclassify(stack.store)
    page = (await fetch(f"{stack.pixel_base}/messages/{message_id}")).body.decode()
    assert "changed on " in page
    assert "from Opened (consumer-network) because" in page


def test_progress_on_a_terminal_shows_count_rate_and_time_left() -> None:
    now = [100.0]
    out = io.StringIO()
    progress = reclassify.Progress(total=1000, stream=out, tty=True, clock=lambda: now[0])
    now[0] += 10
    progress(reclassify.Report(checked=250, changed=3))
    line = out.getvalue().split("\r")[-1]
    assert "250/1000 hits" in line and "25/s" in line and "30s left" in line


def test_progress_elsewhere_is_a_line_a_minute() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = reclassify.Progress(total=10_000, stream=out, tty=False, clock=lambda: now[0])
    for checked in range(200, 10_001, 200):
        now[0] += 5  # 50 batches over 250 s
        progress(reclassify.Report(checked=checked))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # at 60, 120, 180 and 240 s
    assert all(line.startswith("reclassify: ") for line in lines)
