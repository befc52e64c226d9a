"""The DATA encoder (pure) against aiosmtplib's own transformation as the reference: for any
message and any way of cutting it into chunks, the same bytes go on the wire."""

from __future__ import annotations

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtpdata import smtp_data


def reference(message: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message))


pieces = st.lists(st.sampled_from([b"a", b"\r", b"\n", b".", b"\r\n", b"\n.", b"..", b"xyz"]))


@settings(max_examples=2000)
@given(parts=pieces, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_any_chunking_gives_the_reference_bytes(parts: list[bytes], cuts: list[int]) -> None:
    message = b"".join(parts)
    bounds = sorted({min(c, len(message)) for c in cuts})
    chunks, prev = [], 0
    for b in [*bounds, len(message)]:
        chunks.append(message[prev:b])
        prev = b
    assert b"".join(bytes(c) for c in smtp_data(chunks)) == reference(message)


def test_clean_chunks_pass_through_uncopied() -> None:
    big = b"line of a clean message\r\n" * 10_000
    view = memoryview(big)
    out = list(smtp_data([view[:100_000], view[100_000:]]))
    assert [c.obj is big for c in out if isinstance(c, memoryview)] == [True, True]
    assert b"".join(bytes(c) for c in out) == big
