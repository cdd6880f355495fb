"""The fork server: a process that has imported what ansible-playbook needs and forks one child per run.

Started by the worker (`python -P -m service.runner.forkserver SOCKET`); it imports only the standard
library and Ansible, never the service, so it holds no setting and no secret. A launcher (launcher.py,
ansible-runner's `binary`) connects to SOCKET and sends argv, environment, working directory, umask and
its terminal's three file descriptors; the server forks, and the child becomes that ansible-playbook:

- session of its own, the launcher's descriptors as 0, 1, 2, its working directory, environment, umask;
- Ansible's configuration read again (`ansible.constants.config` re-initialised in place, every constant
  set again), as a fresh process reads it from that environment and the project's ansible.cfg;
- what modules computed from the configuration or the environment while being imported (a FieldAttribute
  default, a plugin path, a colour, a template setting) cannot be read again in place: the server records
  every setting and variable read during its imports, and a child whose values differ for any of them
  execs a fresh ansible-playbook instead ("cold"), so a project's ansible.cfg is never half applied.

The server answers the launcher with the child's pid and, at its end, its wait status. A launcher that
goes away (killed by a cancel, a timeout or the worker's shutdown) takes its child's whole process tree
with it. The server dies with the worker (PR_SET_PDEATHSIG) and its children with the server.
"""

import atexit
import contextlib
import ctypes
import gc
import importlib
import io
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import types
from pathlib import Path
from typing import Any

# What ansible-playbook imports before it reads its playbook (`python -X importtime`, docs/forkserver.md).
PREIMPORT = (
    "ansible.cli.playbook",
    "ansible.executor.playbook_executor",
    "ansible.executor.task_queue_manager",
    "ansible.plugins.strategy.linear",
    "ansible.plugins.callback.default",
    "ansible.plugins.connection.local",
    "ansible.plugins.action.normal",
    "ansible.plugins.action.debug",
    "ansible.plugins.action.command",
    "ansible.plugins.inventory.ini",
    "ansible.plugins.inventory.yaml",
    "ansible.plugins.vars.host_group_vars",
    "ansible.executor.process.worker",
    "ansible.executor.module_common",
)
HEADER = struct.Struct("!I")
# What the launcher forwards to the child (launcher.py).
FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2}
MAX_REQUEST = 4 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


def log(event: str, **fields: Any) -> None:
    """One JSON line on stderr (the worker's), as the service logs."""
    record = {"event": event, "level": "info", "logger": "fork-server", "pid": os.getpid(), **fields}
    with contextlib.suppress(OSError, ValueError):
        os.write(2, (json.dumps(record, default=str) + "\n").encode())


