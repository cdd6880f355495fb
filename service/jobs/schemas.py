"""Request and response shapes of the jobs API. Unknown fields are refused and types are strict."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator
from pydantic_core import to_json

from service.errors import CONTROL, shown
from service.jobs.hosts import check_limit
from service.jobs.locks import LOCK_NAME, MAX_LOCKS
from service.models import Job, JobEvent

_STRICT = ConfigDict(extra="forbid", strict=True)
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}\Z")

Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]


def _no_option(value: str, what: str) -> str:
    """Values that reach ansible-playbook's command line can never be read as an option."""
    if value.startswith("-"):
        raise ValueError(f"{what} must not start with '-'")
    if CONTROL.search(value):
        raise ValueError(f"{what} must not contain control characters")
    return value


class BundledSource(BaseModel):
    """A playbook shipped with the service, under `PLAYBOOKS_DIR`."""

    model_config = _STRICT
    type: Literal["bundled"] = "bundled"


class GitSource(BaseModel):
    """A playbook from a Git repository on a configured provider."""

    model_config = _STRICT
    type: Literal["git"]
    repo: Annotated[str, StringConstraints(min_length=1, max_length=2048)] = Field(
        description="https URL of the repository, on a host (and org) listed in GIT_PROVIDERS"
    )
    ref: Annotated[str, StringConstraints(min_length=1, max_length=255)] = Field(
        default="main", description="branch, tag or commit sha (a valid git reference name)"
    )

    @field_validator("repo", "ref")
    @classmethod
    def _not_option(cls, value: str, info: ValidationInfo) -> str:
        return _no_option(value, str(info.field_name))


Source = Annotated[BundledSource | GitSource, Field(discriminator="type")]


