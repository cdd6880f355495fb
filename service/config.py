"""Configuration: the only place that reads the process environment."""

from __future__ import annotations

import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigurationError
from service.sources.providers import GitProvider

# Seconds a worker needs, after it stops waiting for running runs, to end them and record how they ended.
SHUTDOWN_MARGIN = 30
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*\Z")


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
    # Keys that sign the console's session cookies, comma separated: the first signs, every one verifies
    # (list a new key first to rotate, drop the old one a session lifetime later). Required with API_TOKENS.
    session_secret: SecretStr | None = None
    # How long a console login lasts.
    session_max_age: int = Field(default=8 * 3600, ge=60, le=30 * 24 * 3600)
    work_dir: Path = Path(tempfile.gettempdir())

    # The search path handed to Ansible (after the service's own Python environment).
    path: str = Field(default=os.defpath, validation_alias="PATH")

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    # Queue and worker.
    queue_name: str = "arq:queue"
    worker_max_jobs: int = Field(default=8, ge=1, le=256)
    # A submit wakes idle workers at once (service.arq_compat.WokenWorker); this is how often they look at
    # the queue without being woken (a wake-up lost while Redis was away).
    worker_poll_delay: float = Field(default=0.5, gt=0, le=60)
    job_completion_wait: int = Field(default=60, ge=0)
    # The worker pod's terminationGracePeriodSeconds, when the manifests pass it: JOB_COMPLETION_WAIT is then
    # derived from it, leaving SHUTDOWN_MARGIN seconds to end what is still running before Kubernetes kills
    # the pod. One number for both, so the wait can never outlast the grace period.
    termination_grace_period: int | None = Field(default=None, ge=SHUTDOWN_MARGIN + 1)
    # The longest run the service accepts, and the default when a request names no timeout.
    max_run_timeout: int = Field(default=86_400, ge=1)
    # Runs start by forking a process that has imported Ansible already (docs/forkserver.md); false: each
    # run starts a fresh ansible-playbook.
    run_fork_server: bool = True
    # How often ansible-runner looks at the cancel flag and the timeout (its pexpect_timeout).
    runner_poll_interval: float = Field(default=0.1, gt=0, le=5)
    # At most this many events per INSERT; batches form by themselves while a write is in flight.
    event_batch_size: int = Field(default=500, ge=1, le=10_000)
    # How long a batch waits for more events after its first: the live stream's added latency, traded for
    # one write per burst of events (a task start and its hosts) instead of one per event.
    event_batch_linger: float = Field(default=0.05, ge=0, le=1)
    # Events of a run held in memory while the database is slow or away; past that, ansible-runner writes
    # them to its job_events files, stored at the end of the run (never a drop, Ansible never waits).
    event_buffer_size: int = Field(default=20_000, ge=100)
    stream_maxlen: int = Field(default=10_000, ge=100)
    stream_ttl_after_end: int = Field(default=3600, ge=1)
    # Jobs whose JSON the API keeps for GET /jobs/{id} while they do not change (service/jobs/views.py);
    # 0 reads the database on every GET.
    job_view_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
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
    # How long an Idempotency-Key returns the job it first created.
    idempotency_window: int = Field(default=86_400, ge=1)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Deepest nesting of arrays and objects a JSON body may have (deeper is 422, before parsing).
    max_json_depth: int = Field(default=32, ge=4, le=256)
    # Variable names (extra vars, inline inventory vars) the operator allows although they could make the
    # worker execute something or read another path (see service/jobs/variables.py), e.g.
    # ["ansible_connection"].
    extra_vars_allow: list[str] = Field(default_factory=list)
    # Hosts an inline inventory may expand to (ranges such as h[0:99] count as what they stand for).
    max_inline_hosts: int = Field(default=10_000, ge=1)
    # A request without `exclusive` leases its target hosts exclusively (service/jobs/locks.py).
    exclusive_default: bool = False
    # How long resolving a run's target hosts (Ansible reading its inventory) may take.
    targets_timeout: int = Field(default=60, ge=1)
    # The largest `forks` a request may ask for: each fork is an Ansible process of tens of MiB.
    max_forks: int = Field(default=50, ge=1, le=500)
    # Streams (GET /jobs/{id}/stream) one token may hold open at once on one API process (429 beyond).
    max_streams_per_token: int = Field(default=100, ge=1)

    # Credentials for target hosts, mounted from the Secret as files: the private key goes to each run's
    # ssh-agent, the vault password file to ansible-playbook's --vault-password-file.
    ssh_private_key_file: Path | None = None
    vault_password_file: Path | None = None
    # Host keys of the targets (known_hosts format, mounted from the Secret): ssh checks every target against
    # it. Unset: the worker user's ~/.ssh/known_hosts, where a pod knows no host.
    ssh_known_hosts_file: Path | None = None
    # false accepts whatever key a target presents: module payloads, vault-decrypted values among them, then
    # go to whatever answers on the target's address (docs/security.md). Sets Ansible's host_key_checking.
    ssh_host_key_checking: bool = True
    # Ansible's own ssh_args (ANSIBLE_SSH_ARGS, its default when unset), to which the known hosts file is
    # added.
    ansible_ssh_args: str = "-C -o ControlMaster=auto -o ControlPersist=60s"
    # Inventory plugins runs may use (Ansible's enable_plugins, in order). `script` runs the inventory file
    # as a program: off unless listed here.
    inventory_plugins: list[str] = Field(default_factory=lambda: ["host_list", "auto", "yaml", "ini", "toml"])
    # Set by the service from SSH_HOST_KEY_CHECKING and INVENTORY_PLUGINS: refused in the environment, where
    # they would look as if they applied.
    ansible_host_key_checking: str | None = None
    ansible_inventory_enabled: str | None = None
    # Environment variables, besides RUN_ENV_BASE and ANSIBLE_*, that runs may see (shell patterns).
    run_env_allow: list[str] = Field(default_factory=list)
    db_pool_size: int = Field(default=10, ge=1)
    # GET /api/v1/queue without a token, for an autoscaler inside the cluster that holds none.
    queue_endpoint_public: bool = False
    # /metrics re-reads job counts and queue depth at most this often (one GROUP BY per period).
    metrics_max_age: float = Field(default=5, ge=0)
    # Live output (GET /jobs/{id}/stream): a keep-alive comment this often; readers look at the database
    # after `stream_recheck_interval` s without live news, and every `stream_poll_interval` s while Redis
    # is unavailable.
    stream_keepalive: float = Field(default=15, gt=0)
    stream_recheck_interval: float = Field(default=15, gt=0)
    stream_poll_interval: float = Field(default=1.0, gt=0)

    # Webhooks (service/webhooks), sent by the API processes.
    # Seconds to wait before each retry of a delivery that failed (a non-2xx answer, a timeout, a refused
    # destination); once all are spent it is `failed`. The default, Standard Webhooks' own schedule, spans
    # about 27 hours.
    webhook_retry_delays: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    # The longest one attempt may take, from connecting to the last byte read.
    webhook_timeout: float = Field(default=10, gt=0, le=300)
    # Lets webhooks reach loopback, private and link-local addresses (refused by default: a subscription
    # must not make the service probe its own network or a cloud metadata endpoint).
    webhook_allow_private: bool = False
    # Attempts in flight per API process; one subscription takes at most a quarter of them.
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)
    # How often each API process looks at the outbox without being told of new deliveries.
    webhook_poll_interval: float = Field(default=2, gt=0, le=60)

    # Schedules (service/schedules), fired by the API processes.
    # A fire time that passed while no API process ran is made up once if it is younger than this (s);
    # older ones are recorded as missed.
    schedule_misfire_grace: int = Field(default=300, ge=0, le=7 * 86_400)
    # How often each API process looks for schedules changed by another process (one it changes itself,
    # it sees at once).
    schedule_poll_interval: float = Field(default=5, gt=0, le=60)

    # The `ars` command line client: where the API is, and the bearer token to send.
    ars_url: str = "http://127.0.0.1:8000"
    ars_token: str | None = None

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

    @field_validator(
        "playbooks_dir",
        "ansible_collections_path",
        "work_dir",
        "ssh_private_key_file",
        "vault_password_file",
        "ssh_known_hosts_file",
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("webhook_retry_delays")
    @classmethod
    def _retry_delays(cls, delays: list[float]) -> list[float]:
        if len(delays) > 30 or any(not 0 <= delay <= 7 * 86_400 for delay in delays):
            raise ValueError("WEBHOOK_RETRY_DELAYS: at most 30 delays, each 0 to 604800 seconds")
        return delays

    @field_validator("inventory_plugins")
    @classmethod
    def _plugin_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _PLUGIN_NAME.match(name):
                raise ValueError(f"INVENTORY_PLUGINS: {name!r} is not an inventory plugin name")
        return names

    @model_validator(mode="after")
    def _no_overridden_ansible_settings(self) -> Settings:
        for variable, ours in (
            ("ANSIBLE_HOST_KEY_CHECKING", "SSH_HOST_KEY_CHECKING"),
            ("ANSIBLE_INVENTORY_ENABLED", "INVENTORY_PLUGINS"),
        ):
            if getattr(self, variable.lower()) is not None:
                raise ConfigurationError(f"{variable} is set by the service for each run: set {ours} instead")
        return self

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
        """Variables holding credentials, whatever their names: their values are masked in output."""
        names = [provider.credential_env for provider in self.git_providers if provider.credential_env]
        return [*names, "GALAXY_TOKEN"]

    def ssh_private_key(self) -> str | None:
        if self.ssh_private_key_file is None:
            return None
        return self.ssh_private_key_file.read_text(encoding="utf-8")

    def secret_values(self) -> list[str]:
        """Every configured secret value, to be masked wherever it could still reach output or logs."""
        values: list[str] = []
        for url in (self.database_url, self.redis_url):
            password = urlsplit(url).password if url else None
            if password:
                values += [url or "", str(password)]
        for entry in re.split(r"[;\n]", self.api_tokens or ""):
            values += [entry.strip(), entry.strip().rpartition(":")[2]]
        values += [credential.get_secret_value() for credential in self._git_credentials.values()]
        if self.galaxy_token is not None:
            values.append(self.galaxy_token.get_secret_value())
        values += self.session_keys()
        for path in (self.vault_password_file, self.ssh_private_key_file):
            if path is not None and path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace").strip()
                # A multi-line secret (a key) may be printed a line at a time, or with escaped newlines.
                values += [text, *text.splitlines()]
        return values

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

    def session_keys(self) -> list[str]:
        raw = self.session_secret.get_secret_value() if self.session_secret else ""
        return [key.strip() for key in raw.split(",") if key.strip()]

    def check_auth(self) -> None:
        if not self.api_tokens and not self.auth_disabled:
            raise ConfigurationError(
                "refusing to start an open API: set API_TOKENS, or AUTH_DISABLED=true for a private machine"
            )
        if self.auth_disabled:
            return
        keys = self.session_keys()
        if not keys:
            raise ConfigurationError(
                "SESSION_SECRET is not set: the console signs its login cookies with it "
                "(`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if any(len(key) < 32 for key in keys):
            raise ConfigurationError("SESSION_SECRET: each key must be at least 32 characters")


@lru_cache
def get_settings() -> Settings:
    return Settings()
