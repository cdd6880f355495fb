"""When schedules fire: cronsim in a timezone, daylight saving as Debian's cron, misfire plans. No waiting:
the pure functions of service/schedules/times.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.schedules.times import Cron, ScheduleTimeError, iso_local, plan


def runs(cron: str, timezone: str, after: datetime, count: int = 5) -> list[str]:
    schedule = Cron.parse(cron, timezone)
    first = schedule.next_after(after)
    assert first is not None
    return [iso_local(run, schedule.timezone) for run in schedule.next_runs(first, count)]


def test_berlin_spring_skipped_time_fires_once_right_after_the_change() -> None:
    assert runs("30 2 * * *", "Europe/Berlin", datetime(2027, 3, 26, 12, tzinfo=UTC), 4) == [
        "2027-03-27T02:30:00+01:00",
        "2027-03-28T03:00:00+02:00",
        "2027-03-29T02:30:00+02:00",
        "2027-03-30T02:30:00+02:00",
    ]


def test_berlin_autumn_repeated_time_fires_once_at_its_first_occurrence() -> None:
    assert runs("30 2 * * *", "Europe/Berlin", datetime(2027, 10, 30, 12, tzinfo=UTC), 3) == [
        "2027-10-31T02:30:00+02:00",
        "2027-11-01T02:30:00+01:00",
        "2027-11-02T02:30:00+01:00",
    ]


def test_new_york_spring_and_autumn() -> None:
    assert runs("30 2 * * *", "America/New_York", datetime(2027, 3, 13, 12, tzinfo=UTC), 2) == [
        "2027-03-14T03:00:00-04:00",
        "2027-03-15T02:30:00-04:00",
    ]
    assert runs("30 1 * * *", "America/New_York", datetime(2027, 11, 6, 12, tzinfo=UTC), 2) == [
        "2027-11-07T01:30:00-04:00",
        "2027-11-08T01:30:00-05:00",
    ]


def test_wildcard_hour_follows_the_wall_clock_through_both_changes() -> None:
    autumn = runs("*/30 * * * *", "Europe/Berlin", datetime(2027, 10, 30, 23, 15, tzinfo=UTC), 5)
    assert autumn == [
        "2027-10-31T01:30:00+02:00",
        "2027-10-31T02:00:00+02:00",
        "2027-10-31T02:30:00+02:00",
        "2027-10-31T02:00:00+01:00",
        "2027-10-31T02:30:00+01:00",
    ]
    spring = runs("*/30 * * * *", "America/New_York", datetime(2027, 3, 14, 6, 15, tzinfo=UTC), 3)
    assert spring == ["2027-03-14T01:30:00-05:00", "2027-03-14T03:00:00-04:00", "2027-03-14T03:30:00-04:00"]


def test_restarting_from_each_stored_fire_time_gives_the_same_sequence() -> None:
    """The scheduler stores the next fire time in UTC and starts again from it after every fire."""
    schedule = Cron.parse("*/30 * * * *", "Europe/Berlin")
    start = datetime(2027, 10, 30, 23, 15, tzinfo=UTC)
    continuous = list(zip(range(8), schedule.after(start), strict=False))
    stepped, moment = [], start
    for _ in range(8):
        fire = schedule.next_after(moment.astimezone(UTC))
        assert fire is not None
        stepped.append(fire)
        moment = fire
    assert [fire for _, fire in continuous] == stepped
    assert len({fire.astimezone(UTC) for fire in stepped}) == 8


@pytest.mark.parametrize(
    ("cron", "timezone", "reason"),
    [
        ("61 * * * *", "UTC", "cron: Bad minute"),
        ("0 0 30 2 *", "UTC", "cron: Bad day-of-month"),
        ("* * * *", "UTC", "cron: expected 5 fields"),
        ("0 * * * * *", "UTC", "cron: expected 5 fields"),
        ("@daily", "UTC", "cron: expected 5 fields"),
        ("0 0 * * *; reboot", "UTC", "cron: expected 5 fields"),
        ("$(id) * * * *", "UTC", "cron: expected 5 fields"),
        ("", "UTC", "cron: expected 5 fields"),
        ("0 0 * * *", "Mars/Olympus", "unknown timezone"),
        ("0 0 * * *", "../../../etc/passwd", "unknown timezone"),
        ("0 0 * * *", "/etc/localtime", "unknown timezone"),
        ("0 0 * * *", "EST5EDT,M3.2.0,M11.1.0", "unknown timezone"),
        ("0 0 * * *", "", "unknown timezone"),
    ],
)
def test_bad_cron_and_timezones_are_refused_with_the_reason(cron: str, timezone: str, reason: str) -> None:
    with pytest.raises(ScheduleTimeError) as refused:
        Cron.parse(cron, timezone)
    assert str(refused.value).startswith(reason)


def test_plan_fires_on_time() -> None:
    cron = Cron.parse("* * * * *", "UTC")
    due = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    steps = plan(cron, due, due + timedelta(seconds=0.3), timedelta(seconds=300))
    assert (steps.fire, steps.missed, steps.next_fire) == (due, None, due + timedelta(minutes=1))


def test_plan_not_yet_due_does_nothing() -> None:
    cron = Cron.parse("* * * * *", "UTC")
    due = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    steps = plan(cron, due, due - timedelta(seconds=1), timedelta(seconds=300))
    assert (steps.fire, steps.missed, steps.next_fire) == (None, None, due)


def test_plan_makes_up_missed_fire_times_once_within_the_grace() -> None:
    cron = Cron.parse("* * * * *", "UTC")
    due = datetime(2027, 1, 1, 11, 50, tzinfo=UTC)
    now = datetime(2027, 1, 1, 12, 0, 30, tzinfo=UTC)
    steps = plan(cron, due, now, timedelta(seconds=120))
    # 11:50 to 11:59 are missed; 12:00, 30 s old, is made up once.
    assert steps.fire == datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    assert steps.missed == (due, 10)
    assert steps.next_fire == datetime(2027, 1, 1, 12, 1, tzinfo=UTC)


def test_plan_beyond_the_grace_misses_everything() -> None:
    cron = Cron.parse("0 3 * * *", "Europe/Berlin")
    due = datetime(2027, 1, 1, 2, 0, tzinfo=UTC)  # 03:00+01:00
    steps = plan(cron, due, due + timedelta(seconds=301), timedelta(seconds=300))
    assert steps.fire is None
    assert steps.missed == (due, 1)
    assert steps.next_fire == datetime(2027, 1, 2, 2, 0, tzinfo=UTC)


def test_plan_without_grace_fires_only_what_is_exactly_due() -> None:
    cron = Cron.parse("* * * * *", "UTC")
    due = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    assert plan(cron, due, due, timedelta(0)).fire == due
    assert plan(cron, due, due + timedelta(seconds=1), timedelta(0)).missed == (due, 1)
