"""The worker's process environment: what runs may see, and how the worker starts without secrets.

ansible-runner starts ansible-playbook with the worker's `os.environ` plus its own variables (it cannot be
given a clean one), and the kernel keeps the environment a process was started with in
`/proc/<pid>/environ`, readable by every process of the same user whatever `os.environ` says later. So
`ars worker` starts in two steps:

1. The launcher reads Settings (a configuration error stops it there), keeps in its environment only what
   runs may see (RUN_ENV_BASE, ANSIBLE_* and RUN_ENV_ALLOW), writes everything else to an anonymous
   memory file (memfd: no path, nothing on disk) and execs itself with that environment and the file.
2. The worker reads the file, closes it, and puts the variables into `os.environ`, where Settings reads
   them: what a process adds to its environment later is not in `/proc/<pid>/environ`. It removes them
   again (`scrub_environment`) before any run starts, and checks that its initial environment holds no
   secret (`check_started_clean`), whichever way it was started.
"""

from __future__ import annotations

import ctypes
import fnmatch
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from service.config import Settings
from service.errors import ConfigurationError
from service.redaction import MIN_SECRET_LENGTH

# Names of environment variables whose values are secrets, besides Settings.secret_environment_names.
SECRET_NAME = re.compile(r"(?i)token|secret|passw|credential|private|auth|cookie|_key$|^key$|dsn|_pat$")
# What a run's environment may hold (shell patterns), besides ANSIBLE_* (Ansible's own configuration) and
# RUN_ENV_ALLOW.
RUN_ENV_BASE = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "TERM",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "ANSIBLE_*",
)
# The number of the file descriptor that carries the service's variables from the launcher to the worker.
HANDOFF = "ARS_SERVICE_ENVIRONMENT_FD"
_PR_SET_DUMPABLE = 4


def run_may_see(name: str, settings: Settings) -> bool:
    if name in settings.secret_environment_names:
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in (*RUN_ENV_BASE, *settings.run_env_allow))


def secret_values(environ: Mapping[str, str], settings: Settings) -> list[str]:
    """The values of variables with secret names (or a password in a URL), kept for runs or not."""
    secret_names = set(settings.secret_environment_names)
    return [
        value
        for name, value in environ.items()
        if value and (name in secret_names or SECRET_NAME.search(name) or ("://" in value and "@" in value))
    ]


def exec_clean(settings: Settings, argv: list[str]) -> NoReturn:
    """Become `python <argv>` with only what runs may see in the environment; the rest follows in a memory
    file (see the module docstring)."""
    visible = {name: value for name, value in os.environ.items() if run_may_see(name, settings)}
    service = {name: value for name, value in os.environ.items() if name not in visible}
    handoff = _memory_file(json.dumps(service).encode())
    os.execve(sys.executable, [sys.executable, *argv], {**visible, HANDOFF: str(handoff)})  # noqa: S606


def _memory_file(content: bytes) -> int:
    if hasattr(os, "memfd_create"):
        descriptor = os.memfd_create("ars-service-environment", 0)
    else:  # not Linux: a temporary file, unlinked at once
        descriptor, path = tempfile.mkstemp()
        Path(path).unlink()
    os.write(descriptor, content)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.set_inheritable(descriptor, True)
    return descriptor


def take_handoff() -> bool:
    """In the process `exec_clean` started: move the service's variables into os.environ. False when this
    process was not started that way."""
    descriptor = os.environ.pop(HANDOFF, None)
    if descriptor is None:
        return False
    with os.fdopen(int(descriptor), "rb") as handoff:
        service: dict[str, str] = json.loads(handoff.read())
    os.environ.update(service)
    return True


def check_started_clean(settings: Settings) -> None:
    """ConfigurationError if this process's initial environment, which runs can read, holds a secret."""
    initial = Path(f"/proc/{os.getpid()}/environ")
    if not initial.is_file():
        return  # not Linux: nothing to read it from
    entries = initial.read_bytes().decode(errors="replace").split("\0")
    environ = dict(entry.split("=", 1) for entry in entries if "=" in entry)
    configured = set(settings.secret_values())
    held = [
        name
        for name, value in environ.items()
        if not run_may_see(name, settings)
        and len(value) >= MIN_SECRET_LENGTH
        and (value in configured or secret_values({name: value}, settings))
    ]
    if held:
        raise ConfigurationError(
            f"the worker was started with secrets in its environment ({', '.join(sorted(held))}), which "
            "every run could read in /proc/<pid>/environ: start it with `ars worker`"
        )


def keep_private() -> bool:
    """Make this process non-dumpable (Linux): processes of the same user, runs included, can then neither
    read its memory, where Settings keeps the secrets, nor its /proc/<pid>/environ or open files. Its
    children become dumpable again when they exec. False where the call is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def scrub_environment(settings: Settings) -> list[str]:
    """Remove from os.environ every variable a run may not see; return the secret values among them.

    The worker calls this once at startup, after Settings has read the environment: ansible-runner builds
    ansible-playbook's environment from os.environ, so the worker itself must not hold DATABASE_URL,
    REDIS_URL, API_TOKENS, Git or Galaxy tokens, or anything else from the Secret. Kept: RUN_ENV_BASE,
    ANSIBLE_* and the patterns in RUN_ENV_ALLOW. Afterwards only the cached `get_settings()` holds the
    configuration: a new Settings() would not find it. The values under secret names (or carrying a URL
    password), removed or kept, are returned for redaction.
    """
    secrets = secret_values(os.environ, settings)
    for name in list(os.environ):
        if not run_may_see(name, settings):
            del os.environ[name]
    return secrets


def child_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The environment for a child process of `ars dev`: ours, with the given variables replaced."""
    return {**os.environ, **overrides}
