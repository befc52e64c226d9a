"""Baseline for bench/pixel_bench.py: a bare Tornado handler returning the same 43-byte GIF
with the same headers, recording nothing. Usage: python bench/bare_pixel.py PORT"""

from __future__ import annotations

import asyncio
import sys

import tornado.web

from pixelserver.pixel import GIF, NO_CACHE


class Bare(tornado.web.RequestHandler):
    def compute_etag(self) -> None:
        return None

    def get(self, _name: str) -> None:
        for k, v in NO_CACHE.items():
            self.set_header(k, v)
        self.write(GIF)


async def main(port: int) -> None:
    tornado.web.Application([(r"/p/([^/]*)", Bare)]).listen(port, address="127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
