"""Playbooks from Git, end to end: a real Git server (git http-backend behind Basic auth on 127.0.0.1),
the real API and worker, real git and ansible-playbook processes."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from harness.gitserver import GitServer, RepoBuilder, git_server, playbook
from tests.support import ROOT, Stack, StackFactory, all_events, submit, wait_for

LOCAL = """all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: "{{ ansible_playbook_python }}"
"""
ENV_DUMP = """- name: dump the environment Ansible runs with
  hosts: localhost
  gather_facts: false
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: env
      ansible.builtin.command: env
      register: dumped
      changed_when: false
    - name: show it
      ansible.builtin.debug:
        var: dumped.stdout_lines
"""
USES_COLLECTION = """- name: uses a role from a bundled collection
  hosts: localhost
  gather_facts: false
  vars:
    ansible_connection: local
  roles:
    - testns.testcol.hello
"""
REQUIRES_TESTCOL = "collections:\n  - name: testns.testcol\n    version: '>=1.0'\n"
# 300 kB that do not compress: the first clone of `team/big` must carry them, a later fetch must not.
BIG_BLOB = os.urandom(300_000)


@dataclass
class Repos:
    gitlab: GitServer
    azure: GitServer
    tokens: dict[str, str]
    app_main: str
    app_v1: str
    app_feature: str
    big: RepoBuilder

    def app(self, path: str = "team/app.git") -> str:
        return self.gitlab.url(path)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repos]:
    tmp = tmp_path_factory.mktemp("git")
    tokens = {
        "ARS_TEST_GITLAB_TOKEN": f"glpat-{uuid.uuid4().hex}",
        "ARS_TEST_GITHUB_TOKEN": f"ghs_{uuid.uuid4().hex}",
        # The Azure server accepts a PAT that the service is never given.
        "ARS_TEST_AZURE_PAT": f"azwrong{uuid.uuid4().hex}",
    }
    accepted = {
        f"oauth2:{tokens['ARS_TEST_GITLAB_TOKEN']}",
        f"x-access-token:{tokens['ARS_TEST_GITHUB_TOKEN']}",
    }
    with (
        git_server(tmp / "srv-a", accepted) as gitlab,
        git_server(tmp / "srv-b", {f":azgood{uuid.uuid4().hex}"}) as azure,
    ):
        app = RepoBuilder(gitlab.root, "team/app.git", tmp / "app")
        app.commit(
            {"site.yml": playbook("version one"), "inventory/hosts.yml": LOCAL, "env_dump.yml": ENV_DUMP}
        )
        app.tag("v1")
        app_v1 = app.commit({"site.yml": playbook("version one")}, "same content, new commit")
        app.tag("v1.1")
        app_main = app.commit({"site.yml": playbook("version two")})
        app.branch("feature/x")
        app_feature = app.commit({"site.yml": playbook("feature x")})
        app.switch("main")
        app.push()
        for path, work in (("team/secret.git", "secret"), ("team/concurrent.git", "concurrent")):
            other = RepoBuilder(gitlab.root, path, tmp / work)
            other.commit({"env_dump.yml": ENV_DUMP, "site.yml": playbook(f"from {path}")})
            other.push()
        tool = RepoBuilder(gitlab.root, "Octo/tool.git", tmp / "tool")
        tool.commit({"site.yml": playbook("github scheme")})
        tool.push()
        reqs = RepoBuilder(gitlab.root, "team/reqs.git", tmp / "reqs")
        reqs.commit(
            {
                "site.yml": USES_COLLECTION,
                "collections/requirements.yml": REQUIRES_TESTCOL,
            }
        )
        reqs.push()
        missing = RepoBuilder(gitlab.root, "team/missing.git", tmp / "missing")
        missing.commit(
            {
                "site.yml": playbook("never"),
                "collections/requirements.yml": "collections:\n  - nothere.nocol\n",
            }
        )
        missing.push()
        big = RepoBuilder(gitlab.root, "team/big.git", tmp / "big")
        big.commit({"site.yml": playbook("big"), "blob.bin": BIG_BLOB})
        big.push()
        pat = RepoBuilder(azure.root, "org/proj/_git/repo", tmp / "azure")
        pat.commit({"site.yml": playbook("azure")})
        pat.push()
        yield Repos(gitlab, azure, tokens, app_main, app_v1, app_feature, big)


@pytest.fixture(scope="module")
def git_stack(start_stack: StackFactory, repos: Repos) -> Stack:
    return start_stack(**git_settings(repos))


def git_settings(repos: Repos) -> dict[str, str]:
    providers = [
        {
            "type": "gitlab",
            "host": f"127.0.0.1:{repos.gitlab.port}",
            "orgs": ["team"],
            "credential_env": "ARS_TEST_GITLAB_TOKEN",
            "allow_http": True,
        },
        {
            "type": "github",
            "host": f"localhost:{repos.gitlab.port}",
            "orgs": ["octo"],
            "credential_env": "ARS_TEST_GITHUB_TOKEN",
            "allow_http": True,
        },
        {
            "type": "azure",
            "host": f"127.0.0.1:{repos.azure.port}",
            "orgs": ["org"],
            "credential_env": "ARS_TEST_AZURE_PAT",
            "allow_http": True,
        },
        {"type": "generic", "host": "git.example", "orgs": ["team"]},
    ]
    return {
        "GIT_PROVIDERS": json.dumps(providers),
        "KEEP_WORK_DIRS": "true",
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "tests" / "collections"),
        **repos.tokens,
    }


@pytest.fixture(scope="module")
def client(git_stack: Stack) -> Iterator[httpx.Client]:
    with git_stack.client() as http:
        yield http


def git_job(repo: str, ref: str = "main", playbook: str = "site.yml", **extra: Any) -> dict[str, Any]:
    return {"playbook": playbook, "source": {"type": "git", "repo": repo, "ref": ref}, **extra}


def stdout(client: httpx.Client, job_id: str) -> str:
    return client.get(f"/api/v1/jobs/{job_id}/stdout").text


def test_branch_tag_and_sha_each_run_their_commit(client: httpx.Client, repos: Repos) -> None:
    cases = {
        "main": (repos.app_main, "version two"),
        "v1.1": (repos.app_v1, "version one"),  # an annotated tag: the commit it points to is recorded
        "feature/x": (repos.app_feature, "feature x"),
        repos.app_v1: (repos.app_v1, "version one"),
        repos.app_feature[:10]: (repos.app_feature, "feature x"),
    }
    jobs = {
        ref: submit(client, git_job(repos.app(), ref, inventory="inventory/hosts.yml"))["id"] for ref in cases
    }
    for ref, job_id in jobs.items():
        job = wait_for(client, job_id)
        commit, marker = cases[ref]
        assert job["status"] == "successful", (ref, job["reason"])
        assert job["source_commit"] == commit, ref
        assert marker in stdout(client, job_id), ref
        assert job["host_stats"]["localhost"]["ok"] == 1


def test_a_fetch_whose_connection_is_reset_is_tried_again(
    git_stack: Stack, client: httpx.Client, repos: Repos
) -> None:
    repos.gitlab.resets["team/app.git"] = 2
    job = wait_for(client, submit(client, git_job(repos.app(), "feature/x"))["id"])
    assert job["status"] == "successful", job["reason"]
    assert repos.gitlab.resets["team/app.git"] == 0, "both resets happened"
    # (curl itself may retry a request on a reused connection; the rest is ours.)
    assert "git fetch interrupted, trying again" in (git_stack.logs / "worker0.log").read_text()


def test_github_scheme_and_org_case_as_the_provider_treats_it(client: httpx.Client, repos: Repos) -> None:
    # The provider lists "octo", the URL says "Octo": GitHub org names ignore case.
    job = submit(client, git_job(repos.gitlab.url("Octo/tool.git", host="localhost")))
    done = wait_for(client, job["id"])
    assert done["status"] == "successful", done
    assert "github scheme" in stdout(client, job["id"])
    users = {item.user for item in repos.gitlab.requests_for("Octo/tool.git")}
    assert users == {"x-access-token"}


def test_wrong_token_ends_as_error_naming_the_repo(client: httpx.Client, repos: Repos) -> None:
    repo = repos.azure.url("org/proj/_git/repo")
    job = wait_for(client, submit(client, git_job(repo))["id"])
    assert job["status"] == "error"
    assert f"authentication failed for {repo}" in job["reason"]
    assert "ARS_TEST_AZURE_PAT" in job["reason"]
    assert repos.tokens["ARS_TEST_AZURE_PAT"] not in job["reason"]
    assert job["source_commit"] is None
    # Azure DevOps scheme: a PAT as Basic with an empty user name (the server saw it and refused it).
    assert any(item.status == 401 for item in repos.azure.requests_for("org"))


def test_ref_not_found_and_missing_files_end_as_error(client: httpx.Client, repos: Repos) -> None:
    jobs = {
        "ref": submit(client, git_job(repos.app(), "no-such-branch"))["id"],
        "playbook": submit(client, git_job(repos.app(), playbook="nope.yml"))["id"],
        "inventory": submit(client, git_job(repos.app(), inventory="inventory/none.yml"))["id"],
    }
    ref = wait_for(client, jobs["ref"])
    assert ref["status"] == "error"
    assert f"ref 'no-such-branch' not found in {repos.app()}" in ref["reason"]
    for what, path in (("playbook", "nope.yml"), ("inventory", "inventory/none.yml")):
        job = wait_for(client, jobs[what])
        assert job["status"] == "error", job
        assert f"{what}: {path!r} does not exist" in job["reason"]
        assert job["source_commit"] == repos.app_main
        assert repos.app_main in job["reason"]
        assert job["event_count"] == 0


DISALLOWED = [
    ("another host", "https://evil.example/team/app.git"),
    ("another org", "http://127.0.0.1:{port}/other/app.git"),
    ("another port", "http://127.0.0.1:1/team/app.git"),
    ("org as a prefix only", "http://127.0.0.1:{port}/teamster/app.git"),
    ("org without repo", "http://127.0.0.1:{port}/team"),
    ("path traversal", "http://127.0.0.1:{port}/team/../other/app.git"),
    ("encoded traversal", "http://127.0.0.1:{port}/team/%2e%2e/other/app.git"),
    ("file URL", "file:///srv/team/app.git"),
    ("local path", "/srv/team/app.git"),
    ("relative path", "team/app.git"),
    ("credentials in URL", "http://oauth2:hunter2@127.0.0.1:{port}/team/app.git"),
    ("user in https URL", "http://oauth2@127.0.0.1:{port}/team/app.git"),
    ("http on an https-only provider", "http://git.example/team/app.git"),
    ("ssh not allowed", "ssh://git@git.example/team/app.git"),
    ("scp-style not allowed", "git@git.example:team/app.git"),
    ("ext transport", "ext::sh -c touch% /tmp/owned"),
    ("git protocol", "git://git.example/team/app.git"),
    ("query", "http://127.0.0.1:{port}/team/app.git?ref=x"),
    ("option", "--upload-pack=touch /tmp/owned"),
    ("generic org case", "https://git.example/Team/app.git"),
]


@pytest.mark.parametrize("repo", [repo for _, repo in DISALLOWED], ids=[case for case, _ in DISALLOWED])
def test_disallowed_repo_is_refused_and_nothing_stored(
    git_stack: Stack, client: httpx.Client, repos: Repos, repo: str
) -> None:
    before = git_stack.count_jobs()
    response = client.post("/api/v1/jobs", json=git_job(repo.format(port=repos.gitlab.port)))
    assert response.status_code == 422, response.text
    assert "source.repo" in response.json()["detail"]
    assert "hunter2" not in response.text
    assert git_stack.count_jobs() == before


BAD_REFS = [
    "--upload-pack=touch /tmp/owned",
    "-c",
    "-",
    "a..b",
    "main~1",
    "HEAD^",
    "a:b",
    "a b",
    "a\\b",
    "x.lock",
    "dir/.hidden",
    "@",
    "main@{1}",
    "end/",
    "/start",
    "a//b",
    "dot.",
    "star*",
    "q?",
    "br[a",
    "tab\tref",
]


@pytest.mark.parametrize("ref", BAD_REFS)
def test_bad_ref_is_refused_and_nothing_stored(
    git_stack: Stack, client: httpx.Client, repos: Repos, ref: str
) -> None:
    before = git_stack.count_jobs()
    response = client.post("/api/v1/jobs", json=git_job(repos.app(), ref))
    assert response.status_code == 422, response.text
    assert "source.ref" in response.json()["detail"]
    assert git_stack.count_jobs() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"playbook": "../site.yml"}, "playbook"),
        ({"playbook": "notes.txt"}, "playbook"),
        ({"inventory": "/etc/hosts"}, "inventory"),
    ],
)
def test_paths_in_a_git_source_are_checked_at_submit(
    git_stack: Stack, client: httpx.Client, repos: Repos, body: dict[str, str], field: str
) -> None:
    before = git_stack.count_jobs()
    response = client.post("/api/v1/jobs", json={**git_job(repos.app()), **body})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert git_stack.count_jobs() == before


def worker_log_entries(stack: Stack, event: str) -> list[dict[str, Any]]:
    entries = []
    for line in (stack.logs / "worker0.log").read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                entries.append(entry)
    return entries


def test_second_run_reuses_the_mirror_and_fetches_only_what_changed(
    git_stack: Stack, client: httpx.Client, repos: Repos
) -> None:
    repo = repos.app("team/big.git")
    first = wait_for(client, submit(client, git_job(repo))["id"])
    assert first["status"] == "successful", first
    cloned = repos.gitlab.bytes_for("team/big.git")
    assert cloned > len(BIG_BLOB)

    second = wait_for(client, submit(client, git_job(repo))["id"])
    assert second["status"] == "successful", second
    refetched = repos.gitlab.bytes_for("team/big.git") - cloned
    # Only the ref advertisement and negotiation: no pack with the blob again.
    assert refetched < 5_000, refetched

    changed = repos.big.commit({"small.txt": "a small change\n"})
    repos.big.push()
    third = wait_for(client, submit(client, git_job(repo))["id"])
    assert third["status"] == "successful", third
    assert third["source_commit"] == changed
    assert repos.gitlab.bytes_for("team/big.git") - cloned - refetched < 20_000

    ready = {entry["job_id"]: entry for entry in worker_log_entries(git_stack, "git source ready")}
    assert ready[first["id"]]["mirror"] == "created"
    assert ready[second["id"]]["mirror"] == "reused"
    assert ready[third["id"]]["mirror"] == "reused"


def test_concurrent_runs_of_one_repo_on_one_worker_all_succeed(
    git_stack: Stack, client: httpx.Client, repos: Repos
) -> None:
    repo = repos.app("team/concurrent.git")
    with ThreadPoolExecutor(6) as pool:
        jobs = list(pool.map(lambda _: submit(client, git_job(repo))["id"], range(6)))
    done = [wait_for(client, job_id) for job_id in jobs]
    assert [job["status"] for job in done] == ["successful"] * 6, done
    assert len({job["source_commit"] for job in done}) == 1
    # The runs waited for each other on the repository's lock: one of them cloned, the others reused.
    ready = [entry for entry in worker_log_entries(git_stack, "git source ready") if entry["job_id"] in jobs]
    assert sorted(entry["mirror"] for entry in ready) == ["created"] + ["reused"] * 5


def test_requirements_use_bundled_collections_or_say_what_is_missing(
    client: httpx.Client, repos: Repos
) -> None:
    ok = submit(client, git_job(repos.app("team/reqs.git")))
    missing = submit(client, git_job(repos.app("team/missing.git")))
    done = wait_for(client, ok["id"])
    assert done["status"] == "successful", done
    assert "bundled collection role ran" in stdout(client, ok["id"])
    failed = wait_for(client, missing["id"])
    assert failed["status"] == "error"
    assert "collections/requirements.yml needs nothere.nocol" in failed["reason"]
    assert "no GALAXY_SERVER_URL is configured" in failed["reason"]


class ProcessSampler(threading.Thread):
    """Reads every process's command line, over and over, until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stopped = threading.Event()
        self.seen: set[bytes] = set()

    def run(self) -> None:
        proc = Path("/proc")
        while not self.stopped.is_set():
            for entry in proc.iterdir():
                if entry.name.isdigit():
                    try:
                        self.seen.add((entry / "cmdline").read_bytes())
                    except OSError:
                        continue


