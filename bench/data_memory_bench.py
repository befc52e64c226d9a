"""Memory and time of the DATA phase alone: MailPing's RelaySMTP beside aiosmtpd's own SMTP
(the baseline, measured in the same run), for messages whose shape is hostile or ordinary.

Issue 12: a body of millions of empty lines must not cost ~30x its size. aiosmtpd keeps one
bytearray per line (about 60 bytes of object for a 2-byte line); RelaySMTP reads into one
buffer. Peak traced Python memory (tracemalloc) during one message, over the message size;
the client sends pre-built bytes from a thread, so it allocates nothing while traced.

Run: .venv/bin/python bench/data_memory_bench.py [millions of empty lines, default 2]
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosmtpd.smtp import SMTP  # noqa: E402

from relay.smtp import RelaySMTP  # noqa: E402


class Sizes:
    async def handle_DATA(self, server, session, envelope) -> str:
        return f"250 OK {len(envelope.original_content)}"


def send(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        f = s.makefile("rb")
        f.readline()
        for command in (b"HELO bench", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.org>"):
            s.sendall(command + b"\r\n")
            f.readline()
        s.sendall(b"DATA\r\n")
        f.readline()
        s.sendall(payload)
        return f.readline()


async def measure(server_class: type[SMTP], payload: bytes) -> tuple[int, float, bytes]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: server_class(Sizes(), decode_data=False, data_size_limit=None), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        reply = await asyncio.to_thread(send, port, payload)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        server.close()
        await server.wait_closed()
    return peak, took, reply.strip()


async def main() -> None:
    millions = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    lines = int(millions * 1_000_000)
    ordinary = (b"An ordinary line of quoted text, about seventy-six octets long........\r\n") * (
        8 * 1024 * 1024 // 74
    )
    cases = {
        f"{lines} empty lines": b"\r\n" * lines,
        "8 MiB of 74-octet lines": ordinary,
    }
    print(f"{'message':28} {'server':10} {'size':>10} {'peak':>12} {'x size':>7} {'seconds':>8}")
    for name, body in cases.items():
        payload = body + b".\r\n"
        for label, cls in (("aiosmtpd", SMTP), ("MailPing", RelaySMTP)):
            peak, took, reply = await measure(cls, payload)
            assert reply.startswith(b"250"), reply
            print(
                f"{name:28} {label:10} {len(body):>10} {peak:>12} "
                f"{peak / len(body):>7.1f} {took:>8.2f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
