"""/api/v1/queue: how many runs are in flight, for the worker autoscaler (KEDA's metrics-api trigger)."""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, params

from service.api.auth import require
from service.api.deps import QueueDep
from service.config import Settings
from service.queue import QueueDepth


def build_router(settings: Settings) -> APIRouter:
    """The route needs the `read` scope unless QUEUE_ENDPOINT_PUBLIC opens it."""
    # `require` is typed as a plain object (it is a Depends marker for Annotated parameters).
    dependencies = [] if settings.queue_endpoint_public else [cast(params.Depends, require("read"))]
    router = APIRouter(prefix="/api/v1", tags=["queue"])

    @router.get("/queue", response_model=QueueDepth, dependencies=dependencies)
    async def queue_depth(queue: QueueDep) -> QueueDepth:
        """Runs waiting and running on this service's queue; `inflight` is their sum."""
        return await queue.depth()

    return router
