"""`ars dev`: the API, a worker and (without REDIS_URL) an embedded Redis on this machine, supervised."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from service.cli.output import say
from service.config import get_settings
from service.db import migrate
from service.embedded import EmbeddedRedis
from service.runner.environment import child_environment


def _stop(processes: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def dev(port: int) -> int:
    """Migrate, start Redis if none is configured, then the API and a worker; Ctrl-C stops everything."""
    settings = get_settings()
    var = Path("var").resolve()
    with contextlib.ExitStack() as stack:
        redis_url = settings.redis_url or stack.enter_context(EmbeddedRedis(var / "redis"))
        migrate(settings)
        env = child_environment(
            {"DATABASE_URL": settings.database_url, "REDIS_URL": redis_url, "AUTH_DISABLED": "true"}
        )
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
        )
        worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env)
        processes = {"API": api, "worker": worker}
        base = f"http://127.0.0.1:{port}"
        say(
            f"\nars dev: the console is at {base}/\n"
            f"API on {base}/api/v1 (docs: {base}/docs), one worker, database {settings.database_url},"
            f" Redis {redis_url}\n"
            "Run a first playbook from the console, or:\n"
            f"  curl -s -X POST {base}/api/v1/jobs -H 'Content-Type: application/json' \\\n"
            '       -d \'{"playbook": "hello.yml", "inventory": "inventory/localhost.yml"}\'\n'
            f"  curl -s {base}/api/v1/jobs            # then GET /api/v1/jobs/<id>/stdout\n"
            "Ctrl-C stops everything.\n"
        )
        stopping = False

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            while not stopping and all(process.poll() is None for process in processes.values()):
                time.sleep(0.2)
        finally:
            say("ars dev: stopping")
            _stop(list(processes.values()), grace_s=settings.job_completion_wait + 10)
        failed = [
            name for name, process in processes.items() if process.returncode not in (0, -signal.SIGTERM)
        ]
        if not stopping and failed:
            say(f"ars dev: {', '.join(map(str, failed))} stopped unexpectedly")
            return 1
    return 0
