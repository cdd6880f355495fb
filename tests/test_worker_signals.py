"""The worker's signals: submits and ended runs wake it (it does not poll the queue 20 times a second), and
a cancel whose message was lost still stops the run, through the database flag.

The worker polls once a minute here: every run below would wait up to that minute if a wake-up were missed,
far past the deadlines, which only leave room for the runs themselves.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import redis
import sqlalchemy as sa

from service.queue import wake_channel
from tests.support import StackFactory, submit, wait_for, wait_until

LOCAL1 = "inventory/local1.yml"
DEADLINE_S = 40  # the poll delay below is 60 s


def test_submits_and_ended_runs_wake_the_worker(start_stack: StackFactory) -> None:
    stack = start_stack(WORKER_MAX_JOBS="1", WORKER_POLL_DELAY="60")
    channel = wake_channel(stack.env["QUEUE_NAME"])
    with redis.Redis.from_url(stack.env["REDIS_URL"]) as server:

        def subscribed() -> bool:
            # The worker has also made its first look at the (empty) queue by now: it is waiting.
            listeners: dict[bytes, int] = dict(server.pubsub_numsub(channel))
            return listeners.get(channel.encode(), 0) >= 1

        wait_until(subscribed, "the worker to listen for submits")

    with stack.client() as client:
        # One slot: the first run starts on its submit's wake-up; the others each when the run before ends.
        jobs = [submit(client, {"playbook": "debug.yml", "inventory": LOCAL1}) for _ in range(3)]
        finished = [wait_for(client, job["id"], deadline_s=DEADLINE_S) for job in jobs]

    assert [job["status"] for job in finished] == ["successful"] * 3
    starts = [job["started_at"] for job in finished]
    ends = [job["finished_at"] for job in finished]
    # One at a time, in order: each started after the previous one ended.
    assert starts[1] >= ends[0] and starts[2] >= ends[1]


def test_a_cancel_without_its_message_is_read_from_the_database(
    start_stack: StackFactory, tmp_path: Path
) -> None:
    stack = start_stack()
    gate = tmp_path / f"gate-{uuid.uuid4().hex}"
    with stack.client() as client:
        job = submit(client, {"playbook": "gate.yml", "inventory": LOCAL1, "extra_vars": {"gate": str(gate)}})
        wait_for(client, job["id"], {"running"})
        # What the API's cancel writes, without the message it then publishes (as if Redis were away).
        engine = stack.db()
        with engine.begin() as connection:
            flag = sa.text("UPDATE job SET cancel_requested = :yes WHERE id = :id")
            connection.execute(flag, {"yes": True, "id": job["id"]})
        engine.dispose()
        done = wait_for(client, job["id"], deadline_s=DEADLINE_S)
    assert done["status"] == "canceled"
    assert done["reason"] == "canceled by request"
