"""The Gmail API sends to the message's own To/Cc/Bcc: how MailPing readdresses a copy."""

from __future__ import annotations

from relay.gmailapi import header_recipients, readdressed

MESSAGE = (
    b"From: ana@example.org\r\n"
    b"To: Bob <bob@example.net>,\r\n"
    b"\tCy <cy@example.org>\r\n"
    b"CC: dee@example.com\r\n"
    b"Subject: To: not a header\r\n"
    b"\r\n"
    b"To: in the body stays\r\n"
)


def test_header_recipients_reads_folded_fields_in_any_case() -> None:
    assert header_recipients(MESSAGE) == {"bob@example.net", "cy@example.org", "dee@example.com"}


def test_readdressed_to_the_sender_alone_keeps_everything_else_byte_for_byte() -> None:
    out = readdressed(MESSAGE, to=["ana@example.org"])
    assert header_recipients(out) == {"ana@example.org"}
    assert out.startswith(b"To: ana@example.org\r\nFrom: ana@example.org\r\n")
    assert b"Cy <cy@example.org>" not in out and b"dee@" not in out
    assert out.endswith(b"Subject: To: not a header\r\n\r\nTo: in the body stays\r\n")


def test_bcc_is_added_and_the_visible_recipients_stay() -> None:
    out = readdressed(MESSAGE, bcc=["eve@example.com"])
    assert out == b"Bcc: eve@example.com\r\n" + MESSAGE
    assert "eve@example.com" in header_recipients(out)
