"""A `run` token in an attacker's hands: each field tried as Ansible, git or a shell would read it.

Every test is an attack that must fail (a marker file that must not appear, a file whose random content
must not reach the job, a Redis key that must not be left behind), then ordinary use of the same field,
which must keep working. Two stacks:

- `target` runs playbooks, with ANSIBLE_PIPELINING=True (a become command reaches the shell as one string)
  and its own copy of the test playbooks holding an executable helper, `tools/helper.sh`;
- `lone` has no worker: what it accepts stays queued and nothing runs (an inventory of 10^8 hosts, a limit
  that backtracks for hours), and its tokens have a small stream allowance.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from redis import asyncio as aioredis

from service.api.auth import new_token
from service.config import Settings
from service.jobs.variables import MAGIC_VARIABLES, refused_name
from service.live.publish import publish_events
from service.runner.execute import ansible_environment
from service.runner.workspace import dump_unsafe
from tests.support import (
    TEST_PLAYBOOKS,
    Backends,
    Stack,
    StackFactory,
    all_events,
    ansible_playbook,
    wait_for,
    wait_until,
)

# What an inline host needs to be this machine (the target stack allows these two names).
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
STREAMS_PER_TOKEN = 150


@dataclass
class Target:
    stack: Stack
    markers: Path  # attacks that worked would leave their marker files here


@pytest.fixture(scope="module")
def target(start_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> Target:
    markers = tmp_path_factory.mktemp("markers")
    playbooks = tmp_path_factory.mktemp("source") / "playbooks"
    shutil.copytree(TEST_PLAYBOOKS, playbooks, symlinks=True)
    helper = playbooks / "tools" / "helper.sh"
    helper.parent.mkdir()
    # What an inventory script would print; a program of the source that is not an inventory.
    helper.write_text(f"#!/bin/sh\ntouch {markers / 'helper-ran'}\necho '{{}}'\n")
    helper.chmod(0o755)
    stack = start_stack(
        PLAYBOOKS_DIR=str(playbooks),
        ANSIBLE_PIPELINING="True",
        EXTRA_VARS_ALLOW=json.dumps(sorted(LOCAL)),
    )
    return Target(stack, markers)


@pytest.fixture(scope="module")
def client(target: Target) -> Iterator[httpx.Client]:
    with target.stack.client() as http:
        yield http


@dataclass
class Lone:
    stack: Stack
    tokens: list[str]


@pytest.fixture(scope="module")
def lone(start_stack: StackFactory) -> Lone:
    tokens, entries = zip(*(new_token(name, ["run", "read"]) for name in ("first", "second")), strict=True)
    stack = start_stack(
        workers=0,
        AUTH_DISABLED="false",
        API_TOKENS=";".join(entries),
        EXTRA_VARS_ALLOW='["role_name"]',
        MAX_STREAMS_PER_TOKEN=str(STREAMS_PER_TOKEN),
    )
    return Lone(stack, list(tokens))


@pytest.fixture(scope="module")
def queued(lone: Lone) -> Iterator[httpx.Client]:
    with lone.stack.client(headers={"Authorization": f"Bearer {lone.tokens[0]}"}) as http:
        yield http


def template(marker: Path) -> str:
    return f"{{{{ lookup('pipe', 'touch {marker}') }}}}"


def output(client: httpx.Client, job_id: str) -> str:
    """Everything a reader of the job gets: the job, its stdout and its events."""
    job = client.get(f"/api/v1/jobs/{job_id}").text
    stdout = client.get(f"/api/v1/jobs/{job_id}/stdout").text
    return "\n".join([job, stdout, json.dumps(all_events(client, job_id))])


def attempt(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    """Submit an attack; if it was accepted, let it run to its end (so that its effects can be looked for)."""
    response = client.post("/api/v1/jobs", json=body)
    if response.status_code == 202:
        wait_for(client, response.json()["id"])
    return response


def refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "InvalidRequest" or response.json()["error"] == "ValidationError"
    assert field in response.json()["detail"], response.json()


# --- 1. mapping keys are data, at every depth ---------------------------------------------------------------


def test_mapping_keys_are_never_rendered(target: Target, client: httpx.Client) -> None:
    marker = target.markers / "key"
    key = template(marker)
    attacks: dict[str, dict[str, Any]] = {
        "extra_vars.users": {"extra_vars": {"users": {key: {}}}, "inventory": "inventory/local1.yml"},
        "inventory.all.hosts.h1.users": {
            "inventory": {"all": {"hosts": {"h1": {**LOCAL, "users": {key: {}}}}}}
        },
        "inventory.all.vars.users": {
            "inventory": {"all": {"hosts": {"h1": LOCAL}, "vars": {"users": {"ok": {key: 1}}}}}
        },
        "extra_vars.deep.list[1]": {
            "extra_vars": {"users": {}, "deep": {"list": [{}, {key: 1}]}},
            "inventory": "inventory/local1.yml",
        },
    }
    responses = {
        where: attempt(client, {"playbook": "loop_keys.yml", **body}) for where, body in attacks.items()
    }
    assert not marker.exists(), "a key from the request was rendered as a template"
    for where, response in responses.items():
        refused(response, where)
        assert "template" in response.json()["detail"]


def test_ordinary_keys_are_printed_as_they_are(client: httpx.Client) -> None:
    users = {"alice": {"uid": 1001}, "{x}": 1, "a{b": 2, "%{c}": 3, "$(id)": 4}
    body = {"playbook": "loop_keys.yml", "inventory": "inventory/local1.yml", "extra_vars": {"users": users}}
    job = wait_for(client, client.post("/api/v1/jobs", json=body).json()["id"])
    assert job["status"] == "successful", job
    stdout = client.get(f"/api/v1/jobs/{job['id']}/stdout").text
    for key in users:
        assert stdout.count(f'"key {key}"') == 3, (key, stdout)


def test_keys_are_written_so_that_ansible_never_renders_them(tmp_path: Path) -> None:
    """Behind the API's refusal: the worker's extra vars file keeps a template key inert by itself."""
    marker = tmp_path / "marker"
    extravars = tmp_path / "extravars"
    extravars.write_text(dump_unsafe({"users": {template(marker): {"{{ 1 + 1 }}": 1}}}))
    result = subprocess.run(
        [
            ansible_playbook(),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"@{extravars}",
            str(TEST_PLAYBOOKS / "loop_keys.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not marker.exists(), result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("key {{ lookup('pipe'") == 3, result.stdout


# --- 2. values of connection variables ----------------------------------------------------------------------


def test_become_user_never_reaches_a_shell(target: Target, client: httpx.Client) -> None:
    marker = target.markers / "become"
    become = {"ansible_become": True, "ansible_become_user": f"root; touch {marker}; #"}
    attacks: dict[str, dict[str, Any]] = {
        "extra_vars.ansible_become_user": {"inventory": "inventory/local1.yml", "extra_vars": become},
        "inventory.all.hosts.h1.ansible_become_user": {
            "inventory": {"all": {"hosts": {"h1": {**LOCAL, **become}}}}
        },
    }
    responses = {
        where: attempt(client, {"playbook": "command.yml", **body}) for where, body in attacks.items()
    }
    assert not marker.exists(), "ansible_become_user reached the become command"
    for where, response in responses.items():
        refused(response, where)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ansible_become", "yes"),
        ("ansible_become", 1),
        ("ansible_become_user", "root; id"),
        ("ansible_become_user", "$(id)"),
        ("ansible_become_user", "a b"),
        ("ansible_become_user", "-u"),
        ("ansible_become_user", "root\n"),
        ("ansible_become_user", ["root"]),
        ("ansible_user", "deploy;id"),
        ("ansible_user", "`id`"),
        ("ansible_host", "host name"),
        ("ansible_host", "$(id)"),
        ("ansible_host", "-oProxyCommand=id"),
        ("ansible_host", "root@host"),
        ("ansible_host", "a" * 254),
        ("ansible_port", 0),
        ("ansible_port", 65536),
        ("ansible_port", "22"),
        ("ansible_port", True),
    ],
)
def test_connection_variable_values_are_checked(
    lone: Lone, queued: httpx.Client, name: str, value: Any
) -> None:
    before = lone.stack.count_jobs()
    for where, body in {
        f"extra_vars.{name}": {"extra_vars": {name: value}},
        f"inventory.all.vars.{name}": {"inventory": {"all": {"hosts": {"h1": None}, "vars": {name: value}}}},
    }.items():
        refused(queued.post("/api/v1/jobs", json={"playbook": "debug.yml", **body}), where)
    assert lone.stack.count_jobs() == before


def test_ordinary_connection_variables_are_accepted(queued: httpx.Client) -> None:
    for variables in (
        {"ansible_become": True, "ansible_become_user": "postgres", "ansible_user": "deploy"},
        {"ansible_become": False, "ansible_become_user": "www-data", "ansible_user": "svc.deploy_1"},
        {"ansible_host": "10.0.0.1", "ansible_port": 2222},
        {"ansible_host": "fe80::1%eth0"},
        {"ansible_host": "web-01.example.com."},
        {"ansible_host": "db1"},
    ):
        response = queued.post("/api/v1/jobs", json={"playbook": "debug.yml", "extra_vars": variables})
        assert response.status_code == 202, (variables, response.text)


# --- 3. limit: patterns, never a file -----------------------------------------------------------------------


def test_limit_never_reads_a_file(client: httpx.Client, tmp_path: Path) -> None:
    content = f"content-{uuid.uuid4().hex}"
    secret = tmp_path / "patterns"
    secret.write_text(f"{content}\n")
    limits = [f"@{secret}", f" @{secret}", f"h1,@{secret}", f"h1:@{secret}", f"all:@{secret}", f"!@{secret}"]
    bodies = [
        {"playbook": "debug.yml", "inventory": "inventory/local3.yml", "limit": limit} for limit in limits
    ]
    responses = [client.post("/api/v1/jobs", json=body) for body in bodies]
    for limit, response in zip(limits, responses, strict=True):
        if response.status_code == 202:
            job_id = response.json()["id"]
            wait_for(client, job_id)
            assert content not in output(client, job_id), f"limit {limit!r} read the file"
        refused(response, "limit")


@pytest.mark.parametrize(
    ("limit", "hosts"),
    [
        ("web:&prod", {"h1"}),
        ("all:!h3", {"h1", "h2"}),
        ("all[0:1]", {"h1", "h2"}),
        ("~h[12]", {"h1", "h2"}),
        ("h1,h2", {"h1", "h2"}),
        ("web, !h2", {"h1"}),
        ("*3", {"h3"}),
    ],
)
def test_ordinary_limits_select_their_hosts(client: httpx.Client, limit: str, hosts: set[str]) -> None:
    body = {"playbook": "debug.yml", "inventory": "inventory/groups.yml", "limit": limit}
    response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "successful", job
    assert set(job["host_stats"]) == hosts


@pytest.mark.parametrize(
    "limit",
    [
        "~(a+)+$",
        "~(a|aa)*b",
        "~(a*)*",
        "~.*.*.*x",
        "~(x)\\1",
        "~(?P<n>a)(?P=n)",
        "~" + "(ab|a)" * 17,
        "~(a{2}){100}",
        "~" + "a" * 300,
        "~[",
    ],
)
def test_a_costly_or_broken_regex_limit_is_refused(lone: Lone, queued: httpx.Client, limit: str) -> None:
    before = lone.stack.count_jobs()
    response = queued.post("/api/v1/jobs", json={"playbook": "debug.yml", "limit": limit})
    refused(response, "limit")
    assert len(response.text) < 500
    assert lone.stack.count_jobs() == before


def test_ordinary_regex_limits_are_accepted(queued: httpx.Client) -> None:
    for limit in ("~h[12]", "~web-\\d+$", "~.*prod.*", "~^(web|db)\\d{2}", "web:~db[0-9]+"):
        response = queued.post("/api/v1/jobs", json={"playbook": "debug.yml", "limit": limit})
        assert response.status_code == 202, (limit, response.text)


# --- 4. Ansible's magic variables ---------------------------------------------------------------------------

MAGIC = [
    "inventory_hostname",
    "inventory_hostname_short",
    "hostvars",
    "groups",
    "group_names",
    "playbook_dir",
    "inventory_dir",
    "inventory_file",
    "role_path",
    "play_hosts",
    "omit",
    "vars",
]


@pytest.mark.parametrize("name", MAGIC)
def test_magic_variables_are_refused(lone: Lone, queued: httpx.Client, name: str) -> None:
    before = lone.stack.count_jobs()
    value = "-oProxyCommand=id" if name == "inventory_hostname" else "x"
    attacks: dict[str, dict[str, Any]] = {
        f"extra_vars.{name}": {"extra_vars": {name: value}},
        f"inventory.all.hosts.h1.{name}": {"inventory": {"all": {"hosts": {"h1": {name: value}}}}},
        f"inventory.web.vars.{name}": {"inventory": {"web": {"hosts": {"h1": None}, "vars": {name: value}}}},
    }
    for where, body in attacks.items():
        refused(queued.post("/api/v1/jobs", json={"playbook": "debug.yml", **body}), where)
    assert lone.stack.count_jobs() == before


def test_the_refused_names_cover_what_ansible_sets_itself() -> None:
    """The variables the installed Ansible sets for a host, outside `ansible_*`, are all refused."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=["h1,"])
    variables = VariableManager(loader=loader, inventory=inventory).get_vars(host=inventory.get_host("h1"))
    names = {name for name in variables if not name.startswith("ansible_")}
    assert names >= {"inventory_hostname", "groups", "group_names", "playbook_dir"}
    assert names - MAGIC_VARIABLES == set()
    assert all(refused_name(name, allowed=()) for name in names | MAGIC_VARIABLES)


