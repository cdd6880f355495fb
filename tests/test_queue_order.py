"""One worker slot: waiting runs start by priority, and a queued run canceled never starts. Enqueueing
writes arq's own record, once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from arq.jobs import Job, JobDef, JobStatus

from service.config import Settings
from service.models import utcnow
from service.queue import JobQueue, create_redis, wake_channel
from tests.support import Backends, StackFactory, submit, wait_for

LOCAL1 = "inventory/local1.yml"


def test_priority_order_and_cancel_queued(start_stack: StackFactory, tmp_path: Path) -> None:
    stack = start_stack(WORKER_MAX_JOBS="1")
    gate = tmp_path / f"gate-{uuid.uuid4().hex}"
    with stack.client() as client:
        blocker = submit(
            client, {"playbook": "gate.yml", "inventory": LOCAL1, "extra_vars": {"gate": str(gate)}}
        )
        wait_for(client, blocker["id"], {"running"})
        submitted = {}
        for priority in ("low", "default", "high", "default"):
            job = submit(client, {"playbook": "debug.yml", "inventory": LOCAL1, "priority": priority})
            submitted[job["id"]] = priority
        doomed = submit(client, {"playbook": "debug.yml", "inventory": LOCAL1, "priority": "high"})

        response = client.post(f"/api/v1/jobs/{doomed['id']}/cancel")
        assert response.status_code == 202
        assert response.json()["status"] == "canceled"
        assert client.get(f"/api/v1/jobs/{doomed['id']}").json()["status"] == "canceled"
        assert all(client.get(f"/api/v1/jobs/{job_id}").json()["status"] == "queued" for job_id in submitted)

        gate.touch()
        finished = {job_id: wait_for(client, job_id) for job_id in [blocker["id"], *submitted]}
        assert all(job["status"] == "successful" for job in finished.values())
        order = sorted(submitted, key=lambda job_id: finished[job_id]["started_at"])
        assert [submitted[job_id] for job_id in order] == ["high", "default", "default", "low"]
        # Within one priority, first come first served.
        defaults = [job_id for job_id in submitted if submitted[job_id] == "default"]
        assert [job_id for job_id in order if submitted[job_id] == "default"] == defaults

        # The canceled run was high priority, so the worker took its arq entry before the others: it never
        # started all the same.
        late = client.get(f"/api/v1/jobs/{doomed['id']}").json()
        assert late["status"] == "canceled"
        assert late["started_at"] is None
        assert late["event_count"] == 0
        assert late["reason"] == "canceled before it started"
        assert client.post(f"/api/v1/jobs/{doomed['id']}/cancel").status_code == 409


def test_enqueue_writes_arqs_record_once_and_wakes_workers(backends: Backends) -> None:
    settings = Settings(redis_url=backends.redis_url, queue_name=f"arq:queue:test-{uuid.uuid4().hex}")
    job_id = str(uuid.uuid4())

    async def main() -> tuple[list[bool], dict[str, Any] | None, JobStatus, JobDef | None, int]:
        redis = create_redis(settings)
        queue = JobQueue(redis, settings)
        async with redis.pubsub() as wakes:
            await wakes.subscribe(wake_channel(settings.queue_name))
            await wakes.get_message(timeout=5)  # the subscription's confirmation
            enqueued = [await queue.enqueue(job_id, "default", utcnow())]
            wake = await wakes.get_message(timeout=5)
        enqueued.append(await queue.enqueue(job_id, "high", utcnow()))
        job = Job(job_id, redis, _queue_name=settings.queue_name)
        status, info = await job.status(), await job.info()
        depth = await redis.zcard(settings.queue_name)
        await redis.delete(settings.queue_name, f"arq:job:{job_id}")
        await redis.aclose()
        return enqueued, wake, status, info, depth

    enqueued, wake, status, info, depth = asyncio.run(main())
    assert enqueued == [True, False]
    assert wake is not None and wake["channel"] == wake_channel(settings.queue_name).encode()
    # arq reads the record back as its own: a worker will call run_job(job_id).
    assert status == JobStatus.queued
    assert info is not None and (info.function, info.args) == ("run_job", (job_id,))
    assert depth == 1
