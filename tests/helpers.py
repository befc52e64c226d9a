"""Checks shared by the rewriter and relay tests: what "unharmed" means for a copy."""

from __future__ import annotations

import asyncio
import email
import email.policy
import inspect
import json
import os
import re
import smtplib
from collections.abc import Awaitable, Callable
from email.message import Message
from pathlib import Path

from relay import rewrite

HERE = Path(__file__).parent
CORPUS_DIR = HERE / "corpus"
# Beside the checkout (../shared); a git worktree elsewhere names it in MAILPING_MAILGEM_DIR.
MAILGEM_DIR = Path(
    os.environ.get("MAILPING_MAILGEM_DIR") or HERE.parent.parent / "shared" / "corpus" / "mail-gem"
)


def _pixel_pattern(template: str) -> str:
    """The relay's markup (relay/rewrite.py) as a pattern: its URL the one captured ahead,
    each place it may be wrapped a space or a line break."""
    parts = re.split(r'(style="[^"]*")', template)
    pattern = "".join(
        'style="[^"]*"' if i % 2 and "{url}" not in part else re.escape(part)
        for i, part in enumerate(parts)
    )  # style values vary (earlier relays wrote other ones)
    pattern = pattern.replace(re.escape("{url}"), "(?P=url)")
    return pattern.replace(re.escape("{eol}"), r"(?:\r?\n| )")


# A pixel of the relay in either form: (url, token) with findall, and its whole markup.
PIXEL_RE = re.compile(
    r"""(?=<(?:img|table)\b[^\0]*?(?:src|background)="(?P<url>[^"]+/p/"""
    r"""(?P<token>[A-Za-z0-9_-]{22})\.gif)")"""
    rf"(?:{_pixel_pattern(rewrite.PIXEL_TAG_WRAPPED)}|{_pixel_pattern(rewrite.CELL_PIXEL_WRAPPED)})"
)


def corpus() -> dict[str, dict]:
    return json.loads((CORPUS_DIR / "expectations.json").read_text())


# 103 .eml files and the empty `sample_output_multipart` (the brief says 105; 104 are there).
MAILGEM_COUNT = 104


def mailgem_files() -> list[Path]:
    """The public fixtures in ../shared; in CI their absence is an error, not an empty test."""
    files = sorted(
        p
        for p in MAILGEM_DIR.rglob("*")
        if p.is_file() and p.name not in ("SOURCE.md", ".gitattributes")
    )
    if len(files) != MAILGEM_COUNT and os.environ.get("CI"):
        raise RuntimeError(
            f"expected {MAILGEM_COUNT} fixtures in {MAILGEM_DIR}, found {len(files)}"
        )
    return files


def leaves(raw: bytes) -> list[Message]:
    """Leaf parts in order, not descending into message/rfc822 (which the relay never touches)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out: list[Message] = []

    def walk(m: Message) -> None:
        if m.is_multipart() and m.get_content_type() != "message/rfc822":
            for p in m.get_payload():
                walk(p)
        else:
            out.append(m)

    walk(msg)
    return out


def decoded(part: Message) -> bytes:
    if part.get_content_maintype() == "message" and part.is_multipart():
        return b"".join(bytes(inner) for inner in part.get_payload())
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    return str(part.get_payload()).encode("utf-8", "surrogateescape")


def html_text(part: Message) -> str:
    charset = part.get_content_charset() or "latin-1"
    try:
        return decoded(part).decode(charset)
    except (LookupError, UnicodeDecodeError):
        return decoded(part).decode("latin-1")


def is_body_html(part: Message) -> bool:
    """An HTML part a client shows as the mail (empty or not); only an attachment is a file."""
    return part.get_content_type() == "text/html" and part.get_content_disposition() != "attachment"


def longest_line(raw: bytes) -> int:
    return max(len(line.rstrip(b"\r")) for line in raw.split(b"\n"))


def kept(part: Message) -> list[tuple[str, str]]:
    """Header fields a copy must carry unchanged: all but Bcc and our own X-MailPing."""
    return [(k, v) for k, v in part.items() if k.lower() not in ("bcc", "x-mailping")]


UNENCODED = (None, "7bit", "8bit", "binary")


def _cte(part: Message) -> str | None:
    value = part.get("Content-Transfer-Encoding")
    return None if value is None else str(value).strip().lower()


def assert_same_headers(original: Message, copy: Message, *, rewritten: bool) -> None:
    """Headers keep their values and order. A rewritten part that was sent unencoded may have
    been re-encoded quoted-printable (its lines were too long): then, and only then, its one
    Content-Transfer-Encoding field says so."""
    if not rewritten or _cte(original) == _cte(copy):
        assert kept(original) == copy.items(), "headers changed"
        return
    assert _cte(original) in UNENCODED, "an encoded part was re-encoded"
    assert copy.get_all("Content-Transfer-Encoding") == ["quoted-printable"]

    def others(m: Message) -> list[tuple[str, str]]:
        return [(k, v) for k, v in kept(m) if k.lower() != "content-transfer-encoding"]

    assert others(original) == others(copy), "headers changed beyond the transfer encoding"


def without_own_pixels(html: str, own_prefix: str) -> str:
    """`html` less the relay's own tags (PIXEL_RE) whose URL starts with `own_prefix`."""
    if not own_prefix:
        return html
    return PIXEL_RE.sub(lambda m: "" if m.group(1).startswith(own_prefix) else m.group(0), html)


