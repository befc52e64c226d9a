"""Who is never tracked: entries parsed and matched (pure; the relay's use is in
test_links_settings)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixelserver.verdicts import exclusions


def test_exclusion_entries_are_addresses_or_domains() -> None:
    assert exclusions.parse("A@B.example, c.example;\n\n@D.example\nc.example") == [
        "a@b.example",
        "c.example",
        "d.example",
    ]
    assert exclusions.parse("bücher.example") == ["bücher.example"]
    for bad in ("@", "a@", "@b@", "no spaces.example", "a..b", "-x.example"):
        with pytest.raises(exclusions.ExclusionError, match="neither an address nor a domain"):
            exclusions.parse(bad)
    with pytest.raises(exclusions.ExclusionError, match="at most 500"):
        exclusions.parse("\n".join(f"d{i}.example" for i in range(501)))
    entries = ["lawyer@firm.example", "example.net"]
    assert exclusions.excluded("Lawyer@FIRM.example", entries)
    assert not exclusions.excluded("other@firm.example", entries)
    assert exclusions.excluded("a@mail.example.net", entries)
    assert not exclusions.excluded("a@notexample.net", entries)


@given(
    st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True),
    st.lists(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=1, max_size=3),
)
def test_a_domain_covers_itself_and_its_subdomains_only(local: str, labels: list[str]) -> None:
    domain = ".".join([*labels, "example"])
    (entry,) = exclusions.parse(domain.upper())
    assert exclusions.excluded(f"{local}@{domain}", [entry])
    assert exclusions.excluded(f"{local}@x.{domain}", [entry])
    assert not exclusions.excluded(f"{local}@x{domain}", [entry])
    assert not exclusions.excluded(f"{domain}@elsewhere.example", [entry])
