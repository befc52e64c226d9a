"""Click tracking on the relay's side: which links of a message are rewritten, and how.

Opt-in (docs/clicks.md). Only `<a href>` links to http/https addresses in the HTML parts that
get a pixel are rewritten, to `{public_url}/c/<token>/<n>/<tag>` (short, on the tracking
domain, no query: long opaque links are what filters dislike). The visible text stays as it
is. Never rewritten: mailto:, tel:, anchors, any other scheme, the unsubscribe link (a
List-Unsubscribe target, or a link whose address or text says unsubscribe), a link whose
visible text is an address (it would show one address and lead to another), links to the
tracking domain itself, text parts, and every message the relay leaves untouched.

Links of this MailPing already in the HTML (the quoted text of a forward or a reply) are put
back to their original address first, so a forward's new reader never clicks as an earlier
recipient; the relay looks those addresses up in the store before the message is spooled and
keeps them in the spool entry, so every later attempt renders the same copy.

The work is split like the pixel's (relay/rewrite.py): `plan` walks the HTML once per
message; `render_chunks` fills in each recipient's links.
"""

from __future__ import annotations

import dataclasses
import html as _html
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from email.parser import BytesHeaderParser
from email.policy import compat32
from html.entities import html5 as _html5
from urllib.parse import urlsplit

from relay.rewrite import (
    MAX_LINE,
    PIXEL_LINE_ROOM,
    UNENCODED,
    Chunks,
    HtmlSlot,
    Prepared,
)

