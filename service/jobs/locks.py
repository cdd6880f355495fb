"""Host and resource locks: leases taken all at once or not at all, waiters served in priority, then
submit order (DESIGN section 9, docs/locks.md).

The state lives in Redis, in a few keys under `<QUEUE_NAME>:locks:`, changed only by the Lua scripts below,
so every decision sees one consistent state and no two runs are ever granted conflicting leases:

- `holders`: job id → what it holds (`Want` as JSON). A run holds its leases from the grant to its end.
- `waiters` (sorted by the run's arq score: priority, then submit time) with `wants` (job id → `Want`) and
  `records` (job id → the arq record that queues it once granted).
- `exclusive`: the ids of the holders and waiters that want hosts exclusively. While it is empty, a run
  that asks for nothing is granted without knowing its hosts (one round trip, no parsing of anything).
- `ready`: set once the state is complete. Redis restarted empty has none: the next acquire rebuilds the
  leases of the running jobs from the database first (`rebuild_locks`).

A lease is one of three kinds. `x`: the hosts exclusively; `s`: the hosts shared with other `s` leases
(a run that is not exclusive once it had to resolve its hosts); `u`: hosts unknown, which conflicts with
every `x` (a run that asked for nothing, granted while no exclusive lease existed). Named locks are
exclusive whatever the kind.

A waiter never blocks a run ahead of it in the order, and no run overtakes a waiter ahead of it on any host
or lock the waiter wants: the grant pass walks the waiters in order and reserves what each blocked one
wants for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.arq_compat import job_key_prefix
from service.jobs.repository import JobRepository
from service.queue import JOB_EXPIRES, locks_key, score_of, wake_channel

log = structlog.get_logger(__name__)

LOCK_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
MAX_LOCKS = 16

Kind = Literal["x", "s", "u"]

# Shared by every script: the current holders and the waiters' reservations, and the test of one want
# against them. A want is {k = kind, h = hosts, l = locks}; the result is what blocks it.
_COMMON = """
local holders_key, waiters_key, wants_key, records_key, exclusive_key, ready_key, queue_key, seq_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

local function add_holder(state, job, want)
  for _, host in ipairs(want.h) do
    if want.k == 'x' then state.hx[host] = job
    else
      state.hs[host] = state.hs[host] or {}
      table.insert(state.hs[host], job)
    end
  end
  for _, lock in ipairs(want.l) do state.lk[lock] = job end
  if want.k == 'u' then table.insert(state.unknown, job) end
end

local function held()
  local state = {hx = {}, hs = {}, lk = {}, unknown = {}}
  local raw = redis.call('HGETALL', holders_key)
  for i = 1, #raw, 2 do add_holder(state, raw[i], cjson.decode(raw[i + 1])) end
  return state
end

local function reserve(reserved, job, want)
  for _, host in ipairs(want.h) do
    local slot = want.k == 'x' and reserved.rx or reserved.rs
    if slot[host] == nil then slot[host] = job end
  end
  for _, lock in ipairs(want.l) do
    if reserved.rl[lock] == nil then reserved.rl[lock] = job end
  end
end

-- What blocks `want` of `job`: {hosts, locks, jobs}, all empty when nothing does.
local function blockers(job, want, state, reserved)
  local hosts, locks, jobs, seen = {}, {}, {}, {}
  local function by(other)
    if other ~= nil and other ~= job and not seen[other] then
      seen[other] = true
      table.insert(jobs, other)
    end
    return other ~= nil and other ~= job
  end
  -- Every blocker is named: `by` is called for each, never skipped by a short-circuit.
  for _, host in ipairs(want.h) do
    local blocked = by(state.hx[host])
    blocked = by(reserved.rx[host]) or blocked
    if want.k == 'x' then
      for _, other in ipairs(state.hs[host] or {}) do blocked = by(other) or blocked end
      blocked = by(reserved.rs[host]) or blocked
    end
    if blocked then table.insert(hosts, host) end
  end
  if want.k == 'x' then
    -- A run whose hosts are unknown may touch any of them.
    local unknown = false
    for _, other in ipairs(state.unknown) do unknown = by(other) or unknown end
    if unknown then
      hosts = {}
      for _, host in ipairs(want.h) do table.insert(hosts, host) end
    end
  end
  for _, lock in ipairs(want.l) do
    local blocked = by(state.lk[lock])
    blocked = by(reserved.rl[lock]) or blocked
    if blocked then table.insert(locks, lock) end
  end
  return {hosts = hosts, locks = locks, jobs = jobs}
