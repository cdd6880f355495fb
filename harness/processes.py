"""The service's entry points as real processes, with the environment the tests and benchmarks give them."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from harness.databases import sync_url
from service.embedded import free_port
from service.runner.forkserver import descendants

ROOT = Path(__file__).resolve().parent.parent
TEST_PLAYBOOKS = ROOT / "tests" / "playbooks"
FINISHED = {"successful", "failed", "canceled", "timeout", "error"}


@dataclass
class Stack:
    """An API and a worker, real processes, sharing one database and one queue."""

    base_url: str
    database_url: str
    env: dict[str, str]
    work_dir: Path
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, **kwargs)

    def db(self) -> sa.Engine:
        return sa.create_engine(sync_url(self.database_url))

    def count_jobs(self) -> int:
        engine = self.db()
        with engine.connect() as connection:
            count = int(connection.execute(sa.text("SELECT COUNT(*) FROM job")).scalar_one())
        engine.dispose()
        return count

    def add_worker(self, name: str, **overrides: str) -> subprocess.Popen[bytes]:
        """Another worker process on this stack's queue, with some settings changed."""
        process = start_process(
            WORKER_COMMAND,
            {**self.env, **overrides},
            self.logs / f"{name}.log",
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


StackFactory = Callable[..., Stack]


def api_command(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)]


WORKER_COMMAND = [sys.executable, "-m", "service.cli", "worker"]


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def lone_api(env: dict[str, str], log: Path) -> Iterator[str]:
    """An API process of its own (no worker) with this environment; yields its base URL."""
    port = free_port()
    process = start_process(api_command(port), env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def service_env(database_url: str, redis_url: str, work_dir: Path, **extra: str) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if name != "API_TOKENS"}
    return {
        **inherited,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PLAYBOOKS_DIR": str(TEST_PLAYBOOKS),
        "WORK_DIR": str(work_dir),
        "AUTH_DISABLED": "true",
        # Only read when a test turns tokens on; each stack signs its console sessions with its own key.
        "SESSION_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
        "LOG_FORMAT": "json",
        "QUEUE_NAME": f"arq:queue:test-{uuid.uuid4().hex[:8]}",
        "JOB_COMPLETION_WAIT": "5",
        **extra,
    }


def ansible_playbook() -> str:
    found = Path(sys.executable).parent / "ansible-playbook"
    return str(found) if found.exists() else shutil.which("ansible-playbook") or "ansible-playbook"


def ssh_programs() -> tuple[str, str] | None:
    """(sshd, ssh-keygen) of OpenSSH, for the SSH targets of the security tests; None when not installed."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    keygen = shutil.which("ssh-keygen")
    return (sshd, keygen) if sshd and keygen else None


def refuses_to_start(command: list[str], env: dict[str, str]) -> str:
    """Runs a process that must exit by itself, unsuccessfully; returns what it said."""
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    return result.stderr


def parent_of(pid: int) -> int:
    """Its parent's pid (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError):
        return 0


def fork_server_of(worker: int) -> tuple[int, Path] | None:
    """A worker's fork server (docs/forkserver.md), if it has one: its pid and its socket, the last argument
    of its command line. What it forks keeps that command line; only the server is the worker's child."""
    for pid in descendants(worker):
        if parent_of(pid) != worker:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"service.runner.forkserver" in argv:
            return pid, Path(argv[-2].decode())
    return None
