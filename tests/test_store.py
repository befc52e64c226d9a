"""The store on SQLite and PostgreSQL: schema from migrations, writes, idempotent hits, reads."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from pixelserver.store import migrate, queries
from pixelserver.store.hitrecords import NewHit, add_hits, hits_for_delivery
from pixelserver.store.messages import NewDelivery, add_message, search_text, set_outcomes
from pixelserver.store.schema import SEARCH_INDEXES, Base, Message
from pixelserver.store.states import refresh_states


async def test_migrations_match_the_models(db_url: str, store) -> None:
    """The schema Alembic builds is the one the models describe, on each backend."""
    engine = store.kw["bind"]

    def outside_models(_obj, name, _type, _reflected, _compare_to) -> bool:
        return not (name or "").startswith(SEARCH_INDEXES)

    def diff(conn):
        context = MigrationContext.configure(conn, opts={"include_object": outside_models})
        return compare_metadata(context, Base.metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def add(store, recipients: list[str], subject: str = "s", user: str = "me@example.com"):
    async with store.begin() as session:
        return await add_message(
            session,
            user_address=user,
            envelope_from=user,
            subject=subject,
            message_id_header="<m@x>",
            size=10,
            deliveries=[
                NewDelivery(r, f"tok-{subject}-{i:02d}".ljust(22, "x"), "tracked", None)
                for i, r in enumerate(recipients)
            ],
        )


def hit(uid: str, token: str, minutes: int = 0, verdict: str = "human") -> NewHit:
    return NewHit(
        uid=uid,
        token=token,
        at=dt.datetime(2026, 1, 1, 12, minutes, tzinfo=dt.UTC),
        method="GET",
        ip_prefix="192.0.2.0/24",
        user_agent="ua",
        headers={"Accept": "image/*"},
        verdict=verdict,
    )


async def test_one_user_per_address_whatever_the_case(store) -> None:
    m1, _ = await add(store, ["a@x"], "one", user="Me@Example.com")
    m2, _ = await add(store, ["a@x"], "two", user="me@example.com")
    assert m1.user_id == m2.user_id


async def test_tokens_are_unique(store) -> None:
    await add(store, ["a@x"], "dup")
    with pytest.raises(IntegrityError):
        await add(store, ["b@x"], "dup")


async def test_hits_are_stored_once_and_unknown_tokens_dropped(store) -> None:
    _, (d,) = await add(store, ["a@x"], "hits")
    batch = [
        hit("u1", d.token, 1),
        hit("u2", d.token, 5),
        hit("u3", "no-such-token".ljust(22, "y")),
    ]
    async with store.begin() as session:
        assert await add_hits(session, batch) == (2, 1)
    async with store.begin() as session:  # a replay of the same journal lines
        await add_hits(session, batch)
    async with store() as session:
        hits = await hits_for_delivery(session, d.id)
    assert [h.uid for h in hits] == ["u1", "u2"]
    assert hits[0].at == dt.datetime(2026, 1, 1, 12, 1, tzinfo=dt.UTC)
    assert hits[0].headers == {"Accept": "image/*"}


async def test_message_list_newest_first_with_states_and_pages(store) -> None:
    _, (a,) = await add(store, ["a@x"], "first")
    _, (b, c) = await add(store, ["b@x", "c@x"], "second")
    async with store.begin() as session:
        await add_hits(
            session,
            [
                hit("h0", b.token, 1, "privacy_prefetch"),
                hit("h1", b.token, 3),
                hit("h2", b.token, 9),
            ],
        )
        await set_outcomes(session, [(b.id, "accepted", "ok"), (c.id, "rejected", "550 no")])
        await refresh_states(session, [a.id, b.id, c.id])
    async with store() as session:
        page = await queries.list_messages(session, None, limit=1)
        older = await queries.list_messages(session, None, before_id=page[0].id, limit=1)
        opened = await queries.list_messages(session, None, queries.Filters(state="opened"))
        by_recipient = await queries.list_messages(session, None, queries.Filters(q="C@X"))
        mine = await queries.list_messages(session, "me@example.com")
        theirs = await queries.list_messages(session, "someone@else.example")
    assert [m.subject for m in page] == ["second"]
    assert [m.subject for m in older] == ["first"]
    assert [m.subject for m in opened] == ["second"]
    assert [m.subject for m in by_recipient] == ["second"]
    assert len(mine) == 2 and theirs == []
    rb, rc = page[0].deliveries
    st = rb.state
    assert (rb.recipient, st.state, st.human_hits, st.machine_hits) == ("b@x", "opened", 2, 1)
    assert st.first_open == dt.datetime(2026, 1, 1, 12, 3, tzinfo=dt.UTC)
    assert st.last_open == dt.datetime(2026, 1, 1, 12, 9, tzinfo=dt.UTC)
    assert (rc.outcome, rc.state.state, rc.upstream_reply) == ("rejected", "failed", "550 no")


async def test_unknown_outcome_is_refused(store) -> None:
    _, (d,) = await add(store, ["a@x"], "bad")
    async with store.begin() as session:
        with pytest.raises(ValueError):
            await set_outcomes(session, [(d.id, "lost", "")])


async def test_stored_state_agrees_with_the_hits(store) -> None:
    """refresh_states (SQL aggregates) and delivery_state (from the hit list) agree."""
    from pixelserver.verdicts.state import HitView, delivery_state

    _, (b, c, d) = await add(store, ["b@x", "c@x", "d@x"], "states")
    views = [
        hit("s1", b.token, 1, "privacy_prefetch"),
        hit("s2", b.token, 3),
        hit("s3", b.token, 9, "human_via_proxy"),
        hit("s4", c.token, 2, "scanner"),
        hit("s5", c.token, 4, "sender"),
    ]
    async with store.begin() as session:
        await add_hits(session, views)
        await set_outcomes(session, [(d.id, "rejected", "550 no")])
        await refresh_states(session, [b.id, c.id, d.id])
    async with store() as session:
        (message,) = await queries.list_messages(session, None)
        for row in message.deliveries:
            hits = await hits_for_delivery(session, row.id)
            computed = delivery_state(
                row.outcome,
                row.tracking,
                [
                    HitView(
                        h.at, h.verdict, h.rule, h.ip_prefix, h.client, h.country, h.region, h.city
                    )
                    for h in hits
                ],
            )
            assert row.state == computed
    assert [r.state.state for r in message.deliveries] == ["opened", "scanned_only", "failed"]


async def test_search_finds_any_part_of_a_subject_or_recipient(store) -> None:
    """Through the trigram index (FTS5 on SQLite, pg_trgm on PostgreSQL): substrings, any
    case, every character literal, short texts, pages, and only the user's own mail."""
    subjects = {
        "Quote for Lyon": ["ana@client.example"],
        "100% done_now": ["bob@other.example"],
        'He said "hi"': ["carl@client.example", "dora@third.example"],
        "Réunion à Genève": ["eve@x.example"],
    }
    for subject, recipients in subjects.items():
        await add(store, recipients, subject.replace(" ", "")[:12])
        async with store.begin() as session:  # the subject as sent, not the token's
            await session.execute(
                update(Message)
                .where(Message.subject == subject.replace(" ", "")[:12])
                .values(
                    subject=subject,
                    search_text=search_text(subject, recipients),
                )
            )
    await add(store, ["ana@client.example"], "theirs", user="other@example.com")

    async def found(text: str, **kw) -> list[str]:
        async with store() as session:
            rows = await queries.list_messages(
                session, "me@example.com", queries.Filters(q=text), **kw
            )
        return [r.subject for r in rows]

    assert await found("lyon") == ["Quote for Lyon"]
    assert await found("A@CLIENT") == ["Quote for Lyon"]
    assert await found("client.example") == ['He said "hi"', "Quote for Lyon"]
    assert await found("third") == ['He said "hi"']  # the second recipient counts too
    assert await found("0%") == ["100% done_now"]  # % and _ are literal, not wildcards
    assert await found("e_n") == ["100% done_now"]
    assert await found('"hi"') == ['He said "hi"']
    assert await found("genève") == ["Réunion à Genève"]
    assert await found("Lyon\nana") == []  # never across the subject/recipient boundary
    assert await found("zz") == []
    assert await found("o") == [
        s for s in reversed(subjects) if "o" in s.lower() or "o" in "".join(subjects[s])
    ]
    newest = await found("client", limit=1)
    assert newest == ['He said "hi"']
    ids = {}
    async with store() as session:
        for r in await queries.list_messages(
            session, "me@example.com", queries.Filters(q="client")
        ):
            ids[r.subject] = r.id
    assert await found("client", before_id=ids['He said "hi"']) == ["Quote for Lyon"]


