"""`make deploy-dev` against stand-ins for kubectl and podman that record their calls (no cluster, no
registry here); the manifests are rendered by the real kubectl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.manifests import ROOT, kustomize, pod_containers, tool

IMAGE = "registry.test:5000/ansible-runner-service:abc123"

STAND_IN = """#!{python}
import json, os, shutil, subprocess, sys
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
call = {{"tool": name, "args": args}}
if name == "kubectl" and args[:1] == ["apply"]:
    call["manifest"] = open(args[args.index("-f") + 1]).read()
with open(os.environ["CALLS"], "a") as calls:
    calls.write(json.dumps(call) + "\\n")
if name == "kubectl" and args[:1] == ["kustomize"]:
    os.execv(os.environ["REAL_KUBECTL"], ["kubectl", *args])
if os.environ.get("FAIL_ON") in args:
    print(f"{{name}}: {{os.environ['FAIL_ON']}} failed", file=sys.stderr)
    sys.exit(1)
"""


def deploy(
    tmp_path: Path, *make_args: str, fail_on: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("kubectl", "podman"):
        stand_in = bin_dir / name
        stand_in.write_text(STAND_IN.format(python=sys.executable))
        stand_in.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    calls.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "REAL_KUBECTL": tool("kubectl"),
        "FAIL_ON": fail_on,
    }
    env.pop("KUBECTL", None)
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "deploy-dev",
            "DEV_REGISTRY=registry.test:5000",
            "TAG=abc123",
            *make_args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return result, recorded


def _commands(calls: list[dict[str, Any]]) -> list[list[str]]:
    return [[call["tool"], *call["args"]] for call in calls if call["args"][:1] != ["kustomize"]]


def _images(manifest: str | list[dict[str, Any]]) -> set[str]:
    docs = yaml.safe_load_all(manifest) if isinstance(manifest, str) else manifest
    images = set()
    for doc in docs:
        if doc and doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            images |= {c["image"] for c in pod_containers(doc)}
    return images


def _secrets_needed(manifest: str) -> dict[str, set[str]]:
    """The Secrets the objects of a manifest cannot start or authenticate without, by the object that names
    them: every reference a pod makes that is not optional (envFrom, a variable, a volume), and KEDA's."""
    needed: dict[str, set[str]] = {}
    for doc in yaml.safe_load_all(manifest):
        if not doc:
            continue
        names: set[str] = set()
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            for container in pod_containers(doc):
                for source in container.get("envFrom", []):
                    ref = source.get("secretRef")
                    if ref and not ref.get("optional", False):
                        names.add(ref["name"])
                for item in container.get("env", []):
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if ref and not ref.get("optional", False):
                        names.add(ref["name"])
            for volume in doc["spec"]["template"]["spec"].get("volumes", []):
                secret = volume.get("secret")
                if secret and not secret.get("optional", False):
                    names.add(secret["secretName"])
        elif doc["kind"] == "TriggerAuthentication":
            names |= {ref["name"] for ref in doc["spec"]["secretTargetRef"]}
        if names:
            needed[f"{doc['kind']}/{doc['metadata']['name']}"] = names
    return needed


def _backing_images() -> set[str]:
    """The dev MariaDB's and Redis's images, as k8s/overlays/dev pins them: a deploy leaves them alone."""
    return {image for image in _images(kustomize("overlays/dev")) if "/ansible-runner-service:" not in image}


