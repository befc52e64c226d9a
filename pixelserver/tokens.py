"""Per-copy tokens and the pixel URLs that carry them; shared by the relay and manual links."""

from __future__ import annotations

import secrets

TOKEN_BYTES = 16  # 128 bits: unguessable, so a token alone proves which copy was opened


def mint_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def pixel_url(public_url: str, path: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/{path}/{token}.gif"
