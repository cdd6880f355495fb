"""Real playbook runs through the API, a worker and ansible-playbook, on localhost inventories.

The runs of this module are submitted together up front so they execute concurrently; each test then
waits for its own run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import ansible_runner
import httpx
import pytest
import sqlalchemy as sa

from service.models import utcnow
from tests.support import (
    TEST_PLAYBOOKS,
    Stack,
    StackFactory,
    all_events,
    ansible_playbook,
    submit,
    wait_for,
    wait_until,
)

LOCAL3 = "inventory/local3.yml"
ALL_ZERO = {"ok": 0, "changed": 0, "failures": 0, "unreachable": 0, "skipped": 0, "rescued": 0, "ignored": 0}


def stats(ok: int = 0, changed: int = 0, failures: int = 0, skipped: int = 0) -> dict[str, int]:
    return {**ALL_ZERO, "ok": ok, "changed": changed, "failures": failures, "skipped": skipped}


@pytest.fixture(scope="module")
def runs_stack(start_stack: StackFactory) -> Stack:
    # Work dirs are kept so the tests can read the exact command ansible-runner started.
    return start_stack(KEEP_WORK_DIRS="true")


@pytest.fixture(scope="module")
def client(runs_stack: Stack) -> Iterator[httpx.Client]:
    with runs_stack.client() as http:
        yield http


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("targets")


@pytest.fixture(scope="module")
def runs(client: httpx.Client, scratch: Path) -> dict[str, dict[str, Any]]:
    """Every run this module checks, submitted at once."""
    requests: dict[str, dict[str, Any]] = {
        "success": {"playbook": "debug.yml", "inventory": LOCAL3},
        "failed": {"playbook": "fail_h2.yml", "inventory": LOCAL3},
        "check": {
            "playbook": "write_file.yml",
            "inventory": "inventory/local1.yml",
            "check": True,
            "extra_vars": {"path": str(scratch / "check-mode.txt")},
        },
        "write": {
            "playbook": "write_file.yml",
            "inventory": "inventory/local1.yml",
            "diff": True,
            "extra_vars": {"path": str(scratch / "written.txt")},
        },
        "tags": {"playbook": "debug.yml", "inventory": LOCAL3, "tags": ["two"]},
        "skip_tags": {"playbook": "debug.yml", "inventory": LOCAL3, "skip_tags": ["two"]},
        "limit": {"playbook": "debug.yml", "inventory": LOCAL3, "limit": "h1:h3"},
        "implicit_localhost": {"playbook": "localhost_only.yml"},
        "options": {"playbook": "debug.yml", "inventory": LOCAL3, "verbosity": 2, "forks": 2},
        "inline": {"playbook": "debug.yml", "inventory": {"all": {"hosts": {"a1": None, "a2": {"x": 1}}}}},
        "inert_vars": {
            "playbook": "echo_vars.yml",
            "inventory": "inventory/local1.yml",
            "extra_vars": {"payload": "{{ lookup('pipe', 'touch %s') }}" % (scratch / "pwned")},
        },
        "stdout": {"playbook": "debug.yml", "inventory": "inventory/local1.yml"},
        "nested": {"playbook": "nested/inner.yml", "inventory": "inventory/local1.yml"},
        "prompt": {"playbook": "prompt.yml", "timeout": 120},
        "raw_lines": {"playbook": "raw_lines.yml"},
    }
    return {name: submit(client, body) for name, body in requests.items()}


def finished(client: httpx.Client, runs: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return wait_for(client, runs[name]["id"])


def command_of(stack: Stack, job_id: str) -> list[str]:
    """The argv ansible-runner started, from its own artifacts."""
    (work,) = stack.work_dir.glob(f"run-{job_id}-*")
    command: list[str] = json.loads((work / "artifacts" / "run" / "command").read_text())["command"]
    return command


def test_success_with_per_host_stats(client: httpx.Client, runs: dict[str, dict[str, Any]]) -> None:
    job = finished(client, runs, "success")
    assert job["status"] == "successful"
    assert job["rc"] == 0
    assert job["reason"] is None
    assert job["host_stats"] == {"h1": stats(ok=3), "h2": stats(ok=3), "h3": stats(ok=3)}
    assert job["started_at"] >= job["created_at"]
    assert job["finished_at"] >= job["started_at"]


def test_every_event_stored_in_order(client: httpx.Client, runs: dict[str, dict[str, Any]]) -> None:
    job = finished(client, runs, "success")
    events = all_events(client, job["id"], page=7)
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert job["event_count"] == len(events)
    assert events[0]["event"] == "playbook_on_start"
    assert events[-1]["event"] == "playbook_on_stats"
    ok = [event for event in events if event["event"] == "runner_on_ok"]
    assert sorted((event["host"], event["task"]) for event in ok) == sorted(
        (host, task) for host in ("h1", "h2", "h3") for task in ("First", "Second", "Third")
    )
    assert all(event["play"] == "Debug play" for event in ok)
    assert ok[0]["data"]["res"]["msg"].split()[0] in {"first", "second", "third"}


def test_events_match_ansible_runners_own_record(
    client: httpx.Client, runs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The same play run by ansible-runner directly: the same number and kinds of events."""
    job = finished(client, runs, "success")
    events = all_events(client, job["id"])
    runner = ansible_runner.run(
        private_data_dir=str(tmp_path),
        project_dir=str(TEST_PLAYBOOKS),
        playbook="debug.yml",
        inventory=str(TEST_PLAYBOOKS / LOCAL3),
        envvars={"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        quiet=True,
    )
    assert runner.status == "successful"
    files = list((tmp_path / "artifacts").glob("*/job_events/*.json"))
    assert len(files) == len(events) == job["event_count"]
    theirs = Counter(json.loads(path.read_text())["event"] for path in files)
    assert Counter(event["event"] for event in events) == theirs


def test_output_outside_events_is_one_event_per_line(
    client: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    # Lines printed outside any event (here ended by carriage returns, as progress output is) reach
    # ansible-runner together with the next event; it hands them over one by one in one reused dict.
    job = finished(client, runs, "raw_lines")
    assert job["status"] == "successful", job["reason"]
    events = all_events(client, job["id"])
    assert [event["seq"] for event in events] == list(range(1, job["event_count"] + 1))
    verbose = [event["stdout"] for event in events if event["event"] == "verbose"]
    assert verbose[-3:] == ["raw line one", "raw line two", "raw line three"]


def test_failed_task(client: httpx.Client, runs: dict[str, dict[str, Any]]) -> None:
    job = finished(client, runs, "failed")
    assert job["status"] == "failed"
    assert job["rc"] == 2
    assert "h2" in job["reason"]
    assert job["host_stats"]["h2"] == stats(failures=1)
    assert job["host_stats"]["h1"] == job["host_stats"]["h3"] == stats(ok=1, skipped=1)
    failed = [e for e in all_events(client, job["id"]) if e["event"] == "runner_on_failed"]
    assert [(e["host"], e["task"]) for e in failed] == [("h2", "Fail on h2 only")]


def test_check_mode_changes_nothing(
    client: httpx.Client, runs: dict[str, dict[str, Any]], scratch: Path
) -> None:
    check = finished(client, runs, "check")
    write = finished(client, runs, "write")
    assert check["status"] == write["status"] == "successful"
    # Both report the change; only the real run makes it.
    assert check["host_stats"]["h1"]["changed"] == 1
    assert write["host_stats"]["h1"]["changed"] == 1
    assert not (scratch / "check-mode.txt").exists()
    assert (scratch / "written.txt").read_text() == "written"


def test_check_and_diff_reach_ansible_playbook(
    runs_stack: Stack, client: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    check = finished(client, runs, "check")
    write = finished(client, runs, "write")
    assert "--check" in command_of(runs_stack, check["id"])
    assert "--diff" not in command_of(runs_stack, check["id"])
    assert "--diff" in command_of(runs_stack, write["id"])
    assert "+written" in client.get(f"/api/v1/jobs/{write['id']}/stdout").text


def test_tags_and_skip_tags(client: httpx.Client, runs: dict[str, dict[str, Any]]) -> None:
    def tasks(name: str) -> set[str]:
        job = finished(client, runs, name)
        assert job["status"] == "successful"
        return {e["task"] for e in all_events(client, job["id"]) if e["event"] == "runner_on_ok"}

    assert tasks("tags") == {"Second"}
    assert tasks("skip_tags") == {"First", "Third"}


def test_limit(client: httpx.Client, runs: dict[str, dict[str, Any]]) -> None:
    job = finished(client, runs, "limit")
    assert job["status"] == "successful"
    assert set(job["host_stats"]) == {"h1", "h3"}


def test_no_inventory_targets_implicit_localhost(
    client: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    job = finished(client, runs, "implicit_localhost")
    assert job["status"] == "successful"
    assert job["host_stats"] == {"localhost": stats(ok=1)}


def test_verbosity_and_forks_reach_ansible_playbook(
    runs_stack: Stack, client: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    job = finished(client, runs, "options")
    assert job["status"] == "successful"
    command = command_of(runs_stack, job["id"])
    assert "-vv" in command
    assert command[command.index("--forks") + 1] == "2"
    assert "ansible-playbook [core" in client.get(f"/api/v1/jobs/{job['id']}/stdout").text


def test_inline_inventory(client: httpx.Client, runs: dict[str, dict[str, Any]]) -> None:
    job = finished(client, runs, "inline")
    assert job["status"] == "successful"
    assert job["host_stats"] == {"a1": stats(ok=3), "a2": stats(ok=3)}


def test_extra_vars_are_data_not_templates(
    client: httpx.Client, runs: dict[str, dict[str, Any]], scratch: Path
) -> None:
    job = finished(client, runs, "inert_vars")
    assert job["status"] == "successful"
    assert "lookup('pipe', 'touch" in client.get(f"/api/v1/jobs/{job['id']}/stdout").text
    assert not (scratch / "pwned").exists()


def test_nested_playbook_path(client: httpx.Client, runs: dict[str, dict[str, Any]]) -> None:
    assert finished(client, runs, "nested")["status"] == "successful"


def test_stdout_is_what_ansible_playbook_prints(
    client: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    job = finished(client, runs, "stdout")
    ours = client.get(f"/api/v1/jobs/{job['id']}/stdout")
    assert ours.headers["content-type"].startswith("text/plain")
    bare = subprocess.run(
        [
            ansible_playbook(),
            "-i",
            str(TEST_PLAYBOOKS / "inventory/local1.yml"),
            str(TEST_PLAYBOOKS / "debug.yml"),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"ANSIBLE_NOCOLOR": "1", "PATH": "/usr/bin:/bin"},
    ).stdout

    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip("\n").splitlines()]

    assert lines(ours.text) == lines(bare)
    coloured = client.get(f"/api/v1/jobs/{job['id']}/stdout", params={"ansi": "true"}).text
    assert "\x1b[" in coloured and "\x1b[" not in ours.text
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == ours.text


def test_prompts_do_not_wait_for_a_terminal(client: httpx.Client, runs: dict[str, dict[str, Any]]) -> None:
    # Nobody types into a run: a pause or a prompt goes on at once rather than holding the run to its timeout.
    job = finished(client, runs, "prompt")
    assert job["status"] == "successful"
    assert job["host_stats"] == {"localhost": stats(ok=3)}
    stdout = client.get(f"/api/v1/jobs/{job['id']}/stdout").text
    assert "Not waiting for response to prompt as stdin is not interactive" in stdout
    assert "typed []" in stdout


def test_cancel_finished_job_is_409(client: httpx.Client, runs: dict[str, dict[str, Any]]) -> None:
    job = finished(client, runs, "success")
    response = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"] == "Conflict"
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "successful"


def _sleeping(secs: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"sleep {secs}"], capture_output=True).returncode == 0


def test_cancel_running_job_kills_ansible(client: httpx.Client, scratch: Path) -> None:
    secs = f"3{uuid.uuid4().int % 10**6:06d}"
    marker = scratch / f"cancel-{secs}"
    job = submit(
        client,
        {
            "playbook": "sleep.yml",
            "inventory": "inventory/local1.yml",
            "extra_vars": {"secs": secs, "marker": str(marker)},
        },
    )
    wait_until(lambda: marker.exists() and _sleeping(secs), "the playbook to start sleeping")
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "running"
    response = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    done = wait_for(client, job["id"], deadline_s=30)
    assert done["status"] == "canceled"
    assert done["reason"] == "canceled by request"
    assert not _sleeping(secs)


def test_timeout_ends_the_run(client: httpx.Client, scratch: Path) -> None:
    secs = f"4{uuid.uuid4().int % 10**6:06d}"
    job = submit(
        client,
        {
            "playbook": "sleep.yml",
            "inventory": "inventory/local1.yml",
            "timeout": 2,
            "extra_vars": {"secs": secs, "marker": str(scratch / f"timeout-{secs}")},
        },
    )
    done = wait_for(client, job["id"], deadline_s=60)
    assert done["status"] == "timeout"
    assert "timeout of 2 s" in done["reason"]
    assert not _sleeping(secs)


def test_idempotency_key_returns_the_first_job(runs_stack: Stack, client: httpx.Client) -> None:
    body = {"playbook": "debug.yml", "inventory": LOCAL3}
    key = uuid.uuid4().hex
    first = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
    again = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers


def test_idempotency_key_expires_after_the_window(runs_stack: Stack, client: httpx.Client) -> None:
    body = {"playbook": "debug.yml", "inventory": LOCAL3}
    key = uuid.uuid4().hex
    first = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key}).json()
    engine = runs_stack.db()
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE job SET created_at = :old WHERE id = :id"),
            {"old": utcnow() - timedelta(seconds=86_400 + 60), "id": first["id"]},
        )
    again = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 202
    assert again.json()["id"] != first["id"]
    assert "Idempotent-Replayed" not in again.headers
    with engine.connect() as connection:
        keys: dict[str, str | None] = dict(
            connection.execute(
                sa.text("SELECT id, idempotency_key FROM job WHERE id IN (:a, :b)"),
                {"a": first["id"], "b": again.json()["id"]},
            ).all()
        )
    engine.dispose()
    assert keys == {first["id"]: None, again.json()["id"]: key}
    third = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert third.json()["id"] == again.json()["id"]


def test_concurrent_identical_idempotent_requests_make_one_job(runs_stack: Stack) -> None:
    body = {"playbook": "debug.yml", "inventory": LOCAL3}
    key = uuid.uuid4().hex
    before = runs_stack.count_jobs()

    def post(_: int) -> str:
        with runs_stack.client() as http:
            response = http.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
            assert response.status_code == 202, response.text
            job_id: str = response.json()["id"]
            return job_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(post, range(16)))
    assert len(ids) == 1
    assert runs_stack.count_jobs() == before + 1


