"""`ars` as a user runs it: a subprocess talking to the live API and worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support import Stack, wait_for, wait_until

ARS = str(Path(sys.executable).parent / "ars")
LOCAL3 = "inventory/local3.yml"


def ars_env(stack: Stack, **extra: str) -> dict[str, str]:
    return {**os.environ, "ARS_URL": stack.base_url, **extra}


def ars(stack: Stack, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ARS, *args], env=ars_env(stack, **extra), capture_output=True, text=True, timeout=120, check=False
    )


def test_run_follow_prints_the_output_and_exits_0(stack: Stack, api: httpx.Client) -> None:
    result = ars(stack, "run", "debug.yml", "-i", LOCAL3, "--follow")
    assert result.returncode == 0, result.stderr
    job_id = result.stderr.split("ars: job ", 1)[1].split()[0]
    # Exactly what ansible-playbook printed, recap included; no colour codes when stdout is not a terminal.
    assert result.stdout == api.get(f"/api/v1/jobs/{job_id}/stdout").text
    assert "TASK [Second]" in result.stdout
    assert "PLAY RECAP" in result.stdout
    for host in ("h1", "h2", "h3"):
        assert f"{host}                         : ok=3" in result.stdout
    assert "\x1b[" not in result.stdout
    assert f"ars: job {job_id} successful, rc 0" in result.stderr


def test_run_follow_exits_2_on_failed_hosts(stack: Stack) -> None:
    result = ars(stack, "run", "fail_h2.yml", "-i", LOCAL3, "--follow")
    assert result.returncode == 2, result.stderr
    assert "fatal: [h2]" in result.stdout
    assert "failed=1" in result.stdout
    assert "failed, rc 2: ansible-playbook exited with rc 2 (failed or unreachable: h2)" in result.stderr


def follow_gated(stack: Stack, gate: Path) -> tuple[subprocess.Popen[str], str]:
    """`ars run --follow` of a run waiting for `gate`, read until the hosts wait."""
    process = subprocess.Popen(
        [ARS, "run", "gate.yml", "-i", LOCAL3, "-e", f"gate={gate}", "--follow"],
        env=ars_env(stack),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    queued = process.stderr.readline()
    assert queued.startswith("ars: job "), queued
    while "TASK [Wait for the gate]" not in process.stdout.readline():
        assert process.poll() is None, process.stderr.read()
    return process, queued.split()[2]


def test_ctrl_c_then_cancel_cancels_the_job(stack: Stack, api: httpx.Client, tmp_path: Path) -> None:
    process, job_id = follow_gated(stack, tmp_path / "gate")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate("c\n", timeout=60)
    assert process.returncode == 3, stderr
    assert "Cancel job" in stderr
    assert "cancel requested" in stderr
    assert f"ars: job {job_id} canceled" in stderr
    assert api.get(f"/api/v1/jobs/{job_id}").json()["status"] == "canceled"


def test_ctrl_c_then_detach_leaves_the_job_running(stack: Stack, api: httpx.Client, tmp_path: Path) -> None:
    process, job_id = follow_gated(stack, tmp_path / "gate")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate("d\n", timeout=60)
    assert process.returncode == 130, stderr
    assert "detached" in stderr
    assert api.get(f"/api/v1/jobs/{job_id}").json()["status"] == "running"
    (tmp_path / "gate").touch()
    logs = ars(stack, "logs", job_id, "--follow")
    assert logs.returncode == 0, logs.stderr
    assert "PLAY RECAP" in logs.stdout


def test_cancel_then_logs_follow_exits_3(stack: Stack, tmp_path: Path) -> None:
    submitted = ars(stack, "run", "gate.yml", "-i", LOCAL3, "-e", f"gate={tmp_path / 'gate'}")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    canceled = ars(stack, "cancel", job_id)
    assert canceled.returncode == 0, canceled.stderr
    logs = ars(stack, "logs", job_id, "--follow")
    assert logs.returncode == 3, logs.stderr
    again = ars(stack, "cancel", job_id)
    assert again.returncode == 1
    assert "409" in again.stderr
    assert "already finished as canceled" in again.stderr


def test_json_output_and_extra_vars(stack: Stack, api: httpx.Client, tmp_path: Path) -> None:
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps({"payload": {"from": "file"}, "n": 1}))
    submitted = ars(
        stack,
        "run",
        "echo_vars.yml",
        "-i",
        "inventory/local1.yml",
        "-e",
        f"@{varfile}",
        "-e",
        "n=two",
        "--check",
        "--json",
    )
    assert submitted.returncode == 0, submitted.stderr
    job: dict[str, Any] = json.loads(submitted.stdout)
    assert job["extra_vars"] == {"payload": {"from": "file"}, "n": "two"}
    assert job["check"] is True
    wait_for(api, job["id"])
    shown = ars(stack, "show", job["id"], "--json")
    assert json.loads(shown.stdout) == api.get(f"/api/v1/jobs/{job['id']}").json()
    listed = ars(stack, "jobs", "--json", "--playbook", "echo_vars.yml")
    assert job["id"] in [item["id"] for item in json.loads(listed.stdout)]
    followed = ars(stack, "logs", job["id"], "--follow", "--json")
    lines = [json.loads(line) for line in followed.stdout.splitlines()]
    assert lines[:-1] == api.get(f"/api/v1/jobs/{job['id']}/events").json()["items"]
    assert lines[-1]["status"] == "successful"
    human = ars(stack, "show", job["id"])
    assert "status:      successful" in human.stdout
    assert "HOST" in human.stdout
    assert "h1 " in human.stdout


def test_errors_are_clear(stack: Stack, tmp_path: Path) -> None:
    unreachable = ars(stack, "jobs", ARS_URL="http://127.0.0.1:9")
    assert unreachable.returncode == 1
    assert "cannot reach the API at http://127.0.0.1:9" in unreachable.stderr
    refused = ars(stack, "run", "missing.yml")
    assert refused.returncode == 1
    assert "422" in refused.stderr
    assert "'missing.yml' does not exist" in refused.stderr
    missing = ars(stack, "show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1
    assert "404" in missing.stderr
    malformed = ars(stack, "show", "no-such-job")
    assert malformed.returncode == 1
    assert "422" in malformed.stderr
    assert "job_id" in malformed.stderr
    bad_vars = ars(stack, "run", "debug.yml", "-e", "novalue")
    assert bad_vars.returncode == 1
    assert "-e: expected key=value" in bad_vars.stderr
    usage = ars(stack, "run")
    assert usage.returncode == 64


def test_run_with_locks_and_show_what_a_run_waits_for(
    stack: Stack, api: httpx.Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    holder = ars(
        stack,
        "run",
        "gate.yml",
        "-i",
        LOCAL3,
        "-l",
        "h2",
        "--exclusive",
        "--lock",
        "lb-pool,dns",
        "--json",
        "-e",
        f"gate={gate}",
    )
    assert holder.returncode == 0, holder.stderr
    held = json.loads(holder.stdout)
    assert (held["exclusive"], held["targets"], held["locks"]) == (True, ["h2"], ["dns", "lb-pool"])
    wait_for(api, held["id"], {"running"})
    waiter = json.loads(ars(stack, "run", "debug.yml", "-i", LOCAL3, "-l", "h2:h3", "-x", "--json").stdout)
    try:
        wait_until(
            lambda: api.get(f"/api/v1/jobs/{waiter['id']}").json()["waiting_for"] is not None,
            "the run to wait",
        )
        shown = ars(stack, "show", waiter["id"]).stdout
        assert "hosts:       h2, h3 (exclusive)" in shown
        assert f"waiting for: hosts h2, held by {held['id']}" in shown, shown
    finally:
        gate.touch()
    assert wait_for(api, waiter["id"])["status"] == "successful"
    plain = json.loads(ars(stack, "run", "debug.yml", "--no-exclusive", "--json").stdout)
    assert plain["exclusive"] is False
