"""Which hosts a run targets, as Ansible itself says: the worker's one-shot child and the API's warm
resolver give the same answers, and the warm resolver survives its own death and a hanging inventory."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings
from service.runner.targets import TargetResolver, TargetsError, resolve_targets

PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
CASES = [
    ("inventory/local3.yml", None, ["h1", "h2", "h3"]),
    ("inventory/groups.yml", "web:&prod", ["h1"]),
    ("inventory/groups.yml", "all:!h3", ["h1", "h2"]),
    ("inventory/local3.yml", "all[0:1]", ["h1", "h2"]),
    ("inventory/local3.yml", "~h[23]", ["h2", "h3"]),
    ("inventory/groups.yml", "prod,web", ["h1", "h2", "h3"]),
    ("inventory/local3.yml", "nope", []),
    ("inventory", "h2", ["h2"]),
    (None, None, ["localhost"]),
    (None, "localhost", ["localhost"]),
    (None, "web", []),
]


@pytest.fixture
def resolver() -> Iterator[TargetResolver]:
    resolver = TargetResolver(Settings(playbooks_dir=PLAYBOOKS, targets_timeout=2))
    yield resolver
    resolver.close()


@pytest.mark.parametrize(("inventory", "limit", "hosts"), CASES)
def test_the_warm_resolver_and_a_fresh_child_agree_with_ansible(
    resolver: TargetResolver, inventory: str | None, limit: str | None, hosts: list[str]
) -> None:
    path = None if inventory is None else str(PLAYBOOKS / inventory)
    settings = Settings(playbooks_dir=PLAYBOOKS)
    assert resolve_targets(settings, "job", inventory=path, limit=limit, cwd=PLAYBOOKS) == hosts
    assert resolver.resolve(path, limit) == hosts


def test_a_killed_resolver_is_started_again(resolver: TargetResolver) -> None:
    inventory = str(PLAYBOOKS / "inventory/local3.yml")
    assert resolver.resolve(inventory, "h1") == ["h1"]
    process = resolver._process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert resolver.resolve(inventory, "h2") == ["h2"]
    assert resolver._process is not None and resolver._process.pid != process.pid


def test_a_hanging_inventory_times_out_and_the_resolver_recovers(
    resolver: TargetResolver, tmp_path: Path
) -> None:
    # Reading a FIFO with no writer blocks: as an inventory on a stalled network file system would.
    fifo = tmp_path / "hosts.yml"
    os.mkfifo(fifo)
    with pytest.raises(TargetsError, match="more than 2 s"):
        resolver.resolve(str(fifo), None)
    assert resolver.resolve(str(PLAYBOOKS / "inventory/local3.yml"), "h3") == ["h3"]
