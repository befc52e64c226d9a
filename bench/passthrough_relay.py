"""Baselines for bench/relay_bench.py: the plainest relays doing MailPing's split.

aiosmtpd receives a message and aiosmtplib sends one copy per recipient, each with that one
recipient in RCPT: no parsing, no rewriting, no store, no spool. Two ways of sending:
`sequential` sends the copies one after another over one upstream connection (as MailPing
does); `concurrent` sends them all at once with `aiosmtplib.send`, one connection each
(`asyncio.gather`), the stronger baseline issue 15 asks for.
Usage: python bench/passthrough_relay.py LISTEN_PORT UPSTREAM_PORT [sequential|concurrent]
"""

from __future__ import annotations

import asyncio
import sys

import aiosmtplib
from aiosmtpd.smtp import SMTP


class PassThrough:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port

    async def handle_DATA(self, server, session, envelope) -> str:
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=self.upstream_port, start_tls=False
        ) as smtp:
            for rcpt in envelope.rcpt_tos:
                await smtp.sendmail(envelope.mail_from, [rcpt], envelope.original_content)
        return "250 OK"


class ConcurrentPassThrough(PassThrough):
    async def handle_DATA(self, server, session, envelope) -> str:
        await asyncio.gather(
            *(
                aiosmtplib.send(
                    envelope.original_content,
                    sender=envelope.mail_from,
                    recipients=[rcpt],
                    hostname="127.0.0.1",
                    port=self.upstream_port,
                    start_tls=False,
                )
                for rcpt in envelope.rcpt_tos
            )
        )
        return "250 OK"


async def main(listen: int, upstream: int, mode: str) -> None:
    handler = (ConcurrentPassThrough if mode == "concurrent" else PassThrough)(upstream)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, decode_data=False, data_size_limit=None), "127.0.0.1", listen
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    mode = sys.argv[3] if len(sys.argv) > 3 else "sequential"
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), mode))
