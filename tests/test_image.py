"""The container image, built and run for real (podman; no Docker engine runs here): the migration, API and
worker containers start with the commands and environment of the rendered dev manifests, under the pods'
security settings, against the local MariaDB and Redis; a bundled playbook runs to success.

Selected with `pytest -m image` (`make test-image`; `.ci/run` runs it). Needs podman, runc, debootstrap.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.embedded import free_port
from tests.support import Backends, fresh_database, submit, wait_for
from tests.support.manifests import ROOT, Obj, Rendering, only_container, pod_containers, pod_spec, render

pytestmark = pytest.mark.image

IMAGE = "localhost/ansible-runner-service:test"
# The dev overlay's run token (API_TOKENS, in the API's own Secret, holds only its sha256; checked below).
DEV_RUN_TOKEN = "dev-only-run-token-not-a-secret"


def _secret_files(rendering: Rendering, secret: Obj) -> dict[str, tuple[str, int]]:
    """The files the kubelet writes for a secret volume, by path: content and mode. Every key, or only the
    listed items; an optional Secret that does not exist gives an empty directory, and an optional one skips
    a listed key it lacks (a Secret that is not optional must have them, or the pod does not start)."""
    optional = secret.get("optional", False)
    if secret["secretName"] not in {s["metadata"]["name"] for s in rendering.all("Secret")}:
        assert optional, f"the pod needs Secret {secret['secretName']}, which the rendering lacks"
        return {}
    data = rendering.data("Secret", secret["secretName"])
    items = secret.get("items") or [{"key": key, "path": key} for key in data]
    files = {}
    for item in items:
        if item["key"] not in data:
            assert optional, f"Secret {secret['secretName']} lacks {item['key']}"
            continue
        files[item["path"]] = (data[item["key"]], item.get("mode", secret.get("defaultMode", 0o644)))
    return files


def _podman_run_flags(rendering: Rendering, pod: Obj, container: Obj) -> list[str]:
    """What Kubernetes would enforce for this pod, as podman flags."""
    security = pod_spec(pod)["securityContext"]
    context = container["securityContext"]
    flags = [f"--user={security['runAsUser']}:{security['runAsGroup']}"]
    if context["readOnlyRootFilesystem"]:
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if not context["allowPrivilegeEscalation"]:
        flags += ["--security-opt=no-new-privileges"]
    flags += [f"--cap-drop={cap}" for cap in context["capabilities"]["drop"]]
    volumes = {volume["name"]: volume for volume in pod_spec(pod)["volumes"]}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            # An emptyDir starts empty and writable: no copy of what the image holds at that path.
            flags += [f"--tmpfs={mount['mountPath']}:rw,exec,mode=1777,notmpcopyup"]
            continue
        # A Secret: its files as the kubelet projects them, read-only. They cannot get the pod's fsGroup
        # here, so everyone may read them; an execute bit the manifest gives stays.
        files = Path(tempfile.mkdtemp(prefix="secret-"))
        for path, (value, mode) in _secret_files(rendering, volume["secret"]).items():
            (files / path).parent.mkdir(parents=True, exist_ok=True)
            (files / path).write_text(value)
            (files / path).chmod(0o444 | (mode & 0o111))
        files.chmod(0o755)
        flags += [f"--volume={files}:{mount['mountPath']}:ro"]
    # This sandbox: crun cannot run here (cgroups in hybrid mode), runc can; podman's default ulimits are
    # above what this process may set, so the pod gets ours. Host network: no pod network exists here.
    soft_files, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft_procs, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    flags += [
        "--network=host",
        f"--ulimit=nofile={soft_files}:{soft_files}",
        f"--ulimit=nproc={min(soft_procs, 4096)}:{min(soft_procs, 4096)}",
    ]
    if shutil.which("runc"):
        flags += ["--runtime=runc"]
    return flags


def _run_args(
    rendering: Rendering,
    kind: str,
    name: str,
    overrides: dict[str, str],
    command: list[str] | None = None,
    container_name: str | None = None,
) -> list[str]:
    """`podman run` arguments for the pod's only container, or for the one named (an init container)."""
    pod = rendering.get(kind, name)
    if container_name is None:
        container = only_container(pod)
    else:
        (container,) = [c for c in pod_containers(pod) if c["name"] == container_name]
    env = {**rendering.container_env(container), **overrides}
    args = [*_podman_run_flags(rendering, pod, container)]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return [*args, IMAGE, *(command or container["command"])]


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=False, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    for script in ("base-image.sh", "build-image.sh"):
        start = time.monotonic()
        result = subprocess.run(
            [str(ROOT / "scripts" / script), IMAGE], capture_output=True, text=True, check=False, timeout=1800
        )
        assert result.returncode == 0, f"{script}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        last_line = (result.stdout + result.stderr).strip().splitlines()[-1]
        print(f"\n{script}: {time.monotonic() - start:.0f} s; {last_line}")
    return IMAGE


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        _podman("rm", "--force", "--time=5", name)


def _logs(name: str) -> str:
    result = _podman("logs", name)
    return (result.stdout + result.stderr)[-3000:]


def _wait_ready(url: str, container: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        state = _podman("inspect", "--format", "{{.State.Running}}", container).stdout.strip()
        assert state == "true", f"{container} stopped:\n{_logs(container)}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready:\n{_logs(container)}")


