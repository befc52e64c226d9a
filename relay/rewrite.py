"""Pure MIME rewriting: message bytes + pixel URL -> the copy one recipient receives.

Why not `email` parse + generate: re-serialising a message refolds headers, rewrites boundaries
and re-encodes parts, so the copy would differ from what the user sent in ways that break
signatures and confuse recipients. Instead the message is walked once as bytes: each entity's
headers are parsed only to learn its type, and the output is the original bytes with only the
bodies of HTML parts replaced. `prepare` does the walk once per message; `render` is cheap and
runs once per recipient: each HTML body is encoded once with a stand-in URL of the pixel URL's
length, and a copy is that encoding with the recipient's URL spliced in (tokens have a fixed
length, so quoted-printable soft line breaks fall where they fell for the stand-in).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import html as _html
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from email.header import decode_header, make_header
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from enum import StrEnum
from typing import overload

from pixelserver.vocabulary import UntrackedReason

# Why these attributes: width/height for clients that ignore CSS, border=0 and alt="" so that a
# blocked image leaves no frame or text; no display:none, which some clients then never fetch.
# display:block because the pixel opens the body: inline, it would sit on a line of its own a
# text line high above the content; as a block it takes 1 px.
PIXEL_TAG = (
    '<img src="{url}" width="1" height="1" alt="" border="0" '
    'style="display:block;border:0;width:1px;height:1px;max-width:1px;max-height:1px">'
)
# The same tag with line breaks between attributes, for lines that would exceed 998 octets
# (RFC 5322 2.1.1): the breaks are inside the tag, so the HTML around it stays byte-identical.
PIXEL_TAG_WRAPPED = (
    '<img{eol}src="{url}"{eol}width="1" height="1" alt="" border="0"{eol}'
    'style="display:block;border:0;width:1px;height:1px;max-width:1px;max-height:1px">'
)
# The pixel as the background of a 1x1 table cell, for HTML parts that have no image of their
# own and under 3,200 bytes of HTML: there any <img> costs the copy SpamAssassin's
# HTML_IMAGE_ONLY_xx (0.6 to 2.8 points by length, docs/clicks.md), which a background
# does not. The cell carries both the `background` attribute and the CSS (Gmail, Yahoo,
# Outlook.com and Apple Mail load one of them, through their proxies too); desktop Outlook on
# Windows renders with Word, which shows no cell backgrounds, so it gets the <img> in a
# conditional comment that only it reads (SpamAssassin, like every browser, sees a comment).
# A client fetches the URL once however many times the document names it.
CELL_PIXEL_WRAPPED = (
    '<table{eol}role="presentation" width="1" height="1" cellpadding="0" cellspacing="0"{eol}'
    'border="0" style="border-collapse:collapse;width:1px;height:1px"><tr><td{eol}'
    'background="{url}"{eol}width="1" height="1"{eol}'
    "style=\"background-image:url('{url}');width:1px;height:1px;font-size:0;line-height:0;"
    'padding:0"></td></tr></table><!--[if mso]><img{eol}src="{url}"{eol}'
    'width="1" height="1" alt="" border="0"{eol}style="display:block"><![endif]-->'
)
CELL_PIXEL = CELL_PIXEL_WRAPPED.replace("{eol}", " ")
# SpamAssassin's HTML_IMAGE_ONLY_04 .. _32 fire for an <img> in HTML of at most 3,200 bytes
# (its own `length`: the whole decoded part, markup included, not only the words).
IMAGE_ONLY_LIMIT = 3200
_ANY_IMG_RE = re.compile(r"<img\b", re.I)


class PixelForm(StrEnum):
    IMG = "img"  # the usual <img>: the most widely loaded form
    CELL = "cell"  # a table cell's background (and <img> for Word): no image-only cost


def pixel_form(html: str) -> PixelForm:
    """The form of the pixel for one HTML part (cleared of earlier pixels of ours). An <img>
    wherever it is free: the part has an image already (the image-only rules fire or not
    without ours) or is long enough that they never fire; else the table cell."""
    if len(html) >= IMAGE_ONLY_LIMIT or _ANY_IMG_RE.search(html):
        return PixelForm.IMG
    return PixelForm.CELL


def pixel_markup(url: str, form: PixelForm, eol: str | None = None) -> str:
    """The pixel in `form`; with `eol`, broken between attributes at `eol` (lines of at most
    998 octets, RFC 5322 2.1.1), never elsewhere, so the HTML around it is unchanged."""
    if form is PixelForm.CELL:
        return (
            CELL_PIXEL.format(url=url)
            if eol is None
            else CELL_PIXEL_WRAPPED.format(url=url, eol=eol)
        )
    return PIXEL_TAG.format(url=url) if eol is None else PIXEL_TAG_WRAPPED.format(url=url, eol=eol)


MAX_LINE = 998
# Header fields no copy carries: Bcc, and MailPing's own per-message switches (X-MailPing: off,
# X-MailPing-Clicks: off), which are for the relay, not the recipient.
DROPPED_FIELDS = {b"bcc", b"x-mailping", b"x-mailping-clicks"}
MAX_DEPTH = 40

# Untracked reasons (pixelserver/vocabulary.py).
TEXT_ONLY = UntrackedReason.TEXT_ONLY
SIGNED = UntrackedReason.SIGNED
DKIM_SIGNED = UntrackedReason.DKIM_SIGNED
OPTED_OUT = UntrackedReason.OPTED_OUT
UNPARSABLE = UntrackedReason.UNPARSABLE

_SIGNED_TYPES = {
    "multipart/signed",
    "multipart/encrypted",
    "application/pkcs7-mime",
    "application/x-pkcs7-mime",
    "application/pkcs7-signature",
    "application/pgp-encrypted",
}
# Encodings whose bytes for "<", "/", ">" and ASCII letters are not plain ASCII, or that switch
# state with escape sequences: for these the HTML must be decoded to find </body>.
_STATEFUL_OR_WIDE = ("utf_16", "utf_32", "iso2022", "utf_7", "hz")

_HEADER_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)
_BLANK_LINE_RE = re.compile(rb"\n(\r?\n)")


class Unparsable(Exception):
    """The rewriter cannot be sure of the structure; the message must go out untouched."""


@dataclass(frozen=True)
class HtmlSlot:
    """One HTML body, decoded, split where the pixel goes; re-encoded per recipient."""

    before: str
    after: str
    codec: str
    cte: str
    eol: str
    b64_line: int
    line_len: int  # length of the line the pixel lands in (unencoded parts only, else 0)
    trailing_eol: bool
    separator: str = ""  # the blank line a part without a body lacks before its pixel
    final_eol: str = ""  # the line break an empty body ending the message lacks after it
    pixel: bool = True  # False: a part of an attached message, only cleared of earlier pixels
    form: PixelForm = PixelForm.IMG
    # Encodings with a stand-in URL, by URL length (None: this slot cannot be spliced).
    _templates: dict[int, _Template | None] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def chunks(self, url: str) -> list[bytes]:
        """The encoded body carrying `url`, as chunks: the once-encoded body around it, and
        the URL's own bytes (split where a quoted-printable soft line break falls in it).
        Byte for byte what `encode(url)` makes, at the cost of a few slices per copy."""
        if not self.pixel:  # no URL in it: the same bytes for every copy
            fixed = self._templates.get(-1)
            if fixed is None:
                fixed = self._templates[-1] = _Template((self.encode(url),), ())
            return [fixed.fixed[0]]
        if not _splices(url):
            return [self.encode(url)]
        template = self._templates.get(len(url), _MISSING)
        if template is _MISSING:
            template = self._templates[len(url)] = self._template(len(url))
        if template is None:
            return [self.encode(url)]
        return template.fill(url.encode("ascii"))  # type: ignore[union-attr]

    def _template(self, length: int) -> _Template | None:
        """This body encoded once with a random stand-in URL of `length` characters, and where
        each of the stand-in's occurrences (one per mention of the URL in the pixel's markup)
        landed; None where a URL's characters do not pass through the encoding one byte each,
        in order (base64, wide or stateful charsets)."""
        if self.cte == "base64" or self.codec != "latin-1":
            return None
        stand_in, pattern = _stand_in(length, self.eol if self.cte == "quoted-printable" else "")
        data = self.encode(stand_in)
        found = list(pattern.finditer(data))
        if len(found) != pixel_markup(stand_in, self.form).count(stand_in):
            return None
        fixed, holes, pos = [], [], 0
        for m in found:
            cuts, breaks = [], []
            for i, group in enumerate(m.groups(), start=1):
                if group is not None:
                    cuts.append(i)
                    breaks.append(group)
            fixed.append(data[pos : m.start()])
            holes.append(_Hole(tuple(cuts), tuple(breaks)))
            pos = m.end()
        fixed.append(data[pos:])
        return _Template(tuple(fixed), tuple(holes))

    def with_text(self, before: str, after: str) -> HtmlSlot:
        """This slot around other text (links rewritten or put back), the line the pixel lands
        in measured again where it is sent unencoded: the text may have grown it."""
        line_len = self.line_len
        if self.cte in UNENCODED:
            line_len = sum(line_around(before, after, self.codec))
        return replace(self, before=before, after=after, line_len=line_len)

    def encode(self, url: str) -> bytes:
        """The body carrying `url`, encoded from the text (the slow way, once per copy)."""
        tag = pixel_markup(url, self.form) if self.pixel else ""
        if self.line_len + len(tag) > MAX_LINE:
            tag = pixel_markup(url, self.form, self.eol)
        html = self.before + tag + self.after
        data = html.encode(self.codec)
        if self.cte == "quoted-printable":
            data = _encode_qp(data, self.eol)
        elif self.cte == "base64":
            data = _encode_b64(data, self.b64_line, self.eol, self.trailing_eol)
        if self.separator or self.final_eol:
            return self.separator.encode() + data + self.final_eol.encode()
        return data


_MISSING = object()
# The stand-in's characters: each passes through quoted-printable (and unencoded parts) as
# itself, one byte, as every character of a URL that `_splices` admits does.
_STAND_IN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_SPLICE_RE = re.compile(r"[!-<>-~]*")  # printable ASCII but "=" (quoted-printable escapes it)


@functools.lru_cache(maxsize=64)
def _stand_in(length: int, soft_eol: str) -> tuple[str, re.Pattern[bytes]]:
    """A random stand-in URL of `length` characters (one per process and length: compiling
    its pattern per message cost as much as encoding the body again), and the pattern that
    finds it in an encoding, across quoted-printable soft line breaks ("=" + `soft_eol`)."""
    stand_in = "".join(secrets.choice(_STAND_IN) for _ in range(length))
    gap = b"(" + re.escape(b"=" + soft_eol.encode()) + b")?" if soft_eol else b""
    return stand_in, re.compile(gap.join(re.escape(bytes([c])) for c in stand_in.encode()))


def _splices(url: str) -> bool:
    return _SPLICE_RE.fullmatch(url) is not None


@dataclass(frozen=True)
class _Hole:
    """Where one mention of the pixel URL landed: `breaks[i]` goes before its character
    `cuts[i]` (quoted-printable soft line breaks)."""

    cuts: tuple[int, ...]
    breaks: tuple[bytes, ...]


@dataclass(frozen=True)
class _Template:
    """An encoded HTML body with holes for the pixel URL: fixed[0], hole 0, fixed[1], ..."""

    fixed: tuple[bytes, ...]  # one more than holes
    holes: tuple[_Hole, ...]

    def fill(self, url: bytes) -> list[bytes]:
        out = [self.fixed[0]]
        for hole, after in zip(self.holes, self.fixed[1:], strict=True):
            pos = 0
            for cut, brk in zip(hole.cuts, hole.breaks, strict=True):
                out += (url[pos:cut], brk)
                pos = cut
            out += (url[pos:], after)
        return out


@dataclass(frozen=True)
class Prepared:
    """A message walked once: byte pieces and HTML slots, or the reason it stays untouched."""

    pieces: tuple[bytes | memoryview | HtmlSlot, ...]
    untracked_reason: str | None
    subject: str
    message_id: str

    @property
    def tracked(self) -> bool:
        return self.untracked_reason is None

    @property
    def html_parts(self) -> int:
        return sum(isinstance(p, HtmlSlot) and p.pixel for p in self.pieces)


def prepare(raw: bytes, *, own_pixel_prefix: str = "") -> Prepared:
    """Walk the message once; never raises for bad input (it becomes `unparsable`).

    `own_pixel_prefix` is this MailPing's pixel URL up to the token
    (`{public_url}/{pixel_path}/`): every image tag of such a pixel already in an HTML body (a
    forward or a reply quoting an earlier copy) is removed before the new pixel is placed, so
    the new recipient's opens are never counted as the earlier recipient's."""
    head_end, _ = _split_head(raw, 0, len(raw))
    headers = _parse_headers(raw[:head_end])
    subject = _header_text(headers, "Subject")
    message_id = _header_text(headers, "Message-ID")
    # Bcc must never reach a recipient; a client that left it in the submission relies on the
    # submission server to drop it (as Postfix's cleanup does). X-MailPing is ours to consume.
    drop = _header_spans(raw, 0, head_end, DROPPED_FIELDS)
    opted_out = (headers.get("X-MailPing") or "").strip().lower() == "off"

    def untouched(reason: str) -> Prepared:
        return Prepared(_splice(raw, drop), reason, subject, message_id)

    if headers.get("DKIM-Signature") is not None or headers.get("ARC-Seal") is not None:
        return untouched(DKIM_SIGNED)
    walker = _Walker(raw, own_pixel_prefix)
    try:
        walker.walk(0, len(raw), 0)
    except Unparsable:
        return untouched(UNPARSABLE)
    if walker.signed:
        return untouched(SIGNED)
    if opted_out:
        return untouched(OPTED_OUT)
    if not any(slot.pixel for _, _, slot in walker.slots):
        return untouched(TEXT_ONLY)
    spans: list[tuple[int, int, bytes | HtmlSlot]] = [*drop, *walker.edits, *walker.slots]
    return Prepared(_splice(raw, spans), None, subject, message_id)


Chunks = list[bytes | memoryview]


def render_chunks(prepared: Prepared, pixel_url: str) -> Chunks:
    """The copy for one recipient as chunks: views of the original bytes, and each HTML body
    as encoded once for the message with `pixel_url` spliced in. Nothing large is copied, so
    a 20 MB message to many recipients costs a few slices per copy, not 20 MB."""
    out: Chunks = []
    for p in prepared.pieces:
        if isinstance(p, HtmlSlot):
            out += p.chunks(pixel_url)
        else:
            out.append(p)
    return out


def render_each(prepared: Prepared, pixel_url: str) -> bytes:
    """The copy for one recipient with each HTML body encoded anew from its text: what
    `render` must equal, byte for byte (tests compare the two)."""
    return b"".join(p.encode(pixel_url) if isinstance(p, HtmlSlot) else p for p in prepared.pieces)


def render(prepared: Prepared, pixel_url: str) -> bytes:
    """The copy for one recipient: original bytes, each HTML body carrying `pixel_url` once."""
    return b"".join(render_chunks(prepared, pixel_url))


def untouched_chunks(raw: bytes) -> Chunks:
    """The message as submitted, less the header fields no recipient may see."""
    head_end, _ = _split_head(raw, 0, len(raw))
    return list(_splice(raw, _header_spans(raw, 0, head_end, DROPPED_FIELDS)))  # type: ignore[arg-type]


def untouched_copy(raw: bytes) -> bytes:
    return b"".join(untouched_chunks(raw))


def rewrite(raw: bytes, pixel_url: str, *, own_pixel_prefix: str = "") -> bytes:
    return render(prepare(raw, own_pixel_prefix=own_pixel_prefix), pixel_url)


# Header fields of addresses, which the upstream parses (sender checks, From alignment). Bcc is
# left out: no copy carries it.
_ADDRESS_FIELDS = {
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"resent-from",
    b"resent-sender",
    b"resent-to",
    b"resent-cc",
}


def needs_smtputf8(
    sender: str | None, recipients: Sequence[str], raw: bytes, *, declared: bool
) -> bool:
    """Whether the copies must go upstream with SMTPUTF8 (RFC 6531).

    A non-ASCII envelope address always needs it, and so does an address field written in raw
    UTF-8 by a client that declared SMTPUTF8 (only such a client may write one). The
    declaration alone does not: Thunderbird and Apple Mail declare it on every message, and an
    upstream without SMTPUTF8 would then refuse all of them. Other 8-bit header text (a UTF-8
    Subject) is passed on as it is, as Postfix does."""
    if not all(a.isascii() for a in (sender or "", *recipients)):
        return True
    if not declared:
        return False
    head_end, _ = _split_head(raw, 0, len(raw))
    return any(
        not raw[start:end].isascii()
        for start, end, _ in _header_spans(raw, 0, head_end, _ADDRESS_FIELDS)
    )


def remove_own_pixels(html: str, prefix: str) -> str:
    """`html` less every pixel of this MailPing: a URL of `prefix` (its
    `{public_url}/{pixel_path}/`) followed by a token and `.gif`. The pixel may be in the form
    the relay writes (an image tag on one line or wrapped, or the table cell with Word's
    conditional image) or as a client re-wrote it (attributes in another order, entities in
    the URL, http for https). The cell and the conditional comment go whole; a cell background
    or CSS url() of ours left anywhere else is emptied. Other images are left alone."""
    if not prefix:
        return html
    lower = html.lower()
    if "<img" not in lower and "background" not in lower:
        return html
    own = _SCHEME_RE.sub("", prefix).lower()

    def is_own(url: str, proxied: bool = True) -> bool:
        url = _html.unescape(url).strip()
        if proxied and "#" in url:
            # An image proxy's address naming ours after "#" (Gmail's googleusercontent.com,
            # which a forward written in Gmail quotes): fetching it fetches ours.
            return is_own(url.partition("#")[2], proxied=False)
        url = _SCHEME_RE.sub("", url)
        return url.lower().startswith(own) and _OWN_TOKEN_RE.fullmatch(url[len(own) :]) is not None

    def own_src(tag: str) -> bool:
        src = _SRC_RE.search(tag, 4)
        return src is not None and is_own(next(g for g in src.groups() if g is not None))

    def drop_cell(m: re.Match[str]) -> str:
        bg = _BACKGROUND_RE.search(m.group("td"))
        return "" if bg and is_own(next(g for g in bg.groups() if g is not None)) else m.group(0)

    def drop_word(m: re.Match[str]) -> str:
        return "" if own_src(m.group(1)) else m.group(0)

    def drop_img(m: re.Match[str]) -> str:
        return "" if own_src(m.group(0)) else m.group(0)

    def empty_background(m: re.Match[str]) -> str:
        if not is_own(next(g for g in m.groups() if g is not None)):
            return m.group(0)
        lead = m.group(0)[0]  # a quote closing the value before stays: `style="x"background=`
        return lead if lead in "\"'" else ""

    def empty_css(m: re.Match[str]) -> str:
        value = _html.unescape(m.group(1)).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        return "none" if is_own(value) else m.group(0)

    html = _CELL_RE.sub(drop_cell, html)
    html = _WORD_IMG_RE.sub(drop_word, html)
    html = _IMG_RE.sub(drop_img, html)
    if "background" in html.lower():
        html = _BACKGROUND_RE.sub(empty_background, html)
        html = _CSS_URL_RE.sub(empty_css, html)
    return html


_IMG_RE = re.compile(r"<img\b[^<>]*>", re.I)  # a ">" inside quotes ends it early: then kept
_SRC_RE = re.compile(r"""[\s"'/]src\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.I)
_SCHEME_RE = re.compile(r"^(?:https?:)?//", re.I)
_OWN_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}\.gif")
# The cell pixel as written (any white space between its tags and attributes): a table with
# one empty cell; whether the cell's background is ours is checked apart.
_CELL_RE = re.compile(
    r"<table\b[^<>]*>\s*(?:<tbody\b[^<>]*>\s*)?<tr\b[^<>]*>\s*(?P<td><td\b[^<>]*>)\s*</td>"
    r"\s*</tr>\s*(?:</tbody>\s*)?</table>",
    re.I,
)
_WORD_IMG_RE = re.compile(r"<!--\[if mso\]>\s*(<img\b[^<>]*>)\s*<!\[endif\]-->", re.I)
_BACKGROUND_RE = re.compile(
    r"""[\s"'/]background\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.I
)
# Everything between the parentheses, unquoted in `empty_css`: one scan to the next
# parenthesis (white space and quotes matched apart backtracked cubically on `url(` + spaces).
_CSS_URL_RE = re.compile(r"url\(([^()]*)\)", re.I)


_ATTRS = r"""(?:[^>"']|"[^"]*"|'[^']*')*"""
_BODY_OPEN_RE = re.compile(rf"<body\b{_ATTRS}>", re.I)
# What may come before the visible content: white space, a doctype or XML declaration, the
# html and head tags and what a head holds (raw-text elements and comments are handled apart).
_PROLOGUE_RE = re.compile(
    rf"\s+|<!doctype\b[^>]*>|<\?[^>]*>|</?(?:html|head)\b{_ATTRS}>|<(?:meta|link|base)\b{_ATTRS}>",
    re.I,
)
_HEAD_RAW_RE = re.compile(r"<(script|style|title)\b", re.I)
_HEAD_OPEN_RE = re.compile(r"<head\b", re.I)
_HEAD_CLOSE_RE = re.compile(r"<!--|<(script|style|textarea|title|xmp)\b|</head\s*>", re.I)


def find_insertion(html: str) -> int:
    """Where the pixel goes: right after the opening `<body ...>` tag, or, without one, at the
    start of the visible content (after a doctype, `<html>` and the head). Early, because Gmail
    shows only the first ~102 KB of a message's HTML and a pixel past that is never fetched.
    Comments, `<script>`, `<style>` and `<title>` are skipped, so a `<body>` inside them does
    not count. An HTML part with nothing visible gets it at its end, before any final line
    breaks (a copy must still end with the line break it had)."""
    pos = 0
    in_head = False
    while pos < len(html):
        if html.startswith("<!--", pos):
            # "-->" may start right after "<!" ("<!-->" is a complete, empty comment in HTML5).
            close = html.find("-->", pos + 2)
            if close < 0:
                break
            pos = close + 3
        elif m := _HEAD_RAW_RE.match(html, pos):
            close = re.compile(rf"</{m.group(1)}\s*>", re.I).search(html, m.end())
            if close is None:
                break
            pos = close.end()
        elif m := _BODY_OPEN_RE.match(html, pos):
            return m.end()
        elif m := _PROLOGUE_RE.match(html, pos):
            if _HEAD_OPEN_RE.match(m.group(0)):
                in_head = True
            elif m.group(0)[:6].lower() == "</head":
                in_head = False
            pos = m.end()
        elif in_head and (close := _head_end(html, pos)) is not None:
            # Something a head does not usually hold (Outlook's <o:...> settings): the visible
            # content starts after the head, not inside it.
            in_head = False
            pos = close
        else:
            return pos
    return len(html.rstrip("\r\n")) if pos >= len(html) else pos


def _head_end(html: str, pos: int) -> int | None:
    """The end of the `</head>` closing the head that `pos` is inside, outside comments and
    raw text; None if there is none."""
    while m := _HEAD_CLOSE_RE.search(html, pos):
        if m.group(0) == "<!--":
            close = html.find("-->", m.start() + 2)
            if close < 0:
                return None
            pos = close + 3
        elif m.group(1):
            close = re.compile(rf"</{m.group(1)}\s*>", re.I).search(html, m.end())
            if close is None:
                return None
            pos = close.end()
        else:
            return m.end()
    return None


# --- the walk ------------------------------------------------------------------------------


class _Walker:
    def __init__(self, raw: bytes, own_pixel_prefix: str = "") -> None:
        self.raw = raw
        self.own_pixel_prefix = own_pixel_prefix
        self.slots: list[tuple[int, int, HtmlSlot]] = []
        self.edits: list[tuple[int, int, bytes]] = []  # header fields of re-encoded parts
        self.signed = False
        self.eol = "\r\n" if b"\r\n" in raw[:4096] else "\n"

    def walk(self, start: int, end: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise Unparsable("MIME nesting too deep")
        head_end, body_start = _split_head(self.raw, start, end)
        msg = _parse_headers(self.raw[start:head_end])
        ctype = msg.get_content_type()
        if ctype in _SIGNED_TYPES:
            self.signed = True
            return
        if msg.get_content_maintype() == "multipart":
            boundary = msg.get_boundary()
            if not boundary:
                raise Unparsable("multipart without boundary")
            for s, e in _split_multipart(self.raw, body_start, end, boundary):
                self.walk(s, e, depth + 1)
        elif ctype == "message/rfc822" and self.own_pixel_prefix:
            # A message forwarded as an attachment: its HTML loses earlier pixels of ours, and
            # gets none; anything it cannot be sure of inside stays exactly as it is.
            slots, edits = len(self.slots), len(self.edits)
            try:
                self._clear_attached(body_start, end, depth + 1)
            except Unparsable:
                del self.slots[slots:], self.edits[edits:]
        elif ctype == "text/html" and not _is_attachment(msg):
            # An empty HTML body is still the body a client shows: it gets its pixel too.
            slot = self._html_slot(msg, body_start, end)
            if slot.cte != _cte(msg):
                self.edits.extend(_set_cte(self.raw, start, head_end, slot.cte, self.eol))
            if body_start == end and head_end == end:  # headers only: no blank line, no body
                ends_line = self.raw[start:end].endswith(b"\n")
                slot = replace(slot, separator=self.eol if ends_line else self.eol * 2)
            if body_start == end == len(self.raw):
                # SMTP ends a message with a line break; the pixel line gets it here.
                slot = replace(slot, final_eol=self.eol)
            self.slots.append((body_start, end, slot))
        # Everything else is left exactly as it is.

    def _clear_attached(self, start: int, end: int, depth: int) -> None:
        """Slots that remove earlier pixels of ours from the HTML of the attached message
        raw[start:end], and add none; a part with no such pixel keeps its bytes."""
        if depth > MAX_DEPTH:
            raise Unparsable("MIME nesting too deep")
        head_end, body_start = _split_head(self.raw, start, end)
        msg = _parse_headers(self.raw[start:head_end])
        ctype = msg.get_content_type()
        if ctype in _SIGNED_TYPES:
            return
        if msg.get_content_maintype() == "multipart":
            boundary = msg.get_boundary()
            if not boundary:
                raise Unparsable("multipart without boundary")
            for s, e in _split_multipart(self.raw, body_start, end, boundary):
                self._clear_attached(s, e, depth + 1)
        elif ctype == "message/rfc822":
            self._clear_attached(body_start, end, depth + 1)
        elif ctype == "text/html" and not _is_attachment(msg):
            slot = self._html_slot(msg, body_start, end, pixel=False)
            if slot is None:
                return
            if slot.cte != _cte(msg):
                self.edits.extend(_set_cte(self.raw, start, head_end, slot.cte, self.eol))
            self.slots.append((body_start, end, slot))

    @overload
    def _html_slot(self, msg: Message, start: int, end: int) -> HtmlSlot: ...
    @overload
    def _html_slot(self, msg: Message, start: int, end: int, *, pixel: bool) -> HtmlSlot | None: ...
    def _html_slot(
        self, msg: Message, start: int, end: int, *, pixel: bool = True
    ) -> HtmlSlot | None:
        """The slot of the HTML body raw[start:end]; without `pixel`, None when it holds no
        earlier pixel of ours (then nothing in it changes)."""
        body = self.raw[start:end]
        cte = _cte(msg)
        b64_line = 76
        if cte in ("7bit", "8bit", "binary"):
            decoded = body
        elif cte == "quoted-printable":
            decoded = binascii.a2b_qp(body)
        elif cte == "base64":
            first = body.split(b"\n", 1)[0].strip()
            if 4 <= len(first) <= 76 and len(first) % 4 == 0:
                b64_line = len(first)
            try:
                decoded = base64.b64decode(b"".join(body.split()), validate=True)
            except (binascii.Error, ValueError):
                raise Unparsable("bad base64") from None
        else:
            raise Unparsable(f"unknown Content-Transfer-Encoding {cte!r}")
        codec, text = _decode_html(decoded, msg.get_content_charset())
        cleared = remove_own_pixels(text, self.own_pixel_prefix)
        if not pixel and cleared == text:
            return None
        text = cleared
        idx = find_insertion(text) if pixel else len(text)
        before, after = text[:idx], text[idx:]
        form = pixel_form(text)
        line_len = 0
        if cte in UNENCODED:
            head, tail = line_around(before, after, codec)
            if _has_long_line(body) or not _wrapped_tag_fits(form, head, tail):
                # RFC 5322 2.1.1: a part the relay rewrites leaves with lines of at most 998
                # octets, even if it came with longer ones; quoted-printable keeps every byte.
                cte = "quoted-printable"
            else:
                line_len = head + tail
        return HtmlSlot(
            before=before,
            after=after,
            codec=codec,
            cte=cte,
            eol=self.eol,
            b64_line=b64_line,
            line_len=line_len,
            trailing_eol=body.endswith(b"\n"),
            pixel=pixel,
            form=form,
        )


UNENCODED = ("7bit", "8bit", "binary")
_WRAPPED_ENDS = {
    form: (len(t.split("{eol}")[0]), len(t.split("{eol}")[-1]))
    for form, t in ((PixelForm.IMG, PIXEL_TAG_WRAPPED), (PixelForm.CELL, CELL_PIXEL_WRAPPED))
}
# What a line must leave free for the pixel to land in it, wrapped if need be, in either form.
PIXEL_LINE_ROOM = max(max(ends) for ends in _WRAPPED_ENDS.values())


def line_around(before: str, after: str, codec: str) -> tuple[int, int]:
    """Octets of the line the pixel lands in between `before` and `after`: (ahead, behind)."""
    line_start = before.rfind("\n") + 1  # a lone CR ends no line (RFC 5322 2.1.1)
    nl = after.find("\n")
    head = len(before[line_start:].encode(codec))
    tail = len((after if nl < 0 else after[:nl]).rstrip("\r").encode(codec))
    return head, tail


def _cte(msg: Message) -> str:
    return str(msg.get("Content-Transfer-Encoding", "7bit")).strip().lower() or "7bit"


def _has_long_line(body: bytes) -> bool:
    """A line over 998 octets, its CRLF not counted (RFC 5322 2.1.1)."""
    lines = body.split(b"\n")
    if len(max(lines, key=len)) <= MAX_LINE:  # the common case, at C speed
        return False
    return any(len(line.rstrip(b"\r")) > MAX_LINE for line in lines)


def _wrapped_tag_fits(form: PixelForm, head: int, tail: int) -> bool:
    """Whether the pixel, wrapped between its attributes, keeps within 998 octets the line it
    lands in: `head` octets before it on that line, `tail` after it."""
    first, last = _WRAPPED_ENDS[form]
    return head + first <= MAX_LINE and last + tail <= MAX_LINE


def _set_cte(
    raw: bytes, start: int, head_end: int, cte: str, eol: str
) -> list[tuple[int, int, bytes]]:
    """Edits that leave the entity raw[start:head_end] with one Content-Transfer-Encoding field,
    saying `cte`: in place of the first such field, else after the last field."""
    field = f"Content-Transfer-Encoding: {cte}{eol}".encode()
    spans = _header_spans(raw, start, head_end, {b"content-transfer-encoding"})
    if not spans:
        return [(head_end, head_end, field)]
    first, *rest = spans
    return [(first[0], first[1], field), *rest]


def _decode_html(data: bytes, charset: str | None) -> tuple[str, str]:
    """Text to search for </body>, and the codec that turns it back into exactly `data`.

    ASCII-compatible charsets are handled byte-transparently (latin-1), so an HTML part whose
    bytes are not valid in its declared charset (common in real mail) still round-trips exactly.
    """
    if charset:
        try:
            name = codecs.lookup(charset).name.replace("-", "_")
        except LookupError:
            name = ""
        if name.startswith(_STATEFUL_OR_WIDE):
            try:
                text = data.decode(name)
            except UnicodeDecodeError:
                raise Unparsable(f"HTML is not valid {charset}") from None
            if text.encode(name) != data:
                raise Unparsable(f"{charset} does not round-trip")
            return name, text
    return "latin-1", data.decode("latin-1")


def _encode_qp(data: bytes, eol: str) -> bytes:
    lines = re.split(rb"\r\n|\n", data)
    encoded = [binascii.b2a_qp(line, quotetabs=False, istext=False) for line in lines]
    # b2a_qp uses "\n" for its own soft line breaks; normalise them to the message's line end.
    out = eol.encode().join(encoded)
    return out.replace(b"=\n", b"=" + eol.encode()) if eol == "\r\n" else out


def _encode_b64(data: bytes, line: int, eol: str, trailing: bool) -> bytes:
    flat = base64.b64encode(data)
    out = eol.encode().join(flat[i : i + line] for i in range(0, len(flat), line))
    return out + eol.encode() if trailing else out


# --- byte-level MIME structure ---------------------------------------------------------------


def _split_head(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the header block, start of the body) for the entity raw[start:end]."""
    if raw.startswith(b"\r\n", start):
        return start, start + 2
    if raw.startswith(b"\n", start):
        return start, start + 1
    m = _BLANK_LINE_RE.search(raw, start, end)
    if m is None:
        return end, end
    return m.start() + 1, m.end()


def _parse_headers(block: bytes) -> Message:
    return BytesHeaderParser(policy=compat32).parsebytes(block)


def _header_text(msg: Message, name: str) -> str:
    """A header field as text the report can show and every database can store."""
    value = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), None)
    if value is None:
        return ""
    # The parser keeps 8-bit header bytes as surrogates; RFC 6532 allows raw UTF-8 there.
    raw = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    raw = _FOLD_RE.sub("", raw)  # RFC 5322 2.2.3 unfolding
    if "=?" not in raw:  # no RFC 2047 encoded word: nothing to decode
        return storable_text(raw.strip())
    try:
        if raw.isascii():  # the usual case; decode_header is several times faster
            text = str(make_header(decode_header(raw)))
        else:  # raw UTF-8 beside encoded words, which decode_header cannot mix
            text = str(_HEADERS(name.lower(), raw))
    except (UnicodeError, LookupError, ValueError, IndexError, binascii.Error):
        text = raw
    return storable_text(text.strip())


_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_HEADERS = HeaderRegistry(use_default_map=False)
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """`text` with U+FFFD for what a database refuses: NUL (PostgreSQL rejects it in text
    columns) and lone surrogates (no UTF-8 encoding exists for them). The rest is kept."""
    return _UNSTORABLE_RE.sub("\ufffd", text)


def _is_attachment(msg: Message) -> bool:
    """An HTML file sent along, not the body of the mail. Only `Content-Disposition: attachment`
    says so: an inline part is shown as the body even when it has a file name (Lotus/HCL Notes
    names its HTML body part), and so is a part that states no disposition at all."""
    return msg.get_content_disposition() == "attachment"


_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r?\n|\Z)")


def _delimiters(
    raw: bytes, start: int, end: int, boundary: bytes
) -> Iterator[tuple[int, re.Match[bytes]]]:
    """Where each delimiter line `--boundary` (perhaps `--boundary--`, then blanks and a line
    end) starts in raw[start:end], with the match of its end: what a multiline regex anchored
    at line starts finds, found with bytes.find (that regex tried every line start of the
    message, a fifth of the time spent preparing a 42 KB newsletter)."""
    needle = b"--" + boundary
    at = raw.find(needle, start, end)
    while at >= 0:
        m = None
        if at == 0 or raw[at - 1] == 0x0A:  # at a line start, as "^" with re.M
            m = _DELIMITER_TAIL.match(raw, at + len(needle), end)
        if m is not None:
            yield at, m
            at = raw.find(needle, m.end(), end)
        else:
            at = raw.find(needle, at + 1, end)


def _split_multipart(raw: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """Byte ranges of the body parts (RFC 2046 5.1.1): the line break before a delimiter
    belongs to the delimiter, and trailing white space after it is padding."""
    parts: list[tuple[int, int]] = []
    part_start: int | None = None
    for s, m in _delimiters(raw, start, end, boundary.encode("ascii", "surrogateescape")):
        if part_start is not None:
            if raw[s - 2 : s] == b"\r\n":
                s -= 2
            elif raw[s - 1 : s] == b"\n":
                s -= 1
            parts.append((part_start, max(part_start, s)))
        if m.group(1):
            part_start = None
            break
        part_start = m.end()
    if not parts and part_start is None:
        raise Unparsable(f"boundary {boundary!r} never appears")
    if part_start is not None:
        # The closing delimiter never came: the message was cut short or its structure is not
        # what it seems (RFC 2046 5.1.1); a rewrite could only guess, so it goes out untouched.
        raise Unparsable(f"multipart {boundary!r} has no closing delimiter")
    return parts


def _header_spans(
    raw: bytes, start: int, head_end: int, names: set[bytes]
) -> list[tuple[int, int, bytes]]:
    """Spans of the named header fields of the entity whose header block is raw[start:head_end]
    (with their folded continuation lines)."""
    spans = []
    for m in _HEADER_RE.finditer(raw, start, head_end):
        if m.group(1).lower() not in names:
            continue
        end = m.end()
        while True:
            nl = raw.find(b"\n", end, head_end)
            if nl < 0:
                end = head_end
                break
            end = nl + 1
            if end >= head_end or raw[end : end + 1] not in (b" ", b"\t"):
                break
        spans.append((m.start(), end, b""))
    return spans


def _splice(
    raw: bytes, replacements: Sequence[tuple[int, int, bytes | HtmlSlot]]
) -> tuple[bytes | memoryview | HtmlSlot, ...]:
    """`raw` as pieces, each (start, end, new) span replaced by `new` (b"": removed). Spans
    are applied in order of start; at one start, in the order given (a header edit before the
    body slot that follows it)."""
    view = memoryview(raw)
    pieces: list[bytes | memoryview | HtmlSlot] = []
    pos = 0
    for start, end, new in sorted(replacements, key=lambda r: r[0]):
        pieces.append(view[pos:start])
        if new != b"":
            pieces.append(new)
        pos = end
    pieces.append(view[pos:])
    return tuple(p for p in pieces if not isinstance(p, memoryview) or len(p))
