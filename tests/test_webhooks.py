"""Webhooks end to end: real API and worker processes, real runs, and a real HTTP receiver in the test.
Signatures are verified with the `standardwebhooks` package, not with the service's own code."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from harness.processes import Stack
from service.api.auth import new_token
from service.embedded import EmbeddedRedis
from tests.support import StackFactory, sample, submit, wait_for, wait_until
from tests.support.receiver import Received, Receiver, receiving
from tests.support.stacks import restart_api

HELLO = {"playbook": "hello.yml"}
ARS = str(Path(sys.executable).parent / "ars")
# Retries come quickly here; WEBHOOK_TIMEOUT stays long so that a held request is held, not timed out.
QUICK = {
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_RETRY_DELAYS": "[0.3, 0.3, 0.3]",
    "WEBHOOK_TIMEOUT": "60",
    "WEBHOOK_CONCURRENCY": "8",
    "WEBHOOK_POLL_INTERVAL": "0.5",
}


# Enough retries (one a second) to outlast a process's restart while the receiver is down.
PATIENT = {**QUICK, "WEBHOOK_RETRY_DELAYS": json.dumps([1] * 25)}


@pytest.fixture(scope="module")
def hooks_stack(start_stack: StackFactory) -> Stack:
    return start_stack(workers=1, **QUICK)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


@pytest.fixture
def client(hooks_stack: Stack) -> Iterator[httpx.Client]:
    with hooks_stack.client() as client:
        yield client


def subscribe(
    client: httpx.Client, url: str, events: list[str] | None = None, **fields: Any
) -> dict[str, Any]:
    body = {"url": url, "events": events or ["job.started", "job.finished"], **fields}
    response = client.post("/api/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def unique_path() -> str:
    return f"/{uuid.uuid4().hex[:12]}"


def verified(secret: str, request: Received) -> dict[str, Any]:
    """The payload, once the standardwebhooks library accepted its signature (it raises otherwise)."""
    payload: dict[str, Any] = StandardWebhook(secret).verify(request.body, request.headers)
    return payload


def finished_in_the_outbox(client: httpx.Client, url: str) -> dict[str, Any]:
    """Subscribe `url` to both events, run a job to its end: both deliveries are in the outbox."""
    webhook = subscribe(client, url)
    wait_for(client, submit(client, HELLO)["id"])
    wait_until(lambda: len(deliveries(client, webhook["id"])) == 2, "both events in the outbox")
    return webhook


def started_then_finished(secret: str, requests: list[Received]) -> list[str]:
    return [verified(secret, request)["type"] for request in requests]


def deliveries(client: httpx.Client, webhook_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_deliveries_are_signed_as_standard_webhooks_say_and_carry_the_job(
    client: httpx.Client, receiver: Receiver
) -> None:
    path = unique_path()
    webhook = subscribe(client, receiver.url(path))
    assert webhook["secret"].startswith("whsec_")
    job = submit(client, HELLO)
    final = wait_for(client, job["id"])
    started, finished = receiver.wait_for(path, 2)
    assert [started.json["type"], finished.json["type"]] == ["job.started", "job.finished"]
    for request in (started, finished):
        payload = verified(webhook["secret"], request)
        assert payload["data"]["job"]["id"] == job["id"]
        assert request.headers["content-type"] == "application/json"
    assert verified(webhook["secret"], started)["data"]["job"]["status"] == "running"
    # The job as GET /jobs/{id} shows it once finished, field for field.
    assert verified(webhook["secret"], finished)["data"]["job"] == final
    # A forged body or another secret does not verify.
    other = StandardWebhook("whsec_" + "A" * 43 + "=")
    with pytest.raises(WebhookVerificationError):
        other.verify(finished.body, finished.headers)
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(webhook["secret"]).verify(
            finished.body.replace(b"successful", b"failed"), finished.headers
        )
    records = deliveries(client, webhook["id"])
    assert [(item["event"], item["status"], len(item["attempts"])) for item in records] == [
        ("job.finished", "delivered", 1),
        ("job.started", "delivered", 1),
    ]
    assert records[0]["id"] == finished.webhook_id
    assert records[0]["attempts"][0]["status_code"] == 200
    assert records[0]["attempts"][0]["response"] == "answered 200"


def test_retries_keep_one_webhook_id_then_give_up(client: httpx.Client, receiver: Receiver) -> None:
    flaky, broken = unique_path(), unique_path()
    receiver.answer(flaky, 500, 500)
    receiver.answer(broken, 500, 502, 503, 500, 500)
    flaky_hook = subscribe(client, receiver.url(flaky), ["job.finished"])
    broken_hook = subscribe(client, receiver.url(broken), ["job.finished"])
    job = submit(client, HELLO)
    wait_for(client, job["id"])
    attempts = receiver.wait_for(flaky, 3)
    assert [request.status for request in attempts] == [500, 500, 200]
    assert len({request.webhook_id for request in attempts}) == 1
    for request in attempts:
        verified(flaky_hook["secret"], request)
    wait_until(lambda: deliveries(client, flaky_hook["id"])[0]["status"] == "delivered", "delivered")
    (record,) = deliveries(client, flaky_hook["id"])
    assert [attempt["status_code"] for attempt in record["attempts"]] == [500, 500, 200]
    assert [attempt["error"] for attempt in record["attempts"]] == ["HTTP 500", "HTTP 500", None]
    # WEBHOOK_RETRY_DELAYS holds three delays: four attempts, then `failed`.
    wait_until(lambda: deliveries(client, broken_hook["id"])[0]["status"] == "failed", "failed")
    (failed,) = deliveries(client, broken_hook["id"])
    assert [attempt["status_code"] for attempt in failed["attempts"]] == [500, 502, 503, 500]
    assert failed["next_attempt_at"] is None and failed["finished_at"] is not None
    assert len({request.webhook_id for request in receiver.received(broken)}) == 1


def test_started_is_delivered_before_finished_even_when_it_is_retried(
    client: httpx.Client, receiver: Receiver
) -> None:
    path = unique_path()
    # job.started is refused twice: job.finished, due meanwhile, waits for it.
    receiver.answer(path, 500, 500)
    webhook = subscribe(client, receiver.url(path))
    job = submit(client, HELLO)
    wait_for(client, job["id"])
    requests = receiver.wait_for(path, 4)
    assert [(request.json["type"], request.status) for request in requests] == [
        ("job.started", 500),
        ("job.started", 500),
        ("job.started", 200),
        ("job.finished", 200),
    ]
    assert {verified(webhook["secret"], request)["data"]["job"]["id"] for request in requests} == {job["id"]}


def test_a_hanging_receiver_delays_neither_runs_nor_other_subscriptions(
    client: httpx.Client, receiver: Receiver
) -> None:
    hanging, healthy = unique_path(), unique_path()
    release = receiver.hold(hanging)
    subscribe(client, receiver.url(hanging))
    subscribe(client, receiver.url(healthy))
    # More runs than the hanging subscription may have attempts in flight (WEBHOOK_CONCURRENCY 8: 2 each).
    jobs = [submit(client, HELLO) for _ in range(4)]
    for job in jobs:
        assert wait_for(client, job["id"])["status"] == "successful"
    requests = receiver.wait_for(healthy, 8)
    assert {request.json["data"]["job"]["id"] for request in requests} == {job["id"] for job in jobs}
    # All of that while the hanging receiver answered nothing at all.
    assert not release.is_set() and receiver.received(hanging) == []
    release.set()
    done = receiver.wait_for(hanging, 8)
    assert sorted(request.json["type"] for request in done) == ["job.finished"] * 4 + ["job.started"] * 4


def test_redirects_are_not_followed_and_answers_are_read_only_in_part(
    client: httpx.Client, receiver: Receiver
) -> None:
    moved, large = unique_path(), unique_path()
    receiver.answer(moved, 302, 307, 301, 308)
    receiver.answer_large(large)
    moved_hook = subscribe(client, receiver.url(moved), ["job.finished"])
    large_hook = subscribe(client, receiver.url(large), ["job.finished"])
    job = submit(client, HELLO)
    wait_for(client, job["id"])
    wait_until(
        lambda: deliveries(client, moved_hook["id"])[0]["status"] == "failed", "every redirect refused"
    )
    (record,) = deliveries(client, moved_hook["id"])
    assert [attempt["status_code"] for attempt in record["attempts"]] == [302, 307, 301, 308]
    assert record["attempts"][0]["error"] == "HTTP 302 (redirects are not followed)"
    assert receiver.received(f"{moved}/redirected") == []
    wait_until(lambda: deliveries(client, large_hook["id"])[0]["status"] == "delivered", "the large answer")
    (attempt,) = deliveries(client, large_hook["id"])[0]["attempts"]
    assert attempt["status_code"] == 200 and attempt["response"] == "x" * 256
    # The sender closed the connection after a few KiB: the receiver could not write its 64 MiB.
    wait_until(lambda: len(receiver.received(large)) == 1, "the request recorded")
    assert receiver.large_read_whole == 0


def test_label_filters_all_must_match(client: httpx.Client, receiver: Receiver) -> None:
    filtered, everything = unique_path(), unique_path()
    team = uuid.uuid4().hex[:8]
    hook = subscribe(client, receiver.url(filtered), ["job.finished"], labels={"team": team, "env": "prod"})
    subscribe(client, receiver.url(everything), ["job.finished"])
    matching = submit(client, {**HELLO, "labels": {"team": team, "env": "prod", "extra": "x"}})
    partial = submit(client, {**HELLO, "labels": {"team": team, "env": "dev"}})
    unlabelled = submit(client, HELLO)
    for job in (matching, partial, unlabelled):
        wait_for(client, job["id"])
    (request,) = receiver.wait_for(filtered, 1)
    assert request.json["data"]["job"]["id"] == matching["id"]
    # Deliveries are written in the transaction that finished the job: the finished jobs have all theirs.
    assert [item["job_id"] for item in deliveries(client, hook["id"])] == [matching["id"]]
    receiver.wait_for(everything, 3)


def test_a_receiver_down_for_a_while_gets_the_delivery_when_it_is_back(hooks_stack: Stack) -> None:
    receiver = Receiver()  # not listening yet: connections are refused
    path = unique_path()
    with hooks_stack.client() as client:
        webhook = subscribe(client, receiver.url(path), ["job.finished"])
        job = submit(client, HELLO)
        wait_for(client, job["id"])
        wait_until(lambda: len(deliveries(client, webhook["id"])[0]["attempts"]) >= 2, "two refused attempts")
        receiver.start()
        try:
            (request,) = receiver.wait_for(path, 1)
            verified(webhook["secret"], request)
            wait_until(lambda: deliveries(client, webhook["id"])[0]["status"] == "delivered", "delivered")
            attempts = deliveries(client, webhook["id"])[0]["attempts"]
        finally:
            receiver.stop()
    assert all(attempt["status_code"] is None and "Connect" in attempt["error"] for attempt in attempts[:-1])
    assert attempts[-1]["status_code"] == 200


def test_deliveries_survive_a_killed_worker_and_a_killed_api(start_stack: StackFactory) -> None:
    """The worker is killed once the job finished, the API while the receiver is still down: a new API
    process delivers, with no worker running at all."""
    stack = start_stack(workers=1, **PATIENT)
    receiver = Receiver()
    path = unique_path()
    with stack.client() as client:
        webhook = finished_in_the_outbox(client, receiver.url(path))
        worker = stack.processes[1]
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    restart_api(stack)
    receiver.start()
    try:
        started, finished = receiver.wait_for(path, 2)
    finally:
        receiver.stop()
    assert started_then_finished(webhook["secret"], [started, finished]) == ["job.started", "job.finished"]
    assert verified(webhook["secret"], finished)["data"]["job"]["status"] == "successful"


def test_a_redis_flush_loses_no_delivery(start_stack: StackFactory, tmp_path: Path) -> None:
    """Deliveries are rows of the database: emptying Redis (its own, here) after the job finished, while
    the receiver is down, changes nothing."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        stack = start_stack(workers=1, redis_url=server.url, **PATIENT)
        receiver = Receiver()
        path = unique_path()
        with stack.client() as client:
            webhook = finished_in_the_outbox(client, receiver.url(path))
            with redis.Redis.from_url(server.url) as flushed:
                flushed.flushall()
            receiver.start()
            try:
                requests = receiver.wait_for(path, 2)
            finally:
                receiver.stop()
        stack.stop()  # while Redis is still there: a stopping worker waits for it
    finally:
        server.stop()
    assert started_then_finished(webhook["secret"], requests) == ["job.started", "job.finished"]


