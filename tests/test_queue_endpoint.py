"""GET /api/v1/queue: the autoscaler's view of one queue, over HTTP against a real API and worker."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support import StackFactory, submit, wait_for, wait_until

LOCAL1 = "inventory/local1.yml"
READ_TOKEN = "reader-" + uuid.uuid4().hex
RUN_TOKEN = "runner-" + uuid.uuid4().hex


def _entry(name: str, scopes: str, token: str) -> str:
    return f"{name}:{scopes}:{hashlib.sha256(token.encode()).hexdigest()}"


def _depth(client: httpx.Client, token: str | None = READ_TOKEN) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.get("/api/v1/queue", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_queue_depth_counts_waiting_and_running_runs(start_stack: StackFactory, tmp_path: Path) -> None:
    stack = start_stack(
        WORKER_MAX_JOBS="1",
        AUTH_DISABLED="false",
        API_TOKENS=f"{_entry('keda', 'read', READ_TOKEN)};{_entry('ci', 'run', RUN_TOKEN)}",
    )
    gate = tmp_path / f"gate-{uuid.uuid4().hex}"
    with stack.client() as client:
        assert client.get("/api/v1/queue").status_code == 401
        forbidden = client.get("/api/v1/queue", headers={"Authorization": f"Bearer {RUN_TOKEN}"})
        assert forbidden.status_code == 403
        assert forbidden.json()["error"] == "Forbidden"
        # The worker's sweeper cron shares the sorted set; it is not a run.
        assert _depth(client) == {"queued": 0, "running": 0, "inflight": 0, "blocked": 0}

        run = {"Authorization": f"Bearer {RUN_TOKEN}"}
        read = {"Authorization": f"Bearer {READ_TOKEN}"}
        blocker = submit(
            client,
            {"playbook": "gate.yml", "inventory": LOCAL1, "extra_vars": {"gate": str(gate)}},
            headers=run,
        )
        client.headers.update(read)
        wait_for(client, blocker["id"], {"running"})
        assert _depth(client) == {"queued": 0, "running": 1, "inflight": 1, "blocked": 0}

        waiting = [
            submit(client, {"playbook": "debug.yml", "inventory": LOCAL1}, headers=run) for _ in range(2)
        ]
        assert _depth(client) == {"queued": 2, "running": 1, "inflight": 3, "blocked": 0}

        gate.touch()
        for job in [blocker, *waiting]:
            assert wait_for(client, job["id"])["status"] == "successful"
        wait_until(lambda: _depth(client)["inflight"] == 0, "the queue to drain")
        assert _depth(client) == {"queued": 0, "running": 0, "inflight": 0, "blocked": 0}


def test_queue_endpoint_public_needs_no_token(start_stack: StackFactory) -> None:
    stack = start_stack(
        AUTH_DISABLED="false", API_TOKENS=_entry("ci", "run", RUN_TOKEN), QUEUE_ENDPOINT_PUBLIC="true"
    )
    with stack.client() as client:
        assert _depth(client, token=None) == {"queued": 0, "running": 0, "inflight": 0, "blocked": 0}
        # Only the queue is opened.
        assert client.get("/api/v1/jobs").status_code == 401
