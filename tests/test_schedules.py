"""Schedules over HTTP against a real API (and its scheduler), MariaDB and Redis.

A fire time is brought forward by writing the schedule's next fire time in the database, as a process that
stopped before it would have left it: the API's scheduler (polling every second here) handles it as it
handles any due schedule. The pure timing rules (daylight saving, misfire plans) are in
tests/unit/test_schedule_times.py; the one-job-per-fire-time test with two APIs, two workers and a kill -9
waits for real minutes, at the end of this file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from service.embedded import free_port
from tests.support import Backends, Stack, StackFactory, api_command, lone_api, start_process, wait_http
from tests.support.jobs import wait_for, wait_until
from tests.support.proxy import TcpProxy, through
from tests.support.stacks import stop

GRACE_S = 120
# A fire time brought forward is the only one a test sees: the schedule's own come once a year.
YEARLY = "0 0 1 1 *"
DEBUG = {"playbook": "debug.yml", "inventory": "inventory/local1.yml"}


@pytest.fixture(scope="module")
def idle(start_stack: StackFactory) -> Stack:
    """No worker (KEDA's minReplicaCount 0): fired runs stay queued, so overlap is decided by them."""
    return start_stack(workers=0, SCHEDULE_POLL_INTERVAL="1", SCHEDULE_MISFIRE_GRACE=str(GRACE_S))


@pytest.fixture
def client(idle: Stack) -> Iterator[httpx.Client]:
    with idle.client() as client:
        yield client


@pytest.fixture(scope="module")
def database(idle: Stack) -> Iterator[sa.Engine]:
    engine = idle.db()
    yield engine
    engine.dispose()


def create(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": f"s-{uuid.uuid4().hex[:8]}", "cron": "0 3 * * *", "job": DEBUG, **fields}
    response = client.post("/api/v1/schedules", json=body)
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


def bring_forward(database: sa.Engine, schedule_id: str, fire_at: datetime) -> None:
    """Make `fire_at` (UTC) the schedule's next fire time, as if it were due then."""
    with database.begin() as connection:
        moved = connection.execute(
            sa.text("UPDATE schedule SET next_fire_at = :at WHERE id = :id"),
            {"at": fire_at.astimezone(UTC).replace(tzinfo=None), "id": schedule_id},
        )
        assert moved.rowcount == 1


def fires_of(client: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/schedules/{schedule_id}/fires", params={"limit": 500})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def wait_for_fires(
    client: httpx.Client, schedule_id: str, count: int, deadline_s: float = 30
) -> list[dict[str, Any]]:
    """The schedule's fires, newest first, once there are `count`."""
    wait_until(
        lambda: len(fires_of(client, schedule_id)) >= count, f"{count} fires of {schedule_id}", deadline_s
    )
    return fires_of(client, schedule_id)


def schedule_count(database: sa.Engine) -> int:
    with database.connect() as connection:
        return int(connection.execute(sa.text("SELECT COUNT(*) FROM schedule")).scalar_one())


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


# --- create, read, change, delete ------------------------------------------------------------------------


def test_create_answers_the_next_five_fire_times_with_their_offsets(client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/schedules",
        json={"name": "nightly berlin", "cron": "30 2 * * *", "timezone": "Europe/Berlin", "job": DEBUG},
    )
    assert response.status_code == 201, response.text
    schedule = response.json()
    assert response.headers["Location"] == f"/api/v1/schedules/{schedule['id']}"
    assert (schedule["enabled"], schedule["overlap"], schedule["timezone"]) == (True, "skip", "Europe/Berlin")
    assert len(schedule["next_runs"]) == 5
    for run in schedule["next_runs"]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT0[23]:[03]0:00\+0[12]:00", run), run
    times = [datetime.fromisoformat(run) for run in schedule["next_runs"]]
    assert times == sorted(times) and times[0] > datetime.now(UTC)
    assert schedule["job"]["playbook"] == "debug.yml" and schedule["recent_fires"] == []
    assert client.get(f"/api/v1/schedules/{schedule['id']}").json() == schedule
    listed = client.get("/api/v1/schedules").json()["items"]
    assert schedule["id"] in [item["id"] for item in listed]


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"cron": "61 * * * *"}, "cron: Bad minute"),
        ({"cron": "0 0 30 2 *"}, "cron: Bad day-of-month"),
        ({"cron": "0 0 31 4,6,9,11 *"}, "cron: Bad day-of-month"),
        ({"cron": "* * * *"}, "cron: expected 5 fields"),
        ({"cron": "0 0 * * * 2027"}, "cron: expected 5 fields"),
        ({"cron": "0 0 * * *\n* * * * *"}, "cron: expected 5 fields"),
        ({"cron": "`reboot` * * * *"}, "cron: expected 5 fields"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"timezone": "../../../../etc/passwd"}, "unknown timezone"),
        ({"timezone": "/etc/localtime"}, "unknown timezone"),
        ({"job": {"playbook": "missing.yml"}}, "job.playbook:"),
        ({"job": {"playbook": "../escape.yml"}}, "job.playbook:"),
        ({"job": {**DEBUG, "extra_vars": {"ansible_become_password": "x"}}}, "job.extra_vars"),
        (
            {"job": {**DEBUG, "labels": {"schedule": "other"}}},
            "job.labels: 'schedule' is set by the schedule",
        ),
        ({"job": {**DEBUG, "labels": {f"k{n}": "v" for n in range(32)}}}, "job.labels: at most 32 labels"),
    ],
)
def test_refused_with_the_reason_and_nothing_stored(
    client: httpx.Client, database: sa.Engine, fields: dict[str, Any], detail: str
) -> None:
    before = schedule_count(database)
    body = {"name": f"bad-{uuid.uuid4().hex[:8]}", "cron": "0 3 * * *", "job": DEBUG, **fields}
    response = client.post("/api/v1/schedules", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "InvalidRequest"
    assert response.json()["detail"].startswith(detail), response.json()
    assert schedule_count(database) == before


@pytest.mark.parametrize(
    "fields",
    [
        {"name": ""},
        {"name": " padded"},
        {"name": "line\nbreak"},
        {"name": "x" * 101},
        {"name": "<script>"},
        {"cron": 5},
        {"cron": "* " * 60},
        {"enabled": "yes"},
        {"overlap": "parallel"},
        {"timezone": None},
        {"job": {"playbook": "debug.yml", "verbosity": 9}},
        {"job": {"playbook": "debug.yml", "tags": ["--become"]}},
        {"job": "debug.yml"},
        {"surprise": True},
    ],
)
def test_malformed_fields_are_422_and_nothing_stored(
    client: httpx.Client, database: sa.Engine, fields: dict[str, Any]
) -> None:
    before = schedule_count(database)
    body = {"name": f"bad-{uuid.uuid4().hex[:8]}", "cron": "0 3 * * *", "job": DEBUG, **fields}
    response = client.post("/api/v1/schedules", json=body)
    assert response.status_code == 422, response.text
    assert schedule_count(database) == before


@pytest.mark.parametrize(
    "job",
    [
        {"playbook": "missing.yml"},
        {**DEBUG, "exclusive": True, "limit": "nosuchhost"},
        {**DEBUG, "forks": 10_000},
        {**DEBUG, "verbosity": 9},
        {**DEBUG, "limit": "--become"},
        {**DEBUG, "extra_vars": {"x": 1, "{{ lookup('pipe', 'id') }}": 2}},
        {
            "playbook": "debug.yml",
            "source": {"type": "git", "repo": "https://evil.example/a/b", "ref": "main"},
        },
        {
            "playbook": "debug.yml",
            "source": {"type": "git", "repo": "gitlab.example/a/b", "ref": "--upload-pack=x"},
        },
        {"playbook": "debug.yml", "source": {"type": "ftp"}},
    ],
)
def test_the_job_body_is_refused_as_post_jobs_refuses_it(
    client: httpx.Client, database: sa.Engine, job: dict[str, Any]
) -> None:
    before = schedule_count(database)
    as_run = client.post("/api/v1/jobs", json=job)
    as_schedule = client.post("/api/v1/schedules", json={"name": "same", "cron": "0 3 * * *", "job": job})
    assert (as_run.status_code, as_schedule.status_code) == (422, 422), (as_run.text, as_schedule.text)
    assert as_schedule.json()["error"] == as_run.json()["error"]
    assert as_schedule.json()["detail"] == f"job.{as_run.json()['detail']}"
    assert schedule_count(database) == before


def test_a_name_is_unique(client: httpx.Client, database: sa.Engine) -> None:
    first = create(client)
    before = schedule_count(database)
    response = client.post(
        "/api/v1/schedules", json={"name": first["name"], "cron": "0 4 * * *", "job": DEBUG}
    )
    assert response.status_code == 422
    assert response.json()["detail"] == f"name: a schedule named {first['name']!r} exists already"
    other = create(client)
    renamed = client.patch(f"/api/v1/schedules/{other['id']}", json={"name": first["name"]})
    assert renamed.status_code == 422
    assert schedule_count(database) == before + 1
    assert client.get(f"/api/v1/schedules/{other['id']}").json()["name"] == other["name"]


def test_unknown_or_malformed_ids(client: httpx.Client) -> None:
    missing = uuid.uuid4()
    assert client.get(f"/api/v1/schedules/{missing}").status_code == 404
    assert client.patch(f"/api/v1/schedules/{missing}", json={"enabled": False}).status_code == 404
    assert client.delete(f"/api/v1/schedules/{missing}").status_code == 404
    assert client.get("/api/v1/schedules/not-a-uuid").status_code == 422
    assert client.get(f"/api/v1/schedules/{missing}/fires", params={"before": 0}).status_code == 422


def test_patch_changes_only_what_it_names(client: httpx.Client) -> None:
    schedule = create(client, cron="0 3 * * *", timezone="America/New_York")
    response = client.patch(
        f"/api/v1/schedules/{schedule['id']}", json={"cron": "15 4 * * 1", "overlap": "queue"}
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert (changed["cron"], changed["overlap"], changed["timezone"]) == (
        "15 4 * * 1",
        "queue",
        "America/New_York",
    )
    assert changed["job"] == schedule["job"] and changed["name"] == schedule["name"]
    for run in changed["next_runs"]:
        moment = datetime.fromisoformat(run)
        assert (moment.weekday(), moment.hour, moment.minute) == (0, 4, 15)
    refused = client.patch(f"/api/v1/schedules/{schedule['id']}", json={"cron": "0 0 30 2 *", "name": "new"})
    assert refused.status_code == 422
    assert client.get(f"/api/v1/schedules/{schedule['id']}").json() == changed
    assert client.patch(f"/api/v1/schedules/{schedule['id']}", json={"enabled": None}).status_code == 422


# --- firing ----------------------------------------------------------------------------------------------


def test_a_fire_queues_one_run_while_the_workers_are_at_zero(
    idle: Stack, client: httpx.Client, database: sa.Engine
) -> None:
    schedule = create(client, cron=YEARLY, job={**DEBUG, "labels": {"team": "ops"}})
    fire_at = datetime.now(UTC)
    bring_forward(database, schedule["id"], fire_at)
    [fire] = wait_for_fires(client, schedule["id"], 1)
    assert fire["outcome"] == "queued" and fire["count"] == 1
    assert datetime.fromisoformat(fire["fire_at"]) == fire_at
    job = client.get(f"/api/v1/jobs/{fire['job_id']}").json()
    assert job["status"] == "queued" and job["schedule_id"] == schedule["id"]
    assert job["labels"] == {"team": "ops", "schedule": schedule["name"]}
    assert job["submitted_by"] == schedule["created_by"]
    # KEDA's trigger sees it, and would start a worker.
    assert client.get("/api/v1/queue").json()["queued"] >= 1
    listed = client.get("/api/v1/jobs", params={"label": f"schedule={schedule['name']}"}).json()["items"]
    assert [item["id"] for item in listed] == [job["id"]]
    # The next fire time is the cron's next one, not a make-up of the one just handled.
    after = client.get(f"/api/v1/schedules/{schedule['id']}").json()
    assert datetime.fromisoformat(after["next_runs"][0]) == datetime(fire_at.year + 1, 1, 1, tzinfo=UTC)
    assert after["recent_fires"] == [fire]
    metrics = client.get("/metrics").text
    assert re.search(r'^ars_schedule_fires_total\{outcome="queued"\} [1-9]', metrics, re.M), metrics
    assert f'ars_schedule_next_fire_timestamp_seconds{{schedule="{schedule["name"]}"}}' in metrics


def test_overlap_skip_records_a_skipped_fire_while_the_previous_run_is_queued(
    client: httpx.Client, database: sa.Engine
) -> None:
    schedule = create(client, cron=YEARLY, overlap="skip")
    bring_forward(database, schedule["id"], datetime.now(UTC) - timedelta(seconds=2))
    [first] = wait_for_fires(client, schedule["id"], 1)
    assert first["outcome"] == "queued"
    bring_forward(database, schedule["id"], datetime.now(UTC))
    second, _ = wait_for_fires(client, schedule["id"], 2)
    assert second["outcome"] == "skipped" and second["job_id"] is None
    assert second["detail"] == f"the previous run {first['job_id']} was still queued or running"
    # Once the previous run ended, the next fire time runs again.
    assert client.post(f"/api/v1/jobs/{first['job_id']}/cancel").status_code == 202
    bring_forward(database, schedule["id"], datetime.now(UTC) + timedelta(seconds=1))
    third = wait_for_fires(client, schedule["id"], 3)[0]
    assert third["outcome"] == "queued" and third["job_id"] not in (None, first["job_id"])
    metrics = client.get("/metrics").text
    assert re.search(r'^ars_schedule_fires_total\{outcome="skipped"\} [1-9]', metrics, re.M)


def test_overlap_queue_runs_every_fire_time(client: httpx.Client, database: sa.Engine) -> None:
    schedule = create(client, cron=YEARLY, overlap="queue")
    bring_forward(database, schedule["id"], datetime.now(UTC) - timedelta(seconds=2))
    wait_for_fires(client, schedule["id"], 1)
    bring_forward(database, schedule["id"], datetime.now(UTC))
    fires = wait_for_fires(client, schedule["id"], 2)
    assert [fire["outcome"] for fire in fires] == ["queued", "queued"]
    assert fires[0]["job_id"] != fires[1]["job_id"]


def test_missed_fire_times_are_made_up_once_within_the_grace(
    client: httpx.Client, database: sa.Engine
) -> None:
    schedule = create(client, cron="* * * * *", overlap="queue")
    stopped_at = minute(datetime.now(UTC)) - timedelta(minutes=10)
    bring_forward(database, schedule["id"], stopped_at)
    # The oldest two (a minute passing meanwhile adds its own fire).
    made_up, missed = wait_for_fires(client, schedule["id"], 2)[-2:]
    assert made_up["outcome"] == "queued" and missed["outcome"] == "missed"
    assert datetime.fromisoformat(missed["fire_at"]) == stopped_at
    # Every minute from the stop to the one made up, that one excepted.
    made_up_at = datetime.fromisoformat(made_up["fire_at"])
    assert missed["count"] == (made_up_at - stopped_at) // timedelta(minutes=1) >= 10
    assert datetime.now(UTC) - made_up_at < timedelta(seconds=GRACE_S)
    assert client.get("/api/v1/jobs", params={"label": f"schedule={schedule['name']}"}).json()["items"] != []
    metrics = client.get("/metrics").text
    assert re.search(r'^ars_schedule_fires_total\{outcome="missed"\} [1-9]\d', metrics, re.M)


def test_a_fire_time_older_than_the_grace_is_only_recorded_as_missed(
    client: httpx.Client, database: sa.Engine
) -> None:
    passed = minute(datetime.now(UTC)) - timedelta(minutes=5)
    schedule = create(client, cron=f"{passed.minute} {passed.hour} * * *", timezone="UTC")
    bring_forward(database, schedule["id"], passed)
    [missed] = wait_for_fires(client, schedule["id"], 1)
    assert (missed["outcome"], missed["count"], missed["job_id"]) == ("missed", 1, None)
    assert datetime.fromisoformat(missed["fire_at"]) == passed
    after = client.get(f"/api/v1/schedules/{schedule['id']}").json()
    assert datetime.fromisoformat(after["next_runs"][0]) == passed + timedelta(days=1)
    assert client.get("/api/v1/jobs", params={"label": f"schedule={schedule['name']}"}).json()["items"] == []


def test_disabling_stops_it_at_once_and_enabling_does_not_make_up(
    client: httpx.Client, database: sa.Engine
) -> None:
    stopped = create(client, cron=YEARLY)
    response = client.patch(f"/api/v1/schedules/{stopped['id']}", json={"enabled": False})
    assert response.status_code == 200
    assert (response.json()["enabled"], response.json()["next_runs"]) == (False, [])
    # A pass that read it before the change finds it disabled: due in the database, it still does not fire.
    now = datetime.now(UTC)
    bring_forward(database, stopped["id"], now)
    witness = create(client, cron=YEARLY)
    bring_forward(database, witness["id"], now)
    wait_for_fires(client, witness["id"], 1)
    assert fires_of(client, stopped["id"]) == []
    # Enabled again, it fires from now on: the fire time passed while disabled is not made up.
    enabled = client.patch(f"/api/v1/schedules/{stopped['id']}", json={"enabled": True}).json()
    assert datetime.fromisoformat(enabled["next_runs"][0]) > datetime.now(UTC)


def test_deleting_keeps_its_past_jobs(client: httpx.Client, database: sa.Engine) -> None:
    schedule = create(client, cron=YEARLY)
    bring_forward(database, schedule["id"], datetime.now(UTC))
    [fire] = wait_for_fires(client, schedule["id"], 1)
    assert client.delete(f"/api/v1/schedules/{schedule['id']}").status_code == 204
    assert client.get(f"/api/v1/schedules/{schedule['id']}").status_code == 404
    assert client.get(f"/api/v1/schedules/{schedule['id']}/fires").status_code == 404
    job = client.get(f"/api/v1/jobs/{fire['job_id']}").json()
    assert job["schedule_id"] == schedule["id"]
    with database.connect() as connection:
        left = connection.execute(
            sa.text("SELECT COUNT(*) FROM schedule_fire WHERE schedule_id = :id"), {"id": schedule["id"]}
        ).scalar_one()
    assert left == 0


@pytest.mark.parametrize(
    ("stored", "detail"),
    [
        ('{"playbook": "gone.yml"}', "job.playbook:"),
        (
            '{"playbook": "debug.yml", "verbosity": 9}',
            "job.verbosity: Input should be less than or equal to 4",
        ),
    ],
)
def test_a_job_body_that_no_longer_passes_is_refused_at_the_fire(
    client: httpx.Client, database: sa.Engine, stored: str, detail: str
) -> None:
    schedule = create(client, cron=YEARLY)
    with database.begin() as connection:
        connection.execute(
            sa.text("UPDATE schedule SET job = :job WHERE id = :id"), {"job": stored, "id": schedule["id"]}
        )
    bring_forward(database, schedule["id"], datetime.now(UTC))
    [fire] = wait_for_fires(client, schedule["id"], 1)
    assert (fire["outcome"], fire["job_id"]) == ("refused", None)
    assert fire["detail"].startswith(detail)
    # It can still be disabled, and renaming it asks for a body that passes.
    assert client.patch(f"/api/v1/schedules/{schedule['id']}", json={"enabled": False}).status_code == 200
    renamed = client.patch(f"/api/v1/schedules/{schedule['id']}", json={"name": f"{schedule['name']}-2"})
    assert renamed.status_code == 422 and renamed.json()["detail"].startswith("job")


def test_a_fire_time_passed_while_the_database_was_away_is_made_up_once(
    start_stack: StackFactory, backends: Backends, tmp_path: Path
) -> None:
    if backends.is_sqlite:
        pytest.skip("cutting the database off needs a database server (CI runs this on MariaDB)")
    stack = start_stack(workers=0)
    # The stack's own API goes; the only scheduler left reaches the database through the proxy.
    stop(stack.processes[0])
    proxy = TcpProxy(make_url(stack.database_url).port or 3306)
    env = {**stack.env, "DATABASE_URL": through(stack, proxy), "SCHEDULE_POLL_INTERVAL": "1"}
    log = tmp_path / "api.log"
    database = stack.db()
    try:
        with lone_api(env, log) as url, httpx.Client(base_url=url, timeout=30) as client:
            schedule = create(client, cron=YEARLY)
            proxy.cut()
            bring_forward(database, schedule["id"], datetime.now(UTC))
            wait_until(lambda: "schedules not read" in log.read_text(), "the scheduler to meet the outage")
            proxy.restore()
            [fire] = wait_for_fires(client, schedule["id"], 1)
            assert fire["outcome"] == "queued"
            assert client.get(f"/api/v1/jobs/{fire['job_id']}").json()["schedule_id"] == schedule["id"]
    finally:
        proxy.close()
        database.dispose()


# --- the console ------------------------------------------------------------------------------------------


def test_the_console_lists_schedules_and_their_recent_runs(client: httpx.Client, database: sa.Engine) -> None:
    schedule = create(client, cron="0 0 1 1 *", timezone="Asia/Tokyo", overlap="queue")
    bring_forward(database, schedule["id"], datetime.now(UTC))
    [fire] = wait_for_fires(client, schedule["id"], 1)
    page = client.get("/schedules")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    section = page.text[page.text.index(f'id="schedule-{schedule["id"]}"') :].split("</section>")[0]
    assert schedule["name"] in section and "<code>0 0 1 1 *</code> in Asia/Tokyo" in section
    assert all(
        run in section for run in client.get(f"/api/v1/schedules/{schedule['id']}").json()["next_runs"]
    )
    assert f'<a href="/jobs/{fire["job_id"]}">' in section and "queued" in section
    assert 'href="/schedules"' in client.get("/").text


# --- the command line client ------------------------------------------------------------------------------


def test_ars_schedules_commands(idle: Stack, client: httpx.Client) -> None:
    env = {**os.environ, "ARS_URL": idle.base_url}

    def ars(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "ars"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    name = f"cli-{uuid.uuid4().hex[:6]}"
    created = ars(
        "schedules",
        "create",
        name,
        "debug.yml",
        "-i",
        "inventory/local1.yml",
        "--cron",
        "30 2 * * *",
        "--tz",
        "Europe/Berlin",
        "--overlap",
        "queue",
        "-e",
        "who=cron",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    schedule = json.loads(created.stdout)
    assert (schedule["name"], schedule["overlap"], schedule["job"]["extra_vars"]) == (
        name,
        "queue",
        {"who": "cron"},
    )
    listed = ars("schedules", "list")
    assert listed.returncode == 0 and name in listed.stdout and schedule["next_runs"][0] in listed.stdout
    disabled = ars("schedules", "disable", schedule["id"])
    assert disabled.returncode == 0 and "enabled:     no" in disabled.stdout
    assert client.get(f"/api/v1/schedules/{schedule['id']}").json()["next_runs"] == []
    shown = ars("schedules", "show", schedule["id"])
    assert shown.returncode == 0 and "cron:        30 2 * * *" in shown.stdout
    refused = ars("schedules", "create", "other", "debug.yml", "--cron", "99 * * * *")
    assert refused.returncode != 0 and "cron: Bad minute" in refused.stderr
    assert ars("schedules", "fires", schedule["id"]).returncode == 0
    deleted = ars("schedules", "delete", schedule["id"])
    assert deleted.returncode == 0
    assert client.get(f"/api/v1/schedules/{schedule['id']}").status_code == 404


# --- exactly once, with real minutes --------------------------------------------------------------------


def test_one_job_per_minute_with_two_apis_and_two_workers_across_a_kill_9(
    start_stack: StackFactory, tmp_path: Path
) -> None:
    stack = start_stack(workers=2, SCHEDULE_POLL_INTERVAL="1")
    port = free_port()
    log = tmp_path / "api2.log"
    second = start_process(api_command(port), stack.env, log)
    stack.processes.append(second)
    wait_http(f"http://127.0.0.1:{port}/health", second, log)
    first_api = stack.processes[0]
    urls = {first_api.pid: stack.base_url, second.pid: f"http://127.0.0.1:{port}"}
    apis = {first_api.pid: first_api, second.pid: second}
    with stack.client() as client:
        schedule = create(client, cron="* * * * *", overlap="queue")
        [first] = wait_for_fires(client, schedule["id"], 1, deadline_s=90)
    # Kill -9 the process that fired; the other fires the next minutes.
    firer = int(first["fired_by"].rsplit(":", 1)[1])
    apis[firer].kill()
    apis[firer].wait()
    [survivor_url] = [url for pid, url in urls.items() if pid != firer]
    with httpx.Client(base_url=survivor_url, timeout=30) as survivor:
        wait_for_fires(survivor, schedule["id"], 3, deadline_s=150)
        stop = survivor.patch(f"/api/v1/schedules/{schedule['id']}", json={"enabled": False})
        assert stop.status_code == 200
        fires = list(reversed(fires_of(survivor, schedule["id"])))
        assert [fire["outcome"] for fire in fires] == ["queued"] * len(fires)
        times = [datetime.fromisoformat(fire["fire_at"]) for fire in fires]
        assert times == [times[0] + timedelta(minutes=n) for n in range(len(times))]
        assert {fire["fired_by"] for fire in fires[1:]} == {
            f"{first['fired_by'].rsplit(':', 1)[0]}:{pid}" for pid in urls if pid != firer
        }
        # One job per fire time, each run to its end by one of the workers.
        jobs = survivor.get("/api/v1/jobs", params={"label": f"schedule={schedule['name']}"}).json()["items"]
        assert sorted(job["id"] for job in jobs) == sorted(fire["job_id"] for fire in fires)
        for fire in fires:
            assert wait_for(survivor, fire["job_id"])["status"] == "successful"
