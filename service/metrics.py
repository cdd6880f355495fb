"""Prometheus metrics of the API and the worker, and the request id of every API request.

Each process builds its own registry (no module-level collectors): the app and the worker own theirs, so
building an app twice in one process (tests) never registers a metric twice.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.jobs.lifecycle import Change, Transition
from service.models import utcnow
from service.queue import QueueDepth
from service.webhooks.repository import OutboxStats

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is kept only when it is safe to echo and log: printable ASCII, no spaces, bounded.
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}\Z")
_UNMATCHED = "<unmatched>"

# Runs last from about a second (a debug task) to hours (a fleet upgrade).
_RUN_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, float("inf"))


class WebhookMetrics:
    """Webhook deliveries (service/webhooks), sent by the API processes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "ars_webhook_deliveries",
            "Webhook deliveries that ended, by event and outcome (delivered, failed after every retry)",
            ["event", "outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "ars_webhook_attempts",
            "Webhook attempts, by outcome: success, http_error, timeout, refused (a destination not "
            "allowed), connection_error",
            ["outcome"],
            registry=registry,
        )
        self.pending = Gauge(
            "ars_webhook_outbox_pending", "Webhook deliveries not yet delivered or failed", registry=registry
        )
        self.oldest = Gauge(
            "ars_webhook_outbox_oldest_seconds",
            "Age of the oldest pending webhook delivery (0 when none)",
            registry=registry,
        )


