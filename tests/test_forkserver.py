"""The fork server (service/runner/forkserver.py): a run started from it is the run a fresh ansible-playbook
would have made, and every way a run ends still reaches every process of it.

The differential test drives ansible-runner as the worker does, each playbook twice, once through the
launcher (fork server) and once with ansible-playbook itself, and compares events, stdout and results.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import httpx
import pytest
from ansible.parsing.vault import VaultLib, VaultSecret

from harness.processes import fork_server_of, parent_of
from service.config import Settings
from service.embedded import free_port
from service.runner.execute import RUN_MARKER, ansible_environment, run_processes
from service.runner.warm import ForkServer, Launch
from tests.support import StackFactory, sample, submit, wait_for, wait_until
from tests.test_security import SshTargets, sshd  # noqa: F401  # the fixture, for the SSH case

ROOT = Path(__file__).resolve().parent.parent
VAULT_PASSWORD = "differential-vault-password"
# What differs between two runs of one playbook, whoever starts them.
VOLATILE = {
    "uuid",
    "parent_uuid",
    "playbook_uuid",
    "task_uuid",
    "play_uuid",
    "pid",
    "created",
    "start",
    "end",
    "duration",
    "delta",
    "runner_ident",
    "guid",
    "_original_basename",  # a random temporary name
}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TEMPORARY = re.compile(r"ansible-(tmp|local)-[\w.-]+|tmp\w{8}")
TIMES = re.compile(r"\d+:\d\d:\d\d\.\d+|\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?")


@dataclass
class Case:
    name: str
    playbook: str
    files: dict[str, str] = field(default_factory=dict)  # project files beside the playbook
    cmdline: list[str] = field(default_factory=list)
    inventory: str = f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    expect: str = "warm"  # how the fork server starts it
    ssh: bool = False
    environment: dict[str, str] = field(default_factory=dict)  # added to the run's


TAGGED = """
- hosts: all
  gather_facts: false
  tasks:
    - {debug: {msg: first}, tags: [a]}
    - {debug: {msg: second}, tags: [b]}
    - {debug: {msg: always}, tags: [always]}
    - {debug: {msg: never}, tags: [never, c]}
"""
FILES = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.copy: {content: "new\\n", dest: "{{ playbook_dir }}/out.txt", mode: "0600"}
    - ansible.builtin.command: cat {{ playbook_dir }}/out.txt
      register: cat
      check_mode: false
      failed_when: false
    - ansible.builtin.debug: {var: cat.stdout}
"""
SKIPPY = """
- hosts: all
  gather_facts: false
  tasks:
    - {debug: {msg: shown}}
    - {debug: {msg: hidden}, when: false}
    - {command: "false", ignore_errors: true}
"""


def cases(vaulted: str) -> list[Case]:
    return [
        Case("tags", TAGGED, cmdline=["--tags", "a,c"]),
        Case("skip-tags", TAGGED, cmdline=["--skip-tags", "b"]),
        Case("check-diff", FILES, files={"out.txt": "old\n"}, cmdline=["--check", "--diff"]),
        Case("diff", FILES, files={"out.txt": "old\n"}, cmdline=["--diff"]),
        Case(
            "vault",
            "- hosts: all\n  gather_facts: false\n  vars:\n    secret: !vault |\n"
            + "".join(f"      {line}\n" for line in vaulted.splitlines())
            + "  tasks:\n    - debug: {msg: '{{ secret | length }}'}\n",
            cmdline=["--vault-password-file", "vault-password"],
            files={"vault-password": VAULT_PASSWORD},
        ),
        Case(
            "collections",
            "- hosts: all\n  gather_facts: false\n  roles: [testns.testcol.hello]\n",
        ),
        # Read at run time: warm, and applied.
        Case(
            "project-cfg",
            SKIPPY,
            files={"ansible.cfg": "[defaults]\ndisplay_skipped_hosts = false\nforks = 2\n"},
        ),
        Case(
            "callbacks",
            SKIPPY,
            files={
                "ansible.cfg": "[defaults]\ncallbacks_enabled = ansible.builtin.tree\n"
                "[callback_tree]\ndirectory = tree\n"
            },
        ),
        # Read while Ansible is imported (a play's default strategy): a fresh ansible-playbook, not half.
        Case(
            "import-time-cfg",
            SKIPPY,
            files={"ansible.cfg": "[defaults]\nstrategy = free\ntimeout = 17\n"},
            expect="cold",
        ),
        # What the run's processes see: the same variables (the launcher's own removed), sorted.
        Case("environment", "- hosts: all\n  gather_facts: false\n  tasks:\n    - shell: env | sort\n"),
        # Python reads these as it starts: a run that sets one gets a Python that started with it.
        Case("python-variable", SKIPPY, environment={"PYTHONWARNINGS": "ignore"}, expect="cold"),
        Case("failing", "- hosts: all\n  gather_facts: false\n  tasks:\n    - fail: {msg: no}\n"),
        Case(
            "ssh",
            "- hosts: all\n  gather_facts: false\n  tasks:\n"
            "    - command: echo over ssh\n    - copy: {content: x, dest: '{{ target }}', mode: '0600'}\n",
            ssh=True,
        ),
    ]