def test_an_operator_can_allow_a_magic_name(queued: httpx.Client) -> None:
    # EXTRA_VARS_ALLOW='["role_name"]' on this stack.
    response = queued.post("/api/v1/jobs", json={"playbook": "debug.yml", "extra_vars": {"role_name": "x"}})
    assert response.status_code == 202, response.text


# --- 5. inventory paths: sources of inventory, never a program ----------------------------------------------


def test_inventory_path_never_runs_a_program(target: Target, client: httpx.Client) -> None:
    marker = target.markers / "helper-ran"
    attacks = ["tools/helper.sh", "tools", ".", "./", "tools/../"]
    # Exclusive runs have their inventory read at submit too, by the API, to say which hosts they target.
    responses = [
        client.post("/api/v1/jobs", json={"playbook": "debug.yml", "inventory": path, "exclusive": exclusive})
        for path in attacks
        for exclusive in (False, True)
    ]
    attacks = [path for path in attacks for _ in (False, True)]
    for response in responses:
        if response.status_code == 202:
            wait_for(client, response.json()["id"])
    assert not marker.exists(), "a program of the source ran as an inventory"
    for path, response in zip(attacks, responses, strict=True):
        if path.strip("/") in (".", "tools/.."):
            refused(response, "inventory")


def test_inventory_files_and_directories_work(client: httpx.Client) -> None:
    for inventory, hosts in (("inventory/local3.yml", {"h1", "h2", "h3"}), ("inventory", {"h1", "h2", "h3"})):
        body = {"playbook": "debug.yml", "inventory": inventory}
        job = wait_for(client, client.post("/api/v1/jobs", json=body).json()["id"])
        assert job["status"] == "successful", job
        assert set(job["host_stats"]) == hosts