def test_the_token_appears_nowhere(git_stack: Stack, client: httpx.Client, repos: Repos) -> None:
    token = repos.tokens["ARS_TEST_GITLAB_TOKEN"]
    header = base64.b64encode(f"oauth2:{token}".encode()).decode()
    secrets = [token, header]
    repos.gitlab.slow.add("team/secret.git")
    repos.gitlab.delay = 1.0
    sampler = ProcessSampler()
    sampler.start()
    try:
        job = submit(client, git_job(repos.app("team/secret.git"), playbook="env_dump.yml"))
        done = wait_for(client, job["id"])
    finally:
        sampler.stopped.set()
        sampler.join()
    assert done["status"] == "successful", done
    assert {item.user for item in repos.gitlab.requests_for("team/secret.git")} == {"oauth2"}

    # The process list: git's fetch was caught while it ran, and no command line held the token.
    fetches = [line for line in sampler.seen if b"team/secret.git" in line and b"git" in line]
    assert fetches, "the sampler never saw the clone"
    for line in sampler.seen:
        for secret in secrets:
            assert secret.encode() not in line

    # Ansible's environment, dumped by the playbook: a real dump, without the token.
    output = stdout(client, job["id"])
    assert f"ARS_RUN_ID={job['id']}" in output
    places: dict[str, str] = {
        "stdout": output,
        "events": json.dumps(all_events(client, job["id"])),
        "job": client.get(f"/api/v1/jobs/{job['id']}").text,
    }
    engine = git_stack.db()
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT * FROM job WHERE id = :id"), {"id": job["id"]}).one()
        events = connection.execute(
            sa.text("SELECT * FROM job_event WHERE job_id = :id"), {"id": job["id"]}
        ).all()
    engine.dispose()
    places["job row"] = repr(tuple(row))
    places["event rows"] = repr([tuple(event) for event in events])
    for log in git_stack.logs.glob("*.log"):
        places[log.name] = log.read_text(errors="replace")
    # Every file the worker wrote: run directories (ansible-runner's record of the command and its
    # environment included, kept by KEEP_WORK_DIRS) and the mirror cache.
    for path in git_stack.work_dir.rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_bytes().decode("latin-1")
    assert any(name.endswith("artifacts/run/command") for name in places)
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"token found in {where}"


