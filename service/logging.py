"""structlog setup: JSON lines in production, coloured console output for people."""

from __future__ import annotations

import logging
import re
import sys

import structlog

from service.config import Settings
from service.redaction import NO_SECRETS, Redactor


def configure_logging(settings: Settings, redactor: Redactor = NO_SECRETS) -> None:
    """Configure once per process. Secret values that reach a log line, exceptions included, are masked."""
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Set on foreign (stdlib) records by JobIdFilter.
        structlog.stdlib.ExtraAdder(allow=["job_id"]),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                lambda _logger, _name, event_dict: redactor.data(event_dict),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # ansible-runner logs every event at DEBUG; uvicorn's access log duplicates our request metrics (and
    # costs a formatted line per request on the hot path of GET /jobs/{id}).
    logging.getLogger("ansible-runner").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class JobIdFilter(logging.Filter):
    """Gives arq's own lines about a run (queued, started, finished) the run's `job_id` field.

    arq logs them outside our task's context, with the job id (= our job id) only in the message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id") and (found := _JOB_ID.search(record.getMessage())):
            record.job_id = found.group(0)
        return True