# --- 7. small requests, big costs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inventory", "field"),
    [
        ({"all": {"hosts": {"h[0:99999999]": None}}}, "inventory.all.hosts.h[0:99999999]"),
        ({"all": {"hosts": {"h[a:z][0:999:2]": None}}}, "inventory.all.hosts.h[a:z][0:999:2]"),
        (
            {"a": {"hosts": {"a[0:5999]": None}}, "b": {"children": {"c": {"hosts": {"c[0:5999]": None}}}}},
            "inventory.b.children.c.hosts.c[0:5999]",
        ),
        ({"all": {"hosts": {"h[0:9:0]": None}}}, "inventory.all.hosts.h[0:9:0]"),
    ],
)
def test_inline_inventory_expands_to_at_most_max_inline_hosts(
    lone: Lone, queued: httpx.Client, inventory: dict[str, Any], field: str
) -> None:
    before = lone.stack.count_jobs()
    refused(queued.post("/api/v1/jobs", json={"playbook": "debug.yml", "inventory": inventory}), field)
    assert lone.stack.count_jobs() == before


def test_an_inline_inventory_of_max_inline_hosts_is_accepted(queued: httpx.Client) -> None:
    inventory = {"all": {"hosts": {"h[0:99][00:99]": None}}}  # 10,000 hosts, the default maximum
    response = queued.post("/api/v1/jobs", json={"playbook": "debug.yml", "inventory": inventory})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("suffix", ["", "/cancel", "/events", "/stdout", "/stream"])
