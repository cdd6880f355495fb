"""Every change of a job's state goes through service/jobs/lifecycle.py and is announced after its commit,
never before and never after a rollback. Against the real database and Redis, in this process.

`CASES` has one entry per method of `Transaction`: a state change added without one fails
`test_every_change_has_a_case`, and each case fails if its change is not announced.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from arq.constants import job_key_prefix
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.capabilities import build_lifecycle
from service.config import Settings
from service.db import create_engine, migrate, session_factory
from service.jobs.lifecycle import Change, FollowUp, Lifecycle, Transaction, Transition
from service.jobs.locks import Blockers, Want
from service.jobs.repository import JobRepository
from service.live.publish import DELETED, END_EVENT, list_version_key, stream_key, version_key
from service.models import Job, JobStatus, Webhook, WebhookDelivery, utcnow
from service.queue import JobQueue, create_redis
from service.webhooks.service import new_secret
from tests.support import Backends, event_rows, fresh_database, job_row


@dataclass
class World:
    lifecycle: Lifecycle
    redis: aioredis.Redis
    queue_name: str
    seen: list[Transition]
    # What a hook's follow-up (returned from inside the transaction) saw, once it ran.
    followed: list[Transition]

    async def outbox(self, job_id: str) -> list[str]:
        """The webhook deliveries written for the job (a subscription to every event exists)."""
        async with self.lifecycle.sessions() as session:
            result = await session.execute(
                sa.select(col(WebhookDelivery.event))
                .where(col(WebhookDelivery.job_id) == job_id)
                .order_by(col(WebhookDelivery.seq))
            )
            return list(result.scalars())

    async def insert(self, job: Job) -> Job:
        async with self.lifecycle.sessions() as session:
            session.add(job)
            await session.commit()
        return job

    async def token(self, job_id: str) -> bytes | None:
        value: bytes | None = await self.redis.get(version_key(job_id))
        return value

    async def list_token(self) -> bytes | None:
        value: bytes | None = await self.redis.get(list_version_key(self.queue_name))
        return value

    async def queued_in_arq(self, job_id: str) -> bool:
        return bool(await self.redis.exists(job_key_prefix + job_id))


@pytest.fixture
def database(backends: Backends, tmp_path: Path) -> Iterator[str]:
    url, drop = fresh_database(backends.database_server_url, tmp_path)
    migrate(Settings(database_url=url))
    yield url
    drop()


@asynccontextmanager
async def world(database: str, backends: Backends) -> AsyncIterator[World]:
    settings = Settings(
        database_url=database,
        redis_url=backends.redis_url,
        queue_name=f"arq:queue:test-{uuid.uuid4().hex[:8]}",
    )
    engine = create_engine(settings)
    redis = create_redis(settings)
    lifecycle = build_lifecycle(session_factory(engine), redis, JobQueue(redis, settings), settings)
    seen: list[Transition] = []
    followed: list[Transition] = []

    async def record(transition: Transition) -> None:
        seen.append(transition)

    async def in_transaction(session: AsyncSession, transition: Transition) -> FollowUp:
        async def follow_up() -> None:
            followed.append(transition)

        return follow_up

    lifecycle.after_commit(record)
    lifecycle.on_change(in_transaction)
    async with lifecycle.sessions() as session:
        session.add(
            Webhook(
                id=str(uuid.uuid4()),
                url="https://hooks.example.com/",
                events=["job.started", "job.finished"],
                labels={},
                secret=new_secret(),
                created_at=utcnow(),
            )
        )
        await session.commit()
    try:
        yield World(lifecycle, redis, settings.queue_name, seen, followed)
    finally:
        await redis.aclose()
        await engine.dispose()


Act = Callable[[Transaction, Job], Awaitable[Any]]


@dataclass(frozen=True)
class Case:
    """A change made on a job in `status`: the Change it must report, whether GET /jobs/{id} shows it
    (then its version token must be replaced after the commit) and whether GET /jobs does (then the list
    token must be)."""

    method: str
    status: JobStatus
    act: Act
    change: Change
    shown: bool = True
    listed: bool = True
    fields: tuple[tuple[str, Any], ...] = ()


# The webhook events each change writes to the outbox.
OUTBOX = {
    Change.launched: ["job.started"],
    Change.finished: ["job.finished"],
    Change.canceled: ["job.finished"],
    Change.lost: ["job.finished"],
}
STALE = (("heartbeat_at", utcnow() - timedelta(hours=1)),)
CASES = [
    Case("submit", JobStatus.queued, lambda tx, job: tx.submit(job), Change.submitted, shown=False),
    Case("claim", JobStatus.queued, lambda tx, job: tx.claim(job.id, "w2"), Change.claimed),
    Case(
        "record_source",
        JobStatus.running,
        lambda tx, job: tx.record_source(job.id, "a" * 40),
        Change.source_recorded,
    ),
    Case(
        "launch",
        JobStatus.running,
        lambda tx, job: tx.launch(job.id, "w1"),
        Change.launched,
        shown=False,
        listed=False,
    ),
    Case(
        "record_events",
        JobStatus.running,
        lambda tx, job: tx.record_events(job.id, event_rows(job.id, range(1, 3)), 2),
        Change.events_recorded,
    ),
    Case(
        "finish",
        JobStatus.running,
        lambda tx, job: tx.finish(job, JobStatus.successful, rc=0, reason=None, host_stats={}, event_count=0),
        Change.finished,
    ),
    Case("cancel", JobStatus.queued, lambda tx, job: tx.cancel(job.id), Change.canceled),
    Case("cancel", JobStatus.running, lambda tx, job: tx.cancel(job.id), Change.cancel_requested),
    Case(
        "reap",
        JobStatus.running,
        lambda tx, job: tx.reap(job, heartbeat_before=utcnow(), lost_after=60),
        Change.requeued,
        fields=STALE,
    ),
    Case(
        "reap",
        JobStatus.running,
        lambda tx, job: tx.reap(job, heartbeat_before=utcnow(), lost_after=60),
        Change.lost,
        fields=(*STALE, ("launched_at", utcnow())),
    ),
    Case(
        "record_targets",
        JobStatus.running,
        lambda tx, job: tx.record_targets(job.id, ["h1"]),
        Change.targets_recorded,
    ),
    Case(
        "wait",
        JobStatus.running,
        lambda tx, job: tx.wait(job, "w1", Want("x", ("h1",)), Blockers(["h1"], [], ["other"])),
        Change.waiting,
    ),
    Case(
        "wait_changed",
        JobStatus.queued,
        lambda tx, job: tx.wait_changed(job.id, Blockers([], ["lb"], ["other"])),
        Change.wait_changed,
    ),
    Case(
        "delete",
        JobStatus.successful,
        lambda tx, job: tx.delete([job.id]),
        Change.deleted,
        fields=(("finished_at", utcnow()),),
    ),
]


def test_every_change_has_a_case() -> None:
    changes = {
        name
        for name, member in vars(Transaction).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    assert changes - {case.method for case in CASES} == set(), "a state change without a case in CASES"
    assert {case.change for case in CASES} == set(Change)


async def arranged(w: World, case: Case) -> tuple[Job, bytes | None, bytes | None]:
    """The case's job (stored unless the change stores it), its token and the list's, before the change."""
    job = job_row(case.status, **dict(case.fields))
    if case.change is not Change.submitted:
        await w.insert(job)
    return job, await w.token(job.id), await w.list_token()


@pytest.mark.parametrize("case", CASES, ids=[case.change.value for case in CASES])
def test_a_change_is_announced_after_its_commit(database: str, backends: Backends, case: Case) -> None:
    async def main() -> None:
        async with world(database, backends) as w:
            job, before, list_before = await arranged(w, case)
            async with w.lifecycle.transaction() as transaction:
                await case.act(transaction, job)
                # Nothing is said before the commit.
                assert await w.token(job.id) == before
                assert await w.list_token() == list_before
                assert w.seen == []
            assert [(t.change, t.job_id) for t in w.seen] == [(case.change, job.id)]
            assert w.followed == w.seen
            # The webhooks' outbox row, written in the change's own transaction.
            assert await w.outbox(job.id) == OUTBOX.get(case.change, [])
            after = await w.token(job.id)
            assert (after != before) is case.shown
            assert (await w.list_token() != list_before) is case.listed
            # Kept pages of events outlive other changes, not a deletion: its token says so.
            assert (after is not None and after.startswith(DELETED)) is (case.change is Change.deleted)
            if case.change in (Change.submitted, Change.requeued):
                assert await w.queued_in_arq(job.id)
            entries = await w.redis.xrange(stream_key(job.id))
            if case.change is Change.events_recorded:
                assert [entry_id for entry_id, _ in entries] == [b"1-1", b"2-1"]
            if case.change in (Change.finished, Change.canceled, Change.lost):
                assert entries[-1][1][b"event"] == END_EVENT.encode()

    asyncio.run(main())


@pytest.mark.parametrize("case", CASES, ids=[case.change.value for case in CASES])
def test_a_rolled_back_change_is_not_announced(database: str, backends: Backends, case: Case) -> None:
    async def main() -> None:
        async with world(database, backends) as w:
            job, before, list_before = await arranged(w, case)
            with pytest.raises(RuntimeError):
                async with w.lifecycle.transaction() as transaction:
                    await case.act(transaction, job)
                    raise RuntimeError("rolled back")
            assert w.seen == [] and w.followed == []
            assert await w.outbox(job.id) == []
            assert await w.token(job.id) == before
            assert await w.list_token() == list_before
            assert not await w.queued_in_arq(job.id)
            assert await w.redis.xrange(stream_key(job.id)) == []

    asyncio.run(main())


def test_a_run_lost_before_it_began_is_queued_again_once(database: str, backends: Backends) -> None:
    """Lost before launch: queued again; claimed, lost before launch once more: `error`; then nothing."""

    async def reap(w: World, job: Job) -> Change | None:
        # As the reaper does: the job as it is now, found stale.
        async with w.lifecycle.sessions() as session:
            found = await JobRepository(session).get(job.id)
        assert found is not None
        async with w.lifecycle.transaction() as transaction:
            return await transaction.reap(found, heartbeat_before=utcnow(), lost_after=60)

    async def main() -> list[Change | None]:
        async with world(database, backends) as w:
            job = await w.insert(job_row(JobStatus.running, heartbeat_at=utcnow() - timedelta(hours=1)))
            changes = [await reap(w, job)]
            async with w.lifecycle.transaction() as transaction:
                assert await transaction.claim(job.id, "w2") is not None
            async with w.lifecycle.sessions() as session:
                # The second worker dies before launch too.
                await session.execute(
                    sa.update(Job)
                    .where(col(Job.id) == job.id)
                    .values(heartbeat_at=utcnow() - timedelta(hours=1))
                )
                await session.commit()
            changes += [await reap(w, job), await reap(w, job)]
            return changes

    assert asyncio.run(main()) == [Change.requeued, Change.lost, None]