def test_deploy_runs_every_step_in_order(tmp_path: Path) -> None:
    result, calls = deploy(tmp_path)
    assert result.returncode == 0, result.stderr
    ns = ["-n", "ansible-runner"]
    assert _commands(calls) == [
        ["podman", "build", "-t", IMAGE, "."],
        ["podman", "push", IMAGE],
        ["kubectl", "apply", "-f", "k8s/base/namespace.yaml"],
        ["kubectl", *ns, "delete", "job", "ansible-runner-migrate", "--ignore-not-found", "--wait=true"],
        ["kubectl", "apply", "-f", "build/deploy-dev/migrate.yaml"],
        ["kubectl", *ns, "wait", "--for=condition=complete", "--timeout=300s", "job/ansible-runner-migrate"],
        ["kubectl", "apply", "-f", "build/deploy-dev/app.yaml"],
        ["kubectl", *ns, "rollout", "status", "deployment/ansible-runner-api", "--timeout=300s"],
        ["kubectl", *ns, "rollout", "status", "deployment/ansible-runner-worker", "--timeout=300s"],
    ]
    migrate, app = (
        call["manifest"] for call in calls if call["args"][-1].endswith(("migrate.yaml", "app.yaml"))
    )
    backing = _backing_images()
    assert backing
    assert _images(migrate) == _images(app) == {IMAGE, *backing}
    assert "kind: Job" in migrate and "kind: Job" not in app
    assert "kind: ScaledObject" in app
    # The Job waits for MariaDB: on an empty cluster, only the migration's own apply can bring it.
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(migrate) if doc}
    assert {("StatefulSet", "mariadb"), ("Service", "mariadb"), ("Deployment", "redis")} <= kinds
    # Each apply brings every Secret its objects need (on an empty cluster nothing else would), the API's own
    # ones included; the API's token digests and session keys are named by the API alone.
    for manifest in (migrate, app):
        secrets = {
            doc["metadata"]["name"] for doc in yaml.safe_load_all(manifest) if doc and doc["kind"] == "Secret"
        }
        for obj, names in _secrets_needed(manifest).items():
            assert names <= secrets, f"{obj} needs {names - secrets}, which the apply lacks"
    needed = _secrets_needed(app)
    for prefix in ("ansible-runner-api-tokens-", "ansible-runner-session-"):
        holders = {obj for obj, names in needed.items() if any(name.startswith(prefix) for name in names)}
        assert holders == {"Deployment/ansible-runner-api"}, prefix


@pytest.mark.parametrize(
    ("fail_on", "step", "last"),
    [
        ("build", "build", ["podman", "build"]),
        ("push", "push", ["podman", "push"]),
        ("--for=condition=complete", "migrate the database", ["kubectl", "-n", "ansible-runner", "logs"]),
        ("deployment/ansible-runner-api", "roll out", ["kubectl", "-n", "ansible-runner", "rollout"]),
    ],
)
def test_a_failed_step_stops_the_deploy(tmp_path: Path, fail_on: str, step: str, last: list[str]) -> None:
    result, calls = deploy(tmp_path, fail_on=fail_on)
    assert result.returncode != 0
    assert f"deploy-dev: FAILED at step '{step}" in result.stderr
    commands = _commands(calls)
    assert commands[-1][: len(last)] == last
    if step == "migrate the database":
        # The wait for the database is an init container: its log is the one that says why.
        assert "--all-containers=true" in commands[-1]
    if step != "roll out":
        assert ["kubectl", "apply", "-f", "build/deploy-dev/app.yaml"] not in commands


def test_dry_run_prints_commands_and_manifests_and_runs_nothing(tmp_path: Path) -> None:
    result, calls = deploy(tmp_path, "DRY_RUN=1")
    assert result.returncode == 0, result.stderr
    assert _commands(calls) == []
    printed = [line[2:] for line in result.stderr.splitlines() if line.startswith("+ ")]
    assert f"podman build -t {IMAGE} ." in printed
    assert any(line.endswith("apply -f build/deploy-dev/app.yaml") for line in printed)
    assert any("rollout status deployment/ansible-runner-worker" in line for line in printed)
    manifests = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    kinds = {doc["kind"] for doc in manifests}
    assert {"Job", "Deployment", "ScaledObject", "TriggerAuthentication", "Service", "ConfigMap"} <= kinds
    assert _images(result.stdout) == {IMAGE, *_backing_images()}
