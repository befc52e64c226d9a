"""Pure: a delivery's hits -> a small SVG bar chart of fetches over time since sending.

Drawn on the server so the page needs no script and no chart library; times are bucketed on
a roughly logarithmic scale, since machines fetch within seconds and people hours or days later.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from pixelserver.vocabulary import MACHINE_VERDICTS, PERSON_VERDICTS, Verdict

BUCKETS = (
    (60, "<1m"),
    (600, "<10m"),
    (3600, "<1h"),
    (6 * 3600, "<6h"),
    (86400, "<1d"),
    (3 * 86400, "<3d"),
    (float("inf"), "later"),
)
GROUPS = (
    ("people", tuple(PERSON_VERDICTS), "#1a7f37"),
    ("machines", (*MACHINE_VERDICTS, Verdict.UNKNOWN), "#bf8700"),
    ("you", (Verdict.SENDER,), "#8c959f"),
)
WIDTH, HEIGHT, PAD, LABEL = 336, 120, 4, 16


def bucket_of(seconds: float) -> int:
    return next(i for i, (limit, _) in enumerate(BUCKETS) if seconds < limit)


def hits_svg(points: Sequence[tuple[float, str]]) -> str:
    """`points`: (seconds after sending, verdict) per hit. Returns standalone SVG markup."""
    counts = [[0] * len(GROUPS) for _ in BUCKETS]
    for seconds, verdict in points:
        for g, (_, verdicts, _) in enumerate(GROUPS):
            if verdict in verdicts:
                counts[bucket_of(seconds)][g] += 1
    top = max([sum(c) for c in counts] + [1])
    slot = (WIDTH - 2 * PAD) / len(BUCKETS)
    bar = slot * 0.7
    plot = HEIGHT - LABEL - PAD
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} '
        f'{HEIGHT}" role="img" aria-label="Fetches over time since sending">'
    ]
    for i, (_, label) in enumerate(BUCKETS):
        x = PAD + i * slot + (slot - bar) / 2
        y = PAD + plot
        for g, (name, _, colour) in enumerate(GROUPS):
            n = counts[i][g]
            if not n:
                continue
            h = plot * n / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{n} {escape(name)}, {escape(label)}</title></rect>'
            )
        parts.append(
            f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - 3}" font-size="10" '
            f'text-anchor="middle" fill="#57606a">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
