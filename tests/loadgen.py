"""A small, exact load generator for durability tests: counts the pixel responses that were
fully received, which is what "answered" means (wrk cannot say which requests a killed server
answered)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pixelserver.pixel import GIF


@dataclass
class Load:
    answered: int = 0
    failed: int = 0


async def pixel_load(
    host: str,
    port: int,
    paths: list[str],
    stop: asyncio.Event,
    *,
    concurrency: int = 16,
    new_connection: bool = False,
) -> Load:
    """Fetch `paths` round-robin over `concurrency` connections until `stop` is set."""
    load = Load()

    async def client(i: int) -> None:
        reader = writer = None
        n = i
        while not stop.is_set():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                path = paths[n % len(paths)]
                n += concurrency
                close = "Connection: close\r\n" if new_connection else ""
                request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: loadgen\r\n"
                writer.write(f"{request}{close}\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                body = await asyncio.wait_for(reader.readexactly(len(GIF)), 10)
                if head.startswith(b"HTTP/1.1 200") and body == GIF:
                    load.answered += 1
                else:
                    load.failed += 1
                if new_connection:
                    writer.close()
                    writer = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, EOFError):
                load.failed += 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return load