def die_with_parent(sig: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


class ImportRecord:
    """The settings and environment variables read while the server imported Ansible, with their values."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.environment: dict[str, str | None] = {}

    def differences(self) -> list[str]:
        """What differs in this process now (a child, after its configuration was read again)."""
        import ansible.constants as C  # Ansible's own name for it

        changed = [f"setting {name}" for name, value in self.settings.items() if _setting(C, name) != value]
        changed += [
            f"variable {name}" for name, value in self.environment.items() if os.environ.get(name) != value
        ]
        return changed


def _setting(constants: types.ModuleType, name: str) -> Any:
    if hasattr(constants, name):
        return getattr(constants, name)
    return constants.config.get_config_value_and_origin(name)[0]


def preimport() -> ImportRecord:
    """Import Ansible, recording what its modules read from the configuration and the environment."""
    import ansible.config.manager as manager

    # The settings' definitions (base.yml) are parsed once here rather than once per run.
    read_yaml = manager.ConfigManager._read_config_yaml_file
    parsed: dict[str, Any] = {}

    def read_cached(self: Any, yml_file: str) -> Any:
        if yml_file not in parsed:
            parsed[yml_file] = read_yaml(self, yml_file)
        return _copy(parsed[yml_file])

    manager.ConfigManager._read_config_yaml_file = read_cached

    import ansible.constants as C

    record = ImportRecord()
    definitions = set(C.config.get_configuration_definitions())
    # get_config_value goes through it too.
    get_value_and_origin = C.config.get_config_value_and_origin

    class RecordingConstants(types.ModuleType):
        def __getattribute__(self, name: str) -> Any:
            value = super().__getattribute__(name)
            if name in definitions:
                record.settings[name] = value
            return value

    def recording_get(name: str, *args: Any, **kwargs: Any) -> Any:
        value, origin = get_value_and_origin(name, *args, **kwargs)
        if not args and not any(kwargs.values()):  # a plugin's option, a play's variable: read per run
            record.settings.setdefault(name, value)
        return value, origin

    environ_class = type(os.environ)
    getitem = environ_class.__getitem__

    def recording_getitem(environ: Any, key: str) -> str:
        try:
            value: str = getitem(environ, key)
        except KeyError:
            record.environment.setdefault(key, None)
            raise
        record.environment.setdefault(key, value)
        return value

    C.__class__ = RecordingConstants
    C.config.get_config_value_and_origin = recording_get
    environ_class.__getitem__ = recording_getitem  # type: ignore[method-assign]
    try:
        for name in PREIMPORT:
            importlib.import_module(name)
    finally:
        C.__class__ = types.ModuleType
        del C.config.get_config_value_and_origin
        environ_class.__getitem__ = getitem  # type: ignore[method-assign]
    return record


def _copy(value: Any) -> Any:
    # A copy of the parsed YAML (dicts, lists, scalars) in half of copy.deepcopy's time: once per run.
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def reread_configuration() -> None:
    """Read Ansible's configuration again, in place, from this process's environment and directory."""
    import ansible.constants as C
    import ansible.utils.color
    from ansible.utils.display import Display

    C.config.__init__()  # the same object: modules hold it by name
    namespace = vars(C)
    for name in C.config.get_configuration_definitions():
        C.set_constant(name, C.config.get_config_value(name, variables=namespace), export=namespace)
    # Colour depends on whether stdout is a terminal, which it is only now.
    importlib.reload(ansible.utils.color)
    Display()._set_column_width()


class Request:
    def __init__(self, message: dict[str, Any], fds: list[int]) -> None:
        self.argv: list[str] = [str(arg) for arg in message["argv"]]
        self.environment: dict[str, str] = {str(k): str(v) for k, v in message["env"].items()}
        self.cwd = str(message["cwd"])
        self.umask = int(message["umask"])
        self.fds = fds


def receive(connection: socket.socket) -> Request:
    """The launcher's request: a header with the length of its JSON body and the three descriptors."""
    connection.settimeout(5)
    header, fds, _, _ = socket.recv_fds(connection, HEADER.size, 3)
    try:
        return Request(json.loads(_body(connection, header, fds)), fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _body(connection: socket.socket, header: bytes, fds: list[int]) -> bytes:
    if len(header) != HEADER.size or len(fds) != 3:
        raise ValueError("malformed request")
    (size,) = HEADER.unpack(header)
    if size > MAX_REQUEST:
        raise ValueError(f"request of {size} bytes")
    body = bytearray()
    while len(body) < size:
        chunk = connection.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return bytes(body)


def become_run(request: Request, record: ImportRecord, keep: int, server: int, mask: set[int]) -> None:
    """In the forked child: turn into the requested ansible-playbook. Does not return."""
    _take_over(request, keep, server, mask)
    reason = _cannot_start_warm(request)
    os.environ.clear()
    os.environ.update(request.environment)
    if reason is None:
        reread_configuration()
        changed = record.differences()
        if changed:
            reason = "differs from what was imported: " + ", ".join(sorted(changed))
    _note(keep, mode="cold" if reason else "warm", reason=reason)
    os.close(keep)
    if reason:
        os.execve(request.argv[0], request.argv, request.environment)  # noqa: S606
    sys.argv = request.argv
    # A script's directory comes first on a fresh interpreter's path; PYTHONPATH is the server's already.
    sys.path.insert(0, str(Path(request.argv[0]).parent))
    # As a fresh interpreter sets its stdout on a terminal: line by line, for the live stream.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=stream.isatty())
    os._exit(_playbook())


def _take_over(request: Request, keep: int, server: int, mask: set[int]) -> None:
    """The launcher's session, descriptors, umask and directory; signals as a fresh process has them."""
    os.setsid()
    die_with_parent(signal.SIGKILL)
    if os.getppid() != server:  # the server died before the line above
        os._exit(127)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    gc.enable()
    for target, fd in enumerate(request.fds):
        os.dup2(fd, target)
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)
    os.umask(request.umask)
    os.chdir(request.cwd)


def _playbook() -> int:
    """ansible-playbook's main, ended as a fresh interpreter ends: exit handlers, flushed output, status."""
    code: Any = 0
    try:
        from ansible.cli.playbook import main

        main()
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:  # as an uncaught exception ends a fresh interpreter
        sys.excepthook(*sys.exc_info())
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code is None:
        return 0
    if not isinstance(code, int):
        with contextlib.suppress(Exception):
            print(code, file=sys.stderr, flush=True)
        return 1
    return code


def _cannot_start_warm(request: Request) -> str | None:
    """Why this run cannot start from this process, read before the run's environment replaces ours."""
    # Python reads these when it starts (PYTHONPATH, PYTHONHASHSEED, …); a fork starts nothing.
    python = sorted(
        name
        for name in {*request.environment, *os.environ}
        if name.startswith("PYTHON") and os.environ.get(name) != request.environment.get(name)
    )
    if python:
        return "Python variables differ: " + ", ".join(python)
    if Path(request.argv[0]).name != "ansible-playbook":
        return f"not ansible-playbook: {request.argv[0]}"
    return None


def _note(connection: int, **fields: Any) -> None:
    # To the launcher, which writes it where the worker reads it after the run.
    with contextlib.suppress(OSError):
        os.write(connection, (json.dumps({"note": fields}) + "\n").encode())


def descendants(root: int) -> list[int]:
    """Every process below `root` (Ansible's workers leave its session, not its tree)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def kill_tree(pid: int) -> None:
    for _ in range(2):  # once more: a process forked while the first pass read /proc escaped it
        for target in [*descendants(pid), pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(target, signal.SIGKILL)


class Server:
    def __init__(self, path: str, record: ImportRecord) -> None:
        self.record = record
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(128)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, self.accept)
        self.children: dict[int, tuple[socket.socket, int]] = {}  # pid → (launcher, pidfd)

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                key.data(key.fileobj)

    def accept(self, listener: socket.socket) -> None:
        try:
            connection, _ = listener.accept()
        except OSError as exc:  # out of descriptors: the launcher starts ansible-playbook itself
            log("connection not accepted", error=str(exc))
            return
        try:
            request = receive(connection)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log("request refused", error=str(exc))
            connection.close()
            return
        server = os.getpid()
        # Held until the child has a fresh process's handlers: a signal the launcher forwards at once
        # then does to it what it does to a fresh ansible-playbook.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        pid = os.fork()
        if pid == 0:
            try:
                become_run(request, self.record, connection.fileno(), server, mask)
            except BaseException as exc:  # said on the run's output, whatever it is
                with contextlib.suppress(OSError):
                    os.write(2, f"ars: ansible-playbook could not be started: {exc!r}\n".encode())
            finally:
                os._exit(127)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd in request.fds:
            os.close(fd)
        connection.setblocking(True)
        try:
            connection.sendall((json.dumps({"pid": pid}) + "\n").encode())
        except OSError:
            kill_tree(pid)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (connection, pidfd)
        self.selector.register(connection, selectors.EVENT_READ, lambda _: self.launcher_gone(pid))
        self.selector.register(pidfd, selectors.EVENT_READ, lambda _: self.child_ended(pid))

    def launcher_gone(self, pid: int) -> None:
        # The launcher sends nothing after its request: readable means it closed or died.
        if pid not in self.children:  # ended in the same pass
            return
        connection, _ = self.children[pid]
        try:
            if connection.recv(1, socket.MSG_PEEK):
                return
        except OSError:
            pass
        kill_tree(pid)
        self.selector.unregister(connection)

    def child_ended(self, pid: int) -> None:
        if pid not in self.children:
            return
        connection, pidfd = self.children.pop(pid)
        _, status = os.waitpid(pid, 0)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(connection)
        with contextlib.suppress(OSError):
            connection.sendall((json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n").encode())
        connection.close()

    def stop(self) -> None:
        for pid in list(self.children):
            kill_tree(pid)


def main() -> None:
    path = sys.argv[1]
    die_with_parent(signal.SIGTERM)
    started = time.monotonic()
    # As the gc module advises for fork without exec: no collection leaves holes in the imported pages,
    # and the children's collections leave them alone (frozen), so the pages stay shared.
    gc.disable()
    record = preimport()
    gc.freeze()
    server = Server(path, record)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log(
        "fork server ready",
        imported_in=round(time.monotonic() - started, 3),
        settings_read_at_import=sorted(record.settings),
        variables_read_at_import=sorted(record.environment),
    )
    try:
        server.serve()
    finally:
        server.stop()
        Path(path).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
