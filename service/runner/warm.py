"""The worker's fork server (forkserver.py): started with the worker, restarted when it dies, stopped with it.

Runs then start from a process that has imported Ansible already (docs/forkserver.md): ansible-runner's
`binary` is the launcher (launcher.py), which hands the run to the fork server, or starts ansible-playbook
itself when the server cannot be reached. `RUN_FORK_SERVER=false` turns all of it off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog
from ansible_runner.config.runner import RunnerConfig

from service.runner import launcher

log = structlog.get_logger(__name__)

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


@dataclass(frozen=True)
class Launch:
    """How one run started, from the launcher's notes."""

    # warm: forked from the fork server; cold: forked, then a fresh ansible-playbook (exec); direct: the
    # launcher found no fork server and exec'd ansible-playbook; off: RUN_FORK_SERVER=false.
    mode: str
    reason: str | None = None
    lost: str | None = None  # the fork server ended during the run

    @classmethod
    def read(cls, path: Path) -> Launch:
        try:
            note = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls("direct", "the launcher left no notes")
        return cls(str(note.get("mode", "direct")), note.get("reason"), note.get("lost"))


class ForkServer:
    """One fork server process of this worker, and the launcher that reaches it."""

    def __init__(self, run_environment: dict[str, str]) -> None:
        """`run_environment`: the variables the worker adds to every run's environment."""
        self.directory = Path(tempfile.mkdtemp(prefix="ars-fork-server-"))
        self.socket = self.directory / "socket"
        self.launcher = self.directory / "ansible-playbook"
        self.launcher.write_text(f"#!{sys.executable} -IS\n" + Path(launcher.__file__).read_text())
        self.launcher.chmod(0o700)
        if not os.access(self.launcher, os.X_OK):  # a temporary directory mounted noexec
            shutil.rmtree(self.directory, ignore_errors=True)
            raise OSError(f"{self.directory.parent} does not allow executing files (the launcher)")
        self.environment = server_environment(run_environment, self.directory)
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "service.runner.forkserver", str(self.socket)],
            env=self.environment,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        log.info("fork server started", pid=self.process.pid)

    def ready(self) -> bool:
        """Whether a run can be handed to it now; restarts a server that died (the next runs then start
        directly until it has imported Ansible again)."""
        with self._lock:
            if self.process is None or self.process.poll() is not None:
                if self.process is not None:
                    log.warning("fork server ended: restarting it", returncode=self.process.returncode)
                self.start()
                return False
            return self.socket.exists()

    def launch_environment(self, notes: Path) -> dict[str, str]:
        """Variables for the launcher (it removes them before they reach Ansible)."""
        return {
            launcher.SERVER: str(self.socket),
            launcher.NOTES: str(notes),
            launcher.EXECUTABLE: str(ANSIBLE_PLAYBOOK),
        }

    def rss_bytes(self) -> int:
        """The fork server's resident memory (0 when it is not running)."""
        if self.process is None or self.process.poll() is not None:
            return 0
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            shutil.rmtree(self.directory, ignore_errors=True)


def server_environment(run_environment: dict[str, str], directory: Path) -> dict[str, str]:
    """The environment of a run as ansible-runner builds it, less what is the run's own: the server
    imports Ansible with it, so that what modules read from it while being imported matches a run's."""
    scratch = directory / "template"
    (scratch / "project").mkdir(parents=True)
    (scratch / "project" / "main.yml").write_text("[]\n")
    config = RunnerConfig(
        private_data_dir=str(scratch),
        playbook="main.yml",
        envvars=run_environment,
        quiet=True,
    )
    config.prepare()
    environment = {name: str(value) for name, value in config.env.items()}
    shutil.rmtree(scratch)
    return environment
