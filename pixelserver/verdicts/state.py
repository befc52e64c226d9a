"""Pure: a delivery's outcome and hits -> what the report says about that recipient.

Computed from the stored hits whenever it is shown, so it follows every new hit and every
re-judged verdict without a second copy of the truth to keep in step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from pixelserver.vocabulary import (
    FAILED_OUTCOMES,
    MACHINE_VERDICTS,
    PERSON_VERDICTS,
    WAITING_OUTCOMES,
    Outcome,
    State,
    Tracking,
    UntrackedReason,
    Verdict,
)

# Short names for the states (their words are in pixelserver/vocabulary.py).
OPENED = State.OPENED
PROBABLY_OPENED = State.PROBABLY_OPENED
PREFETCHED_ONLY = State.PREFETCHED_ONLY
SCANNED_ONLY = State.SCANNED_ONLY
NOT_OPENED = State.NOT_OPENED
UNTRACKED = State.UNTRACKED
FAILED = State.FAILED
QUEUED = State.QUEUED
STATES = tuple(State)
# A person-like hit (human, human_via_proxy) at or above this confidence makes a recipient
# "Read"; below it (a proxy fetch seconds after delivery, which may be the provider's own check)
# only "Probably read". docs/classification.md lists the rules below it.
CERTAIN_CONFIDENCE = 0.6


def is_certain(confidence: float) -> bool:
    """At or above the threshold; 0 is a hit stored before confidences were recorded (the
    column's default), judged as it was then: certain."""
    return confidence >= CERTAIN_CONFIDENCE or confidence == 0


STATE_WORDS = {
    OPENED: "Opened",
    PROBABLY_OPENED: "Probably read",
    PREFETCHED_ONLY: "Apple prefetch only",
    SCANNED_ONLY: "Scanner only",
    NOT_OPENED: "Not opened yet",
    UNTRACKED: "Not tracked",
    QUEUED: "Queued, not sent yet",
    FAILED: "Not delivered",
}
VERDICT_WORDS = {
    Verdict.HUMAN: "Opened",
    Verdict.HUMAN_VIA_PROXY: "Opened through the provider's proxy",
    Verdict.PRIVACY_PREFETCH: "Apple privacy prefetch",
    Verdict.SCANNER: "Security scanner",
    Verdict.BOT: "Bot",
    Verdict.SENDER: "You (the sender)",
    Verdict.UNKNOWN: "Not judged yet",
}

CLICK_WORDS = {
    Verdict.HUMAN: "Clicked",
    Verdict.SCANNER: "Link scanner",
    Verdict.BOT: "Bot",
    Verdict.SENDER: "You (the sender)",
    Verdict.UNKNOWN: "Not judged yet",
}

PROXY_NAMES = {
    "gmail-proxy-mailbox": "Gmail",
    "gmail-proxy": "Gmail",
    "gmail-proxy-at-delivery": "Gmail",
    "yahoo-proxy": "Yahoo",
    "outlook-proxy": "Outlook.com",
    "outlook-proxy-mailbox": "Outlook",
}


@dataclass(frozen=True)
class HitView:
    at: dt.datetime
    verdict: str
    rule: str
    prefix: str
    client: str
    country: str
    region: str
    city: str
    confidence: float = 1.0


@dataclass(frozen=True)
class DeliveryState:
    state: str
    human_hits: int
    machine_hits: int
    sender_hits: int
    first_open: dt.datetime | None
    last_open: dt.datetime | None
    client: str
    place: str
    possibly_forwarded: bool
    human_clicks: int = 0  # a person's clicks on rewritten links (issue 16): these prove a read


@dataclass(frozen=True)
class HitSummary:
    """Aggregates of a delivery's hits: all the state needs, whatever the number of hits."""

    people: int = 0
    machines: int = 0
    prefetches: int = 0
    senders: int = 0
    first_open: dt.datetime | None = None
    last_open: HitView | None = None
    direct_networks: int = 0
    direct_clients: int = 0
    certain: int | None = None  # person-like hits at CERTAIN_CONFIDENCE or above (None: all)
    clicks: int = 0  # a person's clicks on the copy's links: read, even with images blocked


def summarize(hits: Sequence[HitView]) -> HitSummary:
    people = sorted((h for h in hits if h.verdict in PERSON_VERDICTS), key=lambda h: h.at)
    direct = [h for h in people if h.verdict == Verdict.HUMAN]
    return HitSummary(
        people=len(people),
        machines=sum(h.verdict in MACHINE_VERDICTS for h in hits),
        prefetches=sum(h.verdict == Verdict.PRIVACY_PREFETCH for h in hits),
        senders=sum(h.verdict == Verdict.SENDER for h in hits),
        first_open=people[0].at if people else None,
        last_open=people[-1] if people else None,
        direct_networks=len({h.prefix for h in direct}),
        direct_clients=len({h.client for h in direct if h.client}),
        certain=sum(is_certain(h.confidence) for h in people),
    )


def place_of(hit: HitView) -> str:
    if hit.verdict == Verdict.HUMAN_VIA_PROXY:
        return f"location hidden by {PROXY_NAMES.get(hit.rule, 'the mail provider')}"
    return ", ".join(p for p in (hit.city, hit.region, hit.country) if p)


def outcome_state(outcome: str) -> str | None:
    """The state an outcome decides by itself (None: the hits decide)."""
    if outcome in FAILED_OUTCOMES:
        return FAILED
    if outcome in WAITING_OUTCOMES:
        return QUEUED
    return None


# States the hits decide, lowest first. Each is "some hit of this kind exists", checked from the
# top, so the state of all hits is the highest of the states of any split of them: a batch of
# new hits can only move a delivery up this list, never down (the incremental refresh's rank).
BY_HITS = (NOT_OPENED, SCANNED_ONLY, PREFETCHED_ONLY, PROBABLY_OPENED, OPENED)
RANK = {state: rank for rank, state in enumerate(BY_HITS)}


def hits_state(s: HitSummary) -> str:
    """The state the hits alone decide (when neither the outcome nor untracking does)."""
    if s.people and (s.certain is None or s.certain > 0):
        return OPENED
    if s.people:
        return PROBABLY_OPENED
    if s.prefetches:
        return PREFETCHED_ONLY
    if s.machines:
        return SCANNED_ONLY
    return NOT_OPENED


def state_of(outcome: str, tracking: str, s: HitSummary) -> DeliveryState:
    if (decided := outcome_state(outcome)) is not None:
        state = decided
    elif tracking == Tracking.UNTRACKED:
        state = UNTRACKED
    elif s.clicks:  # a person's click on a rewritten link: read, whatever the hits say
        state = OPENED
    else:
        state = hits_state(s)
    last = s.last_open
    return DeliveryState(
        state=state,
        human_hits=s.people,
        machine_hits=s.machines,
        sender_hits=s.senders,
        first_open=s.first_open,
        last_open=last.at if last else None,
        client=last.client if last else "",
        place=place_of(last) if last else "",
        # Read from several networks or programs of its own: likely passed on to someone else.
        possibly_forwarded=s.direct_networks > 1 or s.direct_clients > 1,
        human_clicks=s.clicks,
    )


def delivery_state(outcome: str, tracking: str, hits: Sequence[HitView]) -> DeliveryState:
    return state_of(outcome, tracking, summarize(hits))


def chip(s: DeliveryState, untracked_reason: str | None = None, outcome: str | None = None) -> str:
    """The state in plain words, as the report shows it."""
    if s.state == QUEUED:
        return (
            "Delayed: the mail server deferred it, retrying"
            if outcome == Outcome.DEFERRED
            else ("Queued: being sent")
        )
    if s.state == FAILED and outcome == Outcome.EXPIRED:
        return "Not delivered: gave up after retrying"
    if s.state in (OPENED, PROBABLY_OPENED):
        word = "Read" if s.state == OPENED else "Probably read"
        bits = [f"{word} {s.human_hits}×" if s.human_hits > 1 else word]
        if s.human_clicks:
            bits.append("clicked" if s.human_clicks == 1 else f"clicked {s.human_clicks}×")
        bits += [b for b in (s.client, s.place) if b]
        return " · ".join(bits)
    reason = untracked_reason or UntrackedReason.EXCLUDED
    words = {
        PREFETCHED_ONLY: "Apple privacy prefetch — reading can't be seen",
        SCANNED_ONLY: "Scanner only",
        NOT_OPENED: "Not opened yet",
        UNTRACKED: "Not tracked: " + reason.replace("_", " "),
        FAILED: "Not delivered",
    }[s.state]
    if s.sender_hits and s.state in (NOT_OPENED, PREFETCHED_ONLY, SCANNED_ONLY):
        words += f" · you viewed it{f' {s.sender_hits}×' if s.sender_hits > 1 else ''}"
    return words
