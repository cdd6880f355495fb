"""Writes progress-style output (lines ended by a carriage return) to the run's terminal, outside any
event. It is written from Ansible's main process: a task's worker process writes to /dev/null.

ansible-runner keeps such text until the next event's marker, then hands over one `verbose` event per
line, reusing one dict for all of them (see service/runner/execute.py)."""

import os
from typing import Any

from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):  # type: ignore[misc]
    def run(self, terms: list[str], variables: Any = None, **kwargs: Any) -> list[int]:
        os.write(1, "\r".join(terms).encode())
        return [len(terms)]
