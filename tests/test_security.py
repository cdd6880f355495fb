"""Security, shown by attacks that fail: tokens and scopes, refused variables, a run environment without
the service's secrets, masked output, and target credentials (SSH key, vault password) that never leak.

One stack, configured as in production: API tokens, a database user with a password (MariaDB), a Git
provider token and a further secret in the worker's environment, an SSH key and a vault password file.
Its runs are submitted together up front and run concurrently.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.embedded import free_port
from service.live.publish import stream_key
from service.redaction import MASK
from tests.support import (
    ROOT,
    Backends,
    Stack,
    StackFactory,
    all_events,
    submit,
    wait_for,
    wait_until,
)

VAULT_PASSWORD = "vault-password-for-the-tests-only-7f3a9c"  # encrypts `vaulted` in ssh_vault.yml
VAULT_PLAINTEXT = "plaintext-from-the-vault"
# Environment variables of the service that a run must never see.
SERVICE_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "API_TOKENS",
    "SESSION_SECRET",
    "GIT_PROVIDERS",
    "LAB_ACCESS",
    "ARS_SAMPLE_SECRET_TOKEN",
    "VAULT_PASSWORD_FILE",
    "SSH_PRIVATE_KEY_FILE",
)


def new_token(name: str, *scopes: str) -> tuple[str, str]:
    """(token, API_TOKENS entry) from `ars token new`, as an operator makes them."""
    args = [sys.executable, "-m", "service.cli", "token", "new", name]
    for scope in scopes:
        args += ["--scope", scope]
    output = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    first, _, entry = output.strip().splitlines()
    return first.rsplit(" ", 1)[1], entry


@dataclass
class Sshd:
    port: int
    host_key: Path


@dataclass
class SshTargets:
    """Two OpenSSH servers on 127.0.0.1 accepting one test key: the target, and an impostor that answers
    with another host key on an address where `known_hosts` says the target's key is."""

    target: Sshd
    impostor: Sshd
    client_key: Path
    known_hosts: Path


def _start_sshd(
    programs: tuple[str, str], directory: Path, name: str, authorized_keys: Path
) -> tuple[Sshd, subprocess.Popen[bytes]]:
    binary, keygen = programs
    host_key = directory / f"{name}_host_key"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    port = free_port()
    config = directory / f"{name}_sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {directory / name}.pid\nAuthorizedKeysFile {authorized_keys}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = directory / f"{name}.log"
    process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stderr=log.open("wb"))

    def listening() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return True
        except OSError:
            return False

    wait_until(listening, f"sshd {name} to listen", deadline_s=20)
    return Sshd(port, host_key), process


@pytest.fixture(scope="module")
def sshd(
    tmp_path_factory: pytest.TempPathFactory, ssh_server_programs: tuple[str, str]
) -> Iterator[SshTargets]:
    directory = tmp_path_factory.mktemp("sshd")
    client_key = directory / "client_key"
    keygen = ssh_server_programs[1]
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True)
    authorized_keys = directory / "authorized_keys"
    authorized_keys.write_bytes((directory / "client_key.pub").read_bytes())
    target, target_process = _start_sshd(ssh_server_programs, directory, "target", authorized_keys)
    impostor, impostor_process = _start_sshd(ssh_server_programs, directory, "impostor", authorized_keys)
    # What an operator puts in the Secret: the target's public host key, for both addresses.
    public = Path(f"{target.host_key}.pub").read_text().split()[:2]
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(
        "".join(f"[127.0.0.1]:{server.port} {' '.join(public)}\n" for server in (target, impostor))
    )
    yield SshTargets(target, impostor, client_key, known_hosts)
    for process in (target_process, impostor_process):
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Secure:
    stack: Stack
    tokens: dict[str, str]  # name → token
    secrets: list[str]  # every secret value the service was given
    sshd: SshTargets
    targets: Path
    impostor_targets: Path


