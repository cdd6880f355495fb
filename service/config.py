"""Configuration: the only place that reads the process environment."""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigurationError
from service.sources.providers import GitProvider

# Seconds a worker needs, after it stops waiting for running runs, to end them and record how they ended.
SHUTDOWN_MARGIN = 30


class Settings(BaseSettings):
    """Every knob of the service, read once from environment variables of the same name."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///./var/ars.db"
    # None means "not configured": `ars dev` then starts an embedded Redis; the API and the worker refuse
    # to start without one.
    redis_url: str | None = None
    playbooks_dir: Path = Path("./playbooks")
    ansible_collections_path: Path = Path("./collections")
    # JSON list of providers; a bad entry, or a credential_env that is not set, stops the process at startup.
    git_providers: list[GitProvider] = Field(default_factory=list)
    # The longest a clone or fetch may take.
    git_timeout: float = Field(default=300, gt=0)
    # The per-worker mirror cache (WORK_DIR/cache/git) is trimmed, least recently used first, to this size.
    git_cache_max_bytes: int = Field(default=2 * 1024**3, ge=0)
    # Galaxy or Automation Hub from which a repository's collections/roles requirements.yml are installed;
    # none: only collections bundled under ANSIBLE_COLLECTIONS_PATH can satisfy them.
    galaxy_server_url: str | None = None
    galaxy_token: SecretStr | None = None
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
    # The worker pod's terminationGracePeriodSeconds, when the manifests pass it: JOB_COMPLETION_WAIT is then
    # derived from it, leaving SHUTDOWN_MARGIN seconds to end what is still running before Kubernetes kills
    # the pod. One number for both, so the wait can never outlast the grace period.
    termination_grace_period: int | None = Field(default=None, ge=SHUTDOWN_MARGIN + 1)
    # The longest run the service accepts, and the default when a request names no timeout.
    max_run_timeout: int = Field(default=86_400, ge=1)
    # How often ansible-runner looks at the cancel flag and the timeout (its pexpect_timeout).
    runner_poll_interval: float = Field(default=0.1, gt=0, le=5)
    # At most this many events per INSERT; batches form by themselves while a write is in flight.
    event_batch_size: int = Field(default=500, ge=1, le=10_000)
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

    # API.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    db_pool_size: int = Field(default=10, ge=1)
    # GET /api/v1/queue without a token, for an autoscaler inside the cluster that holds none.
    queue_endpoint_public: bool = False

    # Tests set this to keep ansible-runner's artifacts for inspection.
    keep_work_dirs: bool = False

    _git_credentials: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _completion_wait_from_grace_period(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("termination_grace_period") is None:
            return data
        if data.get("job_completion_wait") is not None:
            # Not a ValueError: pydantic would print the whole input, secrets included.
            raise ConfigurationError("set JOB_COMPLETION_WAIT or TERMINATION_GRACE_PERIOD, not both")
        return {**data, "job_completion_wait": int(data["termination_grace_period"]) - SHUTDOWN_MARGIN}

    @field_validator("playbooks_dir", "ansible_collections_path", "work_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _resolve_git_credentials(self) -> Settings:
        hosts: set[str] = set()
        for index, provider in enumerate(self.git_providers):
            where = f"GIT_PROVIDERS[{index}] ({provider.host})"
            if provider.host in hosts:
                raise ValueError(f"{where}: host listed twice")
            hosts.add(provider.host)
            if provider.credential_env is None:
                continue
            token = os.environ.get(provider.credential_env, "").strip()
            if not token:
                raise ValueError(f"{where}: credential_env {provider.credential_env} is not set or empty")
            self._git_credentials[provider.host] = SecretStr(token)
        return self

    def git_credential(self, provider: GitProvider) -> SecretStr | None:
        return self._git_credentials.get(provider.host)

    @property
    def secret_environment_names(self) -> list[str]:
        """Variables holding credentials: a worker drops them before it starts Ansible runs."""
        names = [provider.credential_env for provider in self.git_providers if provider.credential_env]
        return [*names, "GALAXY_TOKEN"]

    @property
    def git_cache_dir(self) -> Path:
        return self.work_dir / "cache" / "git"

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


def drop_secrets_from_environment(settings: Settings) -> None:
    """Forget credentials the process was started with, once Settings holds them.

    ansible-runner hands the worker's whole environment to ansible-playbook and there is no way to give it
    a clean one: a token left in os.environ would reach every playbook. Afterwards only the cached
    `get_settings()` holds them: a new Settings() would not find them.
    """
    for name in settings.secret_environment_names:
        os.environ.pop(name, None)


def child_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The environment for a child process of `ars dev`: ours, with the given variables replaced."""
    return {**os.environ, **overrides}