end

-- The same want, and not one restored from the database (those are decided again).
local function same(held_want, want)
  if held_want.r or held_want.k ~= want.k or #held_want.h ~= #want.h or #held_want.l ~= #want.l then
    return false
  end
  for i, host in ipairs(want.h) do if held_want.h[i] ~= host then return false end end
  for i, lock in ipairs(want.l) do if held_want.l[i] ~= lock then return false end end
  return true
end

local function free(found)
  return #found.hosts == 0 and #found.locks == 0 and #found.jobs == 0
end

local function hold(job, want)
  redis.call('HSET', holders_key, job, cjson.encode({k = want.k, h = want.h, l = want.l}))
  if want.k == 'x' then redis.call('SADD', exclusive_key, job) else redis.call('SREM', exclusive_key, job) end
end

-- Queue a granted run in arq under an id of its own (`<job>~<n>`): the entry of the attempt that found it
-- blocked may still be in arq, which removes it once that attempt returns.
local function queue_run(job, score, record, job_prefix, expires_ms)
  local arq_id = job .. '~' .. redis.call('INCR', seq_key)
  redis.call('PSETEX', job_prefix .. arq_id, expires_ms, record)
  redis.call('ZADD', queue_key, score, arq_id)
end

local function forget_waiter(job)
  redis.call('ZREM', waiters_key, job)
  redis.call('HDEL', wants_key, job)
  redis.call('HDEL', records_key, job)
end

-- Grant every waiter that can go now, in order; reserve for the others. Returns {granted, changed}:
-- changed maps a waiter to its blockers when they differ from those last reported.
local function grant(job_prefix, expires_ms, wake)
  local granted, changed = {}, {}
  if redis.call('ZCARD', waiters_key) == 0 then return granted, changed end
  local state = held()
  local reserved = {rx = {}, rs = {}, rl = {}}
  local waiting = redis.call('ZRANGE', waiters_key, 0, -1, 'WITHSCORES')
  for i = 1, #waiting, 2 do
    local job, score = waiting[i], waiting[i + 1]
    local want = cjson.decode(redis.call('HGET', wants_key, job))
    local found = blockers(job, want, state, reserved)
    if free(found) then
      local record = redis.call('HGET', records_key, job)
      forget_waiter(job)
      hold(job, want)
      add_holder(state, job, want)
      queue_run(job, score, record, job_prefix, expires_ms)
      table.insert(granted, job)
    else
      reserve(reserved, job, want)
      local report = cjson.encode(found)
      if report ~= want.b then
        want.b = report
        redis.call('HSET', wants_key, job, cjson.encode(want))
        changed[job] = found
      end
    end
  end
  if #granted > 0 then redis.call('PUBLISH', wake, '') end
  return granted, changed
end

local function reply(granted, changed)
  if next(changed) == nil then changed = cjson.decode('{}') end
  return cjson.encode({granted = granted, changed = changed})
end
"""

# ARGV: job, score, want (JSON), register ('1': wait if blocked), record, job key prefix, expiry ms, wake
# channel. Returns JSON: {"outcome": granted | resolve | rebuild | waiting | blocked, "blockers": {...}}.
_ACQUIRE = (
    _COMMON
    + """
local job, score, want = ARGV[1], tonumber(ARGV[2]), cjson.decode(ARGV[3])
if redis.call('EXISTS', ready_key) == 0 then return cjson.encode({outcome = 'rebuild'}) end
local current = redis.call('HGET', holders_key, job)
if current and same(cjson.decode(current), want) then
  return cjson.encode({outcome = 'granted'})
