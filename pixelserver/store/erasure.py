"""Erasure on request (GDPR art. 17): forget a recipient, or erase a whole user.

Forgetting a recipient deletes every delivery to them (with its hits, places and state), the
messages left with no recipient, their address in the messages' search text and in the
user's "never track" rules, and their copies in the local outbox. What stays is one keyed hash
of the address (forgotten_recipient), so that they are never tracked again: the relay checks
new recipients against it (relay/tracking.py) without the address being kept anywhere.

Deleted rows must not linger in the files either: SQLite runs with secure_delete (freed pages
are zeroed), and after an erasure its WAL is checkpointed and its search index merged, so the
old text is gone from the disk, not only from the tables. PostgreSQL tables are vacuumed after
an erasure so the dead rows' space is reclaimed for reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixelserver.store.accounts import get_or_create_user
from pixelserver.store.appsecrets import app_secret
from pixelserver.store.clickrecords import Click, ClickLink
from pixelserver.store.mailaccounts import MailAccount
from pixelserver.store.messages import search_text
from pixelserver.store.schema import (
    ApiToken,
    Delivery,
    DigestRun,
    ForgottenRecipient,
    Hit,
    LocalUser,
    Message,
    User,
    UserNetwork,
    WebSession,
)
from pixelserver.store.showonce import ShownOnce

ERASURE_KEY = "erasure_key"
log = logging.getLogger("mailping.erasure")


@dataclass
class Erased:
    """What an erasure removed (for the reply, the command's output and the log)."""

    deliveries: int = 0
    messages: int = 0
    files: int = 0
    users: int = 0

    def words(self) -> str:
        return f"{self.deliveries} deliveries, {self.messages} messages, {self.files} files" + (
            f", {self.users} users" if self.users else ""
        )


def normal(address: str) -> str:
    return address.strip().lower()


def address_hash(key: str, address: str) -> str:
    """HMAC-SHA256 of the normalised address: without the key (in the store's app_secret,
    never in a file or a log) the hash cannot be tested against guessed addresses."""
    return hmac.new(key.encode(), normal(address).encode(), hashlib.sha256).hexdigest()


async def forgotten_hashes(session: AsyncSession, user_id: int | None) -> list[str]:
    """The keyed hashes of the recipients this user (None: a user not yet in the store), or an
    administrator for everyone, forgot."""
    who = ForgottenRecipient.user_id.is_(None)
    if user_id is not None:
        who = or_(ForgottenRecipient.user_id == user_id, who)
    return list(
        (await session.execute(select(ForgottenRecipient.address_hash).where(who))).scalars()
    )


async def forgotten_among(
    session: AsyncSession, user_id: int, recipients: Sequence[str]
) -> set[str]:
    """The recipients (as given) this user, or an administrator for everyone, forgot. One
    query when nothing was ever forgotten, which is the usual case on the relay's path."""
    hashes = set(await forgotten_hashes(session, user_id))
    if not hashes:
        return set()
    key = await app_secret(session, ERASURE_KEY)
    return {r for r in recipients if address_hash(key, r) in hashes}


async def forget_recipient(
    sessions: async_sessionmaker[AsyncSession],
    address: str,
    *,
    user: str | None,
    outbox_dir: Path | None = None,
    vacuum: bool = True,
) -> Erased:
    """Forget `address` for `user` (None: for every user, an administrator's erasure).
    `vacuum` False: leave PostgreSQL's VACUUM to the caller (`vacuum_later`), which a web
    request should not wait for."""
    address = normal(address)
    done = Erased()
    async with sessions.begin() as session:
        user_id = None
        if user is not None:
            user_id = (
                await session.execute(select(User.id).where(User.address == normal(user)))
            ).scalar_one_or_none()
            if user_id is None:
                user_id = (await get_or_create_user(session, user)).id
        q = (
            select(Delivery.id, Delivery.message_id)
            .join(Message, Message.id == Delivery.message_id)
            .where(func.lower(Delivery.recipient) == address)
        )
        if user_id is not None:
            q = q.where(Message.user_id == user_id)
        rows = (await session.execute(q)).all()
        delivery_ids = [r.id for r in rows]
        done.deliveries = len(delivery_ids)
        done.messages = await _drop_deliveries(session, delivery_ids, {r.message_id for r in rows})
        await _drop_links_naming(session, address, {r.message_id for r in rows})
        await _drop_rule(session, address, user_id)
        key = await app_secret(session, ERASURE_KEY)
        digest = address_hash(key, address)
        already = (
            await session.execute(
                select(ForgottenRecipient.id).where(
                    ForgottenRecipient.address_hash == digest,
                    ForgottenRecipient.user_id.is_(None)
                    if user_id is None
                    else ForgottenRecipient.user_id == user_id,
                )
            )
        ).first()
        if already is None:
            session.add(ForgottenRecipient(user_id=user_id, address_hash=digest))
    done.files = _drop_files(outbox_dir, delivery_ids, address)
    await scrub(sessions, vacuum=vacuum)
    return done


async def erase_user(
    sessions: async_sessionmaker[AsyncSession], user: str, *, outbox_dir: Path | None = None
) -> Erased | None:
    """Erase a user and everything of theirs (messages, recipients, hits, settings, sessions,
    tokens, digests, login). None if there is no such user."""
    address = normal(user)
    done = Erased()
    async with sessions.begin() as session:
        user_id = (
            await session.execute(select(User.id).where(User.address == address))
        ).scalar_one_or_none()
        local = (
            await session.execute(delete(LocalUser).where(LocalUser.username == address))
        ).rowcount or 0
        if user_id is None and not local:
            return None
        delivery_ids: list[int] = []
        if user_id is not None:
            messages = select(Message.id).where(Message.user_id == user_id)
            delivery_ids = list(
                (
                    await session.execute(
                        select(Delivery.id).where(Delivery.message_id.in_(messages))
                    )
                ).scalars()
            )
            done.deliveries = len(delivery_ids)
            # Hits and deliveries explicitly (not only by cascade): SQLite enforces foreign
            # keys only where the connection asked for it.
            await session.execute(delete(Hit).where(Hit.delivery_id.in_(delivery_ids)))
            await session.execute(delete(Click).where(Click.delivery_id.in_(delivery_ids)))
            await session.execute(delete(ClickLink).where(ClickLink.message_id.in_(messages)))
            await session.execute(delete(Delivery).where(Delivery.id.in_(delivery_ids)))
            done.messages = (
                await session.execute(delete(Message).where(Message.user_id == user_id))
            ).rowcount or 0
            for table in (
                WebSession,
                ApiToken,
                UserNetwork,
                DigestRun,
                ForgottenRecipient,
                MailAccount,
                ShownOnce,
            ):
                await session.execute(delete(table).where(table.user_id == user_id))
            await session.execute(delete(User).where(User.id == user_id))
            done.users = 1
    done.files = _drop_files(outbox_dir, delivery_ids, address)
    await scrub(sessions)
    return done


async def _drop_links_naming(session: AsyncSession, address: str, message_ids: set[int]) -> None:
    """Rewritten links of these messages whose address names the recipient (a personalised
    link such as ?email=ana@example.org, plain or percent-encoded): their clicks then find no
    link and are answered "not found", which is what forgetting asks."""
    if not message_ids or "@" not in address:
        return
    forms = {address, address.replace("@", "%40")}
    for form in forms:
        like = "%" + form.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        await session.execute(
            delete(ClickLink).where(
                ClickLink.message_id.in_(sorted(message_ids)),
                func.lower(ClickLink.url).like(like.lower(), escape="\\"),
            )
        )


async def _drop_deliveries(
    session: AsyncSession, delivery_ids: list[int], message_ids: set[int]
) -> int:
    """Delete the deliveries and their hits; rewrite the search text of their messages, and
    delete the messages left without a recipient. Returns how many messages were deleted."""
    if not delivery_ids:
        return 0
    await session.execute(delete(Hit).where(Hit.delivery_id.in_(delivery_ids)))
    await session.execute(delete(Click).where(Click.delivery_id.in_(delivery_ids)))
    await session.execute(delete(Delivery).where(Delivery.id.in_(delivery_ids)))
    gone = 0
    for message_id in sorted(message_ids):
        left = list(
            (
                await session.execute(
                    select(Delivery.recipient)
                    .where(Delivery.message_id == message_id)
                    .order_by(Delivery.id)
                )
            ).scalars()
        )
        if not left:
            await session.execute(delete(Message).where(Message.id == message_id))
            gone += 1
            continue
        subject = (
            await session.execute(select(Message.subject).where(Message.id == message_id))
        ).scalar_one()
        await session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(search_text=search_text(subject, left))
        )
    return gone


