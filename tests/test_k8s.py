"""Offline checks of the Dockerfile and the Kubernetes manifests: they render, validate against pinned
schemas, and agree with the code (Settings, routes, entry points) and with each other."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

from service.config import SHUTDOWN_MARGIN, Settings, get_settings
from service.errors import ConfigurationError
from tests.manifests import K8S, OVERLAYS, ROOT, Obj, Rendering, only_container, pod_spec, render, tool

# The Kubernetes version the manifests are validated against: the oldest one the manifests promise to run on.
KUBERNETES_VERSION = "1.31.0"
KEDA_SCHEMA = json.loads((K8S / "schemas" / "keda-2.16.json").read_text())
API, WORKER, MIGRATE = "ansible-runner-api", "ansible-runner-worker", "ansible-runner-migrate"
# Settings whose defaults serve a developer's machine, never a cluster: the manifests must set them.
CLUSTER_REQUIRED = {"DATABASE_URL", "REDIS_URL", "API_TOKENS"}


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, Rendering]:
    name: str = request.param
    return name, render(name)


def _app_paths(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The routes the API serves (service.main builds an app when imported: give it what it needs)."""
    monkeypatch.setenv("REDIS_URL", "redis://unused")
    monkeypatch.setenv("AUTH_DISABLED", "true")
    get_settings.cache_clear()
    try:
        app = importlib.import_module("service.main").app
    finally:
        get_settings.cache_clear()
    return set(app.openapi()["paths"])


def _env(rendering: Rendering, name: str, kind: str = "Deployment") -> dict[str, str]:
    return rendering.container_env(only_container(rendering.get(kind, name)))


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr("os.environ", {"PATH": "/usr/bin:/bin", **env})
    return Settings()


def test_every_rendering_passes_kubernetes_validate_strict(
    overlay: tuple[str, Rendering], tmp_path: Path
) -> None:
    name, rendering = overlay
    rendered = tmp_path / f"{name}.yaml"
    rendered.write_text("---\n".join(json.dumps(obj) + "\n" for obj in rendering.objects))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r"passed for resource (\S+)", result.stdout + result.stderr)
    builtin = [obj for obj in rendering.objects if not obj["apiVersion"].startswith("keda.sh/")]
    assert len(passed) == len(builtin), result.stdout + result.stderr


