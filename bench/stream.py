"""Live output latency: from the worker storing an event to a stream reader receiving it.

Starts a real API process (uvicorn) on MariaDB (or SQLite) and Redis (local, or an embedded one), then for
1, 50 and 200 readers of one running job: opens the readers (GET /jobs/{id}/stream, in a separate
process), and stores events one at a time the way the worker's recorder does (INSERT + commit, then XADD),
`--rate` per second. Prints per reader count the p50/p99/max latency from the commit to the reader's
receipt, and the CPU the API process (and the process of the readers) spent meanwhile (100 % = one core).

    python -m bench.stream [--events 200] [--rate 20] [--readers 1,50,200]

Everything runs on one machine: the readers' own parsing shares the CPU with the API and adds to the
latency; the figures are an upper bound of what the API adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx

from bench.harness import running_job
from harness.databases import LOCAL_MARIADB, LOCAL_REDIS, fresh_database, mariadb_answers, redis_answers
from harness.processes import service_env, start_process, wait_http
from service.config import Settings
from service.db import create_engine, migrate, session_factory
from service.embedded import EmbeddedRedis, free_port
from service.jobs.repository import EventRepository, JobRepository
from service.live.hub import create_live_redis
from service.live.publish import publish_end, publish_events
from service.models import JobStatus, utcnow

_STDOUT = 'ok: [web-{n:03d}] => {{\r\n    "msg": "a line of output, as a debug task prints it"\r\n}}'


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _event(job_id: str, seq: int) -> dict[str, Any]:
    host = f"web-{seq % 50:03d}"
    return {
        "seq": seq,
        "event": "runner_on_ok",
        "host": host,
        "task": "Say something",
        "play": "Bench",
        "stdout": _STDOUT.format(n=seq % 50),
        "created": utcnow(),
        "data": {"host": host, "task": "Say something", "res": {"msg": "x" * 200, "changed": False}},
    }


async def _write_run(settings: Settings, job_id: str, events: int, rate: float) -> dict[int, float]:
    """Store events one by one as the worker does; returns when each was committed (time.time())."""
    engine = create_engine(settings)
    sessions = session_factory(engine)
    redis = create_live_redis(settings)
    stored: dict[int, float] = {}
    try:
        for seq in range(1, events + 1):
            started = time.monotonic()
            row = _event(job_id, seq)
            async with sessions() as session:
                await EventRepository(session).add_batch(job_id, [{"job_id": job_id, **row}], seq)
                await session.commit()
            stored[seq] = time.time()
            await publish_events(redis, job_id, [row], maxlen=settings.stream_maxlen)
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))
        async with sessions() as session:
            await JobRepository(session).finish(
                job_id, status=JobStatus.successful, rc=0, reason=None, host_stats={}, event_count=events
            )
            await session.commit()
        await publish_end(redis, job_id, events, ttl=60)
    finally:
        await redis.aclose()
        await engine.dispose()
    return stored


async def _create_job(settings: Settings) -> str:
    engine = create_engine(settings)
    job_id = str(uuid.uuid4())
    async with session_factory(engine)() as session:
        await JobRepository(session).add(running_job(job_id, "bench.yml"))
        await session.commit()
    await engine.dispose()
    return job_id


async def _read(http: httpx.AsyncClient, job_id: str) -> list[tuple[int, float]]:
    """(seq, time received) of every event of one stream, until `end`."""
    received: list[tuple[int, float]] = []
    seq: int | None = None
    async with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as response:
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("event: end"):
                break
            elif not line and seq is not None:
                received.append((seq, time.time()))
                seq = None
    return received


async def _readers(base_url: str, job_id: str, count: int) -> list[list[tuple[int, float]]]:
    limits = httpx.Limits(max_connections=count + 5)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:
        return await asyncio.gather(*(_read(http, job_id) for _ in range(count)))


def _reader_process(base_url: str, job_id: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.stream", "--reader", base_url, job_id, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_readers(client: httpx.Client, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while client.get("/api/v1/streams").json()["readers"] < count:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {count} readers did not connect")
        time.sleep(0.05)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextmanager
def _backends(tmp: Path) -> Iterator[tuple[str, str, str]]:
    """(database URL, Redis URL, description); a fresh database, dropped at the end."""
    server = LOCAL_MARIADB if mariadb_answers(LOCAL_MARIADB) else f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    with ExitStack() as stack:
        redis_url = LOCAL_REDIS if redis_answers(LOCAL_REDIS) else None
        redis_url = stack.enter_context(nullcontext(redis_url) if redis_url else EmbeddedRedis(tmp / "redis"))
        database_url, drop = fresh_database(server, tmp)
        stack.callback(drop)
        yield database_url, redis_url, f"{server.split(':', 1)[0]}, {redis_url}"


def _measure(events: int, rate: float, reader_counts: list[int]) -> dict[str, Any]:
    """Print the table; return its figures per reader count."""
    figures: dict[str, Any] = {"events": events, "rate": rate, "readers": {}}
    with tempfile.TemporaryDirectory() as tmp, _backends(Path(tmp)) as (database_url, redis_url, described):
        settings = Settings(database_url=database_url, redis_url=redis_url)
        migrate(settings)
        port = free_port()
        # Every reader is `anonymous` (no authentication): one token's allowance covers them all.
        allowance = str(max(reader_counts) + 10)
        env = service_env(
            database_url, redis_url, Path(tmp), LOG_LEVEL="WARNING", MAX_STREAMS_PER_TOKEN=allowance
        )
        log = Path(tmp) / "api.log"
        api = start_process(
            [sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(port), "--no-access-log"],
            env,
            log,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base_url}/health", api, log)
            print(
                f"stream latency: {events} events at {rate:g}/s, one event per commit; {described};"
                f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
            )
            print(
                f"{'readers':>8} {'received':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'API CPU':>8}"
                f" {'reader CPU':>11}"
            )
            with httpx.Client(base_url=base_url, timeout=30) as client:
                for count in reader_counts:
                    job_id = asyncio.run(_create_job(settings))
                    readers = _reader_process(base_url, job_id, count)
                    _wait_readers(client, count, readers)
                    before = _cpu_seconds(api.pid), _cpu_seconds(readers.pid), time.monotonic()
                    stored = asyncio.run(_write_run(settings, job_id, events, rate))
                    wall = time.monotonic() - before[2]
                    api_cpu = (_cpu_seconds(api.pid) - before[0]) / wall
                    reader_cpu = (_cpu_seconds(readers.pid) - before[1]) / wall
                    output, _ = readers.communicate(timeout=300)
                    results: list[list[tuple[int, float]]] = json.loads(output)
                    latencies = [(at - stored[seq]) * 1000 for result in results for seq, at in result]
                    complete = sum(
                        [seq for seq, _ in result] == list(range(1, events + 1)) for result in results
                    )
                    row = {
                        "complete": complete,
                        "p50_ms": round(statistics.median(latencies), 1),
                        "p99_ms": round(_percentile(latencies, 0.99), 1),
                        "max_ms": round(max(latencies), 1),
                        "api_cpu_pct": round(api_cpu * 100),
                        "reader_cpu_pct": round(reader_cpu * 100),
                    }
                    figures["readers"][count] = row
                    print(
                        f"{count:>8} {f'{complete}/{count}':>9} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}"
                        f" {row['max_ms']:>8.1f} {row['api_cpu_pct']:>7}% {row['reader_cpu_pct']:>10}%",
                        flush=True,
                    )
        finally:
            api.terminate()
            api.wait(timeout=30)
    return figures


def run() -> dict[str, Any]:
    """For `python -m bench`: the default sizes."""
    return _measure(200, 20, [1, 50, 200])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20, help="events stored per second")
    parser.add_argument("--readers", default="1,50,200", help="comma separated reader counts")
    parser.add_argument("--reader", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        base_url, job_id, count = args.reader
        print(json.dumps(asyncio.run(_readers(base_url, job_id, int(count)))))
        return
    _measure(args.events, args.rate, [int(value) for value in args.readers.split(",")])


if __name__ == "__main__":
    main()
