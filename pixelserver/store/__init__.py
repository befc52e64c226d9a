"""The store: schema, migrations and the queries each part of MailPing needs. Tables declared
outside schema.py are imported here, so that Base.metadata (what migrations are checked
against, what erasure walks) always holds them."""

from pixelserver.store import clickrecords as clickrecords  # noqa: F401 - click tables (0016)
from pixelserver.store import mailaccounts as mailaccounts  # noqa: F401 - its table in metadata
from pixelserver.store import showonce as showonce  # noqa: F401 - values shown once (0018)
from pixelserver.store import webhookschema as webhookschema  # noqa: F401 - webhook tables