def test_job_ids_are_checked_before_any_lookup(
    lone: Lone, queued: httpx.Client, backends: Backends, suffix: str
) -> None:
    job_id = "x" * 5000
    method = "POST" if suffix == "/cancel" else "GET"
    response = queued.request(method, f"/api/v1/jobs/{job_id}{suffix}")
    assert response.status_code == 422, response.text[:300]
    assert "job_id" in response.json()["detail"]
    assert len(response.text) < 300, "the id was echoed back"
    with redis.Redis.from_url(backends.redis_url) as server:
        assert list(server.scan_iter(match=f"*{job_id[:100]}*")) == []


@pytest.mark.parametrize(
    ("request_args", "field"),
    [
        ({"method": "GET", "url": "/api/v1/jobs", "params": {"label": "k" * 5000}}, "label"),
        ({"method": "GET", "url": "/api/v1/jobs", "params": {"label": "k=" + "v" * 5000}}, "label"),
        (
            {"method": "POST", "url": "/api/v1/jobs", "json": {"playbook": "debug.yml", "x" * 5000: 1}},
            "unknown",
        ),
        (
            {
                "method": "POST",
                "url": "/api/v1/jobs",
                "json": {"playbook": "debug.yml", "extra_vars": {"x-" * 2500: 1}},
            },
            "extra_vars",
        ),
        (
            {
                "method": "POST",
                "url": "/api/v1/jobs",
                "json": {"playbook": "debug.yml", "labels": {"-" * 5000: "v"}},
            },
            "label",
        ),
        (
            {
                "method": "POST",
                "url": "/api/v1/jobs",
                "json": {"playbook": "debug.yml", "inventory": {"g": {"hosts": {"-" * 5000: None}}}},
            },
            "inventory",
        ),
    ],
)
def test_errors_never_echo_unbounded_input(
    queued: httpx.Client, request_args: dict[str, Any], field: str
) -> None:
    response = queued.request(**request_args)
    assert response.status_code == 422, response.text[:300]
    assert field in response.json()["detail"]
    assert len(response.text) < 500, response.text[:600]


