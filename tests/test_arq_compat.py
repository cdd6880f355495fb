"""arq's internals that service/arq_compat.py relies on are still there, as they were in the version it was
written against: an arq upgrade that changes them fails here, before it changes how runs are queued."""

from __future__ import annotations

import inspect

import arq.version
from arq import constants
from arq.jobs import serialize_job
from arq.worker import Worker

from service import arq_compat


def test_arq_is_the_version_the_overrides_were_written_against() -> None:
    assert arq.version.VERSION == arq_compat.ARQ_VERSION


def test_the_key_prefixes_and_the_job_record_are_arqs() -> None:
    assert (constants.job_key_prefix, constants.result_key_prefix) == ("arq:job:", "arq:result:")
    assert (constants.in_progress_key_prefix, constants.retry_key_prefix) == (
        "arq:in-progress:",
        "arq:retry:",
    )
    assert list(inspect.signature(serialize_job).parameters) == [
        "function_name",
        "args",
        "kwargs",
        "job_try",
        "enqueue_time_ms",
        "serializer",
    ]


def test_the_overridden_worker_methods_exist_with_their_signatures() -> None:
    for name in ("_poll_iteration", "_release_sem_dec_counter_on_complete"):
        ours = getattr(arq_compat.WokenWorker, name)
        theirs = getattr(Worker, name)
        assert inspect.signature(ours).parameters.keys() == inspect.signature(theirs).parameters.keys(), name
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), name
