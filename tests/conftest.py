"""Real services for the suite: MariaDB (or SQLite), Redis, and the API and worker as real processes.

Backends: TEST_DATABASE_URL / TEST_REDIS_URL when set; else the local MariaDB / Redis when they answer;
else SQLite and an embedded Redis. TEST_REQUIRE_SERVICES=true (set by .ci/run) forbids the fallback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from service.cli import migrate
from service.config import Settings
from service.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
TEST_PLAYBOOKS = ROOT / "tests" / "playbooks"
FINISHED = {"successful", "failed", "canceled", "timeout", "error"}
LOCAL_MARIADB = "mysql+aiomysql://root@127.0.0.1:3306/test"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


class TestEnvironment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEST_", extra="ignore")

    database_url: str | None = None
    redis_url: str | None = None
    require_services: bool = False


def sync_url(async_url: str) -> str:
    """The same database through a blocking driver, for the tests' own checks."""
    url = make_url(async_url)
    driver = {"mysql+aiomysql": "mysql+pymysql", "sqlite+aiosqlite": "sqlite"}[url.drivername]
    return url.set(drivername=driver).render_as_string(hide_password=False)


def _mariadb_answers(async_url: str) -> bool:
    try:
        engine = sa.create_engine(sync_url(async_url))
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except sa.exc.SQLAlchemyError:
        return False
    return True


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass
class Backends:
    database_server_url: str  # the server (MariaDB) or a SQLite file to use as is
    redis_url: str
    description: str

    @property
    def is_sqlite(self) -> bool:
        return self.database_server_url.startswith("sqlite")


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    env = TestEnvironment()
    database = env.database_url
    if database is None and _mariadb_answers(LOCAL_MARIADB):
        database = LOCAL_MARIADB
    if database is None:
        if env.require_services:
            pytest.fail("TEST_REQUIRE_SERVICES is set but no MariaDB answers")
        database = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'ars.db'}"
    redis_url = env.redis_url
    if redis_url is None and _redis_answers(LOCAL_REDIS):
        redis_url = LOCAL_REDIS
    given = contextlib.nullcontext(redis_url) if redis_url else None
    with given or EmbeddedRedis(tmp_path_factory.mktemp("redis")) as url:
        if env.require_services and url != redis_url:
            pytest.fail("TEST_REQUIRE_SERVICES is set but no Redis answers")
        yield Backends(database, url, f"database {make_url(database).drivername}, redis {url}")


def pytest_report_header(config: pytest.Config) -> str:
    env = TestEnvironment()
    return (
        f"ars backends: TEST_DATABASE_URL={env.database_url or '(local MariaDB if it answers, else SQLite)'}"
        f", TEST_REDIS_URL={env.redis_url or '(local Redis if it answers, else embedded)'}"
        f", require_services={env.require_services}"
    )


def fresh_database(server_url: str, tmp: Path) -> tuple[str, Callable[[], None]]:
    """A new empty database on the server (or a new SQLite file) and a function that drops it."""
    url = make_url(server_url)
    if url.get_backend_name() == "sqlite":
        path = tmp / f"ars-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite+aiosqlite:///{path}", lambda: None
    name = f"ars_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(sync_url(server_url))
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))

    def drop() -> None:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()

    return url.set(database=name).render_as_string(hide_password=False), drop


