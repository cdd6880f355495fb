"""Which database and Redis faults are waited out (service/faults.py)."""

from __future__ import annotations

import sqlite3

import pymysql
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError, ProgrammingError

from service.faults import Backoff, transient_db, transient_redis


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError("SELECT 1", {}, pymysql.err.OperationalError(2003, "Can't connect")), True),
        (OperationalError("SELECT 1", {}, pymysql.err.OperationalError(2013, "Lost connection")), True),
        (OperationalError("UPDATE", {}, pymysql.err.OperationalError(1213, "Deadlock found")), True),
        (OperationalError("INSERT", {}, pymysql.err.OperationalError(1054, "Unknown column 'play'")), False),
        (DataError("INSERT", {}, pymysql.err.DataError(1406, "Data too long for column")), False),
        (ProgrammingError("SELECT", {}, pymysql.err.ProgrammingError(1146, "Table doesn't exist")), False),
        (IntegrityError("INSERT", {}, pymysql.err.IntegrityError(1062, "Duplicate entry")), False),
        (OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")), True),
        (OperationalError("INSERT", {}, sqlite3.OperationalError("no such column: play")), False),
        (InterfaceError("SELECT", {}, pymysql.err.InterfaceError(0, ""), connection_invalidated=True), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ValueError("a bug"), False),
    ],
)
def test_only_passing_database_faults_are_transient(error: BaseException, transient: bool) -> None:
    assert transient_db(error) is transient


def test_redis_unavailable_is_transient_a_wrong_command_is_not() -> None:
    assert transient_redis(RedisConnectionError("refused"))
    assert not transient_redis(ResponseError("WRONGTYPE"))


def test_backoff_grows_to_its_cap_and_starts_again() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    assert not backoff.waited
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert backoff.waited
    backoff.reset()
    assert backoff.next() == 0.1
