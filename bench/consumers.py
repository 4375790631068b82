"""Consumers as users run them: read an app's token file, use the token at once.

A use is ``getcallbackip`` on the emulator (no quota of interest, answers 40001/42001
exactly as a real API would). A read is invalid when the use is rejected, or when the
file is missing or empty.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

__all__ = ["Reads", "consume"]


@dataclass
class Reads:
    total: int = 0
    invalid: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    invalid_by_app: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, outcome: str) -> None:
        self.total += 1
        self.outcomes[outcome] += 1
        if outcome != "valid":
            self.invalid += 1
            self.invalid_by_app[name] += 1

    def problems(self) -> str:
        bad = {k: v for k, v in self.outcomes.items() if k != "valid"}
        return str(bad) if bad else "none"


async def consume(
    base_url: str, out: Path, names: list[str], *, seconds: float, period: float
) -> Reads:
    """Each app's token read and used every ``period`` seconds (random phase), for ``seconds``."""
    reads = Reads()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(base_url, connector=connector) as http:

        async def consumer(name: str) -> None:
            await asyncio.sleep(random.uniform(0, period))
            while time.monotonic() < deadline:
                reads.add(name, await _read_and_use(http, out / name))
                await asyncio.sleep(period)

        await asyncio.gather(*(consumer(name) for name in names))
    return reads


async def _read_and_use(http: aiohttp.ClientSession, path: Path) -> str:
    try:
        token = path.read_text()  # noqa: ASYNC240 - what consumers do; a tiny file
    except FileNotFoundError:
        return "missing"
    if not token:
        return "empty"
    async with http.get("/cgi-bin/getcallbackip", params={"access_token": token}) as reply:
        body = await reply.json(content_type=None)
    if "ip_list" in body:
        return "valid"
    return f"errcode {body.get('errcode')}"
