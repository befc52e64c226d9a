"""Retention covers every place people's data sits, not only messages and hits; and a hit
judged again that is no longer a direct open keeps no place."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from sqlalchemy import select, update

from pixelserver.store import reclassify, retention
from pixelserver.store.accounts import add_user_network, get_or_create_user
from pixelserver.store.hitrecords import NewHit, add_hits, hits_for_delivery
from pixelserver.store.messages import delivery_by_id
from pixelserver.store.schema import DigestRun, Message, UserNetwork
from pixelserver.store.states import refresh_states
from relay import tracking


def _age(path: Path, days: float) -> None:
    then = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).timestamp()
    os.utime(path, (then, then))


async def test_retention_covers_networks_digest_ledger_outbox_and_left_journals(
    store, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    async with store.begin() as s:
        await add_user_network(s, "me@example.com", "192.0.2.0/24")
        await add_user_network(s, "me@example.com", "198.51.100.0/24")
        await s.execute(
            update(UserNetwork)
            .where(UserNetwork.prefix == "192.0.2.0/24")
            .values(seen_at=now - dt.timedelta(days=40))
        )
        user = await get_or_create_user(s, "me@example.com")
        for day, claimed in (
            (dt.date(2020, 1, 1), now - dt.timedelta(days=400)),
            (now.date(), now),
        ):
            s.add(
                DigestRun(
                    user_id=user.id,
                    day=day,
                    period_start=claimed - dt.timedelta(days=1),
                    period_end=claimed,
                    status="sent",
                    claimed_at=claimed,
                )
            )
    outbox = tmp_path / "data" / "outbox"
    (outbox / "digests").mkdir(parents=True)
    old_copy, new_copy = outbox / "1.eml", outbox / "2.eml"
    old_digest = outbox / "digests" / "d1.eml"
    for f in (old_copy, new_copy, old_digest):
        f.write_bytes(b"To: ana@example.org\r\n\r\nhello\r\n")
    _age(old_copy, 400)
    _age(old_digest, 400)
    data = tmp_path / "data"
    own, left, leftover_compact, fresh_left = (
        data / "hits.journal",
        data / "hits-3.journal",
        data / "hits-1.compact",
        data / "hits-4.journal",
    )
    for f in (own, left, leftover_compact, fresh_left):
        f.write_bytes(b'{"u":"x","t":"t","at":0,"n":"192.0.2.0/24"}\n')
    for f in (own, left, leftover_compact):
        _age(f, 400)

    await retention.purge_once(
        store, days=395, outbox_dir=outbox, data_dir=data, keep_journals=[own]
    )

    async with store() as s:
        prefixes = list((await s.execute(select(UserNetwork.prefix))).scalars())
        days = list((await s.execute(select(DigestRun.day))).scalars())
    # A network older than the 30 days it is used for is gone well before the retention.
    assert prefixes == ["198.51.100.0/24"]
    assert days == [now.date()]
    assert not old_copy.exists() and not old_digest.exists() and new_copy.exists()
    assert own.exists()  # a running process's own journal is never pulled from under it
    assert not left.exists() and not leftover_compact.exists()
    assert fresh_left.exists()  # recent: still to be replayed


async def test_a_rejudged_hit_that_is_no_longer_a_direct_open_loses_its_place(store) -> None:
    recorded = await tracking.record_message(
        store,
        user="me@example.com",
        envelope_from="me@example.com",
        recipients=["ana@example.org"],
        subject="numbers",
        message_id_header="",
        size=1,
        untracked_reason=None,
    )
    delivery = recorded.deliveries[0]
    sent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    async with store.begin() as s:
        await s.execute(update(Message).where(Message.id == recorded.id).values(accepted_at=sent))
        # Stored as a direct open with a place by older rules; its facts say Microsoft's
        # mail filter fetched it, so judged again it is a scanner.
        await add_hits(
            s,
            [
                NewHit(
                    uid="h1",
                    token=delivery.token,
                    at=sent + dt.timedelta(seconds=4),
                    method="GET",
                    ip_prefix="40.107.22.0/24",
                    user_agent="Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
                    headers={},
                    verdict="human",
                    rule="old-rule",
                    confidence=0.9,
                    seconds_after_send=4.0,
                    asn=8075,
                    org="Microsoft",
                    net_lists=("microsoft_eop",),
                    hosting=True,
                    country="IE",
                    region="Leinster",
                    city="Dublin",
                )
            ],
        )
        await refresh_states(s, [delivery.id])
    async with store() as s:
        before = await delivery_by_id(s, delivery.id)
        assert before is not None and "Dublin" in before.place

    report = await reclassify.reclassify(store)
    assert report.changed == 1
    async with store() as s:
        (hit,) = await hits_for_delivery(s, delivery.id)
        after = await delivery_by_id(s, delivery.id)
    assert hit.verdict != "human"
    assert (hit.country, hit.region, hit.city) == ("", "", "")
    assert after is not None and "Dublin" not in after.place
