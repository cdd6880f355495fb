"""GET /metrics: Prometheus text, at the root, without auth (scrapers reach it on the cluster network)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.jobs.repository import JobRepository
from service.metrics import ApiMetrics
from service.schedules.repository import ScheduleRepository
from service.webhooks.repository import DeliveryRepository, OutboxStats

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Requests by route and status, jobs by status, queue depth, webhook deliveries, schedule fires (run
    durations: on the workers)."""
    state = request.app.state
    api_metrics: ApiMetrics = state.metrics

    async def jobs_by_status() -> dict[str, int]:
        async with state.sessions() as session:
            return await JobRepository(session).count_by_status()

    async def outbox() -> OutboxStats:
        async with state.sessions() as session:
            return await DeliveryRepository(session).stats()

    async def next_fires() -> list[tuple[str, datetime]]:
        async with state.sessions() as session:
            return await ScheduleRepository(session).next_fires()

    await api_metrics.refresh(
        state.settings.metrics_max_age, jobs_by_status, state.queue.depth, outbox, next_fires
    )
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)