@pytest.fixture(scope="module")
def secure(
    start_stack: StackFactory, backends: Backends, sshd: SshTargets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secure]:
    files = tmp_path_factory.mktemp("secret")
    (files / "vault-password").write_text(VAULT_PASSWORD)
    tokens, entries = {}, []
    for name, scopes in {
        "reader": ["read"],
        "runner": ["run", "read"],
        "boss": ["admin"],
        "submitter": ["run"],
    }.items():
        tokens[name], entry = new_token(name, *scopes)
        entries.append(entry)
    git_token = f"glpat-{uuid.uuid4().hex}"
    sample = f"sample-secret-{uuid.uuid4().hex}"
    # The API's alone in a cluster; here the worker inherits it too, and must keep it from every run.
    session_key = f"session-key-{uuid.uuid4().hex}"
    database_password = None if backends.is_sqlite else f"db-pass-{uuid.uuid4().hex}"
    stack = start_stack(
        database_password=database_password,
        KEEP_WORK_DIRS="true",
        AUTH_DISABLED="false",
        API_TOKENS=";\n".join(entries),
        SESSION_SECRET=session_key,
        # A name that does not look secret: the value is known to be one because a provider names it.
        GIT_PROVIDERS=json.dumps(
            [{"type": "gitlab", "host": "gitlab.example", "credential_env": "LAB_ACCESS"}]
        ),
        LAB_ACCESS=git_token,
        ARS_SAMPLE_SECRET_TOKEN=sample,
        SSH_PRIVATE_KEY_FILE=str(sshd.client_key),
        VAULT_PASSWORD_FILE=str(files / "vault-password"),
        SSH_KNOWN_HOSTS_FILE=str(sshd.known_hosts),
        EXTRA_VARS_ALLOW='["ansible_python_interpreter"]',
    )
    key_lines = [line for line in sshd.client_key.read_text().splitlines() if "PRIVATE KEY" not in line]
    secrets = [git_token, sample, session_key, VAULT_PASSWORD, *key_lines, *entries, *tokens.values()]
    if database_password:
        secrets.append(database_password)
    yield Secure(
        stack, tokens, secrets, sshd, tmp_path_factory.mktemp("targets"), tmp_path_factory.mktemp("impostor")
    )
    # Its processes (and their database connections) go now; the database goes with the session.
    stack.stop()


@pytest.fixture(scope="module")
def runner(secure: Secure) -> Iterator[httpx.Client]:
    with secure.stack.client(headers={"Authorization": f"Bearer {secure.tokens['runner']}"}) as client:
        yield client


@pytest.fixture(scope="module")
def runs(secure: Secure, runner: httpx.Client) -> dict[str, dict[str, Any]]:
    echoed = [
        s for s in secure.secrets if s.startswith(("glpat-", "sample-secret-", "session-key-", "db-pass-"))
    ]
    requests: dict[str, dict[str, Any]] = {
        "env": {"playbook": "dump_env.yml", "inventory": "inventory/local1.yml"},
        "echo": {
            "playbook": "echo_vars.yml",
            "inventory": "inventory/local1.yml",
            "extra_vars": {"payload": {"secrets": echoed, "vault": VAULT_PASSWORD}},
        },
        "ssh": ssh_run(secure.sshd.target, secure.targets),
        "impostor": ssh_run(secure.sshd.impostor, secure.impostor_targets),
        "environ": {
            "playbook": "read_environ.yml",
            "inventory": "inventory/local1.yml",
            "extra_vars": {"dump": str(secure.targets / "environ.txt")},
        },
    }
    return {name: submit(runner, body) for name, body in requests.items()}


def ssh_run(server: Sshd, target_dir: Path) -> dict[str, Any]:
    host = {"ansible_host": "127.0.0.1", "ansible_port": server.port, "ansible_user": "root"}
    return {
        "playbook": "ssh_vault.yml",
        "inventory": {"all": {"hosts": {"target": host}}},
        "extra_vars": {"target_dir": str(target_dir)},
    }


