"""A fresh private_data_dir per run: inventory and extra vars written as data, never as templates."""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from service.config import Settings
from service.jobs.checks import check_job
from service.models import Job
from service.sources.git import MirrorCache
from service.sources.providers import RepoLocation
from service.sources.requirements import prepare_requirements

log = structlog.get_logger(__name__)


class _Names(dict[str, Any]):
    """A mapping whose keys are names Ansible reads as names (variables, groups, hosts), checked at submit
    by strict patterns: written as plain strings."""


class _UnsafeDumper(yaml.SafeDumper):
    """Tags every string `!unsafe`, values and mapping keys alike, so Ansible never renders `{{ … }}` that
    came from a request: a playbook looping over a mapping (`dict2items`) hands its keys to templates.
    Only the keys of `_Names` mappings stay plain.
    """


def _represent_unsafe(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("!unsafe", value)


def _represent_names(dumper: yaml.SafeDumper, data: _Names) -> yaml.MappingNode:
    pairs = [
        (dumper.represent_scalar("tag:yaml.org,2002:str", key), dumper.represent_data(value))
        for key, value in data.items()
    ]
    return yaml.MappingNode("tag:yaml.org,2002:map", pairs)


_UnsafeDumper.add_representer(str, _represent_unsafe)
_UnsafeDumper.add_representer(_Names, _represent_names)


def _dump(document: _Names) -> str:
    return yaml.dump(
        document, Dumper=_UnsafeDumper, default_flow_style=False, allow_unicode=True, sort_keys=False
    )


def dump_unsafe(variables: dict[str, Any]) -> str:
    """Variables as an extra vars file: names plain, everything inside their values `!unsafe`."""
    return _dump(_Names(variables))


def _group(group: dict[str, Any] | None) -> _Names:
    group = group or {}
    document = _Names()
    if group.get("hosts") is not None:
        hosts = group["hosts"].items()
        document["hosts"] = _Names({host: _Names(host_vars or {}) for host, host_vars in hosts})
    if group.get("vars") is not None:
        document["vars"] = _Names(group["vars"])
    if group.get("children") is not None:
        document["children"] = _Names({name: _group(child) for name, child in group["children"].items()})
    return document


def dump_inventory(inventory: dict[str, Any]) -> str:
    """An inline inventory as a YAML inventory: group, host and variable names plain, values `!unsafe`."""
    return _dump(_Names({name: _group(group) for name, group in inventory.items()}))


@dataclass(frozen=True)
class Workspace:
    private_data_dir: Path
    project_dir: Path
    playbook: str
    inventory: str | None
    # Variables Ansible needs for this run's own content (collections installed from requirements.yml).
    environment: dict[str, str] = field(default_factory=dict)
    ident: str = "run"

    @property
    def artifact_dir(self) -> Path:
        """Where ansible-runner writes its record of the run (job_events/, stdout, status, rc)."""
        return self.private_data_dir / "artifacts" / self.ident

    def remove(self) -> None:
        shutil.rmtree(self.private_data_dir, ignore_errors=True)


@dataclass(frozen=True)
class SourceTree:
    project_dir: Path
    commit: str | None
    # Git sources: the provider type and the seconds spent fetching and checking out.
    provider: str | None = None
    fetch_seconds: float | None = None


def create_private_dir(job: Job, settings: Settings) -> Path:
    """The run's scratch directory: fresh, never reused."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"run-{job.id}-", dir=settings.work_dir))


def fetch_source(
    job: Job,
    location: RepoLocation | None,
    settings: Settings,
    mirrors: MirrorCache,
    private: Path,
    cancel: threading.Event | None = None,
) -> SourceTree:
    """Where the run's playbook comes from: the bundled directory, or a checkout of its Git ref (`location`
    as the job's check found it). Setting `cancel` stops a fetch under way (Canceled)."""
    if location is None:
        return SourceTree(project_dir=settings.playbooks_dir, commit=None)
    ref = job.source["ref"]
    fetched = mirrors.checkout(location, ref, private / "project", cancel)
    log.info(
        "git source ready",
        repo=location.url,
        ref=ref,
        commit=fetched.commit,
        mirror="reused" if fetched.mirror_reused else "created",
        fetch_seconds=round(fetched.fetch_seconds, 3),
        checkout_seconds=round(fetched.checkout_seconds, 3),
    )
    return SourceTree(
        project_dir=private / "project",
        commit=fetched.commit,
        provider=location.provider.type,
        fetch_seconds=fetched.fetch_seconds + fetched.checkout_seconds,
    )


def prepare(job: Job, settings: Settings, private: Path, source: SourceTree) -> Workspace:
    """Fill the run's scratch directory, once the job's check passed again with the source's files."""
    project_dir = source.project_dir
    checked = check_job(job, settings, project_dir)
    env = private / "env"
    env.mkdir()
    if job.extra_vars:
        (env / "extravars").write_text(dump_unsafe(job.extra_vars), encoding="utf-8")
    inventory = None if checked.inventory is None else str(checked.inventory)
    if isinstance(job.inventory, dict):
        directory = private / "inventory"
        directory.mkdir()
        path = directory / "hosts.yml"
        path.write_text(dump_inventory(job.inventory), encoding="utf-8")
        inventory = str(path)
    environment = prepare_requirements(project_dir, private, settings) if source.commit else {}
    return Workspace(
        private_data_dir=private,
        project_dir=project_dir,
        playbook=job.playbook,
        inventory=inventory,
        environment=environment,
    )