@dataclass
class Result:
    rc: int | None
    status: str
    events: list[Any]
    stdout: str
    files: dict[str, str]
    launch: Launch


def normalize(value: Any, directory: str) -> Any:
    if isinstance(value, dict):
        return {key: normalize(item, directory) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [normalize(item, directory) for item in value]
    if isinstance(value, str):
        value = UUID.sub("<uuid>", value.replace(directory, "<dir>"))
        return TEMPORARY.sub("<temporary>", TIMES.sub("<time>", value))
    return value


@pytest.fixture(scope="module")
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer(run_environment(Settings()))
    server.start()
    wait_until(server.ready, "the fork server to listen", deadline_s=60)
    yield server
    server.stop()


def run_environment(settings: Settings) -> dict[str, str]:
    environment = ansible_environment(settings, "")
    del environment[RUN_MARKER]
    return environment


def run_case(case: Case, base: Path, fork_server: ForkServer | None, ssh: SshTargets) -> Result:
    directory = base / f"{case.name}-{'warm' if fork_server else 'fresh'}"
    project = directory / "project"
    project.mkdir(parents=True)
    (project / "site.yml").write_text(case.playbook)
    for name, content in case.files.items():
        (project / name).write_text(content)
    settings = Settings(
        ansible_collections_path=ROOT / "tests" / "collections",
        ssh_known_hosts_file=ssh.known_hosts,
    )
    job_id = str(uuid.uuid4())
    envvars = {**ansible_environment(settings, job_id), **case.environment}
    inventory = case.inventory
    kwargs: dict[str, Any] = {}
    if case.ssh:
        inventory = (
            f"target ansible_host=127.0.0.1 ansible_port={ssh.target.port} ansible_user=root "
            f"ansible_python_interpreter={sys.executable} target={directory / 'target.txt'}\n"
        )
        kwargs["ssh_key"] = ssh.client_key.read_text()
    (directory / "inventory").write_text(inventory)
    cmdline = [shlex.quote(arg) for arg in case.cmdline]
    notes = directory / "launch.json"
    if fork_server is not None:
        kwargs["binary"] = str(fork_server.launcher)
        envvars.update(fork_server.launch_environment(notes))
        cmdline.append("site.yml")  # as run_ansible does: with a binary, ansible-runner leaves it out
    runner = ansible_runner.run(
        private_data_dir=str(directory),
        project_dir=str(project),
        playbook="site.yml",
        inventory=str(directory / "inventory"),
        envvars=envvars,
        cmdline=" ".join(cmdline),
        quiet=True,
        **kwargs,
    )
    # Text printed outside an event joins the event read with it: where the terminal's reads split the
    # output decides, not Ansible. The whole text is compared as stdout; each event without it.
    events = [
        normalize(
            {k: v for k, v in event.items() if k not in ("stdout", "start_line", "end_line", "counter")},
            str(directory),
        )
        for event in runner.events
        if event["event"] != "verbose"
    ]
    stdout = normalize(Path(runner.stdout.name).read_text(), str(directory))
    written = sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and not {"artifacts", "env"} & set(path.relative_to(directory).parts)
    )
    files = {
        str(path.relative_to(directory)): normalize(path.read_text(errors="replace"), str(directory))
        for path in written
        if path.name not in ("launch.json", "inventory")
    }
    launch = Launch.read(notes) if fork_server is not None else Launch("off")
    return Result(runner.rc, str(runner.status), events, stdout, files, launch)