async def _drop_rule(session: AsyncSession, address: str, user_id: int | None) -> None:
    """Remove the address from "never track" rules (the keyed hash takes its place)."""
    q = select(User.id, User.exclusions)
    if user_id is not None:
        q = q.where(User.id == user_id)
    for uid, entries in (await session.execute(q)).all():
        if entries and address in entries:
            await session.execute(
                update(User)
                .where(User.id == uid)
                .values(exclusions=[e for e in entries if e != address])
            )


def _drop_files(outbox_dir: Path | None, delivery_ids: Iterable[int], address: str) -> int:
    """The outbox copies of these deliveries, and any digest copy that names the address."""
    if outbox_dir is None or not outbox_dir.is_dir():
        return 0
    gone = 0
    for delivery_id in delivery_ids:
        with contextlib.suppress(FileNotFoundError):
            (outbox_dir / f"{int(delivery_id)}.eml").unlink()
            gone += 1
    needle = address.encode()
    for path in outbox_dir.rglob("*.eml"):
        with contextlib.suppress(OSError):
            if needle in path.read_bytes().lower():
                path.unlink()
                gone += 1
    return gone


async def vacuum_later(sessions: async_sessionmaker[AsyncSession]) -> None:
    """PostgreSQL's VACUUM after an erasure made from a page or the API, in the background
    (on a large table it takes a while); a failure is logged, autovacuum gets there anyway."""
    if sessions.kw["bind"].dialect.name == "sqlite":
        return  # scrubbed already, at once (it is quick there)
    try:
        await scrub(sessions)
    except Exception:  # noqa: BLE001 - nobody waits for this; say so in the log
        log.warning(
            "vacuum after an erasure failed; autovacuum will reclaim the rows", exc_info=True
        )


async def scrub(sessions: async_sessionmaker[AsyncSession], *, vacuum: bool = True) -> None:
    """Make deleted rows leave the files: on SQLite merge the search index (its deleted
    entries stay in old segments otherwise) and checkpoint the WAL into the zeroed pages; on
    PostgreSQL vacuum the tables that held them."""
    engine = sessions.kw["bind"]
    if engine.dialect.name == "sqlite":
        async with engine.begin() as conn:
            exists = (
                await conn.exec_driver_sql(
                    "SELECT 1 FROM sqlite_master WHERE name = 'message_search'"
                )
            ).first()
            if exists:
                await conn.exec_driver_sql(
                    "INSERT INTO message_search(message_search) VALUES ('optimize')"
                )
        async with engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    if not vacuum:
        return
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("hit", "delivery", "message", "user_account", "local_user"):
            await conn.exec_driver_sql(f"VACUUM {table}")