async def test_relay_records_below_the_orm_are_the_rows_the_orm_writes(store) -> None:
    """The relay's statements (one or two per message, one per batch of outcomes, straight to
    the driver) leave exactly the rows that ORM objects with the same values leave."""
    from sqlalchemy import select

    from pixelserver.store.accounts import get_or_create_user
    from pixelserver.store.messages import insert_spooled_message, set_outcomes_by_token
    from pixelserver.store.schema import Delivery, User
    from pixelserver.verdicts.state import WAITING_OUTCOMES, outcome_state

    accepted = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.UTC)
    heard = dt.datetime(2026, 3, 4, 5, 6, 9, 123456, tzinfo=dt.UTC)
    plan = [
        ("ana@example.org", "tracked", None, "accepted", "250 2.0.0 OK"),
        ("bo@example.org", "untracked", "excluded", "accepted", "250 ok"),
        ("cy@example.org", "tracked", None, "rejected", "550 5.1.1 no such user"),
        ("di@example.org", "tracked", None, "deferred", "451 try later"),
        ("ed@example.org", "untracked", "excluded", "queued", ""),
    ]

    def token(way: str, i: int) -> str:
        return f"{way}{i}".ljust(22, "t")

    async def fast(sender: str) -> int:
        async with store.begin() as s:
            message_id = await insert_spooled_message(
                s,
                user_address=sender,
                envelope_from=sender,
                subject="Grüße ✓",
                message_id_header="<a@b>",
                size=4242,
                accepted_at=accepted,
                sender_prefix="192.0.2.0/24",
                deliveries=[
                    NewDelivery(r, token(f"f{sender[0]}", i), t, why)
                    for i, (r, t, why, _, _) in enumerate(plan)
                ],
            )
        async with store.begin() as s:
            rows = [(token(f"f{sender[0]}", i), o, reply) for i, (*_, o, reply) in enumerate(plan)]
            await set_outcomes_by_token(s, rows, now=heard)
        return message_id

    async def orm(sender: str) -> int:
        async with store.begin() as s:
            user = await get_or_create_user(s, sender)
            message = Message(
                user_id=user.id,
                envelope_from=sender,
                subject="Grüße ✓",
                message_id_header="<a@b>",
                size=4242,
                accepted_at=accepted,
                sender_prefix="192.0.2.0/24",
                search_text=search_text("Grüße ✓", [p[0] for p in plan]),
                source="relay",
            )
            s.add(message)
            await s.flush()
            for i, (r, t, why, _, _) in enumerate(plan):
                s.add(
                    Delivery(
                        message_id=message.id,
                        recipient=r,
                        token=token(f"o{sender[0]}", i),
                        tracking=t,
                        untracked_reason=why,
                        outcome="queued",
                        state="queued",
                    )
                )
                await s.flush()
        async with store.begin() as s:
            for i, (_, t, _, o, reply) in enumerate(plan):
                d = (
                    await s.execute(
                        select(Delivery).where(Delivery.token == token(f"o{sender[0]}", i))
                    )
                ).scalar_one()
                d.outcome, d.upstream_reply = o, reply
                d.finished_at = None if o in WAITING_OUTCOMES else heard
                d.state = outcome_state(o) or ("untracked" if t == "untracked" else "not_opened")
                d.state_changed_at = heard
        return message.id

    def columns(row, leave: set[str]) -> dict:
        return {c.name: getattr(row, c.key) for c in row.__table__.columns if c.name not in leave}

    async def stored(message_id: int) -> tuple[dict, list[dict]]:
        async with store() as s:
            m = await s.get(Message, message_id)
            ds = (
                await s.execute(
                    select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.id)
                )
            ).scalars()
            return columns(m, {"id", "user_id"}), [
                columns(d, {"id", "message_id", "token"}) for d in ds
            ]

    # A sender the store does not know yet (its row is made on the way), then a known one.
    for sender in ("new@example.com", "known@example.com"):
        if sender.startswith("known"):
            async with store.begin() as s:
                await get_or_create_user(s, sender)
        fast_id = await fast(sender)
        orm_id = await orm(sender)
        assert await stored(fast_id) == await stored(orm_id)
        async with store() as s:
            owners = (
                await s.execute(select(Message.user_id).where(Message.id.in_([fast_id, orm_id])))
            ).scalars()
            (owner,) = set(owners)
            assert (await s.get(User, owner)).address == sender
    fast_rows = (await stored(fast_id))[1]
    assert [d["state"] for d in fast_rows] == [
        "not_opened",
        "untracked",
        "failed",
        "queued",
        "queued",
    ]


