"""Helpers of the test suite (test modules import these, never each other or conftest.py)."""

from __future__ import annotations

from harness.databases import LOCAL_MARIADB, LOCAL_REDIS, Backends, fresh_database, sync_url
from harness.processes import (
    FINISHED,
    ROOT,
    TEST_PLAYBOOKS,
    WORKER_COMMAND,
    Stack,
    StackFactory,
    ansible_playbook,
    api_command,
    lone_api,
    refuses_to_start,
    service_env,
    start_process,
    wait_http,
)
from tests.support.jobs import all_events, event_rows, job_row, sample, submit, wait_for, wait_until

__all__ = [
    "FINISHED",
    "LOCAL_MARIADB",
    "LOCAL_REDIS",
    "ROOT",
    "TEST_PLAYBOOKS",
    "WORKER_COMMAND",
    "Backends",
    "Stack",
    "StackFactory",
    "all_events",
    "ansible_playbook",
    "api_command",
    "event_rows",
    "fresh_database",
    "job_row",
    "lone_api",
    "refuses_to_start",
    "sample",
    "service_env",
    "start_process",
    "submit",
    "sync_url",
    "wait_for",
    "wait_http",
    "wait_until",
]