def test_image_runs_migration_api_and_worker_from_the_manifests(
    image: str, containers: list[str], backends: Backends, tmp_path: Path
) -> None:
    if backends.is_sqlite:
        pytest.fail("the image test needs the MariaDB server (TEST_DATABASE_URL or 127.0.0.1:3306)")
    rendering = render("dev")
    database_url, drop = fresh_database(backends.database_server_url, tmp_path)
    try:
        # Only where the services are differs from the dev cluster: the local MariaDB and Redis, and a queue
        # of this test's own.
        overrides = {
            "DATABASE_URL": database_url,
            "REDIS_URL": backends.redis_url,
            "QUEUE_NAME": f"arq:queue:image-{uuid.uuid4().hex[:8]}",
        }
        # The migration pod's init containers first, as the kubelet runs them: the wait for the database.
        for init in pod_spec(rendering.get("Job", "ansible-runner-migrate")).get("initContainers", []):
            run_args = _run_args(
                rendering, "Job", "ansible-runner-migrate", overrides, container_name=init["name"]
            )
            waited = _podman("run", "--rm", *run_args, timeout=300)
            assert waited.returncode == 0, f"{init['name']}:\n{waited.stdout}{waited.stderr}"
        migrate = _podman("run", "--rm", *_run_args(rendering, "Job", "ansible-runner-migrate", overrides))
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        assert "Running upgrade" in migrate.stderr

        # Host network here, a pod of its own in Kubernetes: the API's port is the one thing changed, so
        # that it cannot collide with another server on this machine.
        api_command = only_container(rendering.get("Deployment", "ansible-runner-api"))["command"]
        port = free_port()
        api_command = [*api_command[: api_command.index("--port") + 1], str(port)]
        suffix = uuid.uuid4().hex[:8]
        for role, command in (("api", api_command), ("worker", None)):
            name = f"ars-{role}-{suffix}"
            run_args = _run_args(rendering, "Deployment", f"ansible-runner-{role}", overrides, command)
            started = _podman("run", "--detach", f"--name={name}", *run_args)
            assert started.returncode == 0, started.stderr
            containers.append(name)
        api, worker = containers
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/ready", api)

        tokens = rendering.container_env(only_container(rendering.get("Deployment", "ansible-runner-api")))
        assert hashlib.sha256(DEV_RUN_TOKEN.encode()).hexdigest() in tokens["API_TOKENS"]
        # With tokens on, the API started only because the manifests gave it API_TOKENS and SESSION_SECRET,
        # each from a dev Secret of its own; the worker ran the playbook below with neither.
        assert tokens["SESSION_SECRET"].startswith("dev-only-")
        worker_container = only_container(rendering.get("Deployment", "ansible-runner-worker"))
        worker_env = rendering.container_env(worker_container)
        assert "API_TOKENS" not in worker_env and "SESSION_SECRET" not in worker_env
        # As the running containers got it (a new process in each gets the container's environment).
        for role, container in (("api", api), ("worker", worker)):
            listed = _podman("exec", container, "python3", "-c", "import os; print(*os.environ, sep='\\n')")
            assert listed.returncode == 0, listed.stderr
            held = {"API_TOKENS", "SESSION_SECRET"} & set(listed.stdout.split())
            assert held == ({"API_TOKENS", "SESSION_SECRET"} if role == "api" else set()), f"{role}: {held}"
        keda_token = rendering.data(
            "Secret",
            next(
                s["metadata"]["name"]
                for s in rendering.all("Secret")
                if s["metadata"]["name"].startswith("ansible-runner-keda")
            ),
        )["token"]
        with httpx.Client(
            base_url=base, timeout=30, headers={"Authorization": f"Bearer {DEV_RUN_TOKEN}"}
        ) as client:
            playbooks = client.get("/api/v1/playbooks").json()["items"]
            assert "hello.yml" in {playbook["path"] for playbook in playbooks}
            job = submit(
                client,
                {
                    "playbook": "hello.yml",
                    "inventory": "inventory/localhost.yml",
                    "extra_vars": {"who": "image"},
                },
            )
            done = wait_for(client, job["id"], deadline_s=120)
            assert done["status"] == "successful", f"{done['reason']}\n{_logs(worker)}"
            assert done["host_stats"]["localhost"]["ok"] >= 1
            assert "Hello, image!" in client.get(f"/api/v1/jobs/{job['id']}/stdout").text
            # KEDA's view, with KEDA's token from the rendered Secret.
            depth = httpx.get(f"{base}/api/v1/queue", headers={"Authorization": f"Bearer {keda_token}"})
            assert depth.json() == {"queued": 0, "running": 0, "inflight": 0, "blocked": 0}

        # SIGTERM, as Kubernetes sends it: an idle worker exits at once, well within its grace period.
        grace = pod_spec(rendering.get("Deployment", "ansible-runner-worker"))[
            "terminationGracePeriodSeconds"
        ]
        start = time.monotonic()
        stopped = _podman("stop", f"--time={grace}", worker, timeout=grace + 30)
        assert stopped.returncode == 0, stopped.stderr
        assert time.monotonic() - start < 15
        exit_code = _podman("inspect", "--format", "{{.State.ExitCode}}", worker).stdout.strip()
        assert exit_code == "0", _logs(worker)
    finally:
        drop()
