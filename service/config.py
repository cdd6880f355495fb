"""Configuration: the only place that reads the process environment."""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigurationError


class Settings(BaseSettings):
    """Every knob of the service, read once from environment variables of the same name."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///./var/ars.db"
    # None means "not configured": `ars dev` then starts an embedded Redis; the API and the worker refuse
    # to start without one.
    redis_url: str | None = None
    playbooks_dir: Path = Path("./playbooks")
    ansible_collections_path: Path = Path("./collections")
    git_providers: list[dict[str, Any]] = Field(default_factory=list)
    api_tokens: str | None = None
    auth_disabled: bool = False
    work_dir: Path = Path(tempfile.gettempdir())

    # The search path handed to Ansible (after the service's own Python environment).
    path: str = Field(default=os.defpath, validation_alias="PATH")

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    # Queue and worker.
    queue_name: str = "arq:queue"
    worker_max_jobs: int = Field(default=8, ge=1, le=256)
    # arq's poll delay is the floor of start latency; polling a sorted set is cheap.
    worker_poll_delay: float = Field(default=0.05, gt=0, le=5)
    job_completion_wait: int = Field(default=60, ge=0)
    # The longest run the service accepts, and the default when a request names no timeout.
    max_run_timeout: int = Field(default=86_400, ge=1)
    # How often ansible-runner looks at the cancel flag and the timeout (its pexpect_timeout).
    runner_poll_interval: float = Field(default=0.1, gt=0, le=5)
    # At most this many events per INSERT; batches form by themselves while a write is in flight.
    event_batch_size: int = Field(default=500, ge=1, le=10_000)
    # How long a batch waits for more events after its first: the live stream's added latency, traded for
    # one write per burst of events (a task start and its hosts) instead of one per event.
    event_batch_linger: float = Field(default=0.05, ge=0, le=1)
    # Events waiting to be written before ansible-runner is made to wait (back-pressure, never a drop).
    event_buffer_size: int = Field(default=20_000, ge=100)
    stream_maxlen: int = Field(default=10_000, ge=100)
    stream_ttl_after_end: int = Field(default=3600, ge=1)
    # How long the worker keeps retrying a database write before giving up on it.
    db_retry_for: float = Field(default=120, gt=0)
    # A running job whose worker has not been heard of for this long is ended as "worker lost".
    worker_lost_after: int = Field(default=60, ge=3)
    # Finished jobs and their events older than this are deleted (0: keep everything).
    retention_days: int = Field(default=30, ge=0)
    sweep_interval: int = Field(default=10, ge=1, le=60)
    # The worker's Prometheus endpoint (0: none). Off by default: several workers share a host in dev.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # API.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    db_pool_size: int = Field(default=10, ge=1)
    # /metrics re-reads job counts and queue depth at most this often (one GROUP BY per period).
    metrics_max_age: float = Field(default=5, ge=0)

    # Tests set this to keep ansible-runner's artifacts for inspection.
    keep_work_dirs: bool = False

    @field_validator("playbooks_dir", "ansible_collections_path", "work_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigurationError(
                "REDIS_URL is not set: point it at a Redis server, or use `ars dev`, which starts one"
            )
        return self.redis_url

    def check_auth(self) -> None:
        if not self.api_tokens and not self.auth_disabled:
            raise ConfigurationError(
                "refusing to start an open API: set API_TOKENS, or AUTH_DISABLED=true for a private machine"
            )


@lru_cache
def get_settings() -> Settings:
    return Settings()


def child_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The environment for a child process of `ars dev`: ours, with the given variables replaced."""
    return {**os.environ, **overrides}