def chain(*steps: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        for step in steps:
            step()

    return run


def database_user(database_url: str, password: str) -> tuple[str, Callable[[], None]]:
    """A MariaDB user with this password, allowed on this database only: the URL to log in as it, and a
    function that drops the user."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        raise ValueError("a database password needs MariaDB")
    user = f"ars_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(sync_url(database_url))
    with admin.begin() as connection:
        connection.execute(
            sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :password"), {"password": password}
        )
        connection.execute(sa.text(f"GRANT ALL ON `{url.database}`.* TO '{user}'@'%'"))

    def drop() -> None:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()

    return url.set(username=user, password=password).render_as_string(hide_password=False), drop


@dataclass
class Stack:
    """An API and a worker, real processes, sharing one database and one queue."""

    base_url: str
    database_url: str
    env: dict[str, str]
    work_dir: Path
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, **kwargs)

    def db(self) -> sa.Engine:
        return sa.create_engine(sync_url(self.database_url))

    def count_jobs(self) -> int:
        engine = self.db()
        with engine.connect() as connection:
            count = int(connection.execute(sa.text("SELECT COUNT(*) FROM job")).scalar_one())
        engine.dispose()
        return count

    def add_worker(self, name: str, **overrides: str) -> subprocess.Popen[bytes]:
        """Another worker process on this stack's queue, with some settings changed."""
        process = start_process(
            WORKER_COMMAND,
            {**self.env, **overrides},
            self.logs / f"{name}.log",
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def api_command(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)]


WORKER_COMMAND = [sys.executable, "-m", "service.cli", "worker"]


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def lone_api(env: dict[str, str], log: Path) -> Iterator[str]:
    """An API process of its own (no worker) with this environment; yields its base URL."""
    port = free_port()
    process = start_process(api_command(port), env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def service_env(database_url: str, redis_url: str, work_dir: Path, **extra: str) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if name != "API_TOKENS"}
    return {
        **inherited,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PLAYBOOKS_DIR": str(TEST_PLAYBOOKS),
        "WORK_DIR": str(work_dir),
        "AUTH_DISABLED": "true",
        "LOG_FORMAT": "json",
        "QUEUE_NAME": f"arq:queue:test-{uuid.uuid4().hex[:8]}",
        "JOB_COMPLETION_WAIT": "5",
        **extra,
    }


StackFactory = Callable[..., Stack]


@pytest.fixture(scope="session")
def start_stack(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    """Starts stacks on demand (each with its own database and queue) and stops them at the end."""
    started: list[tuple[Stack, Callable[[], None]]] = []

    def start(
        *,
        sqlite: bool = False,
        workers: int = 1,
        redis_url: str | None = None,
        database_password: str | None = None,
        **extra: str,
    ) -> Stack:
        """`database_password`: the services log in to the (MariaDB) database as a user of their own, with
        this password in DATABASE_URL, as in production."""
        tmp = tmp_path_factory.mktemp("stack")
        server = f"sqlite+aiosqlite:///{tmp / 'server.db'}" if sqlite else backends.database_server_url
        database_url, drop = fresh_database(server, tmp)
        migrate(Settings(database_url=database_url))
        if database_password is not None:
            database_url, drop_user = database_user(database_url, database_password)
            drop = chain(drop_user, drop)
        work_dir = tmp / "work"
        work_dir.mkdir()
        env = service_env(database_url, redis_url or backends.redis_url, work_dir, **extra)
        port = free_port()
        stack = Stack(f"http://127.0.0.1:{port}", database_url, env, work_dir, tmp)
        started.append((stack, drop))
        api_log = tmp / "api.log"
        api = start_process(
            api_command(port),
            env,
            api_log,
        )
        stack.processes.append(api)
        for index in range(workers):
            stack.add_worker(f"worker{index}")
        wait_http(f"{stack.base_url}/health", api, api_log)
        return stack

    yield start
    for stack, drop in started:
        stack.stop()
        drop()


@pytest.fixture(scope="session")
def stack(start_stack: StackFactory) -> Stack:
    """The shared stack most tests use: test database, Redis, 8 concurrent runs per worker."""
    return start_stack()


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def submit(client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = client.post("/api/v1/jobs", json=body, **kwargs)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_for(
    client: httpx.Client,
    job_id: str,
    statuses: set[str] = FINISHED,
    deadline_s: float = 90,
) -> dict[str, Any]:
    """Poll the job until its status is one of `statuses` (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + deadline_s
    while True:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {deadline_s} s")
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], what: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def all_events(client: httpx.Client, job_id: str, page: int = 100) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        response = client.get(
            f"/api/v1/jobs/{job_id}/events",
            params={"after": len(events) and events[-1]["seq"], "limit": page},
        )
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        if not items:
            return events
        events.extend(items)


def ansible_playbook() -> str:
    found = Path(sys.executable).parent / "ansible-playbook"
    return str(found) if found.exists() else shutil.which("ansible-playbook") or "ansible-playbook"
