"""The lock table's decisions, against real Redis: all or nothing, shared and exclusive hosts, named locks,
waiters in priority then submit order, grants queued in arq, and the rebuild after Redis lost it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

from service.config import Settings
from service.jobs.locks import Blockers, LockTable, Want
from service.models import utcnow
from service.queue import JobQueue, create_redis
from tests.support import Backends

T = TypeVar("T")
START = utcnow()


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def with_table(backends: Backends, body: Callable[[LockTable, JobQueue], Awaitable[T]]) -> T:
    settings = Settings(redis_url=backends.redis_url, queue_name=f"arq:queue:test-{uuid.uuid4().hex}")

    async def main() -> T:
        redis = create_redis(settings)
        table, queue = LockTable(redis, settings.queue_name), JobQueue(redis, settings)
        try:
            await table.restore({})
            return await body(table, queue)
        finally:
            keys = [key async for key in redis.scan_iter(f"{settings.queue_name}*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()

    return asyncio.run(main())


def x(*hosts: str, locks: tuple[str, ...] = ()) -> Want:
    return Want("x", hosts, locks)


def s(*hosts: str) -> Want:
    return Want("s", hosts)


def test_exclusive_shared_and_unknown_hosts(backends: Backends) -> None:
    async def body(table: LockTable, queue: JobQueue) -> None:
        assert (await table.acquire("plain", "default", at(0), Want("u"))).outcome == "granted"
        # A run whose hosts are unknown holds them all, for an exclusive want.
        blocked = await table.acquire("a", "default", at(1), x("h1", "h2"))
        assert (blocked.outcome, blocked.blockers) == ("blocked", Blockers(["h1", "h2"], [], ["plain"]))
        await table.release(["plain"])
        assert (await table.acquire("a", "default", at(1), x("h1", "h2"))).outcome == "granted"
        # Asked again by the same run: granted again, nothing changes.
        assert (await table.acquire("a", "default", at(1), x("h1", "h2"))).outcome == "granted"
        # While a run wants hosts exclusively, one that asked for nothing must say which hosts it targets.
        assert (await table.acquire("b", "default", at(2), Want("u"))).outcome == "resolve"
        shared = await table.acquire("b", "default", at(2), s("h2", "h3"))
        assert (shared.outcome, shared.blockers) == ("blocked", Blockers(["h2"], [], ["a"]))
        assert (await table.acquire("c", "default", at(3), s("h3"))).outcome == "granted"
        assert (await table.acquire("d", "default", at(4), s("h3", "h4"))).outcome == "granted"
        blocked = await table.acquire("e", "default", at(5), x("h4"))
        assert (blocked.outcome, blocked.blockers) == ("blocked", Blockers(["h4"], [], ["d"]))

    with_table(backends, body)


def test_all_or_nothing_and_a_grant_queues_the_run(backends: Backends) -> None:
    async def body(table: LockTable, queue: JobQueue) -> None:
        assert (await table.acquire("a", "default", at(0), x("h1"))).outcome == "granted"
        waiting = await table.acquire("w", "default", at(1), x("h2", "h1"), record=queue.record("w"))
        assert (waiting.outcome, waiting.blockers) == ("waiting", Blockers(["h1"], [], ["a"]))
        assert await table.kept(["w", "a", "nobody"]) == {"w", "a"}
        assert await queue.depth() == (await queue.depth()).model_copy(update={"blocked": 1})
        # h2 is free but reserved for the waiter: all or nothing, and no overtaking.
        later = await table.acquire("b", "default", at(2), x("h2"))
        assert (later.outcome, later.blockers) == ("blocked", Blockers(["h2"], [], ["w"]))
        released = await table.release(["a"])
        assert released.granted == ["w"]
        depth = await queue.depth()
        assert (depth.queued, depth.blocked) == (1, 0)
        arq_ids = [member.decode() for member in await queue.redis.zrange(queue.queue_name, 0, -1)]
        assert len(arq_ids) == 1 and arq_ids[0].startswith("w~")
        assert await queue.redis.exists(f"arq:job:{arq_ids[0]}")
        assert (await table.acquire("b", "default", at(2), x("h2"))).outcome == "blocked"
        await queue.forget("w")
        assert await queue.redis.zcard(queue.queue_name) == 0

    with_table(backends, body)


def test_waiters_are_served_by_priority_then_submit_order(backends: Backends) -> None:
    async def body(table: LockTable, queue: JobQueue) -> None:
        assert (await table.acquire("holder", "default", at(0), x("h1"))).outcome == "granted"
        order = [("late", "default", at(3)), ("early", "default", at(1)), ("urgent", "high", at(5))]
        for job, priority, created in order:
            outcome = await table.acquire(job, priority, created, x("h1"), record=queue.record(job))
            assert outcome.outcome == "waiting"
        # A later run names the holder and the first waiter ahead of it.
        behind = await table.acquire("last", "low", at(0), x("h1"))
        assert behind.blockers == Blockers(["h1"], [], ["holder", "urgent"])
        granted = []
        current = "holder"
        for _ in order:
            released = await table.release([current])
            assert len(released.granted) == 1
            current = released.granted[0]
            granted.append(current)
        assert granted == ["urgent", "early", "late"]

    with_table(backends, body)


def test_a_stream_of_short_runs_does_not_starve_a_wider_waiter(backends: Backends) -> None:
    async def body(table: LockTable, queue: JobQueue) -> None:
        assert (await table.acquire("short0", "default", at(0), x("h1"))).outcome == "granted"
        assert (await table.acquire("long", "default", at(0.5), x("h2"))).outcome == "granted"
        wide = await table.acquire("wide", "default", at(1), x("h1", "h2"), record=queue.record("wide"))
        assert wide.outcome == "waiting"
        for index in range(1, 20):
            # Every later short run on h1 queues behind the wide one, even while h1 itself is free.
            short = await table.acquire(f"short{index}", "default", at(1 + index), x("h1"))
            assert short.outcome == "blocked" and short.blockers is not None and "wide" in short.blockers.jobs
        assert (await table.release(["short0"])).granted == []
        assert (await table.release(["long"])).granted == ["wide"]

    with_table(backends, body)


def test_named_locks_and_reversed_orders(backends: Backends) -> None:
    async def body(table: LockTable, queue: JobQueue) -> None:
        assert (await table.acquire("a", "default", at(0), Want("u", (), ("lb-pool",)))).outcome == "granted"
        # A run that only asked for a named lock and must wait resolves its hosts first.
        assert (await table.acquire("b", "default", at(1), Want("u", (), ("lb-pool",)))).outcome == "resolve"
        blocked = await table.acquire("b", "default", at(1), Want("s", ("h9",), ("lb-pool",)))
        assert (blocked.outcome, blocked.blockers) == ("blocked", Blockers([], ["lb-pool"], ["a"]))
        # Unknown hosts block every exclusive want.
        assert (await table.acquire("c", "default", at(2), x("h1", locks=("db",)))).outcome == "blocked"
        await table.release(["a"])
        assert (
            await table.acquire("b", "default", at(1), Want("s", ("h9",), ("lb-pool",)))
        ).outcome == "granted"
        assert (await table.acquire("c", "default", at(2), x("h1", locks=("db",)))).outcome == "granted"
        # Wants are sets: the order hosts are given in never matters.
        reverse = await table.acquire("d", "default", at(3), Want.of(True, ["h2", "h1"], ["db"]))
        assert reverse.blockers == Blockers(["h1"], ["db"], ["c"])

    with_table(backends, body)


def test_restore_happens_once_and_a_restored_run_asks_again(backends: Backends) -> None:
    async def body(table: LockTable, queue: JobQueue) -> None:
        await queue.redis.delete(*[key async for key in queue.redis.scan_iter(f"{queue.queue_name}:locks:*")])
        assert (await table.acquire("a", "default", at(0), Want("u"))).outcome == "rebuild"
        assert await table.restore({"running": Want("u"), "other": s("h1")})
        assert not await table.restore({})
        # A restored run with unknown hosts blocks exclusive wants until it ends or asks again.
        assert (await table.acquire("a", "default", at(1), x("h1", "h5"))).blockers == Blockers(
            ["h1", "h5"], [], ["other", "running"]
        )
        # The restored run asks itself: decided again, without what was restored for it.
        assert (await table.acquire("other", "default", at(0), s("h1"))).outcome == "granted"
        assert (await table.acquire("running", "default", at(0), x("h1"))).outcome == "blocked"
        assert (await table.acquire("running", "default", at(0), x("h2"))).outcome == "granted"
        assert await table.known() == {"running", "other"}

    with_table(backends, body)
