"""Offline checks of the Dockerfile and the Kubernetes manifests: they render, validate against pinned
schemas, and agree with the code (Settings, routes, entry points) and with each other."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jsonschema
import pytest
import yaml

from service.config import SHUTDOWN_MARGIN, Settings, get_settings
from service.errors import ConfigurationError
from tests.support.manifests import (
    K8S,
    OVERLAYS,
    ROOT,
    Obj,
    Rendering,
    kustomize,
    only_container,
    pod_containers,
    pod_spec,
    render,
    tool,
)

# The Kubernetes version the manifests are validated against: the oldest one the manifests promise to run on.
KUBERNETES_VERSION = "1.31.0"
KEDA_SCHEMA = json.loads((K8S / "schemas" / "keda-2.16.json").read_text())
API, WORKER, MIGRATE = "ansible-runner-api", "ansible-runner-worker", "ansible-runner-migrate"
# Settings whose defaults serve a developer's machine, never a cluster: the manifests must set them.
CLUSTER_REQUIRED = {"DATABASE_URL", "REDIS_URL"}
# Settings of the API alone (check_auth requires tokens, and with them the session keys; only the API calls
# it), each by name from a Secret of its own that no other pod references: neither the worker, whose runs are
# operator code, nor the migration ever holds them.
API_ONLY = {"API_TOKENS": "ansible-runner-api-tokens", "SESSION_SECRET": "ansible-runner-session"}
# Files every run reads when the setting is set: a path to a missing file fails them all.
RUN_FILES = ("SSH_PRIVATE_KEY_FILE", "VAULT_PASSWORD_FILE")
TARGET_CREDENTIALS = "ansible-runner-target-credentials"


@functools.cache
def _rendered(name: str) -> Rendering:
    return render(name)


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, Rendering]:
    name: str = request.param
    return name, _rendered(name)


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


def _validate_strict(objects: list[Obj], rendered: Path) -> None:
    rendered.write_text("---\n".join(json.dumps(obj) + "\n" for obj in objects))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r"passed for resource (\S+)", result.stdout + result.stderr)
    builtin = [obj for obj in objects if not obj["apiVersion"].startswith("keda.sh/")]
    assert len(passed) == len(builtin), result.stdout + result.stderr


def test_every_rendering_passes_kubernetes_validate_strict(
    overlay: tuple[str, Rendering], tmp_path: Path
) -> None:
    name, rendering = overlay
    _validate_strict(rendering.objects, tmp_path / f"{name}.yaml")


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
    for kind in ("Deployment", "StatefulSet", "Job"):
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
        assert (env.keys() & API_ONLY.keys()) == (API_ONLY.keys() if name == API else set()), name
        providers = json.loads(env["GIT_PROVIDERS"])
        credentials = {provider["credential_env"] for provider in providers}
        # Every key means something to the service: a misspelt one would be ignored silently.
        assert env.keys() <= known | credentials, env.keys() - known - credentials
        settings = _settings_from(env, monkeypatch)
        assert settings.require_redis_url()
        assert not settings.is_sqlite
        assert str(settings.work_dir).startswith("/var/lib/ars/")
    # The API's authentication check (service.main.create_app; the worker makes none): tokens on, and keys
    # to sign console sessions with. Prod's example Secret holds a placeholder, which must not start an API
    # (a key everyone can read would let anyone forge a login); the operator's own key does.
    env = _env(rendering, API)
    if env["SESSION_SECRET"] == "REPLACE_ME":
        with pytest.raises(ConfigurationError, match="at least 32 characters"):
            _settings_from(env, monkeypatch).check_auth()
        env["SESSION_SECRET"] = secrets.token_urlsafe(32)
    settings = _settings_from(env, monkeypatch)
    settings.check_auth()
    assert settings.api_tokens and settings.session_keys()
    # The worker knows neither (it makes no auth check: the same settings would not start an API).
    worker = rendering.get("Deployment", WORKER)
    settings = _settings_from(_env(rendering, WORKER), monkeypatch)
    assert settings.api_tokens is None and settings.session_keys() == []
    with pytest.raises(ConfigurationError, match="API_TOKENS"):
        settings.check_auth()
    # The worker stops waiting for running runs before Kubernetes kills it, from one number.
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert settings.job_completion_wait == grace - SHUTDOWN_MARGIN > 0


def _dev_tokens(rendering: Rendering) -> dict[str, str]:
    """The dev overlay's committed tokens by sha256 digest: KEDA's from its Secret, the run token of the
    image test (tests/test_image.py, named in api-tokens.env)."""
    (keda,) = [s for s in rendering.all("Secret") if s["metadata"]["name"].startswith("ansible-runner-keda")]
    tokens = [rendering.data("Secret", keda["metadata"]["name"])["token"], "dev-only-run-token-not-a-secret"]
    return {hashlib.sha256(token.encode()).hexdigest(): token for token in tokens}


@pytest.mark.parametrize("variable", sorted(API_ONLY))
def test_only_the_api_holds_its_secrets(overlay: tuple[str, Rendering], variable: str) -> None:
    name, rendering = overlay
    api = rendering.get("Deployment", API)
    # By name from a Secret of its own, not optional: without it the pod does not start.
    (ref,) = [
        item["valueFrom"]["secretKeyRef"]
        for item in only_container(api).get("env", [])
        if item["name"] == variable
    ]
    assert ref["key"] == variable and not ref.get("optional", False)
    own = ref["name"]
    # Generated in dev (with a hash suffix), created by the operator in prod (the name as written).
    assert own == API_ONLY[variable] if name == "prod" else own.startswith(API_ONLY[variable] + "-")
    values = rendering.data("Secret", own)
    assert values.keys() == {variable}
    if name == "dev":
        # Committed on purpose, and marked as worthless outside a dev cluster like the other dev credentials:
        # the session key itself, and every token the digests grant.
        if variable == "SESSION_SECRET":
            assert values[variable].startswith("dev-only-")
        else:
            known = _dev_tokens(rendering)
            for entry in filter(None, (e.strip() for e in re.split(r"[;\n]", values[variable]))):
                assert entry.rpartition(":")[2] in known, f"{entry}: not the digest of a dev-only token"
            assert all(token.startswith("dev-only-") for token in known.values())
    # No other Secret carries the key (envFrom would hand it to every pod that reads that Secret), and nothing
    # but the API names its Secret: the worker, the migration, the dev MariaDB and Redis, KEDA.
    for secret in rendering.all("Secret"):
        if secret["metadata"]["name"] != own:
            assert variable not in rendering.data("Secret", secret["metadata"]["name"])
    for obj in rendering.objects + rendering.external:
        if obj is not api and not (obj["kind"] == "Secret" and obj["metadata"]["name"] == own):
            assert own not in json.dumps(obj), f"{obj['kind']}/{obj['metadata']['name']}"
    for kind in ("Deployment", "StatefulSet", "Job"):
        for obj in rendering.all(kind):
            for container in pod_containers(obj):
                held = variable in rendering.container_env(container)
                assert held == (obj is api), f"{obj['metadata']['name']}/{container['name']}"


def test_the_worker_and_the_migration_get_no_api_secret(
    overlay: tuple[str, Rendering], tmp_path: Path
) -> None:
    name, rendering = overlay
    # The worker also with the one component an overlay may add to it (a rendering without the Job).
    opted_in = _with_target_credentials(name, rendering, tmp_path)
    pods = [(rendering, "Deployment", WORKER), (rendering, "Job", MIGRATE), (opted_in, "Deployment", WORKER)]
    for variant, kind, pod_name in pods:
        pod = variant.get(kind, pod_name)
        # Every container, the migration's wait for the database included; and no reference to the API's
        # Secrets anywhere in the pod (a volume would do as well as a variable).
        for container in pod_containers(pod):
            env = variant.container_env(container)
            assert not env.keys() & API_ONLY.keys(), f"{pod_name}/{container['name']}"
        spec = json.dumps(pod_spec(pod))
        assert not any(secret in spec for secret in API_ONLY.values()), pod_name
    for variant in (rendering, opted_in):
        # What the worker reads whole: were a key added to it later, the worker would get it.
        for source in only_container(variant.get("Deployment", WORKER))["envFrom"]:
            if "secretRef" in source:
                assert not variant.data("Secret", source["secretRef"]["name"]).keys() & API_ONLY.keys()


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
    # The image has no CMD: a command is all there is.
    for obj in _pods(rendering):
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


def _runs_the_service(obj: Obj) -> bool:
    """Every container runs the service's image (whatever its registry and tag)."""
    return all(
        c["image"].rpartition("/")[2].partition(":")[0] == "ansible-runner-service"
        for c in pod_containers(obj)
    )