def test_a_run_from_the_fork_server_is_the_run_of_a_fresh_ansible_playbook(
    fork_server: ForkServer,
    sshd: SshTargets,  # noqa: F811
    tmp_path: Path,
) -> None:
    vaulted = VaultLib([("default", VaultSecret(VAULT_PASSWORD.encode()))]).encrypt("sixteen chars ok")
    all_cases = cases(vaulted.decode())
    rss_before = fork_server.rss_bytes()
    # Warm and fresh runs of different projects interleaved on one fork server: what one run's
    # configuration set is never seen by the next.
    with ThreadPoolExecutor(4) as pool:
        warm = pool.map(lambda case: run_case(case, tmp_path, fork_server, sshd), all_cases)
        fresh = pool.map(lambda case: run_case(case, tmp_path, None, sshd), all_cases)
        pairs = list(zip(all_cases, warm, fresh, strict=True))
    for case, started, reference in pairs:
        assert started.launch.mode == case.expect, (case.name, started.launch)
        assert (started.rc, started.status) == (reference.rc, reference.status), case.name
        assert started.stdout == reference.stdout, case.name
        assert len(started.events) == len(reference.events), case.name
        for ours, theirs in zip(started.events, reference.events, strict=True):
            assert json.dumps(ours, indent=1, sort_keys=True) == json.dumps(
                theirs, indent=1, sort_keys=True
            ), case.name
        assert started.files == reference.files, case.name
    by_name = {case.name: started for case, started, _ in pairs}
    out = {case.name: ANSI.sub("", started.stdout) for case, started, _ in pairs}
    files = {case.name: started.files for case, started, _ in pairs}
    # The cases do what they say, so that equal means something.
    assert '"first"' in out["tags"] and '"never"' in out["tags"] and '"second"' not in out["tags"]
    skipped = out["skip-tags"]
    assert '"first"' in skipped and '"second"' not in skipped and '"never"' not in skipped
    assert "-old\n+new" in out["check-diff"] and files["check-diff"]["project/out.txt"] == "old\n"
    assert "-old\n+new" in out["diff"] and files["diff"]["project/out.txt"] == "new\n"
    assert '"msg": 16' in out["vault"]
    assert "bundled collection role ran" in out["collections"]
    assert '"shown"' in out["project-cfg"] and "skipping" not in out["project-cfg"]
    assert "skipping" in out["callbacks"] and "project/tree/localhost" in files["callbacks"]
    assert "DEFAULT_STRATEGY" in (by_name["import-time-cfg"].launch.reason or "")
    assert by_name["python-variable"].launch.reason == "Python variables differ: PYTHONWARNINGS"
    environment = next(
        event["event_data"]["res"]["stdout"]
        for event in by_name["environment"].events
        if event["event"] == "runner_on_ok"
    )
    assert "ANSIBLE_FORCE_COLOR=1" in environment and "ARS_RUN_ID=<uuid>" in environment
    assert "ARS_FORK_SERVER" not in environment and "ARS_LAUNCH" not in environment
    assert by_name["failing"].rc == 2
    assert "Identity added" in out["ssh"] and "changed=2" in out["ssh"] and files["ssh"]["target.txt"] == "x"
    # The server runs nothing itself: its memory does not grow with the runs it starts.
    assert fork_server.rss_bytes() - rss_before < 4 * 1024 * 1024


def test_without_a_reachable_fork_server_the_launcher_starts_ansible_playbook_itself(
    fork_server: ForkServer,
    sshd: SshTargets,  # noqa: F811
    tmp_path: Path,
) -> None:
    unreachable = ForkServer.__new__(ForkServer)
    unreachable.socket = tmp_path / "nobody-listens"
    unreachable.launcher = fork_server.launcher
    case = Case("unreachable", SKIPPY)
    result = run_case(case, tmp_path, unreachable, sshd)
    assert result.rc == 0
    assert result.launch.mode == "direct"
    assert "fork server not reachable" in (result.launch.reason or "")


