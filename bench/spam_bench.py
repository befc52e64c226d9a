"""What a tracked copy costs in SpamAssassin score, over every fixture message: the project's
own corpus (tests/corpus/*.eml) and the 104 public messages of the Ruby `mail` library.

Each message is scored as submitted, as MailPing's copy with click tracking on (the pixel in
the form `relay/rewrite.py` chooses, links rewritten), and as the same copy with the pixel as
an `<img>` always (the baseline: what the relay wrote before it chose forms, and what most
trackers write). Scores are SpamAssassin's local rules (`spamassassin -L -t`: no network
tests, no Bayes), as the tests use them. Untracked messages (text only, signed, DKIM-signed)
go out byte-identical and are counted apart.

Run: .venv/bin/python bench/spam_bench.py [--jobs 2] [--mailgem DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, machine

sys.path.insert(0, str(ROOT))

from pixelserver.tokens import click_tag, click_url, mint_token  # noqa: E402
from relay import clicklinks, rewrite  # noqa: E402

PUBLIC = "https://track.example.com"
KEY = b"k" * 32
_SCORE_RE = re.compile(r"^X-Spam-Status: \w+, score=(-?[\d.]+)", re.M)


def copy_of(raw: bytes, *, img_only: bool) -> bytes | None:
    """One recipient's copy with clicks on; None for a message the relay leaves untouched."""
    chooser = rewrite.pixel_form
    if img_only:
        rewrite.pixel_form = lambda html: rewrite.PixelForm.IMG
    try:
        prepared = rewrite.prepare(raw, own_pixel_prefix=f"{PUBLIC}/p/")
    finally:
        rewrite.pixel_form = chooser
    if not prepared.tracked:
        return None
    token = mint_token(KEY)
    plan = clicklinks.plan(prepared, raw, public_url=PUBLIC, restore={}, track=True)

    def link(n: int) -> str:
        return click_url(PUBLIC, token, n, click_tag(KEY, token, n, plan.links[n]))

    return b"".join(clicklinks.render_chunks(plan, f"{PUBLIC}/p/{token}.gif", link))


def score(raw: bytes) -> tuple[float, set[str]]:
    out = subprocess.run(
        ["spamassassin", "-L", "-t"], input=raw, capture_output=True, timeout=300
    ).stdout.decode(errors="replace")
    m = _SCORE_RE.search(out)
    if m is None:
        raise RuntimeError("spamassassin gave no X-Spam-Status")
    details = out.rsplit("Content analysis details:", 1)[-1]
    rules = {n for p, n in re.findall(r"^\s*(-?\d+\.\d+)\s+([A-Z0-9_]+)\s", details, re.M)}
    return float(m.group(1)), rules


def image_only(rules: set[str]) -> bool:
    """Whether one of SpamAssassin's HTML_IMAGE_ONLY_xx rules fired."""
    return any(r.startswith("HTML_IMAGE_ONLY") for r in rules)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument(
        "--mailgem",
        type=Path,
        default=Path(
            os.environ.get("MAILPING_MAILGEM_DIR") or ROOT.parent / "shared/corpus/mail-gem"
        ),
    )
    args = ap.parse_args()
    files = sorted((ROOT / "tests" / "corpus").glob("*.eml")) + sorted(args.mailgem.rglob("*.eml"))
    started = time.perf_counter()
    work = []
    for path in files:
        raw = path.read_bytes()
        ours = copy_of(raw, img_only=False)
        if ours is not None:
            work.append((path, raw, ours, copy_of(raw, img_only=True)))
    with ThreadPoolExecutor(args.jobs) as pool:
        scored = list(
            pool.map(lambda w: (w[0], score(w[1]), score(w[2]), score(w[3])), work)  # type: ignore[arg-type]
        )
    print(machine())
    print(f"{len(files)} messages, {len(work)} tracked (the rest go out byte-identical)")
    print(
        f"{'copy':<22}{'mean Δ':>8}{'max Δ':>8}{'Δ > 1.0':>9}{'Δ > 0':>7}"
        "  image-only rule where the original had none"
    )
    for label, k in (("MailPing", 2), ("baseline: <img> always", 3)):
        deltas = [s[k][0] - s[1][0] for s in scored]
        added = sum(image_only(s[k][1]) and not image_only(s[1][1]) for s in scored)
        print(
            f"{label:<22}{statistics.mean(deltas):>+8.2f}{max(deltas):>+8.2f}"
            f"{sum(d > 1.0 for d in deltas):>9}{sum(d > 0.05 for d in deltas):>7}  {added}"
        )
    worst = sorted(scored, key=lambda s: s[2][0] - s[1][0], reverse=True)[:5]
    print("MailPing's largest differences:")
    for path, orig, ours, _ in worst:
        new = sorted(ours[1] - orig[1])
        gone = sorted(orig[1] - ours[1])
        print(f"  {ours[0] - orig[0]:+.1f} {path.name}: added {new} removed {gone}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
