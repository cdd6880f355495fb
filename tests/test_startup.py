"""The service refuses to run open or without Redis, and says when its dependencies are down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.embedded import free_port
from tests.support import ROOT, WORKER_COMMAND, Backends, api_command, lone_api, refuses_to_start, service_env


def test_api_refuses_to_start_open(backends: Backends, tmp_path: Path) -> None:
    env = service_env(backends.database_server_url, backends.redis_url, tmp_path)
    del env["AUTH_DISABLED"]
    assert "refusing to start an open API" in refuses_to_start(api_command(free_port()), env)


def test_worker_refuses_to_start_without_redis(backends: Backends, tmp_path: Path) -> None:
    env = service_env(backends.database_server_url, backends.redis_url, tmp_path)
    del env["REDIS_URL"]
    assert "REDIS_URL is not set" in refuses_to_start(WORKER_COMMAND, env)


def test_ready_is_503_while_redis_is_unreachable(backends: Backends, tmp_path: Path) -> None:
    env = service_env(backends.database_server_url, f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    with lone_api(env, tmp_path / "api.log") as base_url:
        response = httpx.get(f"{base_url}/ready", timeout=10)
    assert response.status_code == 503
    assert response.json()["error"] == "Unavailable"
    assert "redis" in response.json()["detail"]
    assert "database" not in response.json()["detail"]


def test_ready_is_200_with_database_and_redis(api: httpx.Client) -> None:
    response = api.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "redis": "ok"}
    assert api.get("/health").json() == {"status": "ok"}


def test_database_unreachable_is_503_not_500(backends: Backends, tmp_path: Path) -> None:
    env = service_env(f"mysql+aiomysql://root@127.0.0.1:{free_port()}/test", backends.redis_url, tmp_path)
    with lone_api(env, tmp_path / "api.log") as base_url:
        ready = httpx.get(f"{base_url}/ready", timeout=10)
        response = httpx.get(f"{base_url}/api/v1/jobs", timeout=10)
    assert ready.status_code == 503
    assert "database" in ready.json()["detail"]
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "Unavailable"
    assert response.headers["Retry-After"] == "5"


def test_a_worker_started_with_secrets_in_its_environment_refuses_to_run(
    backends: Backends, tmp_path: Path
) -> None:
    """Runs can read /proc/<worker>/environ: only `ars worker`, which starts without secrets there, runs."""
    env = service_env(backends.database_server_url, backends.redis_url, tmp_path)
    env["API_TOKENS"] = "ci:run:" + "ab" * 32
    arq = [str(Path(sys.executable).parent / "arq"), "service.worker.WorkerSettings"]
    stderr = refuses_to_start(arq, env)
    assert "started with secrets in its environment" in stderr
    assert "API_TOKENS" in stderr
    assert "ars worker" in stderr


@pytest.mark.parametrize(
    ("variable", "ours"),
    [
        ("ANSIBLE_HOST_KEY_CHECKING", "SSH_HOST_KEY_CHECKING"),
        ("ANSIBLE_INVENTORY_ENABLED", "INVENTORY_PLUGINS"),
    ],
)
def test_ansible_settings_the_service_sets_are_refused_in_its_environment(
    backends: Backends, tmp_path: Path, variable: str, ours: str
) -> None:
    env = {**service_env(backends.database_server_url, backends.redis_url, tmp_path), variable: "False"}
    assert f"{variable} is set by the service for each run: set {ours} instead" in refuses_to_start(
        WORKER_COMMAND, env
    )


def test_importing_the_entry_points_reads_no_settings_and_does_no_io() -> None:
    """`uvicorn service.main:app` and `arq service.worker.WorkerSettings` read their settings when the server
    asks for the app or arq for the settings: importing either needs no configuration at all."""
    result = subprocess.run(
        [sys.executable, "-c", "import service.main, service.worker"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    asking = subprocess.run(
        [sys.executable, "-c", "import service.worker; service.worker.WorkerSettings"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "REDIS_URL is not set" in asking.stderr
