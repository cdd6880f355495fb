"""What every benchmark shares: its own service processes, playbooks, baselines, /proc readings, tables.

Benchmarks start the real entry points (uvicorn, arq) against the local MariaDB and Redis, each stack on a
fresh database (dropped at the end) and a queue of its own, reusing the test suite's helpers.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import ansible_runner
import httpx
import redis
import sqlalchemy as sa
import yaml
from pydantic_settings import BaseSettings, SettingsConfigDict

from harness.databases import LOCAL_MARIADB, LOCAL_REDIS, fresh_database
from harness.processes import (
    FINISHED,
    Stack,
    ansible_playbook,
    fork_server_of,
    service_env,
    start_process,
    wait_http,
)
from service.config import Settings
from service.db import migrate
from service.embedded import free_port
from service.live.publish import END_EVENT, stream_key
from service.models import Job, JobStatus, utcnow

CORES = os.cpu_count() or 1
TICKS = os.sysconf("SC_CLK_TCK")


class BenchSettings(BaseSettings):
    """Sizes of the runs (BENCH_*): smaller for a quick look, the issue's figures by default."""

    model_config = SettingsConfigDict(env_prefix="BENCH_", extra="ignore")

    only: str = ""  # comma-separated module names (see bench/__main__.py MODULES)
    database_url: str = LOCAL_MARIADB
    redis_url: str = LOCAL_REDIS
    reps: int = 7  # interleaved repetitions of the trivial run and its baselines
    heavy_reps: int = 3  # of the event-heavy run
    pipeline_events: int = 20_000
    api_seconds: int = 6  # per wrk run; GET and its /health floor alternate api_reps times
    api_reps: int = 3
    api_connections: int = 16
    pages_jobs: int = 60  # finished jobs behind the list page, each with pages_events events
    pages_events: int = 1000
    drain_jobs: int = 200
    drain_max_jobs: int = 4
    memory_runs: int = 500  # runs by one worker for the growth figure (the drain's count towards it)
    concurrent_runs: int = 8
    burst_jobs: int = 500
    locks_runs: int = 200  # exclusive runs over locks_hosts hosts, 1 to 3 hosts each
    locks_hosts: int = 10
    webhook_deliveries: int = 2000  # drained from the outbox to a local receiver
    webhook_runs: int = 40  # trivial runs with and without a subscription
    schedules_due: int = 200  # schedules due at the same moment
    schedule_rounds: int = 5  # fires of a single schedule


BENCH = BenchSettings()

TRIVIAL_TASKS = 3
HEAVY_TASKS = 10


def _play(name: str, tasks: int, hosts: str = "all") -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "hosts": hosts,
            "gather_facts": False,
            "tasks": [
                {
                    "name": f"Task {n}",
                    "ansible.builtin.debug": {"msg": f"task {n} on {{{{ inventory_hostname }}}}"},
                }
                for n in range(1, tasks + 1)
            ],
        }
    ]


def _inventory(hosts: int) -> dict[str, Any]:
    # Names for this machine reached without SSH, with the interpreter running Ansible (as tests/playbooks).
    return {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            },
            "hosts": {f"h{n}": None for n in range(1, hosts + 1)},
        }
    }


def write_playbooks(root: Path) -> Path:
    """The benchmark's bundled playbooks: trivial.yml (3 tasks), heavy.yml (10 tasks), pause.yml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "inventory").mkdir(exist_ok=True)
    (root / "trivial.yml").write_text(yaml.safe_dump(_play("Trivial", TRIVIAL_TASKS)))
    (root / "heavy.yml").write_text(yaml.safe_dump(_play("Heavy", HEAVY_TASKS)))
    pause = [
        {
            "name": "Pause",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [{"name": "Wait", "ansible.builtin.pause": {"seconds": "{{ seconds | int }}"}}],
        }
    ]
    (root / "pause.yml").write_text(yaml.safe_dump(pause))
    # Each host's file under `journal` gets "start <tag>" and "end <tag>" around `hold` seconds.
    line = 'echo "{} {{{{ tag }}}}" >> "{{{{ journal }}}}/{{{{ inventory_hostname }}}}"\n'
    journal = [
        {
            "name": "Journal",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Start, hold, end",
                    "ansible.builtin.shell": line.format("start") + "sleep {{ hold }}\n" + line.format("end"),
                }
            ],
        }
    ]
    (root / "journal.yml").write_text(yaml.safe_dump(journal))
    for hosts in (1, 5, 10, 50):
        (root / "inventory" / f"hosts{hosts}.yml").write_text(yaml.safe_dump(_inventory(hosts)))
    return root


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ars-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def service(workers: int = 1, **extra: str) -> Iterator[Stack]:
    """An API and `workers` workers on a fresh database and queue; everything is stopped and dropped after."""
    with scratch() as tmp:
        playbooks = write_playbooks(tmp / "playbooks")
        database_url, drop = shared_server(lambda: fresh_database(BENCH.database_url, tmp))
        try:
            migrate(Settings(database_url=database_url))
            work_dir = tmp / "work"
            work_dir.mkdir()
            env = service_env(
                database_url,
                BENCH.redis_url,
                work_dir,
                PLAYBOOKS_DIR=str(playbooks),
                QUEUE_NAME=f"arq:queue:bench-{os.getpid()}-{time.monotonic_ns()}",
                LOG_LEVEL="WARNING",
                **extra,
            )
            port = free_port()
            stack = Stack(f"http://127.0.0.1:{port}", database_url, env, work_dir, tmp)
            api_log = tmp / "api.log"
            api = start_process(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "service.main:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env,
                api_log,
            )
            stack.processes.append(api)
            try:
                for index in range(workers):
                    stack.add_worker(f"worker{index}")
                wait_http(f"{stack.base_url}/health", api, api_log)
                yield stack
            finally:
                stack.stop()
        finally:
            drop()


T = TypeVar("T")


def shared_server(action: Callable[[], T], deadline_s: float = 120) -> T:
    """Retry `action` while the shared MariaDB refuses connections (other suites on this machine)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return action()
        except sa.exc.OperationalError as exc:
            if "Too many connections" not in str(exc) or time.monotonic() > deadline:
                raise
            progress("MariaDB has too many connections (shared machine), retrying")
            time.sleep(2)


