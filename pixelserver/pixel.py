"""The pixel: always the same 43-byte GIF, never cached, whatever the token or the store.

A mail client must never see an error image or a slow load because of MailPing, so the
handler's only work is to append the hit to the journal; a malformed token is answered the same
way and recorded nowhere.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import tornado.web

from pixelserver.hits import HitPipeline
from pixelserver.networks import Network, client_ip

log = logging.getLogger("mailping.pixel")

# A transparent 1x1 GIF89a (header, logical screen, 2-colour table, graphic control extension
# with transparency, image descriptor, LZW data, trailer).
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00"
    b"\x02\x02D\x01\x00;"
)
assert len(GIF) == 43

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
NO_CACHE = {
    "Content-Type": "image/gif",
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
}


def token_from_path(name: str) -> str | None:
    """`<token>.gif` -> token, or None for anything that is not a well-formed token."""
    if not name.endswith(".gif"):
        return None
    token = name[:-4]
    return token if TOKEN_RE.match(token) else None


class PixelHandler(tornado.web.RequestHandler):
    def initialize(self, pipeline: HitPipeline, trusted_proxies: Sequence[Network]) -> None:
        self.pipeline = pipeline
        self.trusted_proxies = trusted_proxies

    def compute_etag(self) -> None:
        return None  # no validators: a conditional request must not turn into a bodyless 304

    def set_default_headers(self) -> None:
        for k, v in NO_CACHE.items():
            self.set_header(k, v)

    def _answer(self, name: str, body: bool) -> None:
        token = token_from_path(name)
        if token is not None:
            headers = self.request.headers
            ip = client_ip(self.request.remote_ip or "", headers, self.trusted_proxies)
            try:
                self.pipeline.record(
                    ip, token, self.request.method or "GET", headers.get("User-Agent", ""), headers
                )
            except OSError:
                log.exception("could not journal a hit")  # the pixel is answered regardless
        self.set_header("Content-Length", str(len(GIF)))
        if body:
            self.write(GIF)

    def get(self, name: str) -> None:
        self._answer(name, body=True)

    def head(self, name: str) -> None:
        self._answer(name, body=False)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        # A mail client always gets the image, even if something above went wrong.
        self.set_status(200)
        for k, v in NO_CACHE.items():
            self.set_header(k, v)
        self.finish(GIF)