end
if current then
  -- Restored after Redis lost its state: what it holds is decided again, without itself.
  redis.call('HDEL', holders_key, job)
  redis.call('SREM', exclusive_key, job)
end
if want.k == 'u' then
  -- Hosts unknown: only while no run wants hosts exclusively; a run that must wait resolves them first.
  if redis.call('SCARD', exclusive_key) > 0 then return cjson.encode({outcome = 'resolve'}) end
  if #want.l == 0 then
    hold(job, want)
    return cjson.encode({outcome = 'granted'})
  end
end
local state = held()
local reserved = {rx = {}, rs = {}, rl = {}}
local ahead = redis.call('ZRANGEBYSCORE', waiters_key, '-inf', '(' .. ARGV[2])
for _, other in ipairs(ahead) do
  if other ~= job then reserve(reserved, other, cjson.decode(redis.call('HGET', wants_key, other))) end
end
local found = blockers(job, want, state, reserved)
if free(found) then
  forget_waiter(job)
  hold(job, want)
  if ARGV[4] == '1' then
    queue_run(job, score, ARGV[5], ARGV[6], tonumber(ARGV[7]))
    redis.call('PUBLISH', ARGV[8], '')
  end
  return cjson.encode({outcome = 'granted'})
end
if want.k == 'u' then return cjson.encode({outcome = 'resolve'}) end
if ARGV[4] ~= '1' then return cjson.encode({outcome = 'blocked', blockers = found}) end
want.b = cjson.encode(found)
redis.call('ZADD', waiters_key, score, job)
redis.call('HSET', wants_key, job, cjson.encode(want))
redis.call('HSET', records_key, job, ARGV[5])
if want.k == 'x' then redis.call('SADD', exclusive_key, job) end
return cjson.encode({outcome = 'waiting', blockers = found})
"""
)

# ARGV: job ids to release, then (last three) job key prefix, expiry ms, wake channel.
_RELEASE = (
    _COMMON
    + """
local n = #ARGV
for i = 1, n - 3 do
  local job = ARGV[i]
  redis.call('HDEL', holders_key, job)
  redis.call('SREM', exclusive_key, job)
  forget_waiter(job)
end
return reply(grant(ARGV[n - 2], tonumber(ARGV[n - 1]), ARGV[n]))
"""
)

# ARGV: pairs of job id and want. Restores holders once, if the state is not ready.
_RESTORE = (
    _COMMON
    + """
if redis.call('EXISTS', ready_key) == 1 then return 0 end
for i = 1, #ARGV, 2 do
  local job, want = ARGV[i], cjson.decode(ARGV[i + 1])
  hold(job, want)
  -- Marked as restored: when the run itself asks (it had not launched yet), it is decided again.
  redis.call('HSET', holders_key, job, cjson.encode({k = want.k, h = want.h, l = want.l, r = true}))
