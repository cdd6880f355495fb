"""The service refuses to run open or without Redis, and says when its dependencies are down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from service.embedded import free_port
from tests.conftest import ROOT, Backends, service_env, start_process, wait_http


def test_api_refuses_to_start_open(backends: Backends, tmp_path: Path) -> None:
    env = service_env(backends.database_server_url, backends.redis_url, tmp_path)
    del env["AUTH_DISABLED"]
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to start an open API" in result.stderr


def test_worker_refuses_to_start_without_redis(backends: Backends, tmp_path: Path) -> None:
    env = service_env(backends.database_server_url, backends.redis_url, tmp_path)
    del env["REDIS_URL"]
    result = subprocess.run(
        [sys.executable, "-m", "arq", "service.worker.WorkerSettings"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "REDIS_URL is not set" in result.stderr


def test_ready_is_503_while_redis_is_unreachable(backends: Backends, tmp_path: Path) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    env = service_env(backends.database_server_url, dead_redis, tmp_path)
    port = free_port()
    log = tmp_path / "api.log"
    api = start_process(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)],
        env,
        log,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", api, log)
        response = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)
        assert response.status_code == 503
        assert response.json()["error"] == "Unavailable"
        assert "redis" in response.json()["detail"]
        assert "database" not in response.json()["detail"]
    finally:
        api.terminate()
        api.wait(timeout=30)


def test_ready_is_200_with_database_and_redis(api: httpx.Client) -> None:
    response = api.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "redis": "ok"}
    assert api.get("/health").json() == {"status": "ok"}


def test_database_unreachable_is_503_not_500(backends: Backends, tmp_path: Path) -> None:
    env = service_env(f"mysql+aiomysql://root@127.0.0.1:{free_port()}/test", backends.redis_url, tmp_path)
    port = free_port()
    log = tmp_path / "api.log"
    api = start_process(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)],
        env,
        log,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", api, log)
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)
        assert ready.status_code == 503
        assert "database" in ready.json()["detail"]
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/jobs", timeout=10)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "Unavailable"
        assert response.headers["Retry-After"] == "5"
    finally:
        api.terminate()
        api.wait(timeout=30)
