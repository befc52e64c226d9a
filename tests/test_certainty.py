"""Honest certainty: a recipient whose only person-like evidence is below the documented
confidence is "Probably read", not "Read", everywhere the state is shown or filtered."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixelserver.store.messages import NewDelivery, add_message, set_outcomes
from pixelserver.store.schema import Hit, utcnow
from pixelserver.store.states import refresh_states
from pixelserver.verdicts import state
from pixelserver.verdicts.classify import RULES
from pixelserver.verdicts.state import (
    CERTAIN_CONFIDENCE,
    OPENED,
    PROBABLY_OPENED,
    STATES,
    HitView,
    chip,
    delivery_state,
)

T0 = dt.datetime(2026, 6, 1, 9, tzinfo=dt.UTC)


def hit(verdict: str, confidence: float, minutes: int = 1, rule: str = "gmail-proxy") -> HitView:
    return HitView(
        T0 + dt.timedelta(minutes=minutes), verdict, rule, "66.249.93.0/24", "Gmail", "", "", "",
        confidence,
    )  # fmt: skip


def test_a_proxy_fetch_at_delivery_alone_is_probably_read() -> None:
    s = delivery_state("accepted", "tracked", [hit("human_via_proxy", 0.5, 0)])
    assert s.state == PROBABLY_OPENED
    assert chip(s).startswith("Probably read")
    assert "Read" not in chip(s).replace("Probably read", "")


def test_a_certain_open_makes_it_read() -> None:
    s = delivery_state(
        "accepted", "tracked", [hit("human_via_proxy", 0.5, 0), hit("human_via_proxy", 0.85, 40)]
    )
    assert s.state == OPENED
    assert chip(s).startswith("Read 2×")


@given(st.lists(st.tuples(st.sampled_from(["human", "human_via_proxy", "scanner"]),
                          st.floats(0.0, 1.0)), max_size=6))  # fmt: skip
def test_read_exactly_when_a_person_like_hit_reaches_the_threshold(
    hits: list[tuple[str, float]],
) -> None:
    views = [hit(v, c, i) for i, (v, c) in enumerate(hits)]
    got = delivery_state("accepted", "tracked", views).state
    person = [c for v, c in hits if v != "scanner"]
    if any(c >= CERTAIN_CONFIDENCE or c == 0 for c in person):
        assert got == OPENED
    elif person:
        assert got == PROBABLY_OPENED
    else:
        assert got != OPENED and got != PROBABLY_OPENED


def test_the_threshold_and_the_state_are_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "classification.md").read_text()
    assert "**probably_opened**" in doc
    assert f"{CERTAIN_CONFIDENCE}" in doc
    below = [
        r.id for r in RULES if r.kind.startswith("human") and r.confidence < CERTAIN_CONFIDENCE
    ]
    assert "gmail-proxy-at-delivery" in below
    for rule_id in below:
        assert f"`{rule_id}`" in doc


def test_openapi_and_the_api_know_the_state() -> None:
    spec = json.loads((Path(state.__file__).parent.parent / "web" / "openapi.json").read_text())
    enums = [
        node["enum"]
        for node in _walk(spec)
        if isinstance(node, dict) and "enum" in node and "opened" in node["enum"]
    ]
    assert enums and all(PROBABLY_OPENED in e for e in enums)
    assert PROBABLY_OPENED in STATES


def _walk(node):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_the_digest_has_words_and_colours_for_it() -> None:
    from relay.digest import compose

    assert PROBABLY_OPENED in compose.COLOURS and PROBABLY_OPENED in compose.SUMMARY_WORDS


@pytest.mark.parametrize("confidence", [0.5, 0.85])
async def test_stored_states_follow_the_confidence(store, confidence: float) -> None:
    from pixelserver.store import queries

    async with store.begin() as session:
        _, (delivery,) = await add_message(
            session,
            user_address="me@example.com",
            envelope_from="me@example.com",
            subject="s",
            message_id_header=f"<{secrets.token_hex(4)}@x>",
            size=1,
            deliveries=[NewDelivery("ana@gmail.com", secrets.token_hex(8), "tracked", None)],
        )
        await set_outcomes(session, [(delivery.id, "accepted", "250 ok")])
        session.add(
            Hit(
                uid=secrets.token_hex(8),
                delivery_id=delivery.id,
                at=utcnow(),
                method="GET",
                ip_prefix="66.249.93.0/24",
                user_agent="GoogleImageProxy",
                headers={},
                verdict="human_via_proxy",
                reasons=[],
                confidence=confidence,
                rule="gmail-proxy-at-delivery" if confidence < 0.6 else "gmail-proxy",
                seconds_after_send=5.0,
                asn=15169,
                org="Google",
                net_lists=[],
                hosting=False,
                country="",
                region="",
                city="",
                client="Gmail",
            )
        )
        await session.flush()
        await refresh_states(session, [delivery.id])
    expected = PROBABLY_OPENED if confidence < CERTAIN_CONFIDENCE else OPENED
    async with store() as session:
        listed = await queries.list_messages(session, None, queries.Filters(state=expected))
    rows = list(listed)
    assert [d.state.state for m in rows for d in m.deliveries] == [expected]