def run_output(secure: Secure, client: httpx.Client, job_id: str) -> str:
    """What a run printed, for anyone to read: stdout (colours kept), events, the live Redis stream."""
    stdout = client.get(f"/api/v1/jobs/{job_id}/stdout", params={"ansi": "true"}).text
    events = all_events(client, job_id)
    with redis.Redis.from_url(secure.stack.env["REDIS_URL"], decode_responses=True) as live:
        stream = [fields["data"] for _, fields in live.xrange(stream_key(job_id))]
    assert len(stream) == len(events) + 1  # and the end marker
    return "\n".join([stdout, json.dumps(events), *stream])


def assert_no_secret(secure: Secure, text: str) -> None:
    leaked = [secret for secret in secure.secrets if secret in text]
    assert leaked == [], f"leaked: {leaked}"


# --- tokens and scopes -----------------------------------------------------------------------------------


def test_no_token_or_a_wrong_one_is_401(secure: Secure) -> None:
    before = secure.stack.count_jobs()
    body = {"playbook": "debug.yml"}
    with secure.stack.client() as anonymous:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {secure.tokens['boss']}"},
        ):
            for method, path in (
                ("GET", "/api/v1/jobs"),
                ("POST", "/api/v1/jobs"),
                ("GET", "/api/v1/playbooks"),
            ):
                response = anonymous.request(
                    method, path, headers=headers, json=body if method == "POST" else None
                )
                assert response.status_code == 401, (headers, path, response.text)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert response.json()["error"] == "Unauthorized"
    assert secure.stack.count_jobs() == before


def test_missing_scope_is_403(secure: Secure) -> None:
    before = secure.stack.count_jobs()
    with secure.stack.client(headers={"Authorization": f"Bearer {secure.tokens['reader']}"}) as reader:
        assert reader.get("/api/v1/jobs").status_code == 200
        response = reader.post("/api/v1/jobs", json={"playbook": "debug.yml"})
        assert response.status_code == 403
        assert "run" in response.json()["detail"]
        assert reader.post(f"/api/v1/jobs/{uuid.uuid4()}/cancel").status_code == 403
    with secure.stack.client(headers={"Authorization": f"Bearer {secure.tokens['submitter']}"}) as run_only:
        assert run_only.get("/api/v1/jobs").status_code == 403
    assert secure.stack.count_jobs() == before


def test_schedules_are_read_with_read_and_changed_with_run(secure: Secure, runner: httpx.Client) -> None:
    body = {
        "name": f"scoped-{uuid.uuid4().hex[:6]}",
        "cron": "0 3 * * *",
        "enabled": False,
        "job": {"playbook": "debug.yml"},
    }
    with secure.stack.client(headers={"Authorization": f"Bearer {secure.tokens['reader']}"}) as reader:
        assert reader.post("/api/v1/schedules", json=body).status_code == 403
        assert reader.get("/api/v1/schedules").json()["items"] == []
        created = runner.post("/api/v1/schedules", json=body)
        assert created.status_code == 201, created.text
        schedule = created.json()
        assert schedule["created_by"] == "runner"
        path = f"/api/v1/schedules/{schedule['id']}"
        assert reader.get(path).status_code == 200
        assert reader.patch(path, json={"enabled": True}).status_code == 403
        assert reader.delete(path).status_code == 403
    with secure.stack.client(headers={"Authorization": f"Bearer {secure.tokens['submitter']}"}) as run_only:
        assert run_only.get("/api/v1/schedules").status_code == 403
        assert run_only.delete(path).status_code == 204


def test_health_and_ready_are_open(secure: Secure) -> None:
    with secure.stack.client() as anonymous:
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/ready").status_code == 200


