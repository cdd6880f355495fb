"""When a schedule fires: 5-field cron in an IANA timezone, iterated by `cronsim` (no cron parser of ours).

Daylight saving follows Debian's cron, which `cronsim` implements: a time of day that the spring change
skips fires once, right after the change (`30 2 * * *` in Europe/Berlin on 2027-03-28 fires at
03:00+02:00); one that the autumn change repeats fires once, at its first occurrence; a schedule with a
wildcard minute or hour follows the wall clock (`*/30 * * * *` fires at 02:00+02:00, 02:30+02:00,
02:00+01:00 and 02:30+01:00 on the autumn night). `croniter` was not chosen: it fires a repeated daily
time twice.

Times are stored and compared in UTC; they are shown in the schedule's timezone with its offset.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from cronsim import CronSim, CronSimError

# Printable ASCII without quotes, backslashes or shell metacharacters: what cron's fields are made of.
_CRON_TEXT = re.compile(r"^[0-9A-Za-z*/,\- ?#]{1,100}\Z")
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}\Z")


class ScheduleTimeError(ValueError):
    """A cron expression or timezone the service does not schedule with; the message says why."""


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA timezone `name`; nothing else (no path, no POSIX TZ string) is looked up."""
    if len(name) > 64 or not _ZONE_NAME.match(name) or name not in _known_zones():
        raise ScheduleTimeError("unknown timezone: expected an IANA name such as Europe/Berlin or UTC")
    return zoneinfo.ZoneInfo(name)


@dataclass(frozen=True)
class Cron:
    """A checked expression and its timezone."""

    expression: str
    timezone: zoneinfo.ZoneInfo

    @classmethod
    def parse(cls, expression: str, timezone: str) -> Cron:
        """ScheduleTimeError for anything but 5 cron fields that fire at least once, and an IANA name."""
        fields = expression.split()
        if not _CRON_TEXT.match(expression) or len(fields) != 5:
            raise ScheduleTimeError(
                "cron: expected 5 fields (minute hour day-of-month month day-of-week), e.g. '30 2 * * *'"
            )
        tz = zone(timezone)
        normalized = " ".join(fields)
        try:
            first = next(CronSim(normalized, datetime.now(UTC).astimezone(tz)), None)
        except CronSimError as exc:
            raise ScheduleTimeError(f"cron: {exc}") from None
        if first is None:
            # cronsim gives up after 50 years without a match.
            raise ScheduleTimeError("cron: the expression never fires")
        return cls(normalized, tz)

    def after(self, moment: datetime) -> Iterator[datetime]:
        """Fire times strictly after `moment` (aware), in the schedule's timezone, in order."""
        for fire in CronSim(self.expression, moment.astimezone(self.timezone)):
            # Started inside a repeated hour, cronsim may name a wall time already passed: skip it.
            if fire > moment:
                yield fire

    def next_after(self, moment: datetime) -> datetime | None:
        return next(self.after(moment), None)

    def next_runs(self, start: datetime, count: int = 5) -> list[datetime]:
        """`count` fire times from `start` (a fire time, included), in the schedule's timezone."""
        runs = [start.astimezone(self.timezone)]
        for fire in self.after(start):
            if len(runs) >= count:
                break
            runs.append(fire)
        return runs


@dataclass(frozen=True)
class Plan:
    """What one pass does with a schedule whose next fire time has come.

    `fire`: the fire time that starts a run (the latest due one, when it is younger than the grace);
    `missed`: the due fire times before it, or all of them when even the latest is too old: (first, count);
    `next_fire`: the first fire time after `now`."""

    fire: datetime | None
    missed: tuple[datetime, int] | None
    next_fire: datetime | None


# Bounds the work of catching up after a long stop of every API process (a per-minute schedule stopped for
# a week has about 10,000 fire times); past it, the count of missed fire times is a lower bound.
MAX_CATCH_UP = 100_000


def plan(cron: Cron, due: datetime, now: datetime, grace: timedelta) -> Plan:
    """The fire times from `due` (the stored next fire time, aware) up to `now`: a missed fire time is made
    up once, by the run of the latest one, when that is younger than `grace`; the others are missed."""
    if due > now:
        return Plan(fire=None, missed=None, next_fire=due)
    latest = due
    count = 1
    upcoming: datetime | None = None
    for fire in cron.after(due):
        if fire > now:
            upcoming = fire
            break
        latest = fire
        count += 1
        if count >= MAX_CATCH_UP:
            upcoming = cron.next_after(now)
            break
    if now - latest <= grace:
        missed = None if count == 1 else (due, count - 1)
        return Plan(fire=latest, missed=missed, next_fire=upcoming)
    return Plan(fire=None, missed=(due, count), next_fire=upcoming)


def iso_local(moment: datetime, timezone: tzinfo) -> str:
    """ISO 8601 in the schedule's timezone with its offset, e.g. `2027-03-28T03:00:00+02:00`."""
    return moment.astimezone(timezone).isoformat()


def to_utc_naive(moment: datetime) -> datetime:
    """As the database stores times: naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)
