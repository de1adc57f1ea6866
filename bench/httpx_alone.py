"""How many requests per second httpx alone makes on one core: the ceiling's yardstick.

    python -m bench.httpx_alone URL SECONDS [CONCURRENCY]

One `httpx.AsyncClient` with the daemon's limits (64 connections, 16 kept alive), CONCURRENCY
tasks each doing GET + read body in a loop, on anyio/asyncio like the daemon. Prints one
JSON object: requests, seconds, requests per second, CPU seconds used.
"""

from __future__ import annotations

import json
import sys
import time

import anyio
import httpx


async def run(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    count = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    async with httpx.AsyncClient(trust_env=False, limits=limits) as client:

        async def worker(end: float) -> None:
            nonlocal count
            while time.monotonic() < end:
                response = await client.get(url)
                await response.aread()
                count += 1

        async with anyio.create_task_group() as tg:  # warm-up: connections, caches
            for _ in range(concurrency):
                tg.start_soon(worker, time.monotonic() + 0.5)
        count = 0
        start, cpu0 = time.monotonic(), time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker, start + seconds)
        elapsed, cpu = time.monotonic() - start, time.process_time() - cpu0
    return {
        "requests": count,
        "seconds": round(elapsed, 3),
        "rps": round(count / elapsed, 1),
        "cpu_s": round(cpu, 3),
    }


if __name__ == "__main__":
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    print(json.dumps(anyio.run(run, sys.argv[1], float(sys.argv[2]), concurrency)))