@pytest.fixture(scope="module")
def workerless_stack(start_stack: StackFactory) -> Stack:
    """No worker at all, as KEDA leaves a deployment with nothing queued (minReplicaCount 0)."""
    return start_stack(
        workers=0,
        METRICS_MAX_AGE="0",
        **{**QUICK, "WEBHOOK_TIMEOUT": "1", "WEBHOOK_RETRY_DELAYS": "[0.2, 0.2, 0.2]"},
    )


def test_deliveries_go_out_with_no_worker_and_a_timeout_is_retried(
    workerless_stack: Stack, receiver: Receiver
) -> None:
    path = unique_path()
    release = receiver.hold(path)
    with workerless_stack.client() as client:
        webhook = subscribe(client, receiver.url(path), ["job.finished"])
        job = submit(client, HELLO)
        response = client.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert response.json()["status"] == "canceled"
        wait_until(lambda: len(deliveries(client, webhook["id"])[0]["attempts"]) >= 1, "a first attempt")
        metrics = client.get("/metrics").text
        assert sample(metrics, "ars_webhook_outbox_pending") >= 1
        assert sample(metrics, "ars_webhook_outbox_oldest_seconds") > 0
        assert sample(metrics, "ars_webhook_attempts_total", outcome="timeout") >= 1
        release.set()
        wait_until(lambda: deliveries(client, webhook["id"])[0]["status"] == "delivered", "delivered")
        (record,) = deliveries(client, webhook["id"])
    assert record["attempts"][0] == {
        **record["attempts"][0],
        "status_code": None,
        "error": "no answer within 1 s",
    }
    requests = receiver.received(path)
    assert verified(webhook["secret"], requests[-1])["data"]["job"]["status"] == "canceled"


