"""One check of a run request, made by the API at submit and again by the worker before the run.

At submit the source of a Git run is not fetched yet: its paths are checked as text only. On the worker
the same check runs on the job as stored, with the source's files at hand, under the worker's own
configuration (providers, allowed variables and limits may have changed since the submit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.errors import InvalidRequest
from service.jobs.hosts import check_limit
from service.jobs.variables import check_inventory, check_variables
from service.models import Job
from service.sources.paths import (
    PLAYBOOK_SUFFIXES,
    check_relative,
    resolve_inventory,
    resolve_playbook,
)
from service.sources.providers import RepoLocation, check_ref, locate_repo


@dataclass(frozen=True)
class Checked:
    """What the check resolved: the repository of a Git source; with the files at hand, real paths."""

    location: RepoLocation | None
    playbook: Path | None
    inventory: Path | None


def check_job(job: Job, settings: Settings, source_root: Path | None) -> Checked:
    """InvalidRequest naming the field for anything the service does not run. `source_root`: where the
    source's files are (None: not fetched yet, paths checked as text)."""
    location = None
    if job.source.get("type") == "git":
        location = locate_repo(str(job.source.get("repo")), settings.git_providers)
        check_ref(str(job.source.get("ref")))
    elif source_root is None:
        source_root = settings.playbooks_dir
    playbook = inventory = None
    if source_root is None:
        pure = check_relative(job.playbook, "playbook")
        if pure.suffix not in PLAYBOOK_SUFFIXES:
            raise InvalidRequest(f"playbook: {job.playbook!r} is not a .yml or .yaml file")
        if isinstance(job.inventory, str):
            check_relative(job.inventory, "inventory")
    else:
        playbook = resolve_playbook(source_root, job.playbook)
        if isinstance(job.inventory, str):
            inventory = resolve_inventory(source_root, job.inventory)
    _check_limits(job, settings)
    return Checked(location, playbook, inventory)


def _check_limits(job: Job, settings: Settings) -> None:
    if job.timeout is not None and job.timeout > settings.max_run_timeout:
        raise InvalidRequest(f"timeout: at most {settings.max_run_timeout} seconds")
    if job.forks is not None and job.forks > settings.max_forks:
        raise InvalidRequest(f"forks: at most {settings.max_forks} (MAX_FORKS)")
    if job.limit is not None:
        try:
            check_limit(job.limit)
        except ValueError as exc:
            raise InvalidRequest(f"limit: {exc}") from None
    check_variables(job.extra_vars, "extra_vars", settings.extra_vars_allow)
    if isinstance(job.inventory, dict):
        check_inventory(job.inventory, settings.extra_vars_allow, settings.max_inline_hosts)