def test_keda_objects_match_the_pinned_crd_schema(overlay: tuple[str, Rendering]) -> None:
    _, rendering = overlay
    for kind in ("ScaledObject", "TriggerAuthentication"):
        objects = rendering.all(kind)
        assert objects, f"no {kind} rendered"
        for obj in objects:
            jsonschema.validate(obj, KEDA_SCHEMA[kind])
    # The schema has teeth: a number where KEDA wants a string, or a misspelt field, is refused.
    scaled = json.loads(json.dumps(rendering.get("ScaledObject", WORKER)))
    scaled["spec"]["triggers"][0]["metadata"]["targetValue"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMA["ScaledObject"])
    scaled = json.loads(json.dumps(rendering.get("ScaledObject", WORKER)))
    scaled["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMA["ScaledObject"])


def test_scaled_object_reads_the_queue_endpoint(
    overlay: tuple[str, Rendering], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rendering = overlay
    scaled = rendering.get("ScaledObject", WORKER)
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    rendering.get("Deployment", target["name"])
    [trigger] = scaled["spec"]["triggers"]
    metadata = trigger["metadata"]
    assert all(isinstance(value, str) for value in metadata.values())
    assert trigger["type"] == "metrics-api"
    assert metadata["valueLocation"] == "inflight"
    assert metadata["activationTargetValue"] == "0"
    config = rendering.data("ConfigMap", "ansible-runner-config")
    assert metadata["targetValue"] == config["WORKER_MAX_JOBS"]

    # The URL names the API Service, in its namespace, on its port, at the route the app serves.
    url = urlsplit(metadata["url"])
    service = rendering.get("Service", API)
    assert url.hostname == f"{API}.{service['metadata']['namespace']}.svc.cluster.local"
    assert url.port == service["spec"]["ports"][0]["port"]
    assert url.path in _app_paths(monkeypatch)

    # The endpoint needs the read scope: KEDA's token must be one API_TOKENS grants it.
    assert metadata["authMode"] == "bearer"
    auth = rendering.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    [ref] = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "token"
    token = rendering.data("Secret", ref["name"])[ref["key"]]
    tokens = _env(rendering, API)["API_TOKENS"]
    if token != "REPLACE_ME":
        digest = hashlib.sha256(token.encode()).hexdigest()
        grants = [entry.split(":")[1] for entry in re.split(r"[;\n]", tokens) if entry.endswith(f":{digest}")]
        assert grants and "read" in grants[0].split(","), "API_TOKENS has no read entry for KEDA's token"
    # No pod carries KEDA's token.
    for kind in ("Deployment", "Job"):
        for obj in rendering.all(kind):
            assert ref["name"] not in json.dumps(pod_spec(obj))


def test_settings_come_from_the_configmap_and_secret(
    overlay: tuple[str, Rendering], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rendering = overlay
    known = {str(field.validation_alias or name).upper() for name, field in Settings.model_fields.items()}
    for name in (API, WORKER):
        env = _env(rendering, name)
        assert env.keys() >= CLUSTER_REQUIRED
        providers = json.loads(env["GIT_PROVIDERS"])
        credentials = {provider["credential_env"] for provider in providers}
        # Every key means something to the service: a misspelt one would be ignored silently.
        assert env.keys() <= known | credentials, env.keys() - known - credentials
        settings = _settings_from(env, monkeypatch)
        settings.check_auth()
        assert settings.require_redis_url()
        assert not settings.is_sqlite
        assert str(settings.work_dir).startswith("/var/lib/ars/")
    # The worker stops waiting for running runs before Kubernetes kills it, from one number.
    worker = rendering.get("Deployment", WORKER)
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    settings = _settings_from(_env(rendering, WORKER), monkeypatch)
    assert settings.job_completion_wait == grace - SHUTDOWN_MARGIN > 0


def test_every_credential_env_is_in_the_secret(overlay: tuple[str, Rendering]) -> None:
    _, rendering = overlay
    providers = json.loads(rendering.data("ConfigMap", "ansible-runner-config")["GIT_PROVIDERS"])
    assert providers
    secret = next(
        s for s in rendering.all("Secret") if s["metadata"]["name"].startswith("ansible-runner-secrets")
    )
    keys = rendering.data("Secret", secret["metadata"]["name"]).keys()
    for provider in providers:
        assert provider["credential_env"] in keys


def _entry_points() -> dict[str, list[str]]:
    """The commands of README's entry-point table (the same as DESIGN section 2)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Entry points", 1)[1].split("\n## ", 1)[0]
    commands = dict(re.findall(r"^\| (API|worker|migrations) \| `([^`]+)`", table, flags=re.MULTILINE))
    return {role: shlex.split(command) for role, command in commands.items()}


def test_commands_are_the_entry_points(overlay: tuple[str, Rendering]) -> None:
    _, rendering = overlay
    entry = _entry_points()
    assert only_container(rendering.get("Deployment", API))["command"] == entry["API"]
    assert only_container(rendering.get("Deployment", WORKER))["command"] == entry["worker"]
    assert only_container(rendering.get("Job", MIGRATE))["command"] == entry["migrations"]
    for kind in ("Deployment", "Job"):
        for obj in rendering.all(kind):
            assert "args" not in only_container(obj)


def test_probes_and_service_match_the_app(
    overlay: tuple[str, Rendering], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rendering = overlay
    api = rendering.get("Deployment", API)
    container = only_container(api)
    port = int(container["command"][container["command"].index("--port") + 1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == port
    assert {"/ready", "/health"} <= _app_paths(monkeypatch)

    service = rendering.get("Service", API)
    selector = service["spec"]["selector"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert selector.items() <= api["spec"]["selector"]["matchLabels"].items()
    worker_labels = rendering.get("Deployment", WORKER)["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= worker_labels.items()
    assert ports[service["spec"]["ports"][0]["targetPort"]] == port


def _pods(rendering: Rendering) -> list[Obj]:
    return rendering.all("Deployment") + rendering.all("Job")


def test_pods_are_locked_down(overlay: tuple[str, Rendering]) -> None:
    _, rendering = overlay
    work_dir = rendering.data("ConfigMap", "ansible-runner-config")["WORK_DIR"]
    for obj in _pods(rendering):
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["automountServiceAccountToken"] is False
        empty_dirs = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
        container = only_container(obj)
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert mounts["/tmp"] in empty_dirs
        if obj["metadata"]["name"] == WORKER:
            assert mounts[work_dir] in empty_dirs


def test_the_worker_reads_known_hosts_from_its_secret(overlay: tuple[str, Rendering]) -> None:
    _, rendering = overlay
    worker = rendering.get("Deployment", WORKER)
    known_hosts = Path(_env(rendering, WORKER)["SSH_KNOWN_HOSTS_FILE"])
    (mount,) = [
        m for m in only_container(worker)["volumeMounts"] if Path(m["mountPath"]) == known_hosts.parent
    ]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod_spec(worker)["volumes"] if v["name"] == mount["name"]]
    assert known_hosts.name in rendering.data("Secret", volume["secret"]["secretName"])


def test_dockerfile_is_hadolint_clean_and_matches_the_pods(overlay: tuple[str, Rendering]) -> None:
    _, rendering = overlay
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nCMD" not in dockerfile and "\nENTRYPOINT" not in dockerfile
    assert re.search(r"^USER 10001:10001$", dockerfile, flags=re.MULTILINE)
    config = rendering.data("ConfigMap", "ansible-runner-config")
    for name in ("WORK_DIR", "PLAYBOOKS_DIR", "ANSIBLE_COLLECTIONS_PATH"):
        assert f"{name}={config[name]}" in dockerfile


def test_one_number_sets_both_the_grace_period_and_the_completion_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings_from({"TERMINATION_GRACE_PERIOD": "90"}, monkeypatch)
    assert settings.job_completion_wait == 90 - SHUTDOWN_MARGIN
    assert _settings_from({}, monkeypatch).job_completion_wait == 60
    with pytest.raises(ConfigurationError, match="not both"):
        _settings_from({"TERMINATION_GRACE_PERIOD": "90", "JOB_COMPLETION_WAIT": "10"}, monkeypatch)
