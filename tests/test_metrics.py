"""Metrics over HTTP (the API's /metrics, a worker's own endpoint), request ids, job_id on every run line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.embedded import free_port
from tests.support import Stack, StackFactory, sample, submit, wait_for, wait_until

JOB_ROUTE = "/api/v1/jobs/{job_id}"


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue  # uvicorn's own startup lines are not ours
    return lines


@pytest.fixture(scope="module")
def metered(start_stack: StackFactory) -> tuple[Stack, int]:
    port = free_port()
    stack = start_stack(WORKER_METRICS_PORT=str(port), METRICS_MAX_AGE="0")
    return stack, port


def test_api_metrics_count_requests_jobs_and_queue(metered: tuple[Stack, int]) -> None:
    stack, _ = metered
    with stack.client() as client:
        before = client.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        job = submit(client, {"playbook": "debug.yml", "inventory": "inventory/local3.yml"})
        wait_for(client, job["id"])
        for _ in range(3):
            assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 200
        assert client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
        after = client.get("/metrics").text

    def moved(route: str, status: str, method: str = "GET") -> float:
        labels = {"method": method, "route": route, "status": status}
        return sample(after, "ars_http_requests_total", **labels) - sample(
            before.text, "ars_http_requests_total", **labels
        )

    # By route template, not by path: the 404 of an unknown id lands on the same route.
    assert moved(JOB_ROUTE, "200") >= 3
    assert moved(JOB_ROUTE, "404") == 1
    assert moved("/api/v1/jobs", "202", method="POST") == 1
    assert sample(after, "ars_http_request_duration_seconds_count", method="GET", route=JOB_ROUTE) >= 4
    assert sample(after, "ars_jobs", status="successful") >= 1
    assert 'ars_jobs{status="queued"}' in after
    assert 'ars_queue_jobs{state="waiting"}' in after
    assert 'ars_queue_jobs{state="running"}' in after


def test_queue_depth_gauge_sees_waiting_runs(start_stack: StackFactory) -> None:
    stack = start_stack(workers=0, METRICS_MAX_AGE="0")
    with stack.client() as client:
        for _ in range(3):
            submit(client, {"playbook": "debug.yml"})
        text = client.get("/metrics").text
    assert sample(text, "ars_queue_jobs", state="waiting") == 3
    assert sample(text, "ars_jobs", status="queued") == 3


def test_worker_metrics_endpoint_counts_runs_and_events(metered: tuple[Stack, int]) -> None:
    stack, port = metered
    url = f"http://127.0.0.1:{port}/metrics"

    def worker_answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(worker_answers, "the worker's metrics endpoint")
    before = httpx.get(url).text
    with stack.client() as client:
        job = wait_for(
            client, submit(client, {"playbook": "debug.yml", "inventory": "inventory/local3.yml"})["id"]
        )
    after = httpx.get(url).text
    assert job["status"] == "successful"
    assert (
        sample(after, "ars_worker_events_ingested_total") - sample(before, "ars_worker_events_ingested_total")
        == job["event_count"]
    )
    labels = {"playbook": "debug.yml", "status": "successful"}
    assert (
        sample(after, "ars_job_duration_seconds_count", **labels)
        - sample(before, "ars_job_duration_seconds_count", **labels)
        == 1
    )
    assert sample(after, "ars_worker_event_batch_seconds_count") > sample(
        before, "ars_worker_event_batch_seconds_count"
    )
    assert sample(after, "ars_worker_runs_in_flight") == 0
    assert sample(after, "ars_worker_event_backlog") == 0
    assert "ars_worker_git_fetch_seconds" in after


def test_request_id_is_echoed_generated_and_logged(metered: tuple[Stack, int]) -> None:
    stack, _ = metered
    with stack.client() as client:
        given = client.post(
            "/api/v1/jobs", json={"playbook": "debug.yml"}, headers={"X-Request-ID": "trace-42.a"}
        )
        assert given.status_code == 202
        assert given.headers["x-request-id"] == "trace-42.a"
        generated = client.get("/health").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        # An id that is unsafe to echo or log is replaced, not passed on.
        replaced = client.get("/health", headers={"X-Request-ID": "two words"}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", replaced)
        job_id = given.json()["id"]
        wait_for(client, job_id)
    submitted = [line for line in log_lines(stack.logs / "api.log") if line.get("event") == "job submitted"]
    assert {"job_id": job_id, "request_id": "trace-42.a"}.items() <= next(
        line for line in submitted if line.get("job_id") == job_id
    ).items()


def test_every_log_line_of_a_run_carries_its_job_id(metered: tuple[Stack, int]) -> None:
    stack, _ = metered
    with stack.client() as client:
        job_id = submit(client, {"playbook": "debug.yml", "inventory": "inventory/local3.yml"})["id"]
        wait_for(client, job_id)
    lines = log_lines(stack.logs / "worker0.log")
    # Our lines about the run: those that mention it anywhere, and the runner thread's own.
    about = [line for line in lines if job_id in json.dumps(line)]
    events = {line["event"] for line in about}
    assert {"run started", "ansible-runner returned", "run finished"} <= events
    assert all(line.get("job_id") == job_id for line in about), about
