"""Limits that hold under abuse: how many connections the relay takes, in all and from one
client network (Postfix's smtpd_client_connection_count_limit and its global counterpart).

A "client network" is a /24 (IPv4) or /64 (IPv6): what one household, office or hosting
customer holds, and can spread connections or guesses over. Counts are per process: with
`--workers N` each worker holds its own (the kernel spreads connections evenly).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from relay import replies


class TooManyConnections(Exception):
    """A connection over a cap; `reply` is the 421 to give before closing it."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass
class ConnectionLimits:
    """Open connections, in all and by client network, in this process."""

    total: int
    per_network: int
    open: int = 0
    by_network: Counter[str] = field(default_factory=Counter)

    def admit(self) -> None:
        """Count a new connection, or raise TooManyConnections when the relay is full."""
        if self.open >= self.total:
            raise TooManyConnections(replies.TOO_MANY_CONNECTIONS)
        self.open += 1

    def admit_network(self, network: str) -> None:
        """Count an admitted connection against its client network, or raise."""
        if self.by_network[network] >= self.per_network:
            raise TooManyConnections(replies.TOO_MANY_FROM_NETWORK)
        self.by_network[network] += 1

    def release(self, network: str | None) -> None:
        self.open -= 1
        if network is not None:
            self.by_network[network] -= 1
            if self.by_network[network] <= 0:
                del self.by_network[network]  # the table holds only networks with connections
