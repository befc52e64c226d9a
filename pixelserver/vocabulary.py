"""The words MailPing stores and shows, defined once (DESIGN.md's vocabulary).

Each is a `StrEnum`: a member is its string, so it is stored, compared, serialised to JSON and
formatted exactly as the literal it replaces, and rows written before this module existed read
back as the same members. A misspelt word is now an AttributeError at import, not a state that
silently never matches. This module imports nothing of MailPing's: every layer may use it.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """Who fetched a pixel (or followed a link), as the classifier judged it."""

    HUMAN = "human"
    HUMAN_VIA_PROXY = "human_via_proxy"
    PRIVACY_PREFETCH = "privacy_prefetch"
    SCANNER = "scanner"
    BOT = "bot"
    SENDER = "sender"
    UNKNOWN = "unknown"


# A person opened the mail (directly or through the provider's image proxy).
PERSON_VERDICTS = (Verdict.HUMAN, Verdict.HUMAN_VIA_PROXY)
# A machine fetched it for nobody's eyes; the sender's own fetches are neither.
MACHINE_VERDICTS = (Verdict.PRIVACY_PREFETCH, Verdict.SCANNER, Verdict.BOT)


class State(StrEnum):
    """What the report says of one recipient (pixelserver/verdicts/state.py decides it)."""

    OPENED = "opened"
    PROBABLY_OPENED = "probably_opened"
    PREFETCHED_ONLY = "prefetched_only"
    SCANNED_ONLY = "scanned_only"
    NOT_OPENED = "not_opened"
    UNTRACKED = "untracked"
    QUEUED = "queued"  # in the relay's queue: not sent yet, or deferred and to be retried
    FAILED = "failed"


class Outcome(StrEnum):
    """What became of one copy at the upstream.

    pending: recorded before the durable queue existed, never tried. queued: spooled, not tried
    yet; deferred: tried, will be retried; uncertain: the upstream took the whole copy but its
    reply was lost (never re-sent); expired: given up; dropped: removed from the queue by hand.
    """

    PENDING = "pending"
    QUEUED = "queued"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DEFERRED = "deferred"
    UNCERTAIN = "uncertain"
    EXPIRED = "expired"
    DROPPED = "dropped"


# A copy still in the relay's queue, and one that will never arrive. Tuples: they go into
# SQL IN lists as they are.
WAITING_OUTCOMES = (Outcome.QUEUED, Outcome.DEFERRED)
FAILED_OUTCOMES = (Outcome.REJECTED, Outcome.EXPIRED, Outcome.DROPPED)


class Tracking(StrEnum):
    """Whether a copy carries a pixel."""

    TRACKED = "tracked"
    UNTRACKED = "untracked"


class UntrackedReason(StrEnum):
    """Why a copy went out as the user wrote it, without a pixel."""

    TEXT_ONLY = "text_only"  # no HTML part to put a pixel in
    SIGNED = "signed"  # S/MIME or OpenPGP: a change would break the signature
    DKIM_SIGNED = "dkim_signed"  # signed by the client: a change would break DKIM
    OPTED_OUT = "opted_out"  # X-MailPing: off
    UNPARSABLE = "unparsable"  # forwarded byte for byte
    EXCLUDED = "excluded"  # the recipient is on the user's exclusion list or was forgotten
    STORE_UNAVAILABLE = "store_unavailable"  # the store was down: a pixel nobody can record
    # A connected Google account sends through the Gmail API, which sends one message to every
    # address in its header: with several recipients no copy can carry one's own pixel.
    ONE_GMAIL_SEND_FOR_ALL = "one_gmail_send_for_all"


class Source(StrEnum):
    """How a message came to be tracked."""

    RELAY = "relay"  # sent through the relay
    MANUAL = "manual"  # a tracking link made by hand on the report page