def test_a_signal_to_the_launcher_reaches_its_child_and_ends_it_alike(
    fork_server: ForkServer, tmp_path: Path
) -> None:
    (tmp_path / "site.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.pause: {seconds: 120}\n"
    )
    environment = {
        **os.environ,
        **fork_server.environment,
        **fork_server.launch_environment(tmp_path / "launch.json"),
    }
    launcher = subprocess.Popen(
        [str(fork_server.launcher), "-i", "localhost,", "-c", "local", "site.yml"],
        env=environment,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert fork_server.process is not None
    server = fork_server.process.pid
    children: list[int] = []

    def forked_all() -> list[int]:
        return processes_with(b"service.runner.forkserver")

    def forked() -> bool:
        children[:] = [pid for pid in forked_all() if parent_of(pid) == server]
        return bool(children)

    wait_until(forked, "the server to fork the run")
    # Playing: its configuration read (the notes say so), and Ansible's worker for the pause forked.
    wait_until(
        lambda: (
            (tmp_path / "launch.json").exists() and any(parent_of(pid) == children[0] for pid in forked_all())
        ),
        "the play to pause",
    )
    launcher.send_signal(signal.SIGTERM)
    # As a fresh ansible-playbook sent SIGTERM ends: by that signal; so does the launcher.
    assert launcher.wait(timeout=30) == -signal.SIGTERM
    wait_until(lambda: children[0] not in processes_with(b"service.runner.forkserver"), "the child to end")


def test_malformed_requests_are_refused_and_the_server_goes_on(
    fork_server: ForkServer,
    sshd: SshTargets,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Only the worker's user may reach the socket; runs are that user, and gain nothing they lack.
    assert fork_server.directory.stat().st_mode & 0o777 == 0o700
    header = struct.Struct("!I")
    # (header, descriptors sent with it, body)
    attempts: list[tuple[bytes, list[int], bytes]] = [
        (b"no descriptors", [], b""),
        (header.pack(2**31), [0, 1, 2], b""),  # too big
        (header.pack(2), [0, 1, 2], b"[]"),  # not an object
        (header.pack(9), [0, 1, 2], b'{"argv"'),  # cut short
        (header.pack(14), [0, 1], b'{"argv": "x"}'),  # two descriptors
    ]
    for first, descriptors, body in attempts:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(fork_server.socket))
            with contextlib.suppress(OSError):  # closed with our bytes unread: reset
                if descriptors:
                    socket.send_fds(client, [first], descriptors)
                else:
                    client.sendall(first)
                client.sendall(body)
                client.shutdown(socket.SHUT_WR)
                assert client.recv(100) == b"", "answered as if a run had started"
    result = run_case(Case("after-garbage", SKIPPY), tmp_path, fork_server, sshd)
    assert (result.rc, result.launch.mode) == (0, "warm")


# --- through the service ---------------------------------------------------------------------------------

LOCAL1 = "inventory/local1.yml"


def processes_with(needle: bytes) -> list[int]:
    """Live processes whose command line holds `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@dataclass
class Server:
    pid: int
    socket: Path

    def forked(self) -> list[int]:
        """Every process it forked, at any depth: they keep its command line, which names its socket."""
        return [pid for pid in processes_with(str(self.socket).encode()) if pid != self.pid]


def listening_fork_server(worker: subprocess.Popen[bytes], not_pid: int = 0) -> Server:
    found: list[Server] = []

    def listening() -> bool:
        server = fork_server_of(worker.pid)
        if server is None or server[0] == not_pid:
            return False
        found[:] = [Server(*server)]
        return server[1].exists()

    wait_until(listening, "the worker's fork server to listen")
    return found[0]


def sleeper(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    marker = tmp_path / f"started-{uuid.uuid4().hex}"
    return {
        "playbook": "sleep.yml",
        "inventory": LOCAL1,
        "extra_vars": {"secs": 300, "marker": str(marker)},
        **extra,
    }


def sleeping(body: dict[str, Any]) -> bool:
    return Path(body["extra_vars"]["marker"]).exists()


def starts(log: Path, job_id: str) -> list[str]:
    return [
        entry["start"]
        for entry in map(json.loads, filter(None, log.read_text().splitlines()))
        if entry.get("job_id") == job_id and entry.get("event") == "ansible-runner returned"
    ]


def test_cancel_and_timeout_end_every_process_of_a_warm_run(
    start_stack: StackFactory, tmp_path: Path
) -> None:
    metrics_port = free_port()
    stack = start_stack(workers=0)
    worker = stack.add_worker("warm", WORKER_METRICS_PORT=str(metrics_port))
    server = listening_fork_server(worker)
    with stack.client() as client:
        canceled_body, timed_body = sleeper(tmp_path), sleeper(tmp_path, timeout=6)
        canceled, timed = submit(client, canceled_body), submit(client, timed_body)
        wait_until(lambda: sleeping(canceled_body) and sleeping(timed_body), "both runs to sleep")
        # Each run's ansible-playbook and Ansible's worker for its sleeping task: forked from the fork
        # server (the module was exec'd). The worker of the task before may have ended just now.
        wait_until(lambda: len(server.forked()) >= 4, "both runs' processes forked from the server")
        assert client.post(f"/api/v1/jobs/{canceled['id']}/cancel").status_code == 202
        assert wait_for(client, canceled["id"])["status"] == "canceled"
        assert wait_for(client, timed["id"])["status"] == "timeout"
        assert server.forked() == []
        for job in (canceled, timed):
            assert run_processes(job["id"]) == []
            assert starts(stack.logs / "warm.log", job["id"]) == ["warm"]
        done = wait_for(client, submit(client, {"playbook": "debug.yml", "inventory": LOCAL1})["id"])
        assert done["status"] == "successful"
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert sample(metrics, "ars_worker_run_starts_total", mode="warm") == 3
    assert sample(metrics, "ars_worker_fork_server_rss_bytes") > 10 * 1024 * 1024
    assert server.pid in processes_with(b"service.runner.forkserver")


def test_sigterm_ends_the_worker_its_fork_server_and_their_runs(
    start_stack: StackFactory, tmp_path: Path
) -> None:
    stack = start_stack(workers=0)
    worker = stack.add_worker("terminated", JOB_COMPLETION_WAIT="1")
    server = listening_fork_server(worker)
    with stack.client() as client:
        body = sleeper(tmp_path)
        job = submit(client, body)
        wait_until(lambda: sleeping(body), "the run to sleep")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "error"
    assert processes_with(str(server.socket).encode()) == []
    assert run_processes(job["id"]) == []


def test_a_fork_server_killed_during_a_run_ends_it_as_error_and_is_started_again(
    start_stack: StackFactory, tmp_path: Path
) -> None:
    stack = start_stack(workers=0)
    worker = stack.add_worker("orphaned")
    server = listening_fork_server(worker)
    with stack.client() as client:
        body = sleeper(tmp_path)
        job = submit(client, body)
        wait_until(lambda: sleeping(body), "the run to sleep")
        os.kill(server.pid, signal.SIGKILL)
        done = wait_for(client, job["id"])
        assert (done["status"], done["reason"]) == ("error", "the fork server ended during the run")
        # What it had forked goes with it: ansible-playbook at once (its parent-death signal), Ansible's
        # worker once its module (which carries the run's marker) is killed.
        wait_until(lambda: server.forked() == [], "the lost run's processes to end", deadline_s=30)
        assert run_processes(job["id"]) == []
        # The next run restarts it; runs start directly until it listens again.
        first = wait_for(client, submit(client, {"playbook": "debug.yml", "inventory": LOCAL1})["id"])
        assert first["status"] == "successful"
        successor = listening_fork_server(worker, not_pid=server.pid)
        again = wait_for(client, submit(client, {"playbook": "debug.yml", "inventory": LOCAL1})["id"])
        assert again["status"] == "successful"
    log = stack.logs / "orphaned.log"
    assert starts(log, again["id"]) == ["warm"]
    assert "fork server ended: restarting it" in log.read_text()
    assert successor.pid != server.pid


def test_run_fork_server_false_starts_each_run_directly(start_stack: StackFactory) -> None:
    stack = start_stack(workers=0)
    worker = stack.add_worker("cold", RUN_FORK_SERVER="false")
    with stack.client() as client:
        done = wait_for(client, submit(client, {"playbook": "debug.yml", "inventory": LOCAL1})["id"])
    assert done["status"] == "successful"
    assert starts(stack.logs / "cold.log", done["id"]) == ["off"]
    assert fork_server_of(worker.pid) is None
