"""Every use of arq's internals, in one place, written against arq `ARQ_VERSION` (pinned in pyproject.toml).

`tests/test_arq_compat.py` fails when an arq upgrade changes any of them:

- what an enqueue writes (`serialize_job`, the job and result key prefixes): service/queue.py writes it in
  one Lua script, with the wake-up, where arq's `enqueue_job` takes four round trips, and the lock table's
  grant (service/jobs/locks.py) writes the same record for a run it queues;
- the in-progress and retry key prefixes, read to count running runs and dropped for a run whose worker is
  gone (service/queue.py);
- `Worker._poll_iteration` and `Worker._release_sem_dec_counter_on_complete`, which `WokenWorker` extends.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq import worker as arq_worker
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import serialize_job

ARQ_VERSION = "0.28.0"

__all__ = [
    "ARQ_VERSION",
    "WokenWorker",
    "in_progress_key_prefix",
    "job_key_prefix",
    "result_key_prefix",
    "retry_key_prefix",
    "serialize_job",
]


class WokenWorker(arq_worker.Worker):
    """arq's worker, woken when there is work rather than polling Redis on a short period.

    arq looks at the queue every `poll_delay`: a short one is start latency bought with CPU on every idle
    worker, a long one is latency. Here the worker looks when a submit publishes on the queue's wake channel
    (`ctx["wake"]`, set by service.worker.listen), when one of its own runs ends (a slot is free), and
    otherwise every WORKER_POLL_DELAY. tests/test_worker_signals.py fails if either override stops being
    called.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.idle_poll_s = float(kwargs.pop("poll_delay"))
        super().__init__(poll_delay=0, **kwargs)
        self.wake = asyncio.Event()
        self.ctx["wake"] = self.wake

    async def _poll_iteration(self) -> None:
        await super()._poll_iteration()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.idle_poll_s):
                await self.wake.wait()
        self.wake.clear()

    def _release_sem_dec_counter_on_complete(self) -> None:
        # arq's done-callback of every run: the freed slot takes the next run now, not at the next poll.
        super()._release_sem_dec_counter_on_complete()
        self.wake.set()
