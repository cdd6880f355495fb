"""Memory: a worker's RSS idle and with N runs in flight (the worker alone, its fork server, and its Ansible
processes, which the fork server forked: they share its pages until they write them, so PSS is their cost).

Growth over many runs is measured by bench/drain.py on its worker (BENCH_MEMORY_RUNS).
"""

from __future__ import annotations

import time
from typing import Any

from bench.harness import (
    BENCH,
    Row,
    load,
    print_table,
    progress,
    pss_mib,
    rss_mib,
    service,
    status_counts,
    wait_finished,
    wait_workers_ready,
)
from harness.processes import fork_server_of
from service.runner.forkserver import descendants

PAUSE_S = 15


def _concurrent(runs: int, **extra: str) -> dict[str, Any]:
    """`runs` runs pausing at once on one worker: the worker's RSS, its fork server's, and the PSS of
    every process below them (each run's ansible-playbook and its Ansible workers)."""
    with service(1, WORKER_MAX_JOBS=str(runs), **extra) as stack, stack.client() as client:
        wait_workers_ready(stack)
        worker = stack.processes[1].pid
        idle = rss_mib(worker)
        found = fork_server_of(worker)
        server = found[0] if found else None
        server_idle = rss_mib(server) if server else 0.0
        for _ in range(runs):
            client.post(
                "/api/v1/jobs",
                json={
                    "playbook": "pause.yml",
                    "inventory": "inventory/hosts1.yml",
                    "extra_vars": {"seconds": PAUSE_S},
                },
            ).raise_for_status()
        deadline = time.monotonic() + PAUSE_S * 3
        while status_counts(stack).get("running", 0) < runs:
            if time.monotonic() > deadline:
                raise RuntimeError("the runs did not all start")
            time.sleep(0.2)
        # Let every ansible-playbook reach its pause (its forks started) before reading.
        time.sleep(3)
        busy = rss_mib(worker)
        server_busy = rss_mib(server) if server else 0.0
        children = [pid for pid in descendants(worker) if pid != server]
        ansible = sum(_pss_or_zero(pid) for pid in children)
        wait_finished(stack, runs, deadline_s=PAUSE_S * 4)
    return {
        "idle": idle,
        "busy": busy,
        "server_idle": server_idle,
        "server_busy": server_busy,
        "ansible": ansible,
        "processes": len(children),
    }


def run() -> dict[str, Any]:
    load_before = load()
    runs = BENCH.concurrent_runs
    progress(f"{runs} concurrent runs pausing {PAUSE_S} s on one worker, fork server on then off")
    warm = _concurrent(runs)
    off = _concurrent(runs, RUN_FORK_SERVER="false")
    idle, busy, server_idle, server_busy = (
        warm["idle"],
        warm["busy"],
        warm["server_idle"],
        warm["server_busy"],
    )
    ansible, children = warm["ansible"], warm["processes"]
    per_run = (busy - idle) / runs
    rows = [
        Row(
            "worker RSS idle",
            f"{idle:.0f} MiB",
            "—",
            "report",
            None,
        ),
        Row(
            "fork server RSS (imported Ansible, forks each run)",
            f"idle {server_idle:.0f} MiB, {runs} runs in flight {server_busy:.0f} MiB",
            "—",
            "report; bounded (it runs nothing itself)",
            None,
        ),
        Row(
            f"RSS per concurrent run ({runs} in flight)",
            f"worker +{per_run:.1f} MiB/run ({busy:.0f} MiB);"
            f" Ansible processes {ansible / runs:.0f} MiB/run (PSS)",
            f"fork server off: Ansible processes {off['ansible'] / runs:.0f} MiB/run (PSS)",
            "report",
            None,
        ),
    ]
    print_table("memory", rows)
    return {
        "idle_mib": idle,
        "busy_mib": busy,
        "concurrent_runs": runs,
        "worker_mib_per_run": per_run,
        "ansible_mib_per_run": ansible / runs,
        "ansible_processes": children,
        "ansible_mib_per_run_fork_server_off": off["ansible"] / runs,
        "fork_server_mib": {"idle": server_idle, "busy": server_busy},
        "rows": [row.as_dict() for row in rows],
        "load_before": load_before,
        "load_after": load(),
    }


def _pss_or_zero(pid: int) -> float:
    try:
        return pss_mib(pid)
    except OSError:
        return 0.0  # ended between listing and reading