def wait_workers_ready(stack: Stack, deadline_s: float = 60) -> None:
    """A worker is ready once it has run its startup crons (the sweeper logs nothing; poll Redis) and its
    fork server, if it has one, listens (it has imported Ansible)."""
    client = redis.Redis.from_url(BENCH.redis_url)
    queue = stack.env["QUEUE_NAME"]
    deadline = time.monotonic() + deadline_s
    try:
        # arq records its health check key once the worker's loop runs.
        while not client.exists(f"{queue}:health-check"):
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not start")
            time.sleep(0.05)
    finally:
        client.close()
    for worker in stack.processes[1:]:
        server = fork_server_of(worker.pid)
        while server is not None and not server[1].exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the fork server did not start listening")
            time.sleep(0.05)


def running_job(job_id: str, playbook: str) -> Job:
    """A job row as a worker leaves it once claimed, for benchmarks that feed events without Ansible."""
    return Job(
        id=job_id,
        status=JobStatus.running,
        playbook=playbook,
        source={"type": "bundled"},
        extra_vars={},
        tags=[],
        skip_tags=[],
        check=False,
        diff=False,
        verbosity=0,
        priority="default",
        labels={},
        created_at=utcnow(),
        started_at=utcnow(),
    )


# --- one trivial or heavy run, three ways -------------------------------------------------------------