def test_list_filters_and_cursor_pagination(client: httpx.Client) -> None:
    batch = uuid.uuid4().hex[:12]
    ids = [
        submit(
            client, {"playbook": "debug.yml", "inventory": LOCAL3, "labels": {"batch": batch, "n": str(n)}}
        )["id"]
        for n in range(5)
    ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"label": f"batch={batch}", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/jobs", params=params).json()
        seen.extend(job["id"] for job in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each once
    assert pages == 3
    both = client.get("/api/v1/jobs", params=[("label", f"batch={batch}"), ("label", "n=3")]).json()["items"]
    assert [job["id"] for job in both] == [ids[3]]
    for job_id in ids:
        wait_for(client, job_id)
    done = client.get("/api/v1/jobs", params={"label": f"batch={batch}", "status": "successful"}).json()[
        "items"
    ]
    assert len(done) == 5
    assert (
        client.get("/api/v1/jobs", params={"label": f"batch={batch}", "status": "failed"}).json()["items"]
        == []
    )
    other = client.get("/api/v1/jobs", params={"label": f"batch={batch}", "playbook": "fail_h2.yml"}).json()
    assert other["items"] == []
    created = client.get(f"/api/v1/jobs/{ids[2]}").json()["created_at"]
    later = client.get("/api/v1/jobs", params={"label": f"batch={batch}", "created_after": created}).json()[
        "items"
    ]
    assert [job["id"] for job in later] == [ids[4], ids[3]]


def test_playbooks_lists_bundled_playbooks_only(client: httpx.Client) -> None:
    items = client.get("/api/v1/playbooks").json()["items"]
    paths = {item["path"] for item in items}
    assert {"debug.yml", "fail_h2.yml", "nested/inner.yml"} <= paths
    assert not paths & {"notes.txt", "escape.yml", "inventory/local3.yml"}
    assert {"path": "debug.yml", "name": "Debug play"} in items


def test_a_runs_files_are_the_workers_own(
    runs_stack: Stack, client: httpx.Client, runs: dict[str, dict[str, Any]], scratch: Path
) -> None:
    """What the worker writes for a run (its variables, its inventory, ansible-runner's record of the
    command and events) is 0600 in 0700 directories; what the playbook writes keeps the usual umask."""
    job = finished(client, runs, "write")
    assert job["status"] == "successful", job
    (work,) = runs_stack.work_dir.glob(f"run-{job['id']}-*")
    # Ansible's fact cache is ansible-playbook's own, made with the umask it runs with (its facts come from
    # the hosts; the run's directory around it is 0700).
    entries = [work, *(path for path in work.rglob("*") if "fact_cache" not in path.parts)]
    assert any(path.name == "extravars" for path in entries)
    shared = {str(path): oct(path.stat().st_mode & 0o777) for path in entries if path.stat().st_mode & 0o077}
    assert shared == {}
    umask = os.umask(0)
    os.umask(umask)
    assert (scratch / "written.txt").stat().st_mode & 0o777 == 0o666 & ~umask
