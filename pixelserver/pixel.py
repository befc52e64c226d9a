"""The pixel: always the same 43-byte GIF, never cached, whatever the token or the store.

A mail client must never see an error image or a slow load because of MailPing, so the
handler's only work is to append the hit to the journal; a malformed token is answered the same
way and recorded nowhere.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Sequence

from tornado import httputil

from pixelserver import metrics
from pixelserver.hits import HitPipeline
from pixelserver.tokens import TokenCheck
from pixelserver.verdicts.networks import Network, client_ip

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


class PixelFrontEnd(httputil.HTTPServerConnectionDelegate):
    """Answers pixel requests below Tornado's RequestHandler layer; everything else goes on to
    the Application (report pages, API) untouched.

    The pixel is the one path where every microsecond counts (a newsletter's opens arrive in
    bursts): building a RequestHandler, its header dict and its output transforms for a fixed
    43-byte reply cost more than the reply. Here a GET or HEAD under /<pixel_path>/ is answered
    from the request line and headers alone, after one journal append.
    """

    def __init__(
        self,
        app: httputil.HTTPServerConnectionDelegate,
        pixel_path: str,
        pipeline: HitPipeline,
        trusted_proxies: Sequence[Network],
        tokens: TokenCheck | None = None,
    ) -> None:
        self.app = app
        self.tokens = tokens or TokenCheck()
        self.prefix = f"/{pixel_path}/"
        self.pipeline = pipeline
        self.trusted_proxies = trusted_proxies
        self._date = (0, "")

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Request(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)

    def date(self) -> str:
        """The Date header, formatted once a second rather than once a request."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, httputil.format_timestamp(now))
        return self._date[1]

    def answer(
        self,
        request_conn: httputil.HTTPConnection,
        start_line: httputil.RequestStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        metrics.PIXEL_REQUESTS.inc()
        name = start_line.path[len(self.prefix) :].split("?", 1)[0]
        token = token_from_path(name)
        if token is not None and not self.tokens.admits(token):
            metrics.FORGED_TOKENS.inc()  # answered like any other, recorded nowhere
            token = None
        if token is not None:
            remote = getattr(request_conn, "context", None)
            ip = client_ip(getattr(remote, "remote_ip", "") or "", headers, self.trusted_proxies)
            try:
                self.pipeline.record(
                    ip, token, start_line.method, headers.get("User-Agent", ""), headers
                )
            except OSError:
                log.exception("could not journal a hit")  # the pixel is answered regardless
        reply = httputil.HTTPHeaders(REPLY_HEADERS)
        reply["Date"] = self.date()
        request_conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 200, "OK"),
            reply,
            GIF if start_line.method == "GET" else b"",
        )
        request_conn.finish()


class _Request(httputil.HTTPMessageDelegate):
    __slots__ = ("front", "server_conn", "request_conn", "inner", "pixel")

    def __init__(
        self, front: PixelFrontEnd, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> None:
        self.front = front
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.inner: httputil.HTTPMessageDelegate | None = None
        self.pixel: tuple[httputil.RequestStartLine, httputil.HTTPHeaders] | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        if start_line.method in ("GET", "HEAD") and start_line.path.startswith(self.front.prefix):
            self.pixel = (start_line, headers)
            return None
        self.inner = self.front.app.start_request(self.server_conn, self.request_conn)
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.inner.data_received(chunk) if self.inner is not None else None

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()
        elif self.pixel is not None:
            self.front.answer(self.request_conn, *self.pixel)

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()


# No Server header: the pixel must not tell the recipient's tools which product tracked them.
REPLY_HEADERS = {**NO_CACHE, "Content-Length": str(len(GIF))}