def test_job_records_the_token_that_submitted_it(
    secure: Secure, runner: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    assert runs["env"]["submitted_by"] == "runner"
    with secure.stack.client(headers={"Authorization": f"Bearer {secure.tokens['boss']}"}) as boss:
        job = submit(boss, {"playbook": "debug.yml", "inventory": "inventory/local1.yml"})
        assert boss.get(f"/api/v1/jobs/{job['id']}").json()["submitted_by"] == "boss"


def test_idempotency_key_is_scoped_to_the_token(secure: Secure, runner: httpx.Client) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"playbook": "debug.yml", "inventory": "inventory/local1.yml"}
    first = submit(runner, body, headers=key)
    again = runner.post("/api/v1/jobs", json=body, headers=key)
    assert again.json()["id"] == first["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    with secure.stack.client(headers={"Authorization": f"Bearer {secure.tokens['boss']}"}) as boss:
        other = submit(boss, body, headers=key)
    assert other["id"] != first["id"]
    assert other["submitted_by"] == "boss"


def test_token_new_refuses_a_bad_name_or_scope() -> None:
    # ars exits 1 when it cannot do what it is asked, 64 on a wrong command line (see `ars --help`).
    for args, code in ((["bad name", "--scope", "run"], 1), (["ok", "--scope", "root"], 64), (["ok"], 64)):
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "token", "new", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == code, result
        assert result.stdout == ""


# --- variables ---------------------------------------------------------------------------------------------


def test_operator_allowed_variable_is_accepted(secure: Secure, runner: httpx.Client) -> None:
    # EXTRA_VARS_ALLOW names ansible_python_interpreter on this stack; ansible_connection stays refused.
    body: dict[str, Any] = {"playbook": "debug.yml", "inventory": "inventory/local1.yml"}
    job = submit(runner, {**body, "extra_vars": {"ansible_python_interpreter": sys.executable}})
    assert wait_for(runner, job["id"])["status"] == "successful"
    refused = runner.post("/api/v1/jobs", json={**body, "extra_vars": {"ansible_connection": "local"}})
    assert refused.status_code == 422
    assert "extra_vars.ansible_connection" in refused.json()["detail"]


# --- the run's environment, redaction ------------------------------------------------------------------


def test_run_environment_holds_no_service_secret(
    secure: Secure, runner: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    job = wait_for(runner, runs["env"]["id"])
    assert job["status"] == "successful", job
    stdout = runner.get(f"/api/v1/jobs/{job['id']}/stdout").text
    # Both environments were dumped: ansible-playbook's (lookup pipe) and a module's (command).
    assert stdout.count(f"ARS_RUN_ID={job['id']}") >= 2, stdout
    assert "HOME=" in stdout
    for name in SERVICE_VARIABLES:
        assert f"{name}=" not in stdout, name
    assert_no_secret(secure, stdout)
    # ansible-runner's record of the command carries the environment it started ansible-playbook with.
    (work,) = secure.stack.work_dir.glob(f"run-{job['id']}-*")
    command = json.loads((work / "artifacts" / "run" / "command").read_text())
    assert set(command["env"]).isdisjoint(SERVICE_VARIABLES)
    assert_no_secret(secure, json.dumps(command))


def test_secrets_echoed_by_a_task_are_masked_everywhere(
    secure: Secure, runner: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    job = wait_for(runner, runs["echo"]["id"])
    assert job["status"] == "successful", job
    output = run_output(secure, runner, job["id"])
    # Each echoed value is masked in stdout, in the events' stdout and data, and in the stream.
    assert output.count(MASK) >= 4 * 3, output
    assert_no_secret(secure, output)


# --- credentials for target hosts --------------------------------------------------------------------------


def test_ssh_key_and_vault_password_reach_the_run_and_nothing_else(
    secure: Secure, runner: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    job = wait_for(runner, runs["ssh"]["id"])
    assert job["status"] == "successful", (job["reason"], runner.get(f"/api/v1/jobs/{job['id']}/stdout").text)
    assert (secure.targets / "vaulted.txt").read_text() == VAULT_PLAINTEXT
    assert (secure.targets / "ssh_connection.txt").read_text().startswith("127.0.0.1 ")
    assert job["host_stats"]["target"]["changed"] == 2
    assert_no_secret(secure, run_output(secure, runner, job["id"]))
    # The key went to ssh-agent through a FIFO that ansible-runner removes once read.
    (work,) = secure.stack.work_dir.glob(f"run-{job['id']}-*")
    assert not (work / "artifacts" / "run" / "ssh_key_data").exists()
    leftovers = [
        path
        for path in work.rglob("*")
        if path.is_file() and VAULT_PASSWORD in path.read_text(errors="replace")
    ]
    assert leftovers == []


def test_logs_hold_no_secret(secure: Secure, runs: dict[str, dict[str, Any]], runner: httpx.Client) -> None:
    for run in runs.values():
        wait_for(runner, run["id"])
    logs = "".join(path.read_text() for path in secure.stack.logs.glob("*.log"))
    assert "run finished" in logs
    assert_no_secret(secure, logs)


def test_a_target_whose_host_key_is_not_the_known_one_gets_nothing(
    secure: Secure, runner: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    """Host keys are checked against SSH_KNOWN_HOSTS_FILE: whatever else answers on the target's address
    never gets a module, let alone a vault-decrypted value."""
    job = wait_for(runner, runs["impostor"]["id"])
    stdout = runner.get(f"/api/v1/jobs/{job['id']}/stdout").text
    assert not (secure.impostor_targets / "vaulted.txt").exists(), stdout
    assert job["status"] == "failed", (job, stdout)
    assert job["host_stats"]["target"]["unreachable"] == 1
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in stdout or "Host key verification failed" in stdout


def test_no_process_a_run_can_read_holds_a_service_secret(
    secure: Secure, runner: httpx.Client, runs: dict[str, dict[str, Any]]
) -> None:
    """From inside a run: the environment of every process it can read (/proc/<pid>/environ). The API is
    left out: it runs in a pod of its own, which a run cannot see."""
    job = wait_for(runner, runs["environ"]["id"])
    assert job["status"] == "successful", job
    api, worker = (process.pid for process in secure.stack.processes[:2])
    environments: dict[int, str] = {}
    for line in (secure.targets / "environ.txt").read_text().splitlines():
        pid, _, environ = line.partition(" ")
        environments[int(pid)] = environ
    # The run could read the worker's environment: the check below looked where the secrets used to be.
    assert "PATH=" in environments[worker]
    holders = {
        pid: [secret for secret in secure.secrets if secret in environ]
        for pid, environ in environments.items()
        if pid != api
    }
    assert {pid: found for pid, found in holders.items() if found} == {}


def test_the_workers_memory_and_environment_are_private_to_it() -> None:
    """`keep_private()`, called by the worker at startup: a process of the same user (a run) cannot open its
    /proc/<pid> files (memory, open files, environment). Shown on the environment, with processes of
    `nobody` (root, the tests' user, may read anything), beside a process that is not private."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        " from service.runner.environment import keep_private;"
        " assert sys.argv[2] == 'open' or keep_private(); print('ready', flush=True); time.sleep(60)"
    )
    readable: dict[str, bool] = {}
    for mode in ("private", "open"):
        process = subprocess.Popen(
            [*nobody, sys.executable, "-c", code, str(ROOT), mode],
            stdout=subprocess.PIPE,
            text=True,
            env={"PATH": "/usr/bin:/bin", "SAMPLE_SECRET": "sample-value"},
        )
        try:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
            reader = subprocess.run([*nobody, "cat", f"/proc/{process.pid}/environ"], capture_output=True)
            readable[mode] = b"sample-value" in reader.stdout
        finally:
            process.kill()
            process.wait()
    assert readable["open"] is True
    assert readable["private"] is False