async def test_the_senders_facts_in_one_statement(store) -> None:
    """Id, exclusions and the hashes of forgotten recipients (theirs and everyone's), as the
    ORM reads them, for a known sender and for one the store does not know."""
    from pixelserver.store import erasure
    from pixelserver.store.accounts import get_or_create_user

    unknown = await _facts(store, "nobody@example.com")
    assert (unknown.user_id, unknown.exclusions, unknown.forgotten_hashes) == (
        None,
        [],
        frozenset(),
    )
    async with store.begin() as s:
        user = await get_or_create_user(s, "ana@example.org")
        user.exclusions = ["internal.example", "boss@example.org"]
    await erasure.forget_recipient(store, "carol@gmail.com", user="ana@example.org")
    await erasure.forget_recipient(store, "zed@example.net", user=None)  # for everyone
    await erasure.forget_recipient(store, "x@example.net", user="other@example.org")
    async with store() as s:
        everyone = set(await erasure.forgotten_hashes(s, None))
        hers = set(await erasure.forgotten_hashes(s, user.id))
    facts = await _facts(store, " Ana@Example.org ")
    assert facts.user_id == user.id
    assert facts.exclusions == ["internal.example", "boss@example.org"]
    assert facts.forgotten_hashes == hers and len(hers) == 2
    assert (await _facts(store, "nobody@example.com")).forgotten_hashes == everyone
    assert len(everyone) == 1


async def _facts(store, address: str):
    from pixelserver.store.messages import sender_facts

    async with store() as s:
        return await sender_facts(s, address)
