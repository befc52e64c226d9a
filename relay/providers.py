"""Pure: which mail provider an upstream host belongs to, and whether that provider files the
copies submitted to it in the sender's Sent folder.

Why it matters: the relay submits one copy per recipient, each with that recipient's pixel. A
provider that files submitted copies in Sent would put live pixels there, and the sender
re-reading Sent would look like a recipient opening the mail. `upstream.sent_copy = "auto"`
sends the guard copy (the sender's own, without a pixel, first) to exactly these providers.

Each fact names its source. What no documentation says is recorded as unknown (None), and
"auto" leaves those alone: set `sent_copy = "guard"` if your provider files submitted mail.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    name: str
    suffixes: tuple[str, ...]  # a host matches a suffix itself or any name below it
    files_sent_copy: bool | None  # True: files what it is sent; False: does not; None: unknown
    source: str


PROVIDERS: tuple[Provider, ...] = (
    # Gmail copies a submitted message into Sent Mail unless a message with the same
    # Message-ID is there already, so only the first copy is filed (and the guard copy is the
    # one the sender sees). Observed and written up in the WildDuck wiki, "Gmail sending":
    # https://github.com/nodemailer/wildduck/wiki/Gmail-sending
    Provider(
        "Google",
        ("gmail.com", "googlemail.com", "google.com"),
        True,
        "https://github.com/nodemailer/wildduck/wiki/Gmail-sending",
    ),
    # Exchange Online stores mail sent by SMTP AUTH client submission in Sent Items since June
    # 2018 ("Sent email will now be stored in the Sent Items folder of the mailbox"), Exchange
    # Team Blog, 20 Apr 2018, "Changes coming to the SMTP Authenticated Submission client
    # protocol"; the Nextcloud Mail admin manual says the same of Exchange and Office 365. It
    # files every copy; no documentation says it keeps only the first of a Message-ID.
    Provider(
        "Microsoft 365",
        ("smtp.office365.com",),
        True,
        "https://techcommunity.microsoft.com/t5/exchange-team-blog/"
        "changes-coming-to-the-smtp-authenticated-submission-client/ba-p/607825",
    ),
    # Outlook.com mailboxes run on Exchange Online, whose client submission is described above
    # (inferred from the same source: Microsoft documents no separate behaviour for them). Only
    # the submission host: *.mail.protection.outlook.com is Microsoft 365's MX, where nothing is
    # filed in a sender's Sent Items.
    Provider(
        "Outlook.com",
        ("smtp-mail.outlook.com",),
        True,
        "https://techcommunity.microsoft.com/t5/exchange-team-blog/"
        "changes-coming-to-the-smtp-authenticated-submission-client/ba-p/607825",
    ),
    # Zoho Mail: "When you send an email from Outlook/iPhone etc from Zoho hosted accounts, a
    # copy of emails will be automatically placed" in Sent (Zoho Mail help, Mail Add-on), under
    # the account's SMTP setting "Save copy of sent emails". Every copy is filed.
    Provider(
        "Zoho Mail",
        ("zoho.com", "zoho.eu", "zoho.in", "zoho.com.au", "zoho.jp", "zohocloud.ca"),
        True,
        "https://www.zoho.com/mail/help/zoho-mail-add-on-settings.html",
    ),
    # iCloud Mail does not file what is submitted to smtp.mail.me.com; clients append their
    # own copy over IMAP (reported in the Apple-PIM-Agent-Plugin tracker, issue 63; Apple
    # documents nothing either way).
    Provider(
        "iCloud Mail",
        ("mail.me.com",),
        False,
        "https://github.com/omarshahine/Apple-PIM-Agent-Plugin/issues/63",
    ),
    # No provider documentation found on whether submitted copies are filed in Sent.
    Provider("Yahoo Mail", ("mail.yahoo.com", "aol.com"), None, "not documented"),
    Provider("Fastmail", ("fastmail.com", "messagingengine.com"), None, "not documented"),
    Provider("GMX", ("gmx.net", "gmx.com", "gmx.de"), None, "not documented"),
)


def provider_for_host(host: str) -> Provider | None:
    """The provider whose servers `host` names (case and a final dot ignored), if known."""
    name = host.lower().rstrip(".")
    for provider in PROVIDERS:
        if any(name == s or name.endswith("." + s) for s in provider.suffixes):
            return provider
    return None


def files_sent_copy(host: str) -> bool:
    """Whether the upstream `host` is documented to file submitted copies in the sender's Sent
    folder: then the relay's first copy must be a pixel-free one to the sender."""
    provider = provider_for_host(host)
    return provider is not None and provider.files_sent_copy is True


def is_google_host(host: str) -> bool:
    """Google's submission servers (the pixel server also reads hits differently for them)."""
    provider = provider_for_host(host)
    return provider is not None and provider.name == "Google"
