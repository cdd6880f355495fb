"""Databases and Redis for tests and benchmarks: the local servers when they answer, fresh databases."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

LOCAL_MARIADB = "mysql+aiomysql://root@127.0.0.1:3306/test"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@dataclass
class Backends:
    database_server_url: str  # the server (MariaDB) or a SQLite file to use as is
    redis_url: str
    description: str

    @property
    def is_sqlite(self) -> bool:
        return self.database_server_url.startswith("sqlite")


def sync_url(async_url: str) -> str:
    """The same database through a blocking driver, for the tests' own checks."""
    url = make_url(async_url)
    driver = {"mysql+aiomysql": "mysql+pymysql", "sqlite+aiosqlite": "sqlite"}[url.drivername]
    return url.set(drivername=driver).render_as_string(hide_password=False)


def mariadb_answers(async_url: str) -> bool:
    try:
        engine = sa.create_engine(sync_url(async_url))
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except sa.exc.SQLAlchemyError:
        return False
    return True


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


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
