"""`python -I -m service.runner.list_hosts [--fork]`: the inventory names of the hosts an inventory and a
limit select, as ansible-playbook selects them, with Ansible's own code (InventoryManager, then `subset`).

Each line of standard input is a request, JSON `{"inventory": path or null, "limit": pattern or null}`;
each is answered by a line on standard output, `{"hosts": [...]}` or `{"error": "..."}`. It runs as a child
process with a run's environment: inventory plugins are code, and Ansible reads its configuration (from the
environment and the working directory's ansible.cfg) once, at import. With `--fork` each request is
answered by a fork of this process, which imported Ansible once: a request costs a fork and the parsing of
the inventory, not Python and Ansible starting, and none sees what another left behind.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any


def _hosts(request: dict[str, Any]) -> list[str]:
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    sources = [request["inventory"]] if request["inventory"] else None
    inventory = InventoryManager(DataLoader(), sources=sources)
    if request["limit"]:
        inventory.subset(request["limit"])
    # Without an inventory ansible-playbook targets the implicit localhost, which `all` leaves out.
    pattern = "all" if sources else "localhost"
    return sorted({host.name for host in inventory.get_hosts(pattern)})


def _answer(line: bytes) -> bytes:
    try:
        answer: dict[str, Any] = {"hosts": _hosts(json.loads(line))}
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    return json.dumps(answer).encode() + b"\n"


def main() -> None:
    fork = "--fork" in sys.argv[1:]
    if fork:
        # Imported once, before the forks: what makes each request cheap.
        for module in ("ansible.inventory.manager", "ansible.parsing.dataloader"):
            importlib.import_module(module)
    for line in sys.stdin.buffer:
        if not fork:
            os.write(1, _answer(line))
            continue
        pid = os.fork()
        if pid == 0:
            os.write(1, _answer(line))
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            os.write(1, json.dumps({"error": f"the resolver ended with status {status}"}).encode() + b"\n")


if __name__ == "__main__":
    main()
