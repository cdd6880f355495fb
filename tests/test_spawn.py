"""How a worker starts ansible-playbook (service/runner/spawn.py): on a pty, in a session of its own, with
no controlling terminal and nothing on stdin, and without ptyprocess's sleep on close.

It leans on pexpect and ptyprocess internals (`spawn._spawnpty`, `PtyProcess.delayafterclose`): these tests
fail if an upgrade moves them.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import ansible_runner.runner
import pexpect
import pytest

from service.runner.spawn import VforkSpawn, use_vfork_spawn

# What the child sees: a tty on stdout, /dev/null on stdin, its session, no controlling terminal.
PROBE = """
import os, sys
try:
    os.open("/dev/tty", os.O_RDONLY)
    ctty = "yes"
except OSError:
    ctty = "no"
print(os.isatty(1), os.isatty(0), os.getsid(0) == os.getpid(), os.getpgrp() == os.getpid(), ctty,
      os.get_terminal_size(1).columns, os.getcwd())
"""


@pytest.fixture
def vfork_spawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(ansible_runner.runner, "pexpect", pexpect)  # restored after the test
    use_vfork_spawn(child_umask=0o027)
    yield


@pytest.mark.usefixtures("vfork_spawn")
def test_only_ansible_runner_spawns_by_vfork_with_the_workers_former_umask(tmp_path: Path) -> None:
    assert pexpect.spawn is not VforkSpawn
    child = ansible_runner.runner.pexpect.spawn(
        sys.executable, ["-c", "import os; print(oct(os.umask(0)))"], encoding="utf-8"
    )
    child.expect(pexpect.EOF)
    assert child.before is not None and child.before.strip() == "0o27"
    child.close()


@pytest.mark.usefixtures("vfork_spawn")
def test_ansible_runner_spawns_a_session_on_a_pty_without_a_terminal(tmp_path: Path) -> None:
    # ansible-runner spawns through its module's `pexpect`, as here.
    child = ansible_runner.runner.pexpect.spawn(
        sys.executable, ["-c", PROBE], cwd=str(tmp_path), encoding="utf-8", echo=False
    )
    assert isinstance(child, VforkSpawn)
    child.expect(pexpect.EOF)
    output = child.before
    assert isinstance(output, str)
    while child.isalive():
        child.expect(pexpect.EOF)
    child.close()
    assert output.split() == ["True", "False", "True", "True", "no", "80", str(tmp_path)]
    assert (child.exitstatus, child.signalstatus) == (0, None)
    # The child was reaped before close(): no sleep "to give the kernel time".
    assert child.ptyproc.delayafterclose == 0.0


@pytest.mark.usefixtures("vfork_spawn")
def test_exit_codes_signals_and_a_live_child_on_close() -> None:
    failed = ansible_runner.runner.pexpect.spawn("sh", ["-c", "exit 3"], encoding="utf-8")
    failed.expect(pexpect.EOF)
    assert failed.wait() == 3
    failed.close()
    assert (failed.exitstatus, failed.signalstatus) == (3, None)

    live = ansible_runner.runner.pexpect.spawn("sleep", ["30"], encoding="utf-8")
    assert live.isalive()
    os.kill(live.pid, signal.SIGTERM)
    live.wait()
    assert (live.exitstatus, live.signalstatus) == (None, signal.SIGTERM)

    # Closed while running: ptyprocess keeps its delay and terminates the child, as before.
    running = ansible_runner.runner.pexpect.spawn("sleep", ["30"], encoding="utf-8")
    running.close()
    assert running.ptyproc.delayafterclose == 0.1
    assert not running.isalive() and running.signalstatus is not None


@pytest.mark.usefixtures("vfork_spawn")
def test_a_command_that_cannot_start_is_pexpects_error(tmp_path: Path) -> None:
    script = tmp_path / "not-executable-format"
    script.write_bytes(b"\x7fELF garbage")
    script.chmod(0o755)
    with pytest.raises(pexpect.ExceptionPexpect, match="could not start"):
        ansible_runner.runner.pexpect.spawn(str(script))
