"""Recipients a user never wants tracked (a colleague, a lawyer, their own other address).

An entry is a whole address (`ana@example.com`) or a domain (`example.com`, also written
`@example.com`), which covers its subdomains too. Matching ignores case, as mail does for
domains and as people expect for the local part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_ENTRIES = 500

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")


class ExclusionError(ValueError):
    """An entry that is neither an address nor a domain (the message names the entry)."""


def parse(text: str) -> list[str]:
    """One entry per line or comma; normalised (lower case, no leading @), duplicates and
    blank lines dropped. Raises ExclusionError for the first entry that cannot match mail."""
    entries: list[str] = []
    for raw in re.split(r"[\n,;]+", text):
        entry = raw.strip().lower()
        if not entry:
            continue
        local, at, domain = entry.removeprefix("@").rpartition("@")
        if (at and not local) or not _is_domain(domain):
            raise ExclusionError(f"{raw.strip()!r} is neither an address nor a domain")
        entry = entry.removeprefix("@")
        if entry not in entries:
            entries.append(entry)
    if len(entries) > MAX_ENTRIES:
        raise ExclusionError(f"at most {MAX_ENTRIES} entries")
    return entries


def _is_domain(domain: str) -> bool:
    try:
        ascii_form = domain.encode("idna").decode()
    except UnicodeError:
        return False
    return bool(_DOMAIN.match(ascii_form))


def excluded(recipient: str, entries: Iterable[str]) -> bool:
    address = recipient.strip().lower()
    domain = address.rpartition("@")[2]
    for entry in entries:
        if "@" in entry:
            if address == entry:
                return True
        elif domain == entry or domain.endswith("." + entry):
            return True
    return False