@dataclass
class Guarded:
    """Defaults of a deployment: tokens on, private destinations refused, no retry."""

    stack: Stack
    admin: str
    operator: str
    reader: str

    def client(self, token: str | None) -> httpx.Client:
        return self.stack.client(headers={"Authorization": f"Bearer {token}"} if token else {})


@pytest.fixture(scope="module")
def guarded(start_stack: StackFactory) -> Guarded:
    tokens, entries = zip(
        *(new_token(name, [scope]) for name, scope in (("root", "admin"), ("ci", "run"), ("eyes", "read"))),
        strict=True,
    )
    stack = start_stack(
        AUTH_DISABLED="false", API_TOKENS=";".join(entries), WEBHOOK_RETRY_DELAYS="[]", METRICS_MAX_AGE="0"
    )
    return Guarded(stack, *tokens)


@pytest.fixture
def admin(guarded: Guarded) -> Iterator[httpx.Client]:
    with guarded.client(guarded.admin) as client:
        yield client


def _hooks(admin: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = admin.get("/api/v1/webhooks").json()["items"]
    return items


GOOD = {"url": "https://hooks.example.com/ars", "events": ["job.finished"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"url": "ftp://hooks.example.com/"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "https://user:secret@hooks.example.com/"}, "url"),
        ({"url": "https://token@hooks.example.com/"}, "url"),
        ({"url": "https://hooks.example.com/" + "a" * 2030}, "url"),
        ({"url": "https:///no-host"}, "url"),
        ({"url": "https://hooks.example.com:99999/"}, "url"),
        ({"url": "https://hooks.example.com/a b"}, "url"),
        ({"url": "https://hooks.example.com/\r\nX-Injected: 1"}, "url"),
        ({"url": "https://hooks.example.com/#fragment"}, "url"),
        ({"url": 42}, "url"),
        ({"url": "http://127.0.0.1:8000/"}, "url"),
        ({"url": "http://[::1]/"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "url"),
        ({"url": "http://10.0.0.7/"}, "url"),
        ({"url": "http://[::ffff:127.0.0.1]/"}, "url"),
        ({"events": []}, "events"),
        ({"events": ["job.deleted"]}, "events"),
        ({"events": "job.finished"}, "events"),
        ({"events": [1]}, "events"),
        ({"labels": {"team": 1}}, "labels"),
        ({"labels": {"team": ["a"]}}, "labels"),
        ({"labels": {"team": None}}, "labels"),
        ({"labels": ["team"]}, "labels"),
        ({"labels": {"bad key!": "x"}}, "labels"),
        ({"labels": {"team": "a\u202e"}}, "labels"),
        ({"description": "x" * 501}, "description"),
        ({"secret": "whsec_mine"}, "secret"),
    ],
)
def test_bad_subscriptions_are_422_and_store_nothing(
    admin: httpx.Client, change: dict[str, Any], field: str
) -> None:
    before = _hooks(admin)
    response = admin.post("/api/v1/webhooks", json={**GOOD, **change})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] in ("ValidationError", "InvalidRequest") and field in body["detail"]
    assert _hooks(admin) == before