class JobRequest(BaseModel):
    """What to run. Paths are relative to the source root and never leave it."""

    model_config = _STRICT

    playbook: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        description="playbook path relative to the source root, e.g. `ping.yml`"
    )
    source: Source = Field(default_factory=BundledSource, description="where the playbook comes from")
    inventory: Annotated[str, StringConstraints(min_length=1, max_length=512)] | dict[str, Any] | None = (
        Field(
            default=None,
            description="an inventory path inside the source, or an inline inventory in Ansible's YAML "
            'inventory structure (`{"all": {"hosts": {...}}}`); none: Ansible\'s implicit localhost',
        )
    )
    extra_vars: dict[str, Any] = Field(
        default_factory=dict, description="variables passed as data (never templated)"
    )
    limit: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        default=None, description="host pattern, as ansible-playbook --limit"
    )
    tags: Annotated[list[Name], Field(max_length=100)] = Field(
        default_factory=list, description="run only tasks with these tags (--tags)"
    )
    skip_tags: Annotated[list[Name], Field(max_length=100)] = Field(
        default_factory=list, description="skip tasks with these tags (--skip-tags)"
    )
    check: bool = Field(default=False, description="run in check mode: change nothing")
    diff: bool = Field(default=False, description="show diffs of changed files and templates")
    verbosity: int = Field(default=0, ge=0, le=4, description="0 to 4, as -v to -vvvv")
    forks: int | None = Field(
        default=None, ge=1, description="parallel hosts (--forks), at most MAX_FORKS (50 by default)"
    )
    timeout: int | None = Field(
        default=None,
        ge=1,
        description="wall-clock limit of the Ansible run in seconds (queue time not counted)",
    )
    priority: Literal["high", "default", "low"] = Field(
        default="default", description="waiting runs start high first, then default, then low"
    )
    labels: dict[str, Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=dict, description="free key/value labels, filterable with `GET /jobs?label=k=v`"
    )
    exclusive: bool | None = Field(
        default=None,
        description="lease the run's target hosts (inventory after `limit`) exclusively for the whole run; "
        "none: EXCLUSIVE_DEFAULT",
    )
    locks: list[str] = Field(
        default_factory=list,
        description=f"named exclusive locks held for the whole run (at most {MAX_LOCKS}, each "
        f"`{LOCK_NAME.pattern[1:-2]}`)",
    )

    @field_validator("limit")
    @classmethod
    def _limit_patterns_only(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_limit(_no_option(value, "limit"))
        return value

    @field_validator("locks")
    @classmethod
    def _lock_names(cls, names: list[str]) -> list[str]:
        if len(names) > MAX_LOCKS:
            raise ValueError(f"at most {MAX_LOCKS} locks")
        for name in names:
            if not LOCK_NAME.match(name):
                raise ValueError(f"lock name {shown(name)} must match {LOCK_NAME.pattern[1:-2]}")
        return sorted(set(names))

    @field_validator("tags", "skip_tags")
    @classmethod
    def _tags_not_options(cls, values: list[str]) -> list[str]:
        for value in values:
            _no_option(value, "a tag")
            if "," in value:
                raise ValueError("a tag must not contain ','")
        return values

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_labels(labels)


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Labels of a job, or those a webhook subscription asks for."""
    if len(labels) > 32:
        raise ValueError("at most 32 labels")
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            raise ValueError(f"label key {shown(key)} must match {LABEL_KEY.pattern}")
        if CONTROL.search(value):
            raise ValueError(f"label {key!r} must not contain control characters")
    return labels


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A naive UTC time of the database, made aware for the API's answers."""
    return None if value is None else value.replace(tzinfo=UTC)


class HostStats(BaseModel):
    ok: int = 0
    changed: int = 0
    failures: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


class JobOut(BaseModel):
    id: str
    status: str
    playbook: str
    source: dict[str, Any]
    source_commit: str | None = Field(description="for a Git source: the commit its ref resolved to")
    inventory: str | dict[str, Any] | None
    extra_vars: dict[str, Any]
    limit: str | None
    tags: list[str]
    skip_tags: list[str]
    check: bool
    diff: bool
    verbosity: int
    forks: int | None
    timeout: int | None
    priority: str
    labels: dict[str, str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rc: int | None
    reason: str | None
    host_stats: dict[str, HostStats] | None
    event_count: int
    cancel_requested: bool
    submitted_by: str | None = Field(description="name of the API token that submitted the run")
    exclusive: bool = Field(description="the run's target hosts are leased exclusively")
    locks: list[str] | None = Field(description="named locks held for the whole run")
    targets: list[str] | None = Field(
        description="the hosts the run targets (inventory names), once resolved: for an exclusive run, "
        "and for a run that had to wait for an exclusive one"
    )
    waiting_for: dict[str, list[str]] | None = Field(
        description='while queued behind leases: {"hosts", "locks", "jobs"}: what it waits for and the runs '
        "holding them or waiting ahead for them; null otherwise"
    )
    schedule_id: str | None = Field(description="the schedule that started the run, if one did")

    @classmethod
    def of(cls, job: Job | Mapping[Any, Any]) -> JobOut:
        data = dict(job) if isinstance(job, Mapping) else job.model_dump()
        for stamp in ("created_at", "started_at", "finished_at"):
            data[stamp] = as_utc(data[stamp])
        return cls.model_validate(data)


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="pass as `cursor` to get the next page; null on the last")


class EventOut(BaseModel):
    seq: int
    event: str
    host: str | None
    task: str | None
    play: str | None
    stdout: str
    created: datetime
    data: dict[str, Any]

    @classmethod
    def of(cls, row: JobEvent) -> EventOut:
        return cls(
            seq=row.seq,
            event=row.event,
            host=row.host,
            task=row.task,
            play=row.play,
            stdout=row.stdout,
            created=row.created.replace(tzinfo=UTC),
            data=row.data,
        )


class EventPage(BaseModel):
    items: list[EventOut]


# Pages of the list and of events are read for every poll of a page that changed: their JSON is made from
# the rows directly, without a model validated per row. The rows are the service's own, stored through the
# models above; tests/unit/test_pages.py holds the bytes equal to the models' JSON.
JOB_COLUMNS = tuple(JobOut.model_fields)
EVENT_COLUMNS = tuple(EventOut.model_fields)
_HOST_STATS = tuple(HostStats.model_fields)


def _job_item(row: Mapping[Any, Any]) -> dict[str, Any]:
    item = {name: row[name] for name in JOB_COLUMNS}
    for stamp in ("created_at", "started_at", "finished_at"):
        item[stamp] = as_utc(item[stamp])
    if item["host_stats"] is not None:
        item["host_stats"] = {
            host: {key: counts.get(key, 0) for key in _HOST_STATS}
            for host, counts in item["host_stats"].items()
        }
    return item


def job_page_json(rows: Sequence[Mapping[Any, Any]], next_cursor: str | None) -> bytes:
    """JobPage's JSON from rows of JOB_COLUMNS."""
    return to_json(
        {"items": [_job_item(row) for row in rows], "next_cursor": next_cursor}, inf_nan_mode="null"
    )


def _event_item(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {name: row[name] for name in EVENT_COLUMNS} | {"created": as_utc(row["created"])}


def event_page_json(rows: Sequence[Mapping[Any, Any]]) -> bytes:
    """EventPage's JSON from rows of EVENT_COLUMNS."""
    return to_json({"items": [_event_item(row) for row in rows]}, inf_nan_mode="null")


def event_json(row: Mapping[Any, Any]) -> str:
    """EventOut's JSON from a row of EVENT_COLUMNS (a message of the live stream)."""
    return to_json(_event_item(row), inf_nan_mode="null").decode()


BRIEF_EVENT_COLUMNS = tuple(name for name in EVENT_COLUMNS if name != "data")


def brief_event_json(row: Mapping[Any, Any]) -> str:
    """EventOut's JSON without `data`, from a row of BRIEF_EVENT_COLUMNS (a brief stream's message)."""
    item = {name: row[name] for name in BRIEF_EVENT_COLUMNS} | {"created": as_utc(row["created"])}
    return to_json(item, inf_nan_mode="null").decode()


class PlaybookOut(BaseModel):
    path: str
    name: str | None = Field(description="name of the first play")


class PlaybookList(BaseModel):
    items: list[PlaybookOut]
