"""Manual tracking links: a pixel made on the web page for mail the relay never sees.

A link is stored as a message of source "manual" with one delivery, so its hits go through the
same pipeline, verdicts and states as relayed mail and it shows up in every list and export.
The link's creation stands in for the sending time (timing rules measure from it), and the
network it was made from counts as the sender's, so the compose window's own preview of the
image is judged "the sender", not an open.
"""

from __future__ import annotations

from dataclasses import dataclass

import tornado.escape
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.store.appsecrets import token_key
from pixelserver.store.messages import NewDelivery, add_message
from pixelserver.store.schema import Delivery
from pixelserver.tokens import mint_token
from pixelserver.vocabulary import Outcome, Source, Tracking

MANUAL = Source.MANUAL
MAX_LABEL = 200


class LinkError(ValueError):
    """A label or recipient the form cannot take (the message says which and why)."""


@dataclass(frozen=True)
class NewLink:
    message_id: int
    token: str


def check(label: str, recipient: str) -> tuple[str, str]:
    label = " ".join(label.split())
    recipient = recipient.strip()
    if not label:
        raise LinkError("Give the link a name, such as the subject of the mail it goes in.")
    if len(label) > MAX_LABEL:
        raise LinkError(f"The name is longer than {MAX_LABEL} characters.")
    if recipient:
        local, at, domain = recipient.rpartition("@")
        if not (at and local and "." in domain) or any(c.isspace() for c in recipient):
            raise LinkError(f"{recipient!r} is not an email address.")
        if len(recipient) > 320:
            raise LinkError("The address is longer than 320 characters.")
    return label, recipient


async def create_link(
    session: AsyncSession, user: str, label: str, recipient: str, sender_prefix: str
) -> NewLink:
    label, recipient = check(label, recipient)
    token = mint_token(await token_key(session))
    message, (delivery,) = await add_message(
        session,
        user_address=user,
        envelope_from=user,
        subject=label,
        message_id_header="",
        size=0,
        deliveries=[NewDelivery(recipient, token, Tracking.TRACKED, None)],
        sender_prefix=sender_prefix,
        source=MANUAL,
    )
    # Nothing is sent: the copy counts as delivered the moment its link exists.
    await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id)
        .values(outcome=Outcome.ACCEPTED, finished_at=message.accepted_at)
    )
    return NewLink(message.id, token)


def snippet(url: str) -> str:
    """The HTML to paste: a 1x1 image that takes no room and says nothing to a screen reader
    (the link's name stays out of it: the recipient can read the HTML)."""
    src = tornado.escape.xhtml_escape(url)
    return (
        f'<img src="{src}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0">'
    )