@dataclass
class Followers:
    """One client following every job of a list, each until `release`."""

    statuses: list[int]
    live: int  # streams that received the live event published on their job
    opened: asyncio.Event
    release: asyncio.Event


async def _follow_all(base_url: str, token: str, job_ids: list[str], followers: Followers) -> None:
    limits = httpx.Limits(max_connections=len(job_ids) + 5)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits, headers=headers) as http:

        async def read(response: httpx.Response) -> None:
            async for line in response.aiter_lines():
                followers.live += line == "id: 1"

        async def follow(job_id: str) -> None:
            async with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as response:
                followers.statuses.append(response.status_code)
                if len(followers.statuses) == len(job_ids):
                    followers.opened.set()
                reading = asyncio.create_task(read(response))
                await followers.release.wait()
                reading.cancel()

        await asyncio.gather(*(follow(job_id) for job_id in job_ids))


def live_connections(redis_url: str, api_pid: int) -> int:
    with redis.Redis.from_url(redis_url) as server:
        clients: list[dict[str, str]] = server.client_list()
    return sum(entry.get("name") == f"ars-live-{api_pid}" for entry in clients)


def test_streams_share_redis_connections_and_are_capped_per_token(
    lone: Lone, queued: httpx.Client, backends: Backends
) -> None:
    """150 followed jobs, each sent a live event (as a worker publishes them), all through at most two Redis
    connections of the API; the token's 151st stream is refused, another token's is not."""
    job_ids = [
        queued.post("/api/v1/jobs", json={"playbook": "debug.yml"}).json()["id"]
        for _ in range(STREAMS_PER_TOKEN)
    ]
    api_pid = lone.stack.processes[0].pid
    first, second = lone.tokens
    event: dict[str, Any] = {
        "event": "verbose",
        "host": None,
        "task": None,
        "play": None,
        "stdout": "live",
        "data": {},
    }

    async def main() -> tuple[Followers, int, int]:
        followers = Followers([], 0, asyncio.Event(), asyncio.Event())
        following = asyncio.create_task(_follow_all(lone.stack.base_url, first, job_ids, followers))
        async with asyncio.timeout(60):
            await followers.opened.wait()
        async with httpx.AsyncClient(base_url=lone.stack.base_url, timeout=30) as http:
            as_second = {"Authorization": f"Bearer {second}"}
            async with asyncio.timeout(60):
                while (await http.get("/api/v1/streams", headers=as_second)).json()["readers"] < len(job_ids):
                    await asyncio.sleep(0.05)
            # As a worker does: stored, then published (a reader whose start came after the publish reads
            # it from the database).
            created = datetime.now(UTC).replace(tzinfo=None)
            engine = lone.stack.db()
            with engine.begin() as connection:
                connection.execute(
                    sa.insert(sa.table("job_event", *map(sa.column, ["job_id", "seq", *event, "created"]))),
                    [
                        {**event, "data": "{}", "job_id": job_id, "seq": 1, "created": created}
                        for job_id in job_ids
                    ],
                )
            engine.dispose()
            publisher = aioredis.Redis.from_url(backends.redis_url)
            for job_id in job_ids:
                stored = {**event, "seq": 1, "created": created.isoformat()}
                await publish_events(publisher, job_id, [stored], maxlen=100)
            await publisher.aclose()
            async with asyncio.timeout(60):
                while followers.live < len(job_ids):
                    await asyncio.sleep(0.05)
            connections = live_connections(backends.redis_url, api_pid)
            assert connections <= 2, f"{len(job_ids)} followed streams held {connections} Redis connections"
            url = f"/api/v1/jobs/{job_ids[0]}/stream"
            async with http.stream("GET", url, headers={"Authorization": f"Bearer {first}"}) as over:
                over_status = over.status_code
            async with http.stream("GET", url, headers=as_second) as other:
                other_status = other.status_code
        followers.release.set()
        await following
        return followers, over_status, other_status

    followers, over, other = asyncio.run(main())
    assert followers.statuses == [200] * STREAMS_PER_TOKEN
    assert over == 429
    assert other == 200
    # The slots are given back once the streams close.
    wait_until(lambda: queued.get("/api/v1/streams").json()["readers"] == 0, "the streams to close")
    with queued.stream("GET", f"/api/v1/jobs/{job_ids[0]}/stream") as again:
        assert again.status_code == 200
    for job_id in job_ids:
        queued.post(f"/api/v1/jobs/{job_id}/cancel")


def test_the_script_inventory_plugin_is_off_unless_the_operator_enables_it() -> None:
    default = ansible_environment(Settings(), "job")["ANSIBLE_INVENTORY_ENABLED"].split(",")
    assert "script" not in default
    assert {"yaml", "ini", "auto"} <= set(default)
    enabled = Settings(inventory_plugins=[*default, "script"])
    assert "script" in ansible_environment(enabled, "job")["ANSIBLE_INVENTORY_ENABLED"].split(",")
