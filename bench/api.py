"""The API alone: GET /api/v1/jobs/{id} and POST /api/v1/jobs, one uvicorn process, wrk on loopback.

No worker runs: POSTed jobs are stored and queued (the figure), not run. wrk (Debian package `wrk`) is the
load generator, in its own process, one thread, keep-alive connections. The GET of an unchanged job (what
pollers of a job do; answered from the JSON the API keeps), the GET of a second API that reads the database
every time (JOB_VIEW_CACHE_SIZE=0) and `/health` (the same app and server, nothing read) alternate
`BENCH_API_REPS` times; the figures are medians.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from typing import Any, cast

import aiomysql
import redis
from sqlalchemy.engine import make_url

from bench.harness import (
    BENCH,
    Row,
    load,
    print_table,
    progress,
    scratch,
    service,
    status_counts,
    wrk,
    wrk_median,
)


def _driver_floor_ms(database_url: str, job_id: str, queries: int = 2000) -> float:
    """CPU per `SELECT * FROM job WHERE id = %s` through aiomysql alone, one connection, in this process:
    what any GET of a job costs here before SQLAlchemy, FastAPI or the service add anything."""
    url = make_url(database_url)

    async def measure() -> float:
        connection = await aiomysql.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 3306,
            user=url.username or "root",
            password=url.password or "",
            db=url.database or "",
        )
        async with connection.cursor() as cursor:
            started = time.process_time()
            for _ in range(queries):
                await cursor.execute("SELECT * FROM job WHERE id = %s", (job_id,))
                await cursor.fetchone()
            elapsed = time.process_time() - started
        connection.close()
        return elapsed / queries * 1000

    return asyncio.run(measure())


def run() -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    load_before = load()
    with (
        scratch() as tmp,
        service(workers=0) as stack,
        service(workers=0, JOB_VIEW_CACHE_SIZE="0") as uncached,
        stack.client() as client,
    ):
        job = client.post("/api/v1/jobs", json={"playbook": "trivial.yml"}).json()
        url = f"{stack.base_url}/api/v1/jobs/{job['id']}"
        with uncached.client() as other:
            other_job = other.post("/api/v1/jobs", json={"playbook": "trivial.yml"}).json()
        uncached_url = f"{uncached.base_url}/api/v1/jobs/{other_job['id']}"
        gets, reads, floors = [], [], []
        for rep in range(BENCH.api_reps):
            progress(
                f"wrk GET of a job (kept JSON; database every time) and /health,"
                f" {BENCH.api_connections} conns, {rep + 1}/{BENCH.api_reps}"
            )
            gets.append(wrk(url, stack.processes[0].pid))
            reads.append(wrk(uncached_url, uncached.processes[0].pid))
            floors.append(wrk(f"{stack.base_url}/health", stack.processes[0].pid))
        get, read, floor = wrk_median(gets), wrk_median(reads), wrk_median(floors)
        metrics = client.get("/metrics").text
        from_memory, from_database = (
            float(re.search(rf'ars_job_view_reads_total{{source="{source}"}} (\S+)', metrics).group(1))  # type: ignore[union-attr]
            for source in ("memory", "database")
        )
        driver_ms = _driver_floor_ms(stack.database_url, job["id"])
        script = tmp / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps({'playbook': 'trivial.yml'}))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        progress("wrk POST /api/v1/jobs")
        post = wrk(f"{stack.base_url}/api/v1/jobs", stack.processes[0].pid, script)
        queue = redis.Redis.from_url(BENCH.redis_url)

        def counts() -> tuple[int, int]:
            return status_counts(stack).get("queued", 0) - 1, int(
                cast(int, queue.zcard(stack.env["QUEUE_NAME"]))
            ) - 1

        # Requests in flight when wrk stopped are still being answered: wait for them to settle.
        deadline = time.monotonic() + 10
        while (settled := counts())[0] != settled[1] and time.monotonic() < deadline:
            time.sleep(0.1)
        stored, queued = settled
        queue.delete(stack.env["QUEUE_NAME"])
        queue.close()
    post_rate = stored / BENCH.api_seconds
    rows = [
        Row(
            f"GET /api/v1/jobs/{{id}}, 1 uvicorn process (median of {BENCH.api_reps})",
            f"{get['req_per_s']:,.0f} req/s, p50 {get['p50_s'] * 1000:.1f} ms,"
            f" p99 {get['p99_s'] * 1000:.1f} ms;"
            f" API CPU {get['api_cpu_ms_per_request']:.2f} ms/req",
            f"GET /health (no database): {floor['req_per_s']:,.0f} req/s, p99 {floor['p99_s'] * 1000:.1f} ms,"
            f" {floor['api_cpu_ms_per_request']:.2f} ms/req; AWX 100-300 req/s per 4-vCPU node",
            "≥ 1,500 req/s, p99 ≤ 20 ms",
            get["req_per_s"] >= 1500 and get["p99_s"] <= 0.020 and get["non_2xx"] == 0,
        ),
        Row(
            "GET: where the answers came from (the job did not change)",
            f"{from_memory:,.0f} from the kept JSON, {from_database:,.0f} from the database",
            "a kept copy is re-read after 5 s, and at once after a change",
            "—",
            None,
        ),
        Row(
            "GET, the database read every time (JOB_VIEW_CACHE_SIZE=0)",
            f"{read['req_per_s']:,.0f} req/s, p50 {read['p50_s'] * 1000:.1f} ms,"
            f" p99 {read['p99_s'] * 1000:.1f} ms; API CPU {read['api_cpu_ms_per_request']:.2f} ms/req",
            "floor: /health CPU + aiomysql's own SELECT of the row ="
            f" {floor['api_cpu_ms_per_request'] + driver_ms:.2f} ms/req (aiomysql alone {driver_ms:.2f} ms)",
            "what a GET of a job that changes all the time costs",
            None,
        ),
        Row(
            "POST /api/v1/jobs, stored and queued",
            f"{post_rate:,.0f} jobs/s ({stored} stored, {queued} queued; p99 {post['p99_s'] * 1000:.0f} ms);"
            f" API CPU {post['api_cpu_ms_per_request']:.2f} ms/req",
            "—",
            "≥ 300 jobs/s",
            post_rate >= 300 and stored == queued >= post["requests"] - post["non_2xx"],
        ),
    ]
    print_table("API", rows)
    return {
        "get": get,
        "get_from_memory": from_memory,
        "get_from_database": from_database,
        "get_database_every_time": read,
        "health_floor": floor,
        "driver_floor_ms_per_select": driver_ms,
        "post": {**post, "stored": stored, "queued": queued, "jobs_per_s": post_rate},
        "rows": [row.as_dict() for row in rows],
        "load_before": load_before,
        "load_after": load(),
    }