def test_only_admin_tokens_manage_webhooks(guarded: Guarded) -> None:
    with guarded.client(guarded.admin) as admin:
        created = admin.post("/api/v1/webhooks", json=GOOD)
        assert created.status_code == 201, created.text
        webhook_id = created.json()["id"]
    requests = [
        ("POST", "/api/v1/webhooks", GOOD),
        ("GET", "/api/v1/webhooks", None),
        ("GET", f"/api/v1/webhooks/{webhook_id}", None),
        ("GET", f"/api/v1/webhooks/{webhook_id}/deliveries", None),
        ("DELETE", f"/api/v1/webhooks/{webhook_id}", None),
    ]
    for token, status in ((guarded.operator, 403), (guarded.reader, 403), (None, 401), ("wrong", 401)):
        with guarded.client(token) as client:
            for method, path, body in requests:
                response = client.request(method, path, json=body)
                assert response.status_code == status, (token, method, path, response.text)
    with guarded.client(guarded.admin) as admin:
        assert [hook["id"] for hook in _hooks(admin)].count(webhook_id) == 1
        assert admin.delete(f"/api/v1/webhooks/{webhook_id}").status_code == 204


def test_unknown_ids_are_404_and_malformed_ones_422(admin: httpx.Client) -> None:
    unknown = str(uuid.uuid4())
    for method, path in (
        ("GET", f"/api/v1/webhooks/{unknown}"),
        ("DELETE", f"/api/v1/webhooks/{unknown}"),
        ("GET", f"/api/v1/webhooks/{unknown}/deliveries"),
    ):
        response = admin.request(method, path)
        assert response.status_code == 404 and response.json()["error"] == "NotFound", response.text
    for path in (
        "/api/v1/webhooks/..%2F..%2Fetc",
        "/api/v1/webhooks/not-an-id",
        f"/api/v1/webhooks/{unknown}x",
    ):
        assert admin.get(path).status_code in (404, 422)
    webhook_id = admin.post("/api/v1/webhooks", json=GOOD).json()["id"]
    for cursor in ("-1", "abc", "9" * 30):
        response = admin.get(f"/api/v1/webhooks/{webhook_id}/deliveries", params={"cursor": cursor})
        assert response.status_code == 422, response.text
    assert admin.delete(f"/api/v1/webhooks/{webhook_id}").status_code == 204
    assert admin.get(f"/api/v1/webhooks/{webhook_id}").status_code == 404


