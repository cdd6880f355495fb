"""ansible-runner in a worker thread, with a cancel flag and events handed to the event loop."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner
import structlog

from service.config import Settings
from service.models import Job
from service.runner.events import EventChannel
from service.runner.launcher import SERVER_LOST
from service.runner.warm import ForkServer, Launch
from service.runner.workspace import Workspace

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    status: str
    rc: int | None
    timed_out: bool
    # Why the run could not go on, when that was not Ansible's doing (its fork server ended).
    error: str | None = None
    # How ansible-playbook started: warm, cold, direct (see service/runner/warm.py) or off.
    start: str = "off"


RUN_MARKER = "ARS_RUN_ID"


def ansible_environment(settings: Settings, job_id: str) -> dict[str, str]:
    """Variables ansible-runner adds to the child's environment.

    They win over the worker's own ANSIBLE_* variables and over a project's ansible.cfg.
    """
    # The worker's own Python environment first: its ansible-playbook is the one installed with the service,
    # also when the virtualenv is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), settings.path])
    environment = {
        # Inherited by every process of the run, also those that leave its process group (modules that
        # start their own session): how an interrupted run's leftovers are found.
        RUN_MARKER: job_id,
        "PATH": path,
        "ANSIBLE_COLLECTIONS_PATH": str(settings.ansible_collections_path),
        # Output is stored and streamed as printed, colours included; readers strip them on demand.
        "ANSIBLE_FORCE_COLOR": "1",
        "ANSIBLE_NOCOWS": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # Without `script` unless the operator lists it: an inventory path a request names is read, never
        # run (service/sources/paths.py).
        "ANSIBLE_INVENTORY_ENABLED": ",".join(settings.inventory_plugins),
        # ansible-runner turns host key checking off unless this is set.
        "ANSIBLE_HOST_KEY_CHECKING": str(settings.ssh_host_key_checking),
    }
    if settings.ssh_known_hosts_file is not None:
        known_hosts = shlex.quote(f"UserKnownHostsFile={settings.ssh_known_hosts_file}")
        environment["ANSIBLE_SSH_ARGS"] = f"{settings.ansible_ssh_args} -o {known_hosts}"
    return environment


def run_ansible(
    job: Job,
    workspace: Workspace,
    settings: Settings,
    channel: EventChannel,
    cancel: threading.Event,
    fork_server: ForkServer | None = None,
) -> RunOutcome:
    """Run the playbook to its end (blocking). Call in a thread; set `cancel` to stop it.

    With a fork server, ansible-playbook starts from its warm process (docs/forkserver.md)."""
    deadline = time.monotonic() + (job.timeout or settings.max_run_timeout)
    timed_out = False

    def stop_check() -> bool:
        # The cancel and timeout checks are ours rather than ansible-runner's: it kills only the process
        # group of ansible-playbook, while Ansible's workers start sessions of their own (and then hold
        # the terminal, so ansible-runner waits seconds for its end). Every process of the run goes first.
        nonlocal timed_out
        timed_out = timed_out or time.monotonic() > deadline
        if cancel.is_set() or timed_out:
            kill_run_processes(job.id)
            return True
        return False

    kwargs = _runner_arguments(job, workspace, settings)
    kwargs["event_handler"] = _keep_event(channel)
    kwargs["cancel_callback"] = stop_check
    notes = workspace.private_data_dir / "launch.json"
    launch: Launch | None = None  # None: the launcher's notes say
    if fork_server is None:
        launch = Launch("off")
    elif fork_server.ready():
        kwargs["binary"] = str(fork_server.launcher)
        kwargs["envvars"].update(fork_server.launch_environment(notes))
        # With a `binary`, ansible-runner leaves the playbook out of the command line.
        kwargs["cmdline"] = " ".join(filter(None, [kwargs.get("cmdline"), shlex.quote(workspace.playbook)]))
    else:
        launch = Launch("direct", "the fork server is starting")
    try:
        runner = ansible_runner.run(**kwargs)
    finally:
        channel.close()
    launch = launch or Launch.read(notes)
    if cancel.is_set() or timed_out or launch.lost:
        # Once more: a process forked while the first sweep read /proc escaped it. A run whose fork server
        # ended: its modules (they carry the marker) are all that may be left.
        kill_run_processes(job.id)
    if launch.mode in ("direct", "cold"):
        # Slower, not wrong: a fresh ansible-playbook, as with RUN_FORK_SERVER=false. Cold is the run's
        # configuration; direct, a fork server that is not there.
        (log.warning if launch.mode == "direct" else log.info)(
            "ansible-playbook not started from the fork server", start=launch.mode, reason=launch.reason
        )
    error = launch.lost if launch.lost and runner.rc == SERVER_LOST else None
    # Logged from the runner thread: anyio copies the caller's context into it, job_id included.
    log.info("ansible-runner returned", status=runner.status, rc=runner.rc, start=launch.mode)
    return RunOutcome(str(runner.status), runner.rc, timed_out, error=error, start=launch.mode)


def _runner_arguments(job: Job, workspace: Workspace, settings: Settings) -> dict[str, Any]:
    """ansible_runner.run()'s arguments for this run, but for the callbacks."""
    cmdline = [flag for flag, wanted in (("--check", job.check), ("--diff", job.diff)) if wanted]
    if settings.vault_password_file is not None:
        # A file Ansible reads itself: the password never passes through argv, the environment or a prompt.
        cmdline += ["--vault-password-file", shlex.quote(str(settings.vault_password_file))]
    kwargs: dict[str, Any] = {
        "private_data_dir": str(workspace.private_data_dir),
        "project_dir": str(workspace.project_dir),
        "playbook": workspace.playbook,
        "ident": workspace.ident,
        "envvars": {**ansible_environment(settings, job.id), **workspace.environment},
        "quiet": True,
        # How often ansible-runner calls the cancel callback (5 s by default).
        "settings": {"pexpect_timeout": settings.runner_poll_interval},
    }
    ssh_key = settings.ssh_private_key()
    if ssh_key:
        # ansible-runner hands the key to an ssh-agent of this run through a FIFO it removes once read.
        kwargs["ssh_key"] = ssh_key
    if workspace.inventory is not None:
        kwargs["inventory"] = workspace.inventory
    if job.limit:
        kwargs["limit"] = job.limit
    if job.tags:
        kwargs["tags"] = ",".join(job.tags)
    if job.skip_tags:
        kwargs["skip_tags"] = ",".join(job.skip_tags)
    if job.verbosity:
        kwargs["verbosity"] = job.verbosity
    if job.forks:
        kwargs["forks"] = job.forks
    if cmdline:
        kwargs["cmdline"] = " ".join(cmdline)
    return kwargs


def run_processes(job_id: str) -> list[int]:
    """Every process whose environment carries this run's marker (Linux /proc; none elsewhere)."""
    needle = f"{RUN_MARKER}={job_id}".encode()
    found = []
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_run_processes(job_id: str) -> int:
    """SIGKILL every process of the run. Returns how many."""
    killed = 0
    for pid in run_processes(job_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def _keep_event(channel: EventChannel) -> Any:
    def handler(event: dict[str, Any]) -> bool:
        # The return value tells ansible-runner whether to write the event's job_events file: only for the
        # events the channel did not carry (it spilled), which the recorder reads back at the end. Writing
        # every event (ansible-runner's default) was most of ansible-runner's own cost (decision 0003).
        # A copy: ansible-runner hands over one dict per line of output printed outside an event, and
        # reuses it for the next line, changing its counter and stdout while the channel still holds it.
        return "counter" not in event or not channel.put(dict(event))

    return handler
