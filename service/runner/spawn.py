"""How ansible-runner starts ansible-playbook in a worker: on a pty, by vfork rather than fork.

ansible-runner starts ansible-playbook through pexpect, whose ptyprocess forks the worker: forking a large
process copies its page tables and then makes the worker pay copy-on-write faults, on every run.
`subprocess` starts the child with vfork, which copies nothing (decision 0004, bench/README.md).

ansible-playbook writes to a pty (it prints as on a terminal, and ansible-runner reads it with pexpect) and
leads a session and process group of its own. Its stdin is /dev/null and the pty is not its controlling
terminal, on purpose. Nobody types into a run of this service: a prompt, or `pause`
without a duration, ends at once as non-interactive instead of waiting for the run's timeout. And a worker
that dies hangs up nothing: ansible-runner's `ignore_sighup` (a preexec function, which vfork rules out) has
no signal left to ignore.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import termios
from typing import TYPE_CHECKING, Any

import ansible_runner.runner
import pexpect
import ptyprocess

if TYPE_CHECKING:
    _PexpectSpawn = pexpect.spawn[str]
else:
    _PexpectSpawn = pexpect.spawn


class _VforkedPty(ptyprocess.PtyProcess):  # type: ignore[misc]  # ptyprocess is untyped
    """A PtyProcess whose child is owned by a `subprocess.Popen`: only Popen waits for it.

    ptyprocess would call waitpid itself; two owners race, and the loser fails with ECHILD.
    """

    # Set by PtyProcess.__init__; declared for the type checker.
    terminated: bool
    exitstatus: int | None
    signalstatus: int | None
    status: int | None
    delayafterclose: float

    def __init__(self, process: subprocess.Popen[bytes], fd: int) -> None:
        super().__init__(process.pid, fd)
        self.process = process

    def isalive(self) -> bool:
        if self.terminated:
            return False
        code = self.process.poll()
        if code is None:
            return True
        # What ptyprocess records from a wait status (pexpect copies these onto the spawn).
        self.exitstatus = code if code >= 0 else None
        self.signalstatus = -code if code < 0 else None
        self.status = code << 8 if code >= 0 else -code
        self.terminated = True
        return False

    def wait(self) -> int | None:
        self.process.wait()
        self.isalive()
        return self.exitstatus

    def close(self, force: bool = True) -> None:
        # ptyprocess sleeps 0.1 s after closing "to give the kernel time to update process status" of a
        # child it then hangs up on. ansible-runner closes only once its loop saw the child exit: the sleep
        # waited for nothing, a tenth of a second on every run.
        if not self.isalive():
            self.delayafterclose = 0.0
        super().close(force)


class VforkSpawn(_PexpectSpawn):
    """pexpect.spawn with the child started as described in this module's docstring."""

    ptyproc: _VforkedPty  # set by pexpect.spawn._spawn from _spawnpty
    # The umask ansible-playbook runs with: the worker's own, before it made its files private.
    child_umask = -1

    def _spawnpty(self, args: list[bytes], **kwargs: Any) -> _VforkedPty:
        # pexpect found the command on PATH already; ignore_sighup's preexec_fn is dropped (see above).
        rows, cols = kwargs.get("dimensions") or (24, 80)
        master, slave = os.openpty()
        try:
            attributes = termios.tcgetattr(slave)
            attributes[3] &= ~termios.ECHO  # lflag: as ptyprocess with echo=False
            termios.tcsetattr(slave, termios.TCSANOW, attributes)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=slave,
                stderr=slave,
                cwd=kwargs.get("cwd"),
                env=kwargs.get("env"),
                start_new_session=True,
                umask=self.child_umask,
            )
        except OSError as exc:
            os.close(master)
            raise pexpect.ExceptionPexpect(f"could not start {args[0]!r}: {exc}") from exc
        finally:
            # The child holds the only other end: the master reads EOF once every process of the run let go.
            os.close(slave)
        return _VforkedPty(process, master)


class _PexpectForAnsibleRunner:
    """The `pexpect` module as ansible-runner's runner sees it: `spawn` is VforkSpawn, the rest pexpect's."""

    spawn = VforkSpawn

    def __getattr__(self, name: str) -> Any:
        return getattr(pexpect, name)


def use_vfork_spawn(child_umask: int) -> None:
    """Make ansible-runner start ansible-playbook as a VforkSpawn with this umask (the worker calls it once
    at start). Only ansible-runner's runner module sees the change, not pexpect for everyone."""
    VforkSpawn.child_umask = child_umask
    # ansible_runner.runner calls `pexpect.spawn(...)` through the module it imported.
    ansible_runner.runner.pexpect = _PexpectForAnsibleRunner()
