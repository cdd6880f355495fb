"""Schema-driven fuzz of the API (schemathesis: valid and invalid requests generated from the OpenAPI
description, every operation): no request is a server error, and a refused request stores nothing.

schemathesis' pytest plugin does not work with pytest 9, so the operations' Hypothesis strategies are
driven directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok

from tests.support import Stack

# Bounded so the suite stays fast: this many examples per operation and mode (valid, invalid).
EXAMPLES = 50


@pytest.fixture(scope="module")
def database(stack: Stack) -> Iterator[sa.Engine]:
    engine = stack.db()
    yield engine
    engine.dispose()


def count_rows(database: sa.Engine) -> tuple[int, int, int]:
    """Jobs, webhook subscriptions and schedules stored."""
    with database.connect() as connection:

        def count(table: str) -> int:
            return int(connection.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())

        return count("job"), count("webhook"), count("schedule")


@pytest.fixture
def no_subscription_left(stack: Stack) -> Iterator[None]:
    """Subscriptions and schedules the fuzz made would send and start runs in every later test of the shared
    stack: deleted after."""
    yield
    with stack.client() as client:
        for kind in ("webhooks", "schedules"):
            for item in client.get(f"/api/v1/{kind}").json()["items"]:
                assert client.delete(f"/api/v1/{kind}/{item['id']}").status_code == 204


@pytest.mark.parametrize("mode", list(GenerationMode))
@pytest.mark.usefixtures("no_subscription_left")
def test_no_server_error_and_nothing_stored_when_refused(
    stack: Stack, database: sa.Engine, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert any(op.method.upper() == "POST" and op.path == "/api/v1/jobs" for op in operations)
    calls: dict[str, int] = {}

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: Case[Any]) -> None:
            jobs, webhooks, schedules = count_rows(database)
            response = case.call(base_url=stack.base_url, timeout=30)
            where = f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
            assert response.status_code < 500, where
            submitted = case.method == "POST" and case.path == "/api/v1/jobs" and response.status_code == 202
            created = case.method == "POST" and response.status_code == 201
            deleted = case.method == "DELETE" and response.status_code == 204
            expected = [jobs + submitted, webhooks, schedules]
            for index, kind in ((1, "webhooks"), (2, "schedules")):
                if case.path.startswith(f"/api/v1/{kind}"):
                    expected[index] += created - deleted
            assert count_rows(database) == tuple(expected), where
            calls[f"{case.method} {case.path}"] = calls.get(f"{case.method} {case.path}", 0) + 1

        try:
            check()
        except Unsatisfiable:
            # No request breaks this operation's schema (no parameters, or only a string in the path).
            if mode is GenerationMode.POSITIVE:
                raise
    print(f"fuzzed ({mode.value}): {calls}")
    if mode is GenerationMode.POSITIVE:
        assert len(calls) == len(operations), calls
    assert {"POST /api/v1/jobs", "GET /api/v1/jobs", "GET /api/v1/jobs/{job_id}/events"} <= set(calls), calls
