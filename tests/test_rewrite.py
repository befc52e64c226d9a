"""The rewriter alone (pure): where the pixel goes, what stays byte-identical, what is untouched."""

from __future__ import annotations

import base64
import quopri

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relay import rewrite
from tests.helpers import (
    CORPUS_DIR,
    PIXEL_RE,
    assert_unharmed,
    corpus,
    html_text,
    is_body_html,
    leaves,
    mailgem_files,
)

URL = "http://127.0.0.1:8025/p/AAAAAAAAAAAAAAAAAAAAAA.gif"
TAG = rewrite.PIXEL_TAG.format(url=URL)


def html_message(body: bytes, *, cte: str = "8bit", charset: str = "utf-8") -> bytes:
    return (
        b"From: a@example.com\r\nTo: b@example.org\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=" + charset.encode() + b"\r\n"
        b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n" + body
    )


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<html><body>x</body></html>", f"<html><body>x{TAG}</body></html>"),
        ("<HTML><BODY>x</BODY></HTML>", f"<HTML><BODY>x{TAG}</BODY></HTML>"),
        ("<body>x</body >", f"<body>x{TAG}</body >"),
        ("<p>no closing tag</p>", f"<p>no closing tag</p>{TAG}"),
        ("<p>no closing tag</p>\r\n\r\n", f"<p>no closing tag</p>{TAG}\r\n\r\n"),
        ("<body>a<!-- </body> -->b</body>", f"<body>a<!-- </body> -->b{TAG}</body>"),
        ("<body>a</body><!-- </body> -->", f"<body>a{TAG}</body><!-- </body> -->"),
        (
            "<body>a<script>x='</body>'</script></body>",
            f"<body>a<script>x='</body>'</script>{TAG}</body>",
        ),
        (
            "<style>/*</body>*/</style><body>a</body>",
            f"<style>/*</body>*/</style><body>a{TAG}</body>",
        ),
        ("<body>1</body><body>2</body>", f"<body>1</body><body>2{TAG}</body>"),
        (
            "<body><!--[if mso]></body><![endif]-->a</body>",
            f"<body><!--[if mso]></body><![endif]-->a{TAG}</body>",
        ),
        ("<body><!-->a</body>", f"<body><!-->a{TAG}</body>"),
        ("<title></body></title><body>a</body>", f"<title></body></title><body>a{TAG}</body>"),
        (
            "<body><textarea></BODY></textarea></body>",
            f"<body><textarea></BODY></textarea>{TAG}</body>",
        ),
        ("<body>a<!-- unterminated </body>", f"<body>a<!-- unterminated </body>{TAG}"),
    ],
)
def test_pixel_goes_before_the_real_closing_body(html: str, expected: str) -> None:
    out = rewrite.rewrite(html_message(html.encode()), URL)
    assert out.split(b"\r\n\r\n", 1)[1] == expected.encode()


def test_quoted_printable_part_stays_quoted_printable() -> None:
    html = "<html><body><p>Grüße – " + "x" * 200 + "</p></body></html>"
    raw = html_message(quopri.encodestring(html.encode()), cte="quoted-printable")
    out = rewrite.rewrite(raw, URL)
    body = out.split(b"\r\n\r\n", 1)[1]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    assert quopri.decodestring(body).decode() == html.replace("</body>", TAG + "</body>")


def test_base64_part_keeps_its_line_length() -> None:
    html = "<html><body>" + "<p>Zażółć gęślą jaźń</p>" * 20 + "</body></html>"
    flat = base64.b64encode(html.encode()).decode()
    b64 = "\r\n".join(flat[i : i + 72] for i in range(0, len(flat), 72)) + "\r\n"
    out = rewrite.rewrite(html_message(b64.encode(), cte="base64"), URL)
    body = out.split(b"\r\n\r\n", 1)[1]
    lines = body.split(b"\r\n")
    assert {len(line) for line in lines[:-2]} == {72}
    assert body.endswith(b"\r\n")
    assert base64.b64decode(body).decode() == html.replace("</body>", TAG + "</body>")


def test_a_long_line_gets_the_pixel_wrapped_inside_its_tag() -> None:
    html = "<body>" + "y" * 900 + "</body>"
    out = rewrite.rewrite(html_message(html.encode()), URL)
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))
    body = out.split(b"\r\n\r\n", 1)[1].decode()
    assert len(PIXEL_RE.findall(body)) == 1
    assert PIXEL_RE.sub("", body) == html


