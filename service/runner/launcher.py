"""ansible-runner's `binary` when the fork server is on: ansible-playbook, started by the fork server.

The worker writes this file with a `#!<python> -IS` line (no site, no environment: it starts in tens of
milliseconds) and hands its path to ansible-runner, which starts it as it would start ansible-playbook,
on the run's terminal. It sends the fork server (forkserver.py) its argv, environment, working directory,
umask and terminal, then stands for the child: signals it receives go to the child's process group, and it
ends as the child ended. It imports the standard library only.

When the fork server cannot be reached, it becomes ansible-playbook itself (exec, today's path). What
happened (warm, cold and why, direct and why, the server lost) is written as JSON to ARS_LAUNCH_NOTES for
the worker to log; a fork server that ends during the run ends the run with exit status 125.
"""

import contextlib
import json
import os
import signal
import socket
import struct
import sys

SERVER_LOST = 125
SERVER = "ARS_FORK_SERVER"
NOTES = "ARS_LAUNCH_NOTES"
EXECUTABLE = "ARS_ANSIBLE_PLAYBOOK"


def main() -> None:
    environment = dict(os.environ)
    server = environment.pop(SERVER, "")
    notes = environment.pop(NOTES, "")
    executable = environment.pop(EXECUTABLE)
    argv = [executable, *sys.argv[1:]]
    umask = os.umask(0)
    os.umask(umask)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(server)
        body = json.dumps(
            {
                "argv": argv,
                "env": environment,
                "cwd": os.getcwd(),  # noqa: PTH109  # pathlib costs the launcher its import
                "umask": umask,
            }
        ).encode()
        socket.send_fds(connection, [struct.pack("!I", len(body))], [0, 1, 2])
        connection.sendall(body)
    except OSError as exc:
        connection.close()
        write_notes(notes, {"mode": "direct", "reason": f"fork server not reachable: {exc}"})
        os.execve(executable, argv, environment)  # noqa: S606
    stand_for_child(connection, notes)


def stand_for_child(connection: socket.socket, notes: str) -> None:
    child = 0
    pending: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if child:
            try:
                os.killpg(child, signum)
            except ProcessLookupError:  # before its setsid: the child alone, the server holds it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signum)
        else:
            pending.append(signum)

    for signum in (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
    ):
        signal.signal(signum, forward)
    note: dict[str, object] = {}
    reader = connection.makefile("r", encoding="utf-8")
    for line in reader:
        message = json.loads(line)
        if "pid" in message:
            child = int(message["pid"])
            for waiting in pending:
                forward(waiting, None)
        elif "note" in message:
            note = dict(message["note"])
            write_notes(notes, note)
        elif "status" in message:
            end_as(int(message["status"]))
    note["lost"] = "the fork server ended during the run"
    write_notes(notes, note)
    sys.stderr.write("ars: the fork server ended during the run\n")
    sys.stderr.flush()
    os._exit(SERVER_LOST)


def end_as(status: int) -> None:
    if status >= 0:
        os._exit(status)
    # Killed by a signal: so is the launcher, so that ansible-runner sees what a fresh process would show.
    signum = signal.Signals(-status)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 - status)


def write_notes(path: str, note: dict[str, object]) -> None:
    if not path:
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(note, file)
    except OSError:
        pass


if __name__ == "__main__":
    main()
