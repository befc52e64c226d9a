"""The store. Tables declared outside schema.py are imported here, so that Base.metadata (what
migrations are checked against, what erasure walks) always holds them."""

from pixelserver.store import clickrecords as clickrecords  # noqa: F401 - click tables (0014)
