"""The Settings forms that make a one-time value (an API token, a mail-program password)
answer their post with a redirect (303), so reloading the page they lead to does not post the
form again (a second token, a replaced password); that page shows the value, once.

Only the value's hash is stored, so the value waits until then in pixelserver/store/showonce.py,
sealed (Fernet: AES-128-CBC and HMAC-SHA256) with a fresh key made for it alone. The key goes
to the browser in a signed, HttpOnly, SameSite=Strict cookie that lives SHOW_WITHIN seconds,
with the held row's id: neither the store (ciphertext only) nor the cookie (the key only) holds
the value in clear, and it is in no URL and no log. The page view that takes the row deletes
it, so a reload, a replayed cookie or another user's session gets nothing.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.ext.asyncio import AsyncSession

from pixelserver.store import showonce
from pixelserver.web.base import BasePage

NEW_VALUE_COOKIE = "mailping_new_value"


async def hold(session: AsyncSession, user: str, kind: str, value: str) -> str:
    """Seal `value` for the page after the redirect; returns what its cookie is to carry
    (the held row's id and the key, never the value)."""
    key = Fernet.generate_key()
    sealed = Fernet(key).encrypt(value.encode()).decode("ascii")
    held_id = await showonce.hold(session, user, kind, sealed)
    return f"{held_id}:{key.decode('ascii')}"


def remember(handler: BasePage, ticket: str) -> None:
    """After the transaction that made the value committed: the next view is to show it."""
    handler.set_signed_cookie(
        NEW_VALUE_COOKIE,
        ticket,
        expires_days=None,
        max_age=showonce.SHOW_WITHIN,
        path="/settings",
        httponly=True,
        samesite="Strict",
        secure=handler.auth.secure_cookies,
    )


async def take(handler: BasePage, user: str) -> tuple[str, str] | None:
    """(kind, value) held for this user's view, if this view is the first to ask and still in
    time (the cookie is cleared whatever it holds); None otherwise."""
    if handler.get_cookie(NEW_VALUE_COOKIE) is None:
        return None
    handler.clear_cookie(NEW_VALUE_COOKIE, path="/settings")
    ticket = handler.get_signed_cookie(NEW_VALUE_COOKIE, max_age_days=showonce.SHOW_WITHIN / 86400)
    held_id, _, key = (ticket or b"").decode("ascii", "replace").partition(":")
    if not held_id.isdigit() or len(held_id) > 18 or not key:
        return None
    async with handler.sessions.begin() as session:
        taken = await showonce.take(session, int(held_id), user)
    if taken is None:
        return None
    kind, sealed = taken
    try:
        return kind, Fernet(key.encode("ascii")).decrypt(sealed.encode("ascii")).decode()
    except (InvalidToken, ValueError):  # a key that is not this row's: nothing to show
        return None
