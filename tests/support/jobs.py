"""Talking to a stack's API the way the tests do: submit, wait for a state (a condition, never a sleep)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from harness.processes import FINISHED
from service.models import Job, JobStatus, utcnow


def submit(client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = client.post("/api/v1/jobs", json=body, **kwargs)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_for(
    client: httpx.Client,
    job_id: str,
    statuses: set[str] = FINISHED,
    deadline_s: float = 90,
) -> dict[str, Any]:
    """Poll the job until its status is one of `statuses` (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + deadline_s
    while True:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {deadline_s} s")
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], what: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def all_events(client: httpx.Client, job_id: str, page: int = 100) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        response = client.get(
            f"/api/v1/jobs/{job_id}/events",
            params={"after": len(events) and events[-1]["seq"], "limit": page},
        )
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        if not items:
            return events
        events.extend(items)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text (0 when absent: counters start unseen)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.fullmatch(r"([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return 0.0


def job_row(status: JobStatus = JobStatus.queued, **fields: Any) -> Job:
    """A job row as the API stores a debug.yml run (a running one as a worker leaves it once claimed), for
    tests that write rows without the API."""
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "status": status,
        "playbook": "debug.yml",
        "source": {"type": "bundled"},
        "extra_vars": {},
        "tags": [],
        "skip_tags": [],
        "check": False,
        "diff": False,
        "verbosity": 0,
        "priority": "default",
        "labels": {},
        "created_at": utcnow(),
    }
    if status is JobStatus.running:
        values |= {"started_at": utcnow(), "heartbeat_at": utcnow(), "worker_id": "w1"}
    return Job(**(values | fields))


def event_rows(job_id: str, seqs: range) -> list[dict[str, Any]]:
    """`verbose` event rows of a job, as the worker stores them, with these seqs."""
    return [
        {
            "job_id": job_id,
            "seq": seq,
            "event": "verbose",
            "host": None,
            "task": None,
            "play": None,
            "stdout": f"line {seq}",
            "created": utcnow(),
            "data": {"n": seq},
        }
        for seq in seqs
    ]
