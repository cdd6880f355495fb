"""Cost of the security checks on hot paths: `python -m bench.redaction` prints figures.

- masking secrets in every event (EventRecorder → to_row), with none and with a realistic set configured;
- the JSON depth scan of request bodies, on a typical body and on the worst 1 MiB.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from service.api.limits import json_depth
from service.redaction import NO_SECRETS, Redactor
from service.runner.events import to_row


def _event(counter: int) -> dict[str, Any]:
    """A runner_on_ok event shaped like ansible-runner's, with a module result."""
    result = {
        "changed": False,
        "msg": "All items completed " * 5,
        "stdout_lines": [f"line {n} of the module's output" for n in range(20)],
        "invocation": {"module_args": {"path": "/etc/hosts", "state": "file", "mode": "0644"}},
    }
    return {
        "uuid": secrets.token_hex(16),
        "counter": counter,
        "stdout": "\x1b[0;32mok: [web-01] => " + json.dumps(result)[:400] + "\x1b[0m",
        "start_line": counter,
        "end_line": counter + 1,
        "runner_ident": "run",
        "event": "runner_on_ok",
        "created": "2026-11-26T04:00:00.000000+00:00",
        "event_data": {
            "playbook": "site.yml",
            "play": "Configure web servers",
            "task": "Ensure the hosts file",
            "task_action": "ansible.builtin.file",
            "host": "web-01",
            "remote_addr": "10.0.0.1",
            "res": result,
            "duration": 0.12,
            "uuid": secrets.token_hex(16),
        },
    }


def _per_call(function: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def main() -> None:
    events = [_event(n) for n in range(1, 1001)]
    configured = Redactor(
        [
            "mysql+aiomysql://ars:" + secrets.token_urlsafe(24) + "@db:3306/ars",
            *(secrets.token_hex(32) for _ in range(10)),
            *(secrets.token_urlsafe(48) for _ in range(6)),  # SSH key lines, vault password, git tokens
        ]
    )
    for label, redactor in (("no secrets configured", NO_SECRETS), ("17 secrets configured", configured)):

        def rows(redactor: Redactor = redactor) -> list[dict[str, Any]]:
            return [to_row("job", event, redactor) for event in events]

        seconds = _per_call(rows, 20) / len(events)
        print(f"to_row, {label}: {seconds * 1e6:.1f} µs per event ({1 / seconds:,.0f} events/s on one core)")

    typical = json.dumps(
        {"playbook": "site.yml", "inventory": "inventory/prod.yml", "extra_vars": {"a": {"b": [1, 2, 3]}}}
    ).encode()
    worst_cases = {
        "1 MiB of '[]'": b"[]" * (512 * 1024),
        "1 MiB of escaped quotes": b'"' + b'\\"' * (512 * 1024 - 1),
        "1 MiB JSON of strings": json.dumps({"x": ["y" * 100] * 10_000})[: 1024 * 1024].encode(),
    }
    typical_s = _per_call(lambda: json_depth(typical), 10_000)
    print(f"json_depth, typical body ({len(typical)} B): {typical_s * 1e6:.1f} µs")
    for label, body in worst_cases.items():

        def scan(body: bytes = body) -> int:
            return json_depth(body)

        print(f"json_depth, {label}: {_per_call(scan, 5) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
