"""End-to-end runs beside bare Ansible: a trivial run, start latency, an event-heavy run.

Each repetition runs the four ways in a shuffled order (interleaved, so a noisy neighbour hurts all alike):
bare `ansible-playbook`, a warm `ansible_runner.run()`, the service as deployed (runs start from the
worker's fork server) and the service with `RUN_FORK_SERVER=false`; figures are medians. The service is
timed as a client sees it: POST sent → the run's end marker read from its live stream (what the SSE
endpoint follows) → GET shows the final status.
"""

from __future__ import annotations

import random
from typing import Any

import redis
import sqlalchemy as sa

from bench.harness import (
    BENCH,
    Row,
    bare_run,
    load,
    median,
    print_table,
    progress,
    runner_run,
    scratch,
    service,
    service_run,
    wait_workers_ready,
    write_playbooks,
)

TRIVIAL = ("trivial.yml", "inventory/hosts5.yml")
HEAVY = ("heavy.yml", "inventory/hosts50.yml")


def _compare(reps: int, playbook: str, inventory: str) -> dict[str, Any]:
    samples: dict[str, list[float]] = {
        "bare": [],
        "runner": [],
        "service": [],
        "service_off": [],
        "start": [],
    }
    events_stored: list[tuple[int, int, int]] = []  # (event_count, rows stored, runner events)
    runner_events = 0
    with (
        scratch() as tmp,
        service() as stack,
        service(RUN_FORK_SERVER="false") as stack_off,
        stack.client() as client,
        stack_off.client() as client_off,
    ):
        playbooks = write_playbooks(tmp / "playbooks")
        live = redis.Redis.from_url(BENCH.redis_url)
        wait_workers_ready(stack)
        wait_workers_ready(stack_off)
        body = {"playbook": playbook, "inventory": inventory}
        # Warm-up of each way (imports, page cache, first connections, the fork server), not counted.
        bare_run(playbooks, playbook, inventory)
        runner_run(playbooks, playbook, inventory, tmp)
        service_run(client, live, body)
        service_run(client_off, live, body)
        engines = {"service": stack.db(), "service_off": stack_off.db()}
        for rep in range(reps):
            ways = ["bare", "runner", "service", "service_off"]
            random.shuffle(ways)
            for way in ways:
                if way == "bare":
                    samples["bare"].append(bare_run(playbooks, playbook, inventory))
                elif way == "runner":
                    elapsed, events = runner_run(playbooks, playbook, inventory, tmp)
                    samples["runner"].append(elapsed)
                    runner_events = sum(1 for event in events if "counter" in event)
                else:
                    run = service_run(client if way == "service" else client_off, live, body)
                    if run.job["status"] != "successful":
                        raise RuntimeError(f"service run ended {run.job['status']}: {run.job['reason']}")
                    samples[way].append(run.end_to_end)
                    if way == "service":
                        samples["start"].append(run.start_latency)
                    with engines[way].connect() as connection:
                        stored = int(
                            connection.execute(
                                sa.text("SELECT COUNT(*) FROM job_event WHERE job_id = :id"),
                                {"id": run.job["id"]},
                            ).scalar_one()
                        )
                    events_stored.append((run.job["event_count"], stored, runner_events))
            progress(
                f"{playbook} rep {rep + 1}/{reps}: bare {samples['bare'][-1]:.2f} s, runner"
                f" {samples['runner'][-1]:.2f} s, service {samples['service'][-1]:.2f} s, fork server off"
                f" {samples['service_off'][-1]:.2f} s, load {load()}"
            )
        for engine in engines.values():
            engine.dispose()
        live.close()
    return {
        "samples_s": samples,
        "median_s": {way: median(values) for way, values in samples.items()},
        # The fastest repetition: the figure a noisy neighbour disturbs least.
        "min_s": {way: min(values) for way, values in samples.items()},
        "events": events_stored,
        "runner_events": runner_events,
    }


def run() -> dict[str, Any]:
    load_before = load()
    progress(f"trivial run (5 hosts x 3 tasks), {BENCH.reps} interleaved reps")
    trivial = _compare(BENCH.reps, *TRIVIAL)
    progress(f"event-heavy run (50 hosts x 10 tasks), {BENCH.heavy_reps} interleaved reps")
    heavy = _compare(BENCH.heavy_reps, *HEAVY)

    t = trivial["median_s"]
    h = heavy["median_s"]
    t_min = trivial["min_s"]
    h_min = heavy["min_s"]
    trivial_vs_bare = t["service"] / t["bare"]
    heavy_vs_bare = h["service"] / h["bare"]
    heavy_vs_runner = h["service"] / h["runner"]
    all_stored = all(count == stored for count, stored, _ in heavy["events"])
    counts = sorted({count for count, _, _ in heavy["events"]})
    rows = [
        Row(
            "trivial run, POST → final status seen",
            f"{t['service']:.2f} s = {trivial_vs_bare:.2f}x bare (fastest {t_min['service']:.2f} s ="
            f" {t_min['service'] / t_min['bare']:.2f}x); fork server off {t['service_off']:.2f} s ="
            f" {t['service_off'] / t['bare']:.2f}x",
            f"bare {t['bare']:.2f} s (fastest {t_min['bare']:.2f}); warm ansible_runner.run"
            f" {t['runner']:.2f} s (fastest {t_min['runner']:.2f})",
            "≤ 0.8x bare",
            trivial_vs_bare <= 0.8,
        ),
        Row(
            "start latency POST → running (idle worker)",
            f"{t['start'] * 1000:.0f} ms median, {t_min['start'] * 1000:.0f} ms min,"
            f" {max(trivial['samples_s']['start']) * 1000:.0f} ms max",
            "—",
            "median ≤ 50 ms",
            t["start"] <= 0.05,
        ),
        Row(
            "event-heavy run (50 hosts x 10 tasks)",
            f"{h['service']:.2f} s = {heavy_vs_bare:.3f}x bare, {heavy_vs_runner:.3f}x runner (fastest"
            f" {h_min['service'] / h_min['bare']:.3f}x bare); fork server off {h['service_off']:.2f} s ="
            f" {h['service_off'] / h['bare']:.3f}x bare",
            f"bare {h['bare']:.2f} s (fastest {h_min['bare']:.2f}); warm runner {h['runner']:.2f} s"
            f" ({h['runner'] / h['bare']:.3f}x bare)",
            "≤ 1.10x bare",
            heavy_vs_bare <= 1.10,
        ),
        Row(
            "event-heavy: every event stored",
            f"{'yes' if all_stored else 'NO'}: {counts} events per run, both ways",
            f"ansible-runner produced {heavy['runner_events']}",
            "all stored",
            all_stored and counts == [heavy["runner_events"]],
        ),
    ]
    print_table("runs beside bare Ansible", rows)
    return {
        "trivial": trivial,
        "heavy": heavy,
        "rows": [row.as_dict() for row in rows],
        "load_before": load_before,
        "load_after": load(),
    }
