"""Drain: N trivial jobs queued at once, one worker with `max_jobs` tuned; then the same worker's memory.

CPU comes from /proc: the worker's own time and its fork server's, and their children's (ansible-playbook
and every process it started, all reaped by the time the drain ends). Baselines: bare ansible-playbook runs
of the same job, their wall time and CPU time times the jobs divided by the cores (the best any scheduler
could do here); and `ansible_runner.run()` of the same job in this process, whose own CPU is what
ansible-runner itself (pexpect, event parsing, artifact files) costs the process that calls it, before
anything of the service's.

The worker's RSS is sampled idle, after the first runs (warm), and after every run up to BENCH_MEMORY_RUNS
(the drain's runs count towards it), for the "no growth" figure.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH,
    CORES,
    Row,
    bare_run,
    load,
    median,
    print_table,
    progress,
    rss_mib,
    runner_run,
    scratch,
    service,
    status_counts,
    unsuccessful,
    wait_finished,
    wait_workers_ready,
    worker_cpu_times,
    write_playbooks,
)
from harness.processes import Stack

JOB = {"playbook": "trivial.yml", "inventory": "inventory/hosts1.yml"}
WARM_RUNS = 20


def _submit(stack: Stack, count: int) -> None:
    with stack.client() as client:
        for _ in range(count):
            client.post("/api/v1/jobs", json=JOB).raise_for_status()


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _bare(playbooks: Path) -> tuple[float, float]:
    """Wall time and CPU time (ansible-playbook and its processes) of one bare run."""
    before = _cpu(resource.RUSAGE_CHILDREN)
    wall = bare_run(playbooks, JOB["playbook"], JOB["inventory"])
    return wall, _cpu(resource.RUSAGE_CHILDREN) - before


def _runner_own_cpu(playbooks: Path, tmp: Path) -> float:
    """This process's own CPU for one warm ansible_runner.run() (its children are ansible's)."""
    before = _cpu(resource.RUSAGE_SELF)
    runner_run(playbooks, JOB["playbook"], JOB["inventory"], tmp)
    return _cpu(resource.RUSAGE_SELF) - before


def run() -> dict[str, Any]:
    load_before = load()
    jobs = BENCH.drain_jobs
    with scratch() as tmp:
        playbooks = write_playbooks(tmp / "playbooks")
        progress("bare ansible-playbook and warm ansible_runner.run() of the drain's job, 5 times each")
        runner_run(playbooks, JOB["playbook"], JOB["inventory"], tmp)  # warm-up
        bare_runs, runner_own = [], []
        for _ in range(5):
            bare_runs.append(_bare(playbooks))
            runner_own.append(_runner_own_cpu(playbooks, tmp))
    bare = [wall for wall, _ in bare_runs]
    bare_cpu = median([cpu for _, cpu in bare_runs])
    with service(WORKER_MAX_JOBS=str(BENCH.drain_max_jobs)) as stack:
        wait_workers_ready(stack)
        worker = stack.processes[1].pid
        idle_rss = rss_mib(worker)
        before = worker_cpu_times(worker)
        progress(f"drain: {jobs} jobs, 1 worker, max_jobs {BENCH.drain_max_jobs}")
        rss_samples: list[tuple[int, float]] = []

        def sample(done: int) -> None:
            if not rss_samples or rss_samples[-1][0] != done:
                rss_samples.append((done, rss_mib(worker)))

        started = time.perf_counter()
        _submit(stack, jobs)
        wait_finished(stack, jobs, deadline_s=jobs * 20, tick=sample)
        elapsed = time.perf_counter() - started
        after = worker_cpu_times(worker)
        statuses = status_counts(stack)
        extra = max(BENCH.memory_runs - jobs, 0)
        if extra:
            progress(f"memory: {extra} more runs on the same worker ({BENCH.memory_runs} in all)")
            _submit(stack, extra)
            wait_finished(stack, jobs + extra, deadline_s=extra * 20, tick=lambda done: sample(done))
        final_statuses = status_counts(stack)
        failures = unsuccessful(stack)

    worker_cpu = after.own - before.own
    ansible_cpu = after.children - before.children
    ideal = max(median(bare), bare_cpu) * jobs / CORES
    runner_share = median(runner_own) / bare_cpu
    rate = jobs / elapsed * 60
    share = worker_cpu / ansible_cpu if ansible_cpu else float("nan")
    warm = next((rss for done, rss in rss_samples if done >= WARM_RUNS), idle_rss)
    total_runs = jobs + extra
    end_rss = rss_samples[-1][1] if rss_samples else idle_rss
    growth = end_rss - warm
    rows = [
        Row(
            f"drain {jobs} trivial jobs, 1 worker, max_jobs {BENCH.drain_max_jobs}",
            f"{rate:.0f} jobs/min ({elapsed:.0f} s); CPU/job: worker {worker_cpu / jobs * 1000:.0f} ms,"
            f" ansible {ansible_cpu / jobs * 1000:.0f} ms",
            f"bare run * jobs / cores: {jobs / ideal * 60:.0f} jobs/min ({ideal:.0f} s;"
            f" bare run {median(bare):.2f} s, {bare_cpu * 1000:.0f} ms CPU)",
            "report; worker CPU < 5 % of ansible's",
            share < 0.05,
        ),
        Row(
            "drain: worker CPU over ansible CPU",
            f"{share * 100:.1f} % ({worker_cpu:.1f} s vs {ansible_cpu:.1f} s)",
            f"ansible_runner.run() alone: {median(runner_own) * 1000:.0f} ms own CPU per run,"
            f" {runner_share * 100:.1f} % of a bare run's",
            "< 5 %",
            share < 0.05,
        ),
        Row(
            f"worker RSS over {total_runs} runs",
            f"idle {idle_rss:.0f} MiB, after {WARM_RUNS} runs {warm:.0f} MiB,"
            f" after {total_runs} {end_rss:.0f} MiB"
            f" ({growth:+.1f} MiB)",
            "—",
            "no growth",
            growth < 5,
        ),
    ]
    print_table("drain and worker memory", rows)
    return {
        "jobs": jobs,
        "max_jobs": BENCH.drain_max_jobs,
        "seconds": elapsed,
        "jobs_per_min": rate,
        "ideal_jobs_per_min": jobs / ideal * 60,
        "bare_s": bare,
        "bare_cpu_s": [cpu for _, cpu in bare_runs],
        "runner_own_cpu_s": runner_own,
        "worker_cpu_s": worker_cpu,
        "ansible_cpu_s": ansible_cpu,
        "statuses": statuses,
        "final_statuses": final_statuses,
        "unsuccessful": failures,
        "memory": {
            "idle_mib": idle_rss,
            "warm_mib": warm,
            "end_mib": end_rss,
            "runs": total_runs,
            "samples": rss_samples,
        },
        "rows": [row.as_dict() for row in rows],
        "load_before": load_before,
        "load_after": load(),
    }
