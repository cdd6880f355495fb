"""Doing things to a running stack's processes that a test needs to survive."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit

from harness.processes import Stack, api_command, start_process, wait_http


def restart_api(stack: Stack) -> None:
    """Kill the stack's API process, as a crash or an OOM kill would, and start a new one on the same port.

    The workers go on running; what clients of the old process held open (streams) is cut mid-response."""
    api = stack.processes[0]  # start_stack starts the API first, then the workers
    api.kill()
    api.wait()
    port = urlsplit(stack.base_url).port
    assert port is not None
    log = stack.logs / "api.log"
    process = start_process(api_command(port), stack.env, log)
    stack.processes[0] = process
    wait_http(f"{stack.base_url}/health", process, log)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process the test started (a worker), then wait for it to exit."""
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=60)
