"""Real services for the suite: MariaDB (or SQLite), Redis, and the API and worker as real processes.

Backends: TEST_DATABASE_URL / TEST_REDIS_URL when set; else the local MariaDB / Redis when they answer;
else SQLite and an embedded Redis. TEST_REQUIRE_SERVICES=true (set by .ci/run) forbids the fallback.
Helpers live in tests/support (and harness/): test modules import them from there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import httpx
import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from harness.databases import (
    LOCAL_MARIADB,
    LOCAL_REDIS,
    Backends,
    chain,
    database_user,
    fresh_database,
    mariadb_answers,
    redis_answers,
)
from harness.processes import (
    Stack,
    StackFactory,
    api_command,
    service_env,
    ssh_programs,
    start_process,
    wait_http,
)
from service.config import Settings
from service.db import migrate
from service.embedded import EmbeddedRedis, free_port

# The browser tests' Chromium: its fixtures, its line in the header, its console checks.
pytest_plugins = ("tests.support.browser",)


class TestEnvironment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEST_", extra="ignore")

    database_url: str | None = None
    redis_url: str | None = None
    require_services: bool = False


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    env = TestEnvironment()
    database = env.database_url
    if database is None and mariadb_answers(LOCAL_MARIADB):
        database = LOCAL_MARIADB
    if database is None:
        if env.require_services:
            pytest.fail("TEST_REQUIRE_SERVICES is set but no MariaDB answers")
        database = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'ars.db'}"
    redis_url = env.redis_url
    if redis_url is None and redis_answers(LOCAL_REDIS):
        redis_url = LOCAL_REDIS
    given = contextlib.nullcontext(redis_url) if redis_url else None
    with given or EmbeddedRedis(tmp_path_factory.mktemp("redis")) as url:
        if env.require_services and url != redis_url:
            pytest.fail("TEST_REQUIRE_SERVICES is set but no Redis answers")
        yield Backends(database, url, f"database {make_url(database).drivername}, redis {url}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    env = TestEnvironment()
    ssh = ssh_programs()
    return [
        f"ars backends: TEST_DATABASE_URL={env.database_url or '(local MariaDB if it answers, else SQLite)'}"
        f", TEST_REDIS_URL={env.redis_url or '(local Redis if it answers, else embedded)'}"
        f", require_services={env.require_services}",
        "ars ssh targets: "
        + (
            f"OpenSSH ({ssh[0]})"
            if ssh
            else "openssh-server is not installed: the SSH tests of tests/test_security.py are skipped"
            " (a failure with TEST_REQUIRE_SERVICES=true, as in CI)"
        ),
    ]


@pytest.fixture(scope="session")
def ssh_server_programs() -> tuple[str, str]:
    """sshd and ssh-keygen; the tests that need them are skipped without them, except in CI."""
    found = ssh_programs()
    if found is None:
        if TestEnvironment().require_services:
            pytest.fail(
                "TEST_REQUIRE_SERVICES is set but openssh-server is not installed (.ci/run installs it)"
            )
        pytest.skip("openssh-server is not installed (see pytest's header)")
    return found


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


@pytest.fixture(scope="module")
def quiet_stack(start_stack: StackFactory) -> Stack:
    """A stack without a worker: its jobs change only when a test changes them."""
    return start_stack(workers=0)