def test_the_secret_is_shown_once_and_never_logged(guarded: Guarded, admin: httpx.Client) -> None:
    # A chat service's hook URL carries a token of its own in its path: not logged either.
    path_token = uuid.uuid4().hex
    url = f"https://hooks.example.com/services/{path_token}"
    created = admin.post("/api/v1/webhooks", json={**GOOD, "url": url, "description": "CI"}).json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    shown = admin.get(f"/api/v1/webhooks/{created['id']}").json()
    assert "secret" not in shown and shown == {
        key: value for key, value in created.items() if key != "secret"
    }
    assert shown["created_by"] == "root"
    assert all("secret" not in hook for hook in _hooks(admin))
    # Sign an attempt with it (refused: the destination does not resolve here), then read every log.
    job = submit(admin, HELLO)
    wait_for(admin, job["id"])
    wait_until(
        lambda: any(item["status"] == "failed" for item in deliveries(admin, created["id"])), "the attempt"
    )
    logs = "".join(log.read_text() for log in guarded.stack.logs.glob("*.log"))
    assert "hooks.example.com" in logs  # the attempt was logged, by its host
    assert secret not in logs and path_token not in logs
    admin.delete(f"/api/v1/webhooks/{created['id']}")


def test_private_destinations_are_refused_when_connecting(guarded: Guarded, admin: httpx.Client) -> None:
    """A name passes the URL check; the address it resolves to is refused at delivery, and nothing is sent."""
    with receiving() as receiver:
        path = unique_path()
        webhook = subscribe(admin, f"http://localhost:{receiver.port}{path}", ["job.finished"])
        job = submit(admin, HELLO)
        wait_for(admin, job["id"])
        wait_until(lambda: deliveries(admin, webhook["id"])[0]["status"] == "failed", "refused")
        (record,) = deliveries(admin, webhook["id"])
        assert receiver.received(path) == []
    (attempt,) = record["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("refused: localhost resolves to ")
    assert "loopback" in attempt["error"] and "WEBHOOK_ALLOW_PRIVATE" in attempt["error"]
    metrics = admin.get("/metrics").text
    assert sample(metrics, "ars_webhook_attempts_total", outcome="refused") >= 1
    assert sample(metrics, "ars_webhook_deliveries_total", event="job.finished", outcome="failed") >= 1
    admin.delete(f"/api/v1/webhooks/{webhook['id']}")


def _ars(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ARS, *args],
        env={**os.environ, "ARS_URL": stack.base_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ars_webhooks_commands(hooks_stack: Stack, client: httpx.Client, receiver: Receiver) -> None:
    path = unique_path()
    team = uuid.uuid4().hex[:8]
    created = _ars(
        hooks_stack, "webhooks", "create", receiver.url(path), "--event", "job.finished",
        "--label", f"team={team}", "--description", "chat bot",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines())
    webhook_id, secret = fields["id"].strip(), fields["secret"].strip()
    assert secret.startswith("whsec_") and "not shown again" in created.stderr
    listed = _ars(hooks_stack, "webhooks", "list")
    assert any(
        line.split()[:3] == [webhook_id, "job.finished", f"team={team}"]
        for line in listed.stdout.splitlines()
    )
    shown = json.loads(_ars(hooks_stack, "webhooks", "show", webhook_id, "--json").stdout)
    assert shown["description"] == "chat bot" and "secret" not in shown
    job = submit(client, {**HELLO, "labels": {"team": team}})
    wait_for(client, job["id"])
    (request,) = receiver.wait_for(path, 1)
    verified(secret, request)
    wait_until(lambda: deliveries(client, webhook_id)[0]["status"] == "delivered", "delivered")
    table = _ars(hooks_stack, "webhooks", "deliveries", webhook_id).stdout.splitlines()
    assert table[1].split() == [request.webhook_id, "job.finished", job["id"], "delivered", "1", "200"]
    refused = _ars(hooks_stack, "webhooks", "create", "ftp://example.com/")
    assert refused.returncode == 1 and "the API answered 422" in refused.stderr and "url" in refused.stderr
    deleted = _ars(hooks_stack, "webhooks", "delete", webhook_id)
    assert deleted.returncode == 0 and "deleted" in deleted.stderr
    gone = _ars(hooks_stack, "webhooks", "show", webhook_id)
    assert gone.returncode == 1 and "the API answered 404" in gone.stderr
