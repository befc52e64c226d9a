"""The hit pipeline moves delivery states by each batch's new rows only (states.advance_states);
reclassification recomputes them from all hits (states.refresh_states). Whatever the batches —
a uid sent twice, hits out of time order or at the same instant, every verdict, a delivery
whose outcome or untracking decides its state — the two must agree, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import secrets

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from pixelserver.hits import views_by_delivery
from pixelserver.store.hitrecords import NewHit, add_new_hits, hit_contexts
from pixelserver.store.messages import NewDelivery, add_message
from pixelserver.store.schema import Delivery, Message
from pixelserver.store.states import advance_states, refresh_states
from pixelserver.verdicts import classify
from pixelserver.verdicts.networks import NetworkFacts

T0 = dt.datetime(2026, 6, 1, 9, tzinfo=dt.UTC)
# (outcome, tracking) of the four copies: the hits decide, the queue decides, the failure
# decides, untracking decides.
COPIES = [("accepted", "tracked"), ("queued", "tracked"), ("rejected", "tracked")]
COPIES += [("accepted", "untracked")]
VERDICTS = ["human", "human_via_proxy", "privacy_prefetch", "scanner", "bot", "sender", "unknown"]

a_hit = st.fixed_dictionaries(
    {
        "copy": st.integers(0, len(COPIES) - 1),
        "uid": st.integers(0, 24),  # a small pool: the same fetch replayed in a later batch
        "verdict": st.sampled_from(VERDICTS),
        "confidence": st.sampled_from([0.0, 0.3, 0.9]),
        "second": st.integers(0, 40),  # out of order across batches, ties within them
        "prefix": st.sampled_from(["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/48"]),
        "client": st.sampled_from(["", "Apple Mail", "Gmail"]),
        "city": st.sampled_from(["", "Lyon"]),
        "rule": st.sampled_from(["gmail-proxy", "direct-client"]),
    }
)
batches = st.lists(st.lists(a_hit, min_size=1, max_size=12), min_size=1, max_size=6)

STATE_COLUMNS = [
    Delivery.state,
    Delivery.human_hits,
    Delivery.machine_hits,
    Delivery.sender_hits,
    Delivery.first_open,
    Delivery.last_open,
    Delivery.client,
    Delivery.place,
    Delivery.forwarded,
]


async def copies(store) -> list[int]:
    async with store.begin() as session:
        _, rows = await add_message(
            session,
            user_address="me@example.com",
            envelope_from="me@example.com",
            subject="s",
            message_id_header=f"<{secrets.token_hex(4)}@x>",
            size=1,
            deliveries=[
                NewDelivery(f"r{i}@example.org", secrets.token_hex(11), tracking, None)
                for i, (_, tracking) in enumerate(COPIES)
            ],
        )
        for row, (outcome, _) in zip(rows, COPIES, strict=True):
            await session.execute(
                update(Delivery).where(Delivery.id == row.id).values(outcome=outcome)
            )
        # The states as a new copy has them, before any hit.
        await refresh_states(session, [r.id for r in rows])
        return [r.id for r in rows]


async def states(store, ids: list[int]) -> list[tuple]:
    async with store() as session:
        rows = await session.execute(
            select(Delivery.id, *STATE_COLUMNS).where(Delivery.id.in_(ids)).order_by(Delivery.id)
        )
        return [tuple(r) for r in rows]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=batches)
async def test_incremental_states_equal_states_from_all_hits(store, batches) -> None:
    ids = await copies(store)
    run = secrets.token_hex(4)  # uids of this example only
    for batch in batches:
        hits = [
            NewHit(
                uid=f"{run}-{h['uid']}",
                token=f"t{h['copy']}",
                at=T0 + dt.timedelta(seconds=h["second"]),
                method="GET",
                ip_prefix=h["prefix"],
                user_agent="ua",
                headers={},
                verdict=h["verdict"],
                confidence=h["confidence"],
                rule=h["rule"],
                client=h["client"],
                city=h["city"],
                country="FR" if h["city"] else "",
                delivery_id=ids[h["copy"]],
            )
            for h in batch
        ]
        async with store.begin() as session:
            _, fresh = await add_new_hits(session, hits)
            await advance_states(session, views_by_delivery(fresh))
    incremental = await states(store, ids)
    async with store.begin() as session:
        await refresh_states(session, ids)
    assert incremental == await states(store, ids)


def burst(prior: list[classify.PriorHit], prefix: str, t: float) -> bool:
    """The classifier's own check: another fetch from this network within BURST_WINDOW."""
    facts = classify.HitFacts(NetworkFacts(prefix), seconds_after_send=t, prior=prior)
    return classify._Ctx(facts).burst


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    earlier=st.lists(
        st.tuples(st.sampled_from(["192.0.2.0/24", "198.51.100.0/24"]), st.floats(0, 12)),
        max_size=60,
    ),
    probes=st.lists(
        st.tuples(st.sampled_from(["192.0.2.0/24", "198.51.100.0/24"]), st.floats(0, 14)),
        min_size=1,
        max_size=10,
    ),
)
async def test_earlier_hits_read_grouped_tell_bursts_as_all_of_them_do(
    store, earlier, probes
) -> None:
    """hit_contexts reads earlier hits grouped (per network and tenth of a second, first and
    last): every burst judgement must be what the full list of earlier hits gives."""
    (delivery_id,) = (await copies(store))[:1]
    async with store() as session:
        token = (
            await session.execute(select(Delivery.token).where(Delivery.id == delivery_id))
        ).scalar_one()
    accepted = T0 - dt.timedelta(hours=1)
    async with store.begin() as session:
        await session.execute(
            update(Message)
            .where(
                Message.id
                == select(Delivery.message_id).where(Delivery.id == delivery_id).scalar_subquery()
            )
            .values(accepted_at=accepted)
        )
        hits = [
            NewHit(
                uid=secrets.token_hex(8),
                token=token,
                at=accepted + dt.timedelta(seconds=s),
                method="GET",
                ip_prefix=prefix,
                user_agent="ua",
                headers={},
                seconds_after_send=s,
                delivery_id=delivery_id,
            )
            for prefix, s in earlier
        ]
        await add_new_hits(session, hits)
    async with store() as session:
        ctx = (await hit_contexts(session, [token]))[token]
    grouped = [classify.PriorHit(p, u, s) for p, u, s in ctx.prior]
    assert [p.seconds_after_send for p in grouped] == sorted(p.seconds_after_send for p in grouped)
    full = [classify.PriorHit(p, "", s) for p, s in sorted(earlier, key=lambda e: e[1])]
    for prefix, t in probes:
        assert burst(grouped, prefix, t) == burst(full, prefix, t), (prefix, t)