def bare_run(playbooks: Path, playbook: str, inventory: str) -> float:
    """Wall time of `ansible-playbook -i inventory playbook`, output discarded."""
    started = time.perf_counter()
    subprocess.run(
        [ansible_playbook(), "-i", inventory, playbook],
        cwd=playbooks,
        env={**os.environ, "ANSIBLE_NOCOWS": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"},
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def runner_run(
    playbooks: Path, playbook: str, inventory: str, tmp: Path
) -> tuple[float, list[dict[str, Any]]]:
    """Wall time of ansible_runner.run() in this (warm) process, with the events it produced."""
    events: list[dict[str, Any]] = []

    def keep(event: dict[str, Any]) -> bool:
        events.append(event)
        return True

    private = Path(tempfile.mkdtemp(dir=tmp))
    started = time.perf_counter()
    result = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(playbooks),
        playbook=playbook,
        inventory=str(playbooks / inventory),
        quiet=True,
        event_handler=keep,
        envvars={"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])},
    )
    elapsed = time.perf_counter() - started
    shutil.rmtree(private, ignore_errors=True)
    if result.status != "successful":
        raise RuntimeError(f"ansible_runner.run ended {result.status}")
    return elapsed, events


@dataclass
class ServiceRun:
    end_to_end: float  # POST sent → terminal status seen by the client
    start_latency: float  # POST sent → the job's started_at
    job: dict[str, Any]


def service_run(client: httpx.Client, events: redis.Redis, body: dict[str, Any]) -> ServiceRun:
    """Submit, then follow the run's live stream (what an SSE client reads) to its end marker."""
    sent_wall = time.time()
    started = time.perf_counter()
    response = client.post("/api/v1/jobs", json=body)
    response.raise_for_status()
    job_id = response.json()["id"]
    key = stream_key(job_id)
    last: Any = "0-0"
    ended = False
    while not ended:
        read: Any = events.xread({key: last}, block=30_000)
        for _, entries in read or []:
            for entry_id, fields in entries:
                last = entry_id
                ended = ended or fields[b"event"] == END_EVENT.encode()
    job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
    elapsed = time.perf_counter() - started
    if job["status"] not in FINISHED:
        raise RuntimeError(f"stream ended while the job is {job['status']}")
    started_at = _epoch(job["started_at"])
    return ServiceRun(elapsed, started_at - sent_wall, job)


def _epoch(stamp: str) -> float:
    from datetime import UTC, datetime

    parsed = datetime.fromisoformat(stamp)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def wait_finished(
    stack: Stack, count: int, deadline_s: float, tick: Callable[[int], None] | None = None
) -> None:
    """Poll the database (not the API) until `count` jobs are finished."""
    engine = stack.db()
    finished = ", ".join(f"'{status}'" for status in FINISHED)
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            with engine.connect() as connection:
                done = int(
                    connection.execute(
                        sa.text(f"SELECT COUNT(*) FROM job WHERE status IN ({finished})")
                    ).scalar_one()
                )
            if tick:
                tick(done)
            if done >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {count} jobs finished in {deadline_s} s")
            time.sleep(0.25)
    finally:
        engine.dispose()


def unsuccessful(stack: Stack) -> list[dict[str, Any]]:
    """Jobs that did not end `successful`, with their reasons (for the results: the database is dropped)."""
    engine = stack.db()
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT id, status, reason, worker_id FROM job WHERE status <> 'successful'")
        ).all()
    engine.dispose()
    return [dict(row._mapping) for row in rows]


def status_counts(stack: Stack) -> dict[str, int]:
    engine = stack.db()
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT status, COUNT(*) FROM job GROUP BY status")).all()
    engine.dispose()
    return {str(status): int(count) for status, count in rows}


# --- /proc readings ------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages (forks of one ansible-playbook) split between their sharers."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass(frozen=True)
class CpuTimes:
    own: float  # the process itself (user + system)
    children: float  # its children that ended (ansible-playbook and everything it started)


def cpu_times(pid: int) -> CpuTimes:
    # Fields after the command name: utime, stime, cutime, cstime are the 12th-15th of what follows ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(value) / TICKS for value in fields[11:15])
    return CpuTimes(utime + stime, cutime + cstime)


def worker_cpu_times(worker: int) -> CpuTimes:
    """A worker's CPU with its fork server's: the server's own time (accepting, forking) is the service's;
    its children's (each ansible-playbook, reaped by the server) is Ansible's."""
    times = cpu_times(worker)
    server = fork_server_of(worker)
    if server is None:
        return times
    theirs = cpu_times(server[0])
    return CpuTimes(times.own + theirs.own, times.children + theirs.children)


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# --- figures -------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Row:
    figure: str
    measured: str
    baseline: str
    target: str
    met: bool | None  # None: reported, no target

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "measured": self.measured,
            "baseline": self.baseline,
            "target": self.target,
            "met": self.met,
        }


def print_table(title: str, rows: Sequence[Row]) -> None:
    header = ("figure", "measured", "baseline (same run)", "target", "")
    cells = [header] + [
        (r.figure, r.measured, r.baseline, r.target, {True: "met", False: "MISSED", None: ""}[r.met])
        for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    out = [f"\n== {title} (load average {' '.join(map(str, load()))}, {CORES} cores)"]
    for index, line in enumerate(cells):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def progress(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --- wrk -----------------------------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, server_pid: int, script: Path | None = None, headers: Sequence[str] = ()) -> dict[str, Any]:
    """wrk's figures, and the API process's CPU time per request (a figure a busy machine disturbs less).
    `headers`: `Name: value` lines sent with every request."""
    cpu_before = cpu_times(server_pid).own
    args = ["wrk", "-t1", f"-c{BENCH.api_connections}", f"-d{BENCH.api_seconds}s", "--latency", url]
    for header in headers:
        args[1:1] = ["-H", header]
    if script is not None:
        args[1:1] = ["-s", str(script)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    cpu = cpu_times(server_pid).own - cpu_before
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    percentiles = {
        int(q): _seconds(value) for q, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.MULTILINE)
    }
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_per_s": rate,
        "p50_s": percentiles[50],
        "p99_s": percentiles[99],
        "requests": total,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "api_cpu_ms_per_request": cpu / max(total, 1) * 1000,
        "raw": out,
    }


def wrk_median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over repeated wrk runs (each run's own output kept under `runs`)."""
    figures = ("req_per_s", "p50_s", "p99_s", "api_cpu_ms_per_request")
    return {
        **{name: statistics.median(run[name] for run in runs) for name in figures},
        "non_2xx": sum(run["non_2xx"] for run in runs),
        "runs": runs,
    }