def the_new_pixel(copy: str, was: str) -> tuple[str, str] | None:
    """The one pixel tag whose removal turns `copy` back into `was`: (url, token), or None."""
    for m in PIXEL_RE.finditer(copy):
        if copy[: m.start()] + copy[m.end() :] == was:
            return m.group(1), m.group(2)
    return None


def assert_unharmed(
    original: bytes, copy: bytes, *, pixels: int, own_prefix: str = ""
) -> list[str]:
    """The copy differs from the original only by one pixel in each body HTML part (and a
    dropped Bcc), and by the pixels of this MailPing (URLs under `own_prefix`) an earlier copy
    left in it, which are removed; returns the tokens found. Headers keep their values, other
    parts their decoded bytes, every part its charset and Content-Transfer-Encoding (unless a
    rewritten part had to be re-encoded to keep its lines within 998 octets)."""
    a, b = leaves(original), leaves(copy)
    assert len(a) == len(b), "number of parts changed"
    orig_msg = email.message_from_bytes(original, policy=email.policy.compat32)
    copy_msg = email.message_from_bytes(copy, policy=email.policy.compat32)
    single = not orig_msg.is_multipart()
    rewrites = bool(pixels)
    assert_same_headers(orig_msg, copy_msg, rewritten=single and rewrites)
    tokens: list[str] = []
    for pa, pb in zip(a, b, strict=True):
        rewritten = is_body_html(pa) and rewrites
        if not single:
            assert_same_headers(pa, pb, rewritten=rewritten)
        if rewritten:
            text, was = html_text(pb), without_own_pixels(html_text(pa), own_prefix)
            # An empty body that ended the message gains the line break ending the pixel's line.
            new = the_new_pixel(text, was) or (
                the_new_pixel(text, was + "\r\n") or the_new_pixel(text, was + "\n")
                if was == ""
                else None
            )
            assert new is not None, "HTML changed beyond the pixel"
            tokens.append(new[1])
            if own_prefix:
                ours = [u for u, _ in PIXEL_RE.findall(text) if u.startswith(own_prefix)]
                assert ours == [new[0]], f"expected only the new pixel of ours, found {ours}"
            body = str(pb.get_payload(decode=False))
            assert longest_line(body.encode("utf-8", "surrogateescape")) <= 998, (
                "a rewritten part has a line over 998 octets"
            )
        else:
            assert decoded(pa) == decoded(pb), f"{pa.get_content_type()} part changed"
    assert len(tokens) == pixels, f"expected {pixels} pixels, found {len(tokens)}"
    # No line over 998 octets (RFC 5322 2.1.1), unless the original already had a longer one
    # in a part the relay did not rewrite.
    assert longest_line(copy) <= max(998, longest_line(original)), "a line grew past 998 octets"
    defects = sum(len(p.defects) for p in copy_msg.walk())
    assert defects <= sum(len(p.defects) for p in orig_msg.walk()), "new MIME defects"
    return tokens


def smtp_send(port: int, sender: str, rcpts: list[str], data: bytes, **kw: object) -> str:
    """Blocking smtplib client (run it in a thread): the whole reply to DATA, or to the
    command that failed first, as "CODE text"."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
        c.ehlo("client.test")
        try:
            code, text = c.mail(sender, **kw)  # type: ignore[arg-type]
            if code != 250:
                return f"{code} {text.decode()}"
            for r in rcpts:
                code, text = c.rcpt(r)
                if code not in (250, 251):
                    return f"{code} {text.decode()}"
            code, text = c.data(data)
        except smtplib.SMTPResponseException as exc:
            return f"{exc.smtp_code} {exc.smtp_error.decode()}"
        return f"{code} {text.decode()}"


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout=15.0):
    """Wait until `check()` is true (the queue works after the reply); fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true after {timeout} s: {check}")
        await asyncio.sleep(0.05)