def _pods(rendering: Rendering) -> list[Obj]:
    """The service's own pods (API, worker, migration), not the dev overlay's MariaDB and Redis."""
    return [obj for obj in rendering.all("Deployment") + rendering.all("Job") if _runs_the_service(obj)]


def _locked_down(container: Obj) -> None:
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False, container["name"]
    assert context["readOnlyRootFilesystem"] is True, container["name"]
    assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
    assert container["resources"]["requests"] and container["resources"]["limits"], container["name"]


def test_pods_are_locked_down(overlay: tuple[str, Rendering]) -> None:
    _, rendering = overlay
    work_dir = rendering.data("ConfigMap", "ansible-runner-config")["WORK_DIR"]
    assert {obj["metadata"]["name"] for obj in _pods(rendering)} == {API, WORKER, MIGRATE}
    for obj in _pods(rendering):
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["automountServiceAccountToken"] is False
        empty_dirs = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
        for container in pod_containers(obj):
            _locked_down(container)
        container = only_container(obj)
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


def _with_target_credentials(name: str, rendering: Rendering, tmp_path: Path) -> Rendering:
    """The overlay with components/target-credentials added, as an operator's overlay would add it."""
    root = tmp_path / f"{name}-target-credentials"
    root.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / name, root)],
        "components": [os.path.relpath(K8S / "components" / "target-credentials", root)],
    }
    (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return Rendering(kustomize(root), rendering.external)


def _guaranteed_files(pod: Obj, container: Obj) -> dict[Path, int]:
    """The Secret files the kubelet guarantees in the container, with their modes: the listed items of a
    Secret that is not optional (the pod does not start without them). An optional Secret, or one mounted
    without items, may lack any key."""
    volumes = {volume["name"]: volume for volume in pod_spec(pod)["volumes"]}
    files = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None or secret.get("optional", False) or "subPath" in mount:
            continue
        for item in secret.get("items", []):
            files[Path(mount["mountPath"]) / item["path"]] = item.get(
                "mode", secret.get("defaultMode", 0o644)
            )
    return files


def test_target_credentials_are_optional_until_an_overlay_opts_in(
    overlay: tuple[str, Rendering], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, rendering = overlay
    # Mounted read-only in the worker from an optional Secret, never executable; not in the API.
    worker = rendering.get("Deployment", WORKER)
    (volume,) = [
        v for v in pod_spec(worker)["volumes"] if v.get("secret", {}).get("secretName") == TARGET_CREDENTIALS
    ]
    assert volume["secret"]["optional"] is True
    assert volume["secret"]["defaultMode"] & 0o111 == 0
    (mount,) = [m for m in only_container(worker)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert TARGET_CREDENTIALS not in json.dumps(pod_spec(rendering.get("Deployment", API)))

    # A setting read by every run points only at a file the pod cannot start without: the overlays set
    # none, and the component both.
    opted_in = _with_target_credentials(name, rendering, tmp_path)
    _validate_strict(opted_in.objects, tmp_path / "opted-in.yaml")
    for variant, expected in ((rendering, set()), (opted_in, set(RUN_FILES))):
        pod = variant.get("Deployment", WORKER)
        env = _env(variant, WORKER)
        assert env.keys() & set(RUN_FILES) == expected
        files = _guaranteed_files(pod, only_container(pod))
        for setting in expected:
            assert Path(env[setting]) in files, f"{setting}={env[setting]} may be missing"
            # Ansible runs an executable vault password file instead of reading it.
            assert files[Path(env[setting])] & 0o111 == 0
        assert not _env(variant, API).keys() & set(RUN_FILES)
        # The paths as the service resolves them.
        settings = _settings_from(env, monkeypatch)
        resolved = {settings.ssh_private_key_file, settings.vault_password_file} - {None}
        assert resolved == {Path(env[setting]) for setting in expected}


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


# What the dev Secret's URLs name, and the kind of workload behind each, with the port a URL may leave out.
BACKING_URLS = {"DATABASE_URL": ("StatefulSet", 3306), "REDIS_URL": ("Deployment", 6379)}


def _served_by(rendering: Rendering, url: str, kind: str, default_port: int) -> Obj:
    """The workload behind the Service a URL names. The URL's host is the Service's short name, so the
    Service must be in the namespace of the pods that use it; it listens on the URL's port, forwards to a
    port of the workload's container, and selects that workload's pods only."""
    parts = urlsplit(url)
    assert parts.hostname, url
    service = rendering.get("Service", parts.hostname)
    assert service["metadata"]["namespace"] == rendering.get("Deployment", API)["metadata"]["namespace"]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (parts.port or default_port)]
    selector = service["spec"]["selector"].items()
    selected = [
        obj
        for obj in rendering.all("Deployment") + rendering.all("StatefulSet")
        if selector <= obj["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert [obj["kind"] for obj in selected] == [kind], [obj["metadata"]["name"] for obj in selected]
    workload = selected[0]
    ports = {p["name"]: p["containerPort"] for p in only_container(workload)["ports"]}
    target = port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) in ports.values()
    return workload


def _mebibytes(quantity: str) -> float:
    """A Kubernetes quantity or a Redis memory size, in MiB (Redis's `mb` is 1024 * 1024 bytes)."""
    match = re.fullmatch(r"(\d+)(Mi|Gi|mb|gb)", quantity)
    assert match, quantity
    return int(match[1]) * {"Mi": 1, "mb": 1, "Gi": 1024, "gb": 1024}[match[2]]


def test_dev_brings_the_mariadb_and_redis_its_urls_name() -> None:
    rendering = _rendered("dev")
    env = _env(rendering, API)
    assert all(_env(rendering, WORKER)[key] == env[key] for key in BACKING_URLS)
    workloads = {key: _served_by(rendering, env[key], *BACKING_URLS[key]) for key in BACKING_URLS}

    # MariaDB creates, from its own Secret, the database and the user DATABASE_URL logs in as.
    database = urlsplit(env["DATABASE_URL"])
    mariadb = workloads["DATABASE_URL"]
    created = rendering.container_env(only_container(mariadb))
    assert created["MARIADB_DATABASE"] == database.path.lstrip("/")
    assert created["MARIADB_USER"] == unquote(database.username or "")
    assert created["MARIADB_PASSWORD"] == unquote(database.password or "")
    assert created["MARIADB_ROOT_PASSWORD"] not in ("", created["MARIADB_PASSWORD"])
    # Its data on a claim of its own; the Service is its headless governing Service.
    assert mariadb["spec"]["replicas"] == 1
    assert mariadb["spec"]["serviceName"] == database.hostname
    assert rendering.get("Service", mariadb["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    (claim,) = mariadb["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in only_container(mariadb)["volumeMounts"]}
    assert mounts["/var/lib/mysql"] == claim["metadata"]["name"]
    # The rest of what the server writes (socket and pid, temporary files) goes to emptyDirs.
    volumes = {v["name"]: v for v in pod_spec(mariadb)["volumes"]}
    assert all("emptyDir" in volumes[mounts[path]] for path in ("/run/mysqld", "/tmp"))

    # Redis keeps nothing on disk, holds no password the URL lacks, and runs one pod at a time (two would
    # each hold a queue); full, it refuses writes before the kernel kills it.
    redis = workloads["REDIS_URL"]
    args = only_container(redis)["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    assert not urlsplit(env["REDIS_URL"]).password and "--requirepass" not in args
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"]["type"] == "Recreate"
    limit = only_container(redis)["resources"]["limits"]["memory"]
    assert _mebibytes(args[args.index("--maxmemory") + 1]) < _mebibytes(limit)


def test_dev_mariadb_and_redis_are_probed_pinned_and_locked_down() -> None:
    rendering = _rendered("dev")
    backing = [
        obj
        for obj in rendering.all("Deployment") + rendering.all("StatefulSet")
        if not _runs_the_service(obj)
    ]
    assert sorted(obj["metadata"]["name"] for obj in backing) == ["mariadb", "redis"]
    for obj in backing:
        spec = pod_spec(obj)
        container = only_container(obj)
        # An official image at a patch release: the same server on every deploy.
        assert re.fullmatch(r"docker\.io/library/[a-z]+:\d+\.\d+\.\d+(-[a-z]+)?", container["image"])
        assert container["readinessProbe"] and container["livenessProbe"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        _locked_down(container)
    # Ready only once the final server answers: the one that initialises the data directory has no network.
    mariadb = only_container(rendering.get("StatefulSet", "mariadb"))
    for probe in ("startupProbe", "readinessProbe"):
        assert mariadb[probe]["exec"]["command"][:2] == ["healthcheck.sh", "--connect"]


def test_prod_points_at_managed_services() -> None:
    rendering = _rendered("prod")
    assert not rendering.all("StatefulSet") and not rendering.all("PersistentVolumeClaim")
    assert all(_runs_the_service(obj) for obj in rendering.all("Deployment") + rendering.all("Job"))
    services = {service["metadata"]["name"] for service in rendering.all("Service")}
    env = _env(rendering, API)
    for key in BACKING_URLS:
        assert urlsplit(env[key]).hostname not in services


def test_the_migration_waits_for_the_database_of_database_url(overlay: tuple[str, Rendering]) -> None:
    _, rendering = overlay
    job = rendering.get("Job", MIGRATE)
    (wait,) = pod_spec(job)["initContainers"]
    migrate = only_container(job)
    # The service's own image (nothing else to pull) and the migration's own DATABASE_URL.
    assert wait["image"] == migrate["image"]
    assert wait["command"][:3] == ["python3", "-u", "-c"]
    (url_ref,) = [item for item in migrate["env"] if item["name"] == "DATABASE_URL"]
    assert url_ref in wait["env"]
    env = rendering.container_env(wait)
    # It gives up before `make deploy-dev` does, whose printed log then names the database; the Job's
    # deadline leaves room for another try after a wait that gave up.
    wait_s = float(env["WAIT_SECONDS"])
    deploy_timeout = re.search(r"MIGRATE_TIMEOUT:-(\d+)s\}", (ROOT / "scripts" / "deploy-dev.sh").read_text())
    assert deploy_timeout and wait_s < int(deploy_timeout[1])
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["activeDeadlineSeconds"] > wait_s

    def run(database_url: str, seconds: str) -> subprocess.CompletedProcess[str]:
        """The init container's script, with the Python the image has (3.11, as this one)."""
        return subprocess.run(
            [sys.executable, *wait["command"][1:]],
            env={"PATH": os.environ["PATH"], "DATABASE_URL": database_url, "WAIT_SECONDS": seconds},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # Its target is DATABASE_URL's host and port; the password is never printed.
    url = urlsplit(env["DATABASE_URL"])
    rendered = run(env["DATABASE_URL"], "0")
    assert f"waiting for {url.hostname}:{url.port or 3306}" in rendered.stdout
    assert not url.password or unquote(url.password) not in rendered.stdout + rendered.stderr
    # A listening server ends the wait at once; a closed port, after WAIT_SECONDS, with a message.
    userinfo = url.netloc.rpartition("@")[0]
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        here = url._replace(netloc=f"{userinfo}@127.0.0.1:{port}").geturl()
        answered = run(here, "10")
    assert answered.returncode == 0, answered.stderr
    assert f"127.0.0.1:{port} answers" in answered.stdout
    closed = run(here, "0")
    assert closed.returncode != 0
    assert f"127.0.0.1:{port} did not answer within 0 s" in closed.stderr
