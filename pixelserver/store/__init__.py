"""The store: schema, migrations and the queries each part of MailPing needs."""

from pixelserver.store import mailaccounts as mailaccounts  # noqa: F401 - its table in metadata