def test_shift_jis_and_iso_2022_jp_round_trip() -> None:
    for charset in ("shift_jis", "iso-2022-jp"):
        html = "<html><body><p>お世話になっております。表示</p></body></html>"
        raw = html_message(html.encode(charset), cte="7bit", charset=charset)
        out = rewrite.rewrite(raw, URL)
        body = out.split(b"\r\n\r\n", 1)[1].decode(charset)
        assert body == html.replace("</body>", TAG + "</body>")


def test_bcc_is_removed_and_nothing_else() -> None:
    raw = (
        b"From: a@example.com\r\nTo: b@example.org\r\nBcc: secret@example.net,\r\n"
        b" other@example.net\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    )
    prepared = rewrite.prepare(raw)
    assert prepared.untracked_reason == rewrite.TEXT_ONLY
    assert rewrite.render(prepared, URL) == raw.replace(
        b"Bcc: secret@example.net,\r\n other@example.net\r\n", b""
    )


def test_an_empty_html_body_is_left_alone() -> None:
    for body in (b"", b"\r\n", b"  \r\n\t\r\n"):
        prepared = rewrite.prepare(html_message(body))
        assert prepared.untracked_reason == rewrite.TEXT_ONLY
        assert rewrite.render(prepared, URL) == html_message(body)


def test_untracked_reasons() -> None:
    assert rewrite.prepare(b"Subject: x\r\n\r\nplain").untracked_reason == "text_only"
    assert (
        rewrite.prepare(
            b"X-MailPing: off\r\nContent-Type: text/html\r\n\r\n<b>x</b>"
        ).untracked_reason
        == "opted_out"
    )
    assert (
        rewrite.prepare(
            b"ARC-Seal: i=1; a=rsa-sha256\r\nContent-Type: text/html\r\n\r\n<b>"
        ).untracked_reason
        == "dkim_signed"
    )
    assert (
        rewrite.prepare(b"Content-Type: multipart/mixed\r\n\r\nno boundary").untracked_reason
        == "unparsable"
    )
    assert (
        rewrite.prepare(
            b"Content-Type: text/html\r\nContent-Transfer-Encoding: x-uue\r\n\r\n<b>"
        ).untracked_reason
        == "unparsable"
    )
    assert rewrite.prepare(b"").untracked_reason == "text_only"


@pytest.mark.parametrize("name", sorted(corpus()))
def test_corpus_message(name: str) -> None:
    expect = corpus()[name]
    raw = (CORPUS_DIR / name).read_bytes()
    prepared = rewrite.prepare(raw)
    assert prepared.untracked_reason == expect["untracked"]
    out = rewrite.render(prepared, URL)
    if expect["untracked"]:
        assert out == rewrite.untouched_copy(raw)
    else:
        assert_unharmed(raw, out, pixels=expect["pixels"])


@pytest.mark.parametrize("path", mailgem_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_mailgem_fixture(path) -> None:
    """Every public fixture: byte-identical when untracked, else one pixel per HTML body part."""
    raw = path.read_bytes()
    prepared = rewrite.prepare(raw)
    out = rewrite.render(prepared, URL)
    if prepared.tracked:
        body_parts = sum(is_body_html(p) for p in leaves(raw))
        assert prepared.html_parts == body_parts
        assert_unharmed(raw, out, pixels=body_parts)
    else:
        assert out == raw
        assert not any(is_body_html(p) and PIXEL_RE.search(html_text(p)) for p in leaves(out))


html_texts = (
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)
    .map(lambda s: s.replace("\r", ""))
    .filter(lambda s: s.strip())  # an empty HTML body gets no pixel (test below)
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=html_texts,
    wrap=st.booleans(),
    cte=st.sampled_from(["8bit", "quoted-printable", "base64"]),
    charset=st.sampled_from(["utf-8", "iso-8859-1", "windows-1252", "shift_jis"]),
)
def test_any_html_gets_exactly_one_pixel_and_loses_nothing(
    body: str, wrap: bool, cte: str, charset: str
) -> None:
    html = f"<html><body>{body}</body></html>" if wrap else body
    try:
        data = html.encode(charset)
    except UnicodeEncodeError:
        data = html.encode(charset, "ignore")
        html = data.decode(charset)
    assume(html.strip())
    data = data.replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        encoded = quopri.encodestring(data).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    elif cte == "base64":
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    else:
        encoded = data
    raw = html_message(encoded, cte=cte, charset=charset)
    out = rewrite.rewrite(raw, URL)
    (part,) = leaves(out)
    text = html_text(part)
    assert len(PIXEL_RE.findall(text)) == 1
    assert PIXEL_RE.sub("", text) == data.decode(charset)
