"""Every query on `schedule` and `schedule_fire`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col

from service.models import Job, JobStatus, Schedule, ScheduleFire

_SCHEDULE = cast(sa.Table, Schedule.__table__)  # type: ignore[attr-defined]
_FIRE = cast(sa.Table, ScheduleFire.__table__)  # type: ignore[attr-defined]
_JOB = cast(sa.Table, Job.__table__)  # type: ignore[attr-defined]


def _rowcount(result: sa.Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount


class ScheduleRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, schedule: Schedule) -> None:
        self.session.add(schedule)
        await self.session.flush()

    async def get(self, schedule_id: str) -> Schedule | None:
        return await self.session.get(Schedule, schedule_id, populate_existing=True)

    async def named(self, name: str) -> Schedule | None:
        result = await self.session.execute(sa.select(Schedule).where(col(Schedule.name) == name))
        return result.scalars().first()

    async def all(self) -> Sequence[Schedule]:
        result = await self.session.execute(sa.select(Schedule).order_by(col(Schedule.name)))
        return result.scalars().all()

    async def delete(self, schedule_id: str) -> bool:
        """The schedule and the record of its fire times; its jobs stay."""
        result = await self.session.execute(sa.delete(_SCHEDULE).where(_SCHEDULE.c.id == schedule_id))
        await self.session.execute(sa.delete(_FIRE).where(_FIRE.c.schedule_id == schedule_id))
        return _rowcount(result) == 1

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Enabled schedules whose next fire time has come, earliest first."""
        result = await self.session.execute(
            sa.select(_SCHEDULE.c.id)
            .where(_SCHEDULE.c.enabled.is_(True), _SCHEDULE.c.next_fire_at <= now)
            .order_by(_SCHEDULE.c.next_fire_at)
            .limit(limit)
        )
        return list(result.scalars())

    async def next_due(self) -> datetime | None:
        result = await self.session.execute(
            sa.select(sa.func.min(_SCHEDULE.c.next_fire_at)).where(_SCHEDULE.c.enabled.is_(True))
        )
        next_due: datetime | None = result.scalar()
        return next_due

    async def next_fires(self) -> list[tuple[str, datetime]]:
        """(name, next fire time) of every enabled schedule."""
        result = await self.session.execute(
            sa.select(_SCHEDULE.c.name, _SCHEDULE.c.next_fire_at).where(
                _SCHEDULE.c.enabled.is_(True), _SCHEDULE.c.next_fire_at.is_not(None)
            )
        )
        return [(name, at) for name, at in result.tuples()]

    async def advance(self, schedule_id: str, *, due: datetime, next_fire: datetime | None) -> bool:
        """Move the next fire time on from `due`, if the schedule is still enabled and still due then: of
        concurrent passes, the first takes it (the others wait for its commit, then find it moved)."""
        result = await self.session.execute(
            sa.update(_SCHEDULE)
            .where(
                _SCHEDULE.c.id == schedule_id,
                _SCHEDULE.c.enabled.is_(True),
                _SCHEDULE.c.next_fire_at == due,
            )
            .values(next_fire_at=next_fire)
        )
        return _rowcount(result) == 1

    async def record(self, fire: ScheduleFire) -> None:
        """IntegrityError when the fire time has a record already."""
        self.session.add(fire)
        await self.session.flush()

    async def forget_fires(self, before: datetime) -> int:
        """Records of fire times before `before` (retention)."""
        return _rowcount(await self.session.execute(sa.delete(_FIRE).where(_FIRE.c.fire_at < before)))

    async def fires(self, schedule_id: str, *, limit: int, before: int | None = None) -> list[ScheduleFire]:
        """Newest first."""
        query = sa.select(ScheduleFire).where(col(ScheduleFire.schedule_id) == schedule_id)
        if before is not None:
            query = query.where(col(ScheduleFire.id) < before)
        result = await self.session.execute(query.order_by(col(ScheduleFire.id).desc()).limit(limit))
        return list(result.scalars().all())

    async def recent_fires(self, schedule_ids: list[str], *, limit: int) -> dict[str, list[ScheduleFire]]:
        """The latest `limit` fires of each schedule, newest first, in one query."""
        if not schedule_ids:
            return {}
        rank = (
            sa.func.row_number()
            .over(partition_by=_FIRE.c.schedule_id, order_by=_FIRE.c.id.desc())
            .label("rank")
        )
        ranked = sa.select(_FIRE, rank).where(_FIRE.c.schedule_id.in_(schedule_ids)).subquery()
        fire = aliased(ScheduleFire, ranked)
        result = await self.session.execute(
            sa.select(fire).where(ranked.c.rank <= limit).order_by(ranked.c.schedule_id, ranked.c.id.desc())
        )
        recent: dict[str, list[ScheduleFire]] = {}
        for row in result.scalars():
            recent.setdefault(row.schedule_id, []).append(row)
        return recent

    async def active_run(self, schedule_id: str) -> str | None:
        """A run of the schedule that is queued or running."""
        result = await self.session.execute(
            sa.select(_JOB.c.id)
            .where(
                _JOB.c.schedule_id == schedule_id,
                _JOB.c.status.in_([JobStatus.queued, JobStatus.running]),
            )
            .limit(1)
        )
        return result.scalar()