def test_error_reasons_never_carry_the_token(client: httpx.Client, repos: Repos) -> None:
    # A repository the token cannot see: git's answer is turned into a reason without any secret.
    job = wait_for(client, submit(client, git_job(repos.app("team/absent.git")))["id"])
    assert job["status"] == "error"
    assert re.search(r"repository .*team/absent.git not found", job["reason"]), job["reason"]
    assert repos.tokens["ARS_TEST_GITLAB_TOKEN"] not in job["reason"]


@contextmanager
def slow_fetches(repos: Repos, path: str, delay: float) -> Iterator[None]:
    """The Git server holds back every fetch of `path` for `delay` seconds while the block runs."""
    repos.gitlab.slow.add(path)
    repos.gitlab.delay = delay
    try:
        yield
    finally:
        repos.gitlab.slow.discard(path)


def new_repo(repos: Repos, tmp_path: Path, path: str, marker: str) -> str:
    repo = RepoBuilder(repos.gitlab.root, path, tmp_path / uuid.uuid4().hex[:8])
    repo.commit({"site.yml": playbook(marker)})
    repo.push()
    return repos.app(path)


def test_a_cancel_during_the_fetch_ends_it_at_once(
    client: httpx.Client, repos: Repos, tmp_path: Path
) -> None:
    url = new_repo(repos, tmp_path, "team/cancel-me.git", "never printed")
    with slow_fetches(repos, "team/cancel-me.git", 60):
        job = submit(client, git_job(url))
        wait_for(client, job["id"], {"running"})
        assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 202
        # The fetch is held back for a minute: only a stopped fetch ends the run before then.
        done = wait_for(client, job["id"], deadline_s=5)
    assert done["status"] == "canceled", done
    assert done["reason"] == "canceled by request"
    assert "never printed" not in stdout(client, job["id"])


