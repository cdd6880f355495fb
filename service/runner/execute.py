"""ansible-runner in a worker thread, with a cancel flag and events handed to the event loop."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner

from service.config import Settings
from service.models import Job
from service.runner.events import EventChannel
from service.runner.workspace import Workspace

@dataclass(frozen=True)
class RunOutcome:
    status: str
    rc: int | None


def ansible_environment(settings: Settings) -> dict[str, str]:
    """Variables ansible-runner adds to the child's environment."""
    # The worker's own Python environment first: its ansible-playbook is the one installed with the service,
    # also when the virtualenv is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), settings.path])
    return {
        "PATH": path,
        "ANSIBLE_COLLECTIONS_PATH": str(settings.ansible_collections_path),
        # Output is stored and streamed as printed, colours included; readers strip them on demand.
        "ANSIBLE_FORCE_COLOR": "1",
        "ANSIBLE_NOCOWS": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }


def run_ansible(
    job: Job,
    workspace: Workspace,
    settings: Settings,
    channel: EventChannel,
    cancel: threading.Event,
) -> RunOutcome:
    """Run the playbook to its end (blocking). Call in a thread; set `cancel` to stop it."""
    cmdline = [flag for flag, wanted in (("--check", job.check), ("--diff", job.diff)) if wanted]
    kwargs: dict[str, Any] = {
        "private_data_dir": str(workspace.private_data_dir),
        "project_dir": str(workspace.project_dir),
        "playbook": workspace.playbook,
        "ident": workspace.ident,
        "envvars": ansible_environment(settings),
        "quiet": True,
        "suppress_env_files": True,
        # The run's wall-clock limit; ansible-runner kills the process group when it passes.
        "timeout": job.timeout or settings.max_run_timeout,
        # How often ansible-runner looks at the cancel flag and the timeout (5 s by default).
        "settings": {"pexpect_timeout": settings.runner_poll_interval},
        "event_handler": _keep_event(channel),
        "cancel_callback": cancel.is_set,
    }
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
    try:
        runner = ansible_runner.run(**kwargs)
    finally:
        channel.close()
    return RunOutcome(status=str(runner.status), rc=runner.rc)


def _keep_event(channel: EventChannel) -> Any:
    def handler(event: dict[str, Any]) -> bool:
        if "counter" in event:
            channel.put(event)
        # True: ansible-runner also writes its job_events file, the record we re-ingest from if needed.
        return True

    return handler
