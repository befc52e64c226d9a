"""Per-copy tokens and the pixel URLs that carry them; shared by the relay and manual links.

A token is 22 URL-safe characters (132 bits): 80 random bits, a 48-bit HMAC-SHA256 tag of
them under a key every MailPing process shares (app_secret "token_key"), and a 4-bit version.
The pixel checks the tag on the request path, without a lookup, so a random or forged token
never reaches the journal or the store. Tokens minted before tags (plain 128 random bits,
whose last character always has its four low bits clear) are still accepted while the store
holds any of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

TOKEN_BYTES = 16  # untagged tokens of earlier versions: 128 random bits
NONCE_BYTES = 10
TAG_BYTES = 6
VERSION = 0x5  # the last four bits of a tagged token (never 0, which untagged ones have)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
LENGTH = 22


def _encode(n: int) -> str:
    return "".join(ALPHABET[(n >> (6 * i)) & 63] for i in reversed(range(LENGTH)))


def _decode(token: str) -> int | None:
    if len(token) != LENGTH:
        return None
    n = 0
    for c in token:
        v = _VALUE.get(c)
        if v is None:
            return None
        n = (n << 6) | v
    return n


def _tag(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, nonce, hashlib.sha256).digest()[:TAG_BYTES]


def mint_token(key: bytes | None = None) -> str:
    """A new token, tagged under `key` (None only where no key can be had: untagged)."""
    if key is None:
        return secrets.token_urlsafe(TOKEN_BYTES)
    nonce = secrets.token_bytes(NONCE_BYTES)
    body = int.from_bytes(nonce + _tag(key, nonce), "big")
    return _encode((body << 4) | VERSION)


def is_untagged(token: str) -> bool:
    n = _decode(token)
    return n is not None and n & 0xF == 0


def tag_ok(token: str, key: bytes) -> bool:
    n = _decode(token)
    if n is None or n & 0xF != VERSION:
        return False
    body = (n >> 4).to_bytes(NONCE_BYTES + TAG_BYTES, "big")
    return hmac.compare_digest(body[NONCE_BYTES:], _tag(key, body[:NONCE_BYTES]))


@dataclass
class TokenCheck:
    """What the pixel knows about tokens without a lookup. `key` None: the store could not
    be read yet, so every well-formed token is journaled (the pipeline drops unknown ones)."""

    key: bytes | None = None
    untagged: bool = True  # the store still holds tokens minted before tags

    def admits(self, token: str) -> bool:
        if self.key is None:
            return True
        if tag_ok(token, self.key):
            return True
        return self.untagged and is_untagged(token)


def pixel_url(public_url: str, path: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/{path}/{token}.gif"


# --- click links -----------------------------------------------------------------------------

CLICK_PATH = "c"
CLICK_TAG_BYTES = 9  # 72 bits: 12 URL-safe characters


def click_tag(key: bytes, token: str, n: int, url: str) -> str:
    """The tag of link `n` (pointing at `url`) in the copy whose token is `token`: a rewritten
    link names its delivery and its place in the message, and the tag binds both to the address
    it leads to, so a changed token, number or stored address never redirects."""
    data = b"\0".join((b"click", token.encode(), str(n).encode(), url.encode("utf-8", "replace")))
    digest = hmac.new(key, data, hashlib.sha256).digest()[:CLICK_TAG_BYTES]
    return base64.urlsafe_b64encode(digest).decode()


def click_url(public_url: str, token: str, n: int, tag: str) -> str:
    """Short and plain (no query, no long opaque path): filters dislike long opaque links."""
    return f"{public_url.rstrip('/')}/{CLICK_PATH}/{token}/{n}/{tag}"