end
redis.call('SET', ready_key, '1')
return 1
"""
)


@dataclass(frozen=True)
class Want:
    """What a run must hold while it runs: its hosts (`kind`: exclusively, shared, or not known) and its
    named locks."""

    kind: Kind
    hosts: tuple[str, ...] = ()
    locks: tuple[str, ...] = ()

    @classmethod
    def of(cls, exclusive: bool, targets: Sequence[str] | None, locks: Sequence[str]) -> Want:
        """A run's want from its row: exclusive on its targets; shared once its targets are known; else
        unknown hosts."""
        kind: Kind = "x" if exclusive else "s" if targets is not None else "u"
        return cls(kind, tuple(sorted(set(targets or ()))), tuple(sorted(set(locks))))

    def json(self) -> str:
        return json.dumps({"k": self.kind, "h": list(self.hosts), "l": list(self.locks)})

    @property
    def asks_nothing(self) -> bool:
        return self.kind == "u" and not self.locks


@dataclass(frozen=True)
class Blockers:
    """What a waiting run waits for: `waiting_for` of GET /jobs/{id}."""

    hosts: list[str]
    locks: list[str]
    jobs: list[str]

    @classmethod
    def of(cls, found: dict[str, Any]) -> Blockers:
        # cjson writes an empty Lua table as {}.
        return cls(*(sorted(found.get(key) or []) for key in ("hosts", "locks", "jobs")))

    def as_dict(self) -> dict[str, list[str]]:
        return {"hosts": self.hosts, "locks": self.locks, "jobs": self.jobs}


@dataclass(frozen=True)
class Acquired:
    outcome: Literal["granted", "resolve", "rebuild", "blocked", "waiting"]
    blockers: Blockers | None = None


@dataclass(frozen=True)
class Released:
    """Waiters granted by a release (queued in arq already), and waiters whose blockers changed."""

    granted: list[str]
    changed: dict[str, Blockers]


class LockTable:
    """The lock state of one queue (QUEUE_NAME) in Redis."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis = redis
        self._keys: list[Any] = [
            locks_key(queue_name, part)
            for part in ("holders", "waiters", "wants", "records", "exclusive", "ready")
        ] + [queue_name, locks_key(queue_name, "seq")]
        self._tail: list[Any] = [
            job_key_prefix,
            int(JOB_EXPIRES.total_seconds() * 1000),
            wake_channel(queue_name),
        ]
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._restore = redis.register_script(_RESTORE)

    async def acquire(
        self, job_id: str, priority: str, created_at: datetime, want: Want, *, record: bytes | None = None
    ) -> Acquired:
        """Take every lease of `want` or none. With `record` (the arq record of the run), a blocked run is
        registered as a waiter, and queued in arq with that record once granted (also at once, if what
        blocked it was released since)."""
        score = score_of(priority, created_at)
        args: list[Any] = [job_id, score, want.json(), "1" if record is not None else "0", record or b""]
        answer = json.loads(await self._acquire(keys=self._keys, args=[*args, *self._tail]))
        found = answer.get("blockers")
        return Acquired(answer["outcome"], Blockers.of(found) if found else None)

    async def release(self, job_ids: Sequence[str]) -> Released:
        """End the leases and the waits of these runs, then grant what can go now."""
        args: list[Any] = [*job_ids, *self._tail]
        answer = json.loads(await self._release(keys=self._keys, args=args))
        changed = answer["changed"] or {}
        return Released(list(answer["granted"] or []), {job: Blockers.of(b) for job, b in changed.items()})

    async def restore(self, holders: dict[str, Want]) -> bool:
        """Hold these leases and mark the state complete, unless another process did it first."""
        args = [value for job_id, want in holders.items() for value in (job_id, want.json())]
        return bool(await self._restore(keys=self._keys, args=list(args)))

    async def kept(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these runs the table queues itself: waiters, and holders granted (queued in arq by the
        grant) that no worker took yet."""
        if not job_ids:
            return set()
        ids = list(job_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zmscore(self._keys[1], ids)
            pipe.hmget(self._keys[0], ids)
            scores, holders = await pipe.execute()
        return {
            job_id
            for job_id, score, holder in zip(ids, scores, holders, strict=True)
            if score is not None or holder is not None
        }

    async def known(self) -> set[str]:
        """Every run the table holds leases for or has waiting."""
        holders: list[bytes] = await self.redis.hkeys(self._keys[0])  # type: ignore[misc]
        waiters = await self.redis.zrange(self._keys[1], 0, -1)
        return {member.decode() for member in [*holders, *waiters]}


async def rebuild_locks(sessions: async_sessionmaker[AsyncSession], table: LockTable) -> None:
    """Redis lost the lock table (restarted empty): hold again what every running job may hold, as the
    database knows it, before anything is granted. A running job whose hosts are not resolved holds
    unknown hosts, which conflict with every exclusive want until it ends or asks again. Waiters are not
    restored here: they are queued runs, which the sweeper queues again, and they ask again."""
    async with sessions() as session:
        rows = await JobRepository(session).leases()
    holders = {
        row.job_id: Want.of(row.exclusive and row.targets is not None, row.targets, row.locks or ())
        for row in rows
    }
    if await table.restore(holders):
        log.warning("lock table rebuilt from the database", holders=len(holders))