def _kill_git_processes(needle: bytes) -> None:
    """What dies with a worker pod: its git processes (they run in sessions of their own)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue


def test_a_run_lost_during_its_fetch_is_run_again_once(
    start_stack: StackFactory, repos: Repos, tmp_path: Path
) -> None:
    """Lost before it launched ansible-playbook, a run changed nothing on any host: it is queued again and
    runs once, on another worker (lost after the launch it ends `error`: tests/test_faults.py)."""
    stack = start_stack(workers=0, WORKER_LOST_AFTER="4", SWEEP_INTERVAL="2", **git_settings(repos))
    url = new_repo(repos, tmp_path, "team/lost.git", "ran after all")
    with stack.client() as http:
        with slow_fetches(repos, "team/lost.git", 60):
            doomed = stack.add_worker("doomed")
            job = submit(http, git_job(url))
            wait_for(http, job["id"], {"running"})
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            _kill_git_processes(b"team/lost.git")
        survivor = stack.add_worker("survivor")
        try:
            done = wait_for(http, job["id"], deadline_s=60)
        finally:
            survivor.terminate()
            survivor.wait(timeout=60)
        assert done["status"] == "successful", done
        assert stdout(http, job["id"]).count("ran after all") == 1
    engine = stack.db()
    with engine.connect() as connection:
        requeues = connection.execute(sa.text("SELECT requeues FROM job WHERE id = :id"), {"id": job["id"]})
        assert requeues.scalar_one() == 1
    engine.dispose()


def test_an_exclusive_runs_hosts_are_resolved_on_the_worker(client: httpx.Client, repos: Repos) -> None:
    """A Git source's inventory is only known once fetched: the worker resolves the targets, and a limit
    that selects nothing ends the run `error` without running it."""
    inventory = "inventory/hosts.yml"
    nothing = submit(client, git_job(repos.app(), limit="nope", inventory=inventory, exclusive=True))
    ran = submit(client, git_job(repos.app(), limit="local*", inventory=inventory, exclusive=True))
    nothing, ran = wait_for(client, nothing["id"]), wait_for(client, ran["id"])
    assert (nothing["status"], nothing["reason"]) == ("error", "limit: selects no host of the inventory")
    assert (nothing["event_count"], nothing["targets"]) == (0, None)
    assert (ran["status"], ran["targets"]) == ("successful", ["localhost"])