HEADER = "X-MailPing-Clicks"  # "off": no click tracking for this message (removed on the way)
MAX_URL = 8000
TAG_LEN = 12
_ATTRS = r"""(?:[^>"']|"[^"]*"|'[^']*')*"""
# An <a> tag, its attributes scanned once (possessive): group 1 is None when no ">" closes it.
_A_RE = re.compile(r"""<a\b(?:[^>"']++|"[^"]*+"|'[^']*+')*+(>)?""", re.I)
# An unquoted value runs to white space or ">" (as browsers read it, "=" and quotes included).
_HREF_RE = re.compile(r"""[\s"'/]href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
_CLOSE_A_RE = re.compile(r"</a\s*>", re.I)
_TAG_RE = re.compile(r"<[^>]*>")
_SCHEME_RE = re.compile(r"^(?:https?:)?//", re.I)
_OWN_RE = re.compile(r"([A-Za-z0-9_-]{22})/([0-9]{1,4})/([A-Za-z0-9_-]{12})/?")
# Words for "unsubscribe" in an address or a link's text (English, German, French, Spanish,
# Italian, Dutch, Portuguese): such a link is never rewritten.
_UNSUBSCRIBE_RE = re.compile(
    r"unsubscri|unsub\b|opt[-_ ]?out|abmelden|abbestellen|d[ée]sabonn|d[ée]sinscri|"
    r"darse de baja|dar de baja|annulla l.iscrizione|disiscriv|afmelden|uitschrijven|"
    r"cancelar (?:a )?(?:inscri|assinatura)|descadastr",
    re.I,
)


def clicks_off(raw: bytes) -> bool:
    """Whether the sender's header turns click tracking off for this message."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    msg = BytesHeaderParser(policy=compat32).parsebytes(head)
    return (msg.get(HEADER) or "").strip().lower() == "off"


def unsubscribe_targets(raw: bytes) -> frozenset[str]:
    """The addresses List-Unsubscribe names (RFC 2369: <...> entries)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    msg = BytesHeaderParser(policy=compat32).parsebytes(head)
    found = set()
    for value in msg.get_all("List-Unsubscribe") or []:
        found.update(u.strip() for u in re.findall(r"<([^>]+)>", str(value)))
    return frozenset(found)


def own_prefix(public_url: str) -> str:
    return f"{public_url.rstrip('/')}/c/"


def _own_key(url: str, prefix: str) -> str | None:
    """ "token/n/tag" if `url` is a link of this MailPing (http or https alike), else None."""
    bare = _SCHEME_RE.sub("", url)
    own = _SCHEME_RE.sub("", prefix).lower()
    if not bare.lower().startswith(own):
        return None
    m = _OWN_RE.fullmatch(bare[len(own) :])
    return f"{m.group(1)}/{m.group(2)}/{m.group(3)}" if m else None


def own_links(prepared: Prepared, prefix: str) -> list[tuple[str, int, str]]:
    """(token, n, tag) of every link of this MailPing in the HTML that gets a pixel."""
    found = []
    for slot in _slots(prepared):
        for text in (slot.before, slot.after):
            if prefix.split("//", 1)[-1].lower() not in text.lower():
                continue
            for m in _a_tags(text):
                href = _HREF_RE.search(m.group(0), 2)
                if href is None:
                    continue
                key = _own_key(_value(href), prefix)
                if key is not None:
                    token, n, tag = key.split("/")
                    found.append((token, int(n), tag))
    return found


UNCLOSED_A = 8  # unclosed <a tags tried before the rest of a text is taken for one


def _a_tags(text: str) -> Iterator[re.Match[str]]:
    """The <a> tags of `text`. One that is not closed (no ">", or a quote never closed) is
    skipped and the search goes on after its "<a", as before; after UNCLOSED_A of them the
    rest of the text is no tag (a browser reads all after an unclosed tag as that tag): each
    try scans to the end, and trying every one made 5 MB of unclosed tags cost hours."""
    pos, unclosed = 0, 0
    while (m := _A_RE.search(text, pos)) is not None:
        if m.group(1) is None:
            unclosed += 1
            if unclosed >= UNCLOSED_A:
                return
            pos = m.start() + 2
            continue
        yield m
        pos = m.end()


def _slots(prepared: Prepared) -> list[HtmlSlot]:
    return [p for p in prepared.pieces if isinstance(p, HtmlSlot) and p.pixel]


def _value(m: re.Match[str]) -> str:
    return attribute_unescape(next(g for g in m.groups() if g is not None)).strip()


_REF_RE = re.compile(r"&(?:#[0-9]+;?|#[xX][0-9a-fA-F]+;?|([A-Za-z][A-Za-z0-9]*)(;?))")


def attribute_unescape(value: str) -> str:
    """An attribute value as a browser reads it (HTML 13.2.5.72): like html.unescape, except
    that a named reference without ";" followed by "=" or a letter or digit stays as written,
    so "?a=1&copy=2" is the query it looks like, not "?a=1©=2"."""

    def one(m: re.Match[str]) -> str:
        name, semi = m.group(1), m.group(2)
        if name is None or semi:
            return _html.unescape(m.group(0))
        after = m.string[m.end() : m.end() + 1]
        if after == "=" or f"{name};" not in _html5 or name not in _html5:
            return m.group(0)  # not a whole legacy name, or followed by "=": kept
        return _html5[name]

    return _REF_RE.sub(one, value)


@dataclass(frozen=True)
class ClickSlot(HtmlSlot):
    """An HTML slot whose text is cut where the rewritten links go: ints are link numbers."""

    before_parts: tuple[str | int, ...] = ()
    after_parts: tuple[str | int, ...] = ()

    def encode_links(self, url: str, link_url: Callable[[int], str]) -> bytes:
        def fill(parts: tuple[str | int, ...]) -> str:
            return "".join(p if isinstance(p, str) else link_url(p) for p in parts)

        base = HtmlSlot(**_slot_fields(self))
        return base.with_text(fill(self.before_parts), fill(self.after_parts)).encode(url)


def _slot_fields(slot: HtmlSlot) -> dict:
    """What an HtmlSlot is made from (not its per-message caches)."""
    return {f.name: getattr(slot, f.name) for f in dataclasses.fields(HtmlSlot) if f.init}


@dataclass(frozen=True)
class ClickPlan:
    prepared: Prepared
    links: tuple[str, ...]  # link n of the message, as the sender wrote it


def plan(
    prepared: Prepared,
    raw: bytes,
    *,
    public_url: str,
    restore: Mapping[str, str],
    track: bool,
) -> ClickPlan:
    """The message's HTML with earlier links of ours put back (`restore`: "token/n/tag" ->
    original address) and, with `track`, every link to be rewritten cut out for each copy."""
    if not prepared.tracked:
        return ClickPlan(prepared, ())
    prefix = own_prefix(public_url)
    unsubscribe = unsubscribe_targets(raw) if track else frozenset()
    # The longest link we write: the pixel's line check below counts with it.
    longest = len(own_prefix(public_url)) + 22 + 1 + 4 + 1 + TAG_LEN
    links: dict[str, int] = {}
    pieces = []
    for piece in prepared.pieces:
        if not (isinstance(piece, HtmlSlot) and piece.pixel):
            pieces.append(piece)
            continue
        parts = []
        for text in (piece.before, piece.after):
            parts.append(
                _cut(
                    text,
                    prefix=prefix,
                    public_url=public_url,
                    restore=restore,
                    track=track,
                    unsubscribe=unsubscribe,
                    links=links,
                    unencoded=piece.cte in UNENCODED,
                    longest=longest,
                    codec=piece.codec,
                )
            )
        before, after = parts
        if all(isinstance(p, str) for p in (*before, *after)):
            pieces.append(piece.with_text("".join(before), "".join(after)))  # type: ignore[arg-type]
        else:
            pieces.append(
                ClickSlot(
                    **_slot_fields(piece), before_parts=tuple(before), after_parts=tuple(after)
                )
            )
    ordered = tuple(sorted(links, key=links.__getitem__))
    return ClickPlan(replace(prepared, pieces=tuple(pieces)), ordered)


def _cut(
    text: str,
    *,
    prefix: str,
    public_url: str,
    restore: Mapping[str, str],
    track: bool,
    unsubscribe: frozenset[str],
    links: dict[str, int],
    unencoded: bool,
    longest: int,
    codec: str,
) -> list[str | int]:
    """`text` as pieces: strings, and link numbers where an href value is to be rewritten."""
    if "<a" not in text.lower():
        return [text]
    out: list[str | int] = []
    pos = 0
    public = _SCHEME_RE.sub("", public_url.rstrip("/")).lower()
    grown: dict[int, int] = {}  # line start -> characters added there by addresses put back
    for m in _a_tags(text):
        href = _HREF_RE.search(m.group(0), 2)
        if href is None:
            continue
        group = next(i for i, g in enumerate(href.groups(), 1) if g is not None)
        start, end = m.start() + href.start(group), m.start() + href.end(group)
        # Only a part without a transfer encoding has its lines measured (each within 998
        # octets there, so the search back is short).
        line = text.rfind("\n", 0, start) + 1 if unencoded else 0
        url = _value(href)
        key = _own_key(url, prefix)
        new: str | int = text[start:end]
        restored = key is not None and key in restore
        if restored:
            url = restore[key]  # type: ignore[index]
        if (
            track
            and _rewritable(url, public, unsubscribe, _anchor_text(text, m.end()))
            and (not unencoded or _fits(text, start, end, longest, codec, grown.get(line, 0)))
        ):
            new = links.setdefault(url, len(links))
        elif restored:
            # A character the part's charset cannot carry (one the sender wrote as a
            # reference, "&#x4F8B;") goes back as a reference, read as the same address.
            value = _html.escape(url, quote=True).encode(codec, "xmlcharrefreplace").decode(codec)
            if group == 3:  # an unquoted value gets quotes it may need
                value = f'"{value}"'
            extra = grown.get(line, 0) + len(value) - (end - start)
            # Put back where it keeps the line within 998 octets; else it stays our link,
            # which still leads there (as one the store cannot say does).
            if not unencoded or _fits(text, start, end, longest, codec, extra):
                new, grown[line] = value, extra
        if isinstance(new, str) and new == text[start:end]:
            continue
        out += [text[pos:start], new]
        pos = end
    out.append(text[pos:])
    return out


def _anchor_text(text: str, start: int) -> str:
    close = _CLOSE_A_RE.search(text, start, start + 4000)
    inner = text[start : close.start()] if close else ""
    return _html.unescape(_TAG_RE.sub(" ", inner))


# A link's visible text that is itself an address ("https://example.com/x", "www.example.com",
# "example.com/offers"): rewritten, it would show one address and lead to another, which is
# what phishing filters score and careful readers distrust; such links stay as they are.
_URL_TEXT_RE = re.compile(r"(?:https?://|www\.)\S+|[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}(?:/\S*)?", re.I)


def _rewritable(url: str, public: str, unsubscribe: frozenset[str], anchor: str) -> bool:
    if _URL_TEXT_RE.fullmatch(anchor.strip()):
        return False
    if not url or len(url) > MAX_URL or any(c.isspace() or ord(c) < 0x20 for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return False
    if _SCHEME_RE.sub("", url).lower().startswith(public):
        return False  # our own pages, and links of ours we could not put back
    return not (url in unsubscribe or _UNSUBSCRIBE_RE.search(url) or _UNSUBSCRIBE_RE.search(anchor))


def _fits(
    text: str, start: int, end: int, longest: int, codec: str = "latin-1", extra: int = 0
) -> bool:
    """Whether the line holding text[start:end] stays within 998 octets (RFC 5322 2.1.1) with
    the href replaced by the longest link we write and room for the pixel, for parts sent
    without a transfer encoding (others are re-wrapped by their encoding). The pixel needs only
    the ends of its wrapped form: each copy's slot measures its grown line again and wraps the
    pixel when the whole would not fit. Counted in octets of the part's charset (`codec`:
    a kana is two in ISO-2022-JP, whose text is decoded); only LF ends a line (a lone CR is
    one more octet of it, as the upstream counts). `extra`: characters addresses put back
    add to the line."""
    line_start = text.rfind("\n", 0, start) + 1
    nl = text.find("\n", end)
    line_end = len(text) if nl < 0 else nl
    line = text[line_start:line_end]
    octets = len(line) if codec == "latin-1" else len(line.encode(codec))
    width = 1 if codec == "latin-1" else len("aa".encode(codec)) - len("a".encode(codec))
    # Every link on the line may grow to `longest` (counted without their old values).
    hrefs = max(1, line.lower().count("href"))
    return octets + (extra + hrefs * longest + PIXEL_LINE_ROOM) * width <= MAX_LINE


def render_chunks(
    plan_: ClickPlan, pixel_url: str, link_url: Callable[[int], str] | None
) -> Chunks:
    """One recipient's copy: `link_url(n)` is that copy's address for link n."""
    out: Chunks = []
    for p in plan_.prepared.pieces:
        if isinstance(p, ClickSlot):
            if link_url is None:
                out.append(p.encode_links(pixel_url, lambda n: plan_.links[n]))
            else:
                out.append(p.encode_links(pixel_url, link_url))
        elif isinstance(p, HtmlSlot):
            out += p.chunks(pixel_url)  # encoded once per message, the pixel URL spliced in
        else:
            out.append(p)
    return out


def restore_keys(found: Sequence[tuple[str, int, str]]) -> list[str]:
    return [f"{t}/{n}/{tag}" for t, n, tag in found]
