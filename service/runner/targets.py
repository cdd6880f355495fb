"""A run's target hosts: what its inventory and `limit` select, resolved by Ansible in a child process
(service/runner/list_hosts.py) with the environment a run gets, so that it selects what the run will.

The worker starts one child per resolution, in the run's working directory with the run's environment.
The API resolves the targets of bundled playbooks at submit, always in the playbooks directory with the
same environment: it keeps one warm resolver (`TargetResolver`) that forks per request.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

import structlog

from service.config import Settings
from service.errors import InvalidRequest
from service.models import Job
from service.runner.environment import run_may_see
from service.runner.execute import ansible_environment
from service.runner.workspace import dump_inventory

log = structlog.get_logger(__name__)

# -I: the working directory (a project's files) is not on sys.path, and PYTHON* variables are ignored.
_COMMAND = [sys.executable, "-I", "-m", "service.runner.list_hosts"]


class TargetsError(Exception):
    """Ansible could not say which hosts the run targets."""


def _environment(settings: Settings, job_id: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if run_may_see(name, settings)}
    return environment | ansible_environment(settings, job_id) | (extra or {})


def _hosts(answer: dict[str, Any]) -> list[str]:
    if "error" in answer:
        log.warning("resolving the target hosts failed", error=answer["error"])
        raise TargetsError("Ansible could not read the inventory")
    hosts = answer.get("hosts")
    if not isinstance(hosts, list) or not all(isinstance(host, str) for host in hosts):
        raise TargetsError("unexpected answer from Ansible's inventory")
    return hosts


def resolve_targets(
    settings: Settings,
    job_id: str,
    *,
    inventory: str | None,
    limit: str | None,
    cwd: Path,
    extra_environment: dict[str, str] | None = None,
) -> list[str]:
    """The sorted inventory names of the hosts `inventory` (a path; None: the implicit localhost) and
    `limit` select, in a child process of its own. Blocking: call in a thread."""
    try:
        done = subprocess.run(
            _COMMAND,
            input=json.dumps({"inventory": inventory, "limit": limit}).encode() + b"\n",
            capture_output=True,
            cwd=cwd,
            env=_environment(settings, job_id, extra_environment),
            timeout=settings.targets_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TargetsError(
            f"Ansible took more than {settings.targets_timeout} s to read the inventory"
        ) from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        log.warning(
            "the resolver failed", rc=done.returncode, stderr=done.stderr.decode(errors="replace")[-2000:]
        )
        raise TargetsError(f"Ansible could not read the inventory (exit status {done.returncode})") from None
    return _hosts(answer)


def no_targets_reason(limit: str | None) -> str:
    if limit:
        return "limit: selects no host of the inventory"
    return "inventory: has no host"


class TargetResolver:
    """The API's warm resolver: one child process (started on first use, again if it died) that imported
    Ansible once, in the playbooks directory, and answers each request in a fork of itself. Requests are
    answered one at a time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def bundled(self, job: Job, inventory_path: Path | None) -> list[str]:
        """The targets of a run of a bundled playbook. InvalidRequest when there are none, or when Ansible
        cannot read the inventory. Blocking: call in a thread."""
        with tempfile.TemporaryDirectory(prefix="ars-targets-") as scratch:
            source = None if inventory_path is None else str(inventory_path)
            if isinstance(job.inventory, dict):
                source = str(Path(scratch) / "hosts.yml")
                Path(source).write_text(dump_inventory(job.inventory), encoding="utf-8")
            try:
                hosts = self.resolve(source, job.limit)
            except TargetsError as exc:
                raise InvalidRequest(f"inventory: {exc}") from None
        if not hosts:
            raise InvalidRequest(no_targets_reason(job.limit))
        return hosts

    def resolve(self, inventory: str | None, limit: str | None) -> list[str]:
        with self._lock:
            process = self._started()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(json.dumps({"inventory": inventory, "limit": limit}).encode() + b"\n")
                process.stdin.flush()
                line = self._read_line(process.stdout)
            except (OSError, TargetsError):
                self._stop()
                raise
            try:
                answer = json.loads(line)
            except ValueError:
                self._stop()
                raise TargetsError("the resolver gave no answer") from None
        return _hosts(answer)

    def _read_line(self, stdout: IO[bytes]) -> bytes:
        ready, _, _ = select.select([stdout], [], [], self._settings.targets_timeout)
        if not ready:
            raise TargetsError(
                f"Ansible took more than {self._settings.targets_timeout} s to read the inventory"
            )
        return stdout.readline()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._process = subprocess.Popen(
            [*_COMMAND, "--fork"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Ansible's warnings (a pattern that matches nothing, say) are not the API's to log.
            stderr=subprocess.DEVNULL,
            cwd=self._settings.playbooks_dir,
            env=_environment(self._settings, "resolver"),
            # Its own process group: a timeout kills the resolver and the fork it waits for.
            start_new_session=True,
        )
        return self._process

    def _stop(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        self._process = None

    def close(self) -> None:
        with self._lock:
            self._stop()