class ScheduleMetrics:
    """Schedules (service/schedules), fired by the API processes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.fires = Counter(
            "ars_schedule_fires",
            "Fire times handled by this process, by outcome: queued (a run started), skipped (overlap: the "
            "previous run still queued or running), missed (passed while no API process ran, beyond "
            "SCHEDULE_MISFIRE_GRACE), refused (the job body no longer passes the checks)",
            ["outcome"],
            registry=registry,
        )
        self.next_fire = Gauge(
            "ars_schedule_next_fire_timestamp_seconds",
            "When each enabled schedule fires next (Unix time)",
            ["schedule"],
            registry=registry,
        )

    def set_next_fires(self, next_fires: list[tuple[str, datetime]]) -> None:
        # Cleared first: a schedule deleted or disabled drops out.
        self.next_fire.clear()
        for name, at in next_fires:
            self.next_fire.labels(schedule=name).set(at.replace(tzinfo=UTC).timestamp())


class ApiMetrics:
    """Request counts and latencies by route template, plus gauges refreshed when /metrics is scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ars_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ars_http_request_duration_seconds",
            "Time to answer an HTTP request (to the start of the response body for streams)",
            ["method", "route"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.job_view_reads = Counter(
            "ars_job_view_reads",
            "GET /api/v1/jobs/{id} answers, by source: memory (job unchanged) or database",
            ["source"],
            registry=self.registry,
        )
        self.page_reads = Counter(
            "ars_page_reads",
            "GET /api/v1/jobs (list) and /api/v1/jobs/{id}/events (events) answers: from memory or database",
            ["page", "source"],
            registry=self.registry,
        )
        self.jobs = Gauge("ars_jobs", "Jobs stored, by status", ["status"], registry=self.registry)
        self.queue = Gauge(
            "ars_queue_jobs",
            "Runs of the queue: waiting for a slot, running, or blocked (waiting for a host or named lock)",
            ["state"],
            registry=self.registry,
        )
        self.webhooks = WebhookMetrics(self.registry)
        self.schedules = ScheduleMetrics(self.registry)
        self._refreshed_at = float("-inf")

    async def refresh(
        self,
        max_age_s: float,
        jobs_by_status: Callable[[], Awaitable[dict[str, int]]],
        queue_depth: Callable[[], Awaitable[QueueDepth]],
        outbox: Callable[[], Awaitable[OutboxStats]],
        next_fires: Callable[[], Awaitable[list[tuple[str, datetime]]]],
    ) -> None:
        """Re-read the database and queue gauges, at most once per `max_age_s`.

        Scrapes from several Prometheus servers (or a person reloading) then cost one GROUP BY per period.
        """
        now = time.monotonic()
        if now - self._refreshed_at < max_age_s:
            return
        self._refreshed_at = now
        counts = await jobs_by_status()
        for status, count in counts.items():
            self.jobs.labels(status=status).set(count)
        depth = await queue_depth()
        self.queue.labels(state="waiting").set(depth.queued)
        self.queue.labels(state="running").set(depth.running)
        self.queue.labels(state="blocked").set(depth.blocked)
        stats = await outbox()
        self.webhooks.pending.set(stats.pending)
        age = 0.0 if stats.oldest is None else (utcnow() - stats.oldest).total_seconds()
        self.webhooks.oldest.set(max(0.0, age))
        self.schedules.set_next_fires(await next_fires())


def request_id_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestMiddleware:
    """Gives every request an id (the client's X-Request-ID, or a new one), echoed in the response and
    bound to every log line of the request, and counts and times it by route template.

    The route template (`/api/v1/jobs/{job_id}`), not the path, labels the metrics: one series per route,
    whatever ids clients ask for.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        started = time.perf_counter()
        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                message["headers"] = [*message.get("headers", []), header]
                # Streams are timed to their first byte: their length is the client's business.
                self._observe(scope, message["status"], started)
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                if not answered:
                    self._observe(scope, 500, started)
                raise

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or _UNMATCHED
        method = scope["method"]
        self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
        self.metrics.latency.labels(method=method, route=template).observe(time.perf_counter() - started)


class WorkerMetrics:
    """What a worker process does: runs in flight, events through the pipeline, run durations.

    The run-duration histogram lives here, not on the API: each run is observed once, by the worker that
    ran it, so summing over worker pods is exact however many API replicas there are (an API deriving it
    from finished jobs would count each job once per replica, or need to coordinate).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs_in_flight = Gauge(
            "ars_worker_runs_in_flight", "Runs this worker is carrying out", registry=self.registry
        )
        self.events = Counter(
            "ars_worker_events_ingested", "Ansible events stored by this worker", registry=self.registry
        )
        self.batch_latency = Histogram(
            "ars_worker_event_batch_seconds",
            "Time to store one batch of events (INSERT, commit) and append it to the live stream",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, float("inf")),
            registry=self.registry,
        )
        self.backlog = Gauge(
            "ars_worker_event_backlog",
            "Events handed over by ansible-runner and not yet stored, over all runs of this worker",
            registry=self.registry,
        )
        self.git_fetch = Histogram(
            "ars_worker_git_fetch_seconds",
            "Time to fetch a git source (mirror update and checkout)",
            ["provider"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, float("inf")),
            registry=self.registry,
        )
        self.run_starts = Counter(
            "ars_worker_run_starts",
            "How ansible-playbook started: warm (forked from the fork server), cold (forked, then exec'd "
            "because the run's configuration differs from what was imported), direct (no fork server "
            "reachable), off (RUN_FORK_SERVER=false)",
            ["mode"],
            registry=self.registry,
        )
        self.fork_server_rss = Gauge(
            "ars_worker_fork_server_rss_bytes",
            "Resident memory of this worker's fork server (0 when off or not running)",
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "ars_job_duration_seconds",
            "Run time of a job from its start to its final status, by playbook and status",
            ["playbook", "status"],
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )

    async def observe_transition(self, transition: Transition) -> None:
        """After each committed change of a job (service/jobs/lifecycle.py): a run's duration once it ends."""
        job = transition.job
        if transition.change is Change.finished and job is not None and job.started_at is not None:
            duration = (utcnow() - job.started_at).total_seconds()
            status = str(transition.status)
            self.run_duration.labels(playbook=job.playbook, status=status).observe(duration)
