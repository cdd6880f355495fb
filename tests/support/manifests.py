"""The Kubernetes manifests as Kubernetes would get them: rendered by `kubectl kustomize`, env resolved."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# The overlays, and the Secrets each expects to exist: dev generates its own, prod documents its shape.
OVERLAYS = {"dev": None, "prod": K8S / "overlays" / "prod" / "secrets.example.yaml"}
MIGRATIONS = {"dev": "overlays/dev/migrate", "prod": "jobs"}

Obj = dict[str, Any]


def tool(name: str) -> str:
    """A command from this virtualenv (kubectl, hadolint… pinned in pyproject.toml), else from PATH."""
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else shutil.which(name) or name


def kustomize(path: str | Path) -> list[Obj]:
    """The objects `kubectl kustomize` renders from a directory: relative to k8s/, or absolute."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass
class Rendering:
    objects: list[Obj]
    # Objects the overlay expects to exist in the cluster already (prod's Secrets).
    external: list[Obj]

    def all(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects + self.external if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [obj for obj in self.all(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"{kind}/{name}: found {len(found)} in {[o['metadata']['name'] for o in self.all(kind)]}"
        )
        return found[0]

    def data(self, kind: str, name: str) -> dict[str, str]:
        obj = self.get(kind, name)
        if kind == "Secret" and "data" in obj:
            return {key: base64.b64decode(value).decode() for key, value in obj["data"].items()}
        return dict(obj.get("stringData") or obj.get("data") or {})

    def container_env(self, container: Obj) -> dict[str, str]:
        """The environment the container starts with: envFrom in order, then env."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.data("ConfigMap", source["configMapRef"]["name"]))
            else:
                env.update(self.data("Secret", source["secretRef"]["name"]))
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = item["valueFrom"]
            kind, key_ref = (
                ("Secret", ref["secretKeyRef"])
                if "secretKeyRef" in ref
                else ("ConfigMap", ref["configMapKeyRef"])
            )
            env[item["name"]] = self.data(kind, key_ref["name"])[key_ref["key"]]
        return env


def render(overlay: str) -> Rendering:
    example = OVERLAYS[overlay]
    external = [doc for doc in yaml.safe_load_all(example.read_text()) if doc] if example else []
    objects: dict[tuple[str, str], Obj] = {}
    # The migration's rendering repeats the Secrets of the overlay: the same objects, or a deploy would
    # apply two versions of one Secret.
    for obj in kustomize(f"overlays/{overlay}") + kustomize(MIGRATIONS[overlay]):
        key = (obj["kind"], obj["metadata"]["name"])
        assert objects.setdefault(key, obj) == obj, f"{key} rendered twice, differently"
    return Rendering(list(objects.values()), external)


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def pod_containers(obj: Obj) -> list[Obj]:
    """Every container of the pod, init containers first (the order the kubelet starts them in)."""
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


def only_container(obj: Obj) -> Obj:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1
    container: Obj = containers[0]
    return container
