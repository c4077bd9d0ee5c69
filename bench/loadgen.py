"""A small closed-loop HTTP/1.1 load generator, used only where ``wrk`` is not installed (CI).

It does what ``bench/cycle.lua`` does (cycle bodies, one token per request, count non-200s and
degraded answers) and reports the same JSON fields. It is Python, so at high rates it competes
with the server for CPU: the harness records which generator produced each number.

    python bench/loadgen.py URL PATH BODIES TOKENS CONCURRENCY DURATION_S MODE
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

DEGRADED = b"could not be read"


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def _run(
    url: str,
    path: str,
    bodies: list[bytes],
    tokens: list[bytes],
    concurrency: int,
    duration_s: float,
    mode: str,
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    state = {"token": 0, "body": 0, "bad": 0, "degraded": 0, "exhausted": 0, "errors": 0}
    first_bad = [""]
    deadline = time.perf_counter() + duration_s

    def next_token() -> bytes | None:
        i = state["token"]
        if i >= len(tokens):
            if mode == "unique":
                state["exhausted"] = 1
                return None
            i = 0
        state["token"] = i + 1
        return tokens[i]

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = offset
        try:
            while time.perf_counter() < deadline:
                token = next_token()
                if token is None:
                    return
                body = bodies[i % len(bodies)]
                i += 1
                head = (
                    (
                        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        "Content-Type: application/json\r\nAccept: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n"
                    ).encode()
                    + b"Authorization: Bearer "
                    + token
                    + b"\r\n\r\n"
                )
                started = time.perf_counter()
                writer.write(head + body)
                await writer.drain()
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                payload = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                status = int(status_line.split()[1])
                if status != 200:
                    state["bad"] += 1
                    if not first_bad[0]:
                        first_bad[0] = f"{status} {payload[:300].decode(errors='replace')}"
                elif DEGRADED in payload:
                    state["degraded"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            state["errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    values = sorted(latencies)
    us = 1e6
    return {
        "requests": len(values),
        "duration_us": int(elapsed * us),
        "p50_us": int(_percentile(values, 50) * us),
        "p90_us": int(_percentile(values, 90) * us),
        "p99_us": int(_percentile(values, 99) * us),
        "max_us": int((values[-1] if values else 0) * us),
        "mean_us": (sum(values) / len(values) * us) if values else 0.0,
        "connect_errors": 0,
        "read_errors": state["errors"],
        "write_errors": 0,
        "timeouts": 0,
        "non2xx": state["bad"],
        "bad": state["bad"],
        "degraded": state["degraded"],
        "exhausted": state["exhausted"],
        "first_bad": first_bad[0],
    }


def main(argv: list[str]) -> int:
    url, path, bodies_file, tokens_file, concurrency, duration, mode = argv
    bodies = [line for line in Path(bodies_file).read_bytes().splitlines() if line]
    tokens = [line for line in Path(tokens_file).read_bytes().splitlines() if line]
    result = asyncio.run(_run(url, path, bodies, tokens, int(concurrency), float(duration), mode))
    sys.stdout.write("BENCH " + orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
