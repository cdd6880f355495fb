"""The rules of Git sources without the HTTP stack: provider configuration, URL allow-list, git's ref rules,
the mirror cache's bound and timeout (against the real Git server of the tests), requirements files."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from harness.gitserver import GitServer, RepoBuilder, git_server, playbook, self_signed_certificate
from service.config import Settings
from service.errors import InvalidRequest, SourceError
from service.sources.git import MirrorCache
from service.sources.providers import GitProvider, check_ref, locate_repo
from service.sources.requirements import prepare_requirements
from tests.support import ROOT

REF_SAMPLES = [
    "main",
    "feature/x",
    "release-1.2",
    "v1.0.0",
    "a" * 40,
    "0123456789abcdef0123456789abcdef01234567",
    "HEAD",
    "with@sign",
    "unicodé",
    "a..b",
    "a/.b",
    ".a",
    "a.lock",
    "a/b.lock/c",
    "a.",
    "a/",
    "/a",
    "a//b",
    "a b",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[b",
    "a\\b",
    "@",
    "a@{b",
    "a\x01b",
    "a\x7fb",
    "x/y/z",
    "_.-+",
]


@pytest.mark.parametrize("ref", REF_SAMPLES)
def test_ref_rules_match_git_check_ref_format(ref: str) -> None:
    git = subprocess.run(
        ["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True, check=False
    )
    try:
        check_ref(ref)
    except InvalidRequest as exc:
        assert exc.detail.startswith("source.ref:")
        assert git.returncode != 0, f"git accepts {ref!r}, we refuse it"
    else:
        assert git.returncode == 0, f"git refuses {ref!r}, we accept it"


@pytest.mark.parametrize("ref", ["-x", "--upload-pack=evil", "-"])
def test_a_ref_never_becomes_an_option(ref: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^source\.ref"):
        check_ref(ref)


def provider(**fields: Any) -> GitProvider:
    return GitProvider.model_validate(fields)


PROVIDERS = [
    provider(type="gitlab", host="gitlab.example", orgs=["platform/infra"]),
    provider(type="azure", host="dev.azure.com", orgs=["MyOrg"]),
    provider(type="github", host="github.example:8443", orgs=["Octo"], allow_ssh=True),
    provider(type="generic", host="git.lab", orgs=["Team"], allow_http=True),
]


@pytest.mark.parametrize(
    ("repo", "canonical"),
    [
        ("https://gitlab.example/platform/infra/app.git", "https://gitlab.example/platform/infra/app.git"),
        ("https://GitLab.Example/Platform/Infra/sub/app", "https://gitlab.example/Platform/Infra/sub/app"),
        ("https://gitlab.example:443/platform/infra/app", "https://gitlab.example:443/platform/infra/app"),
        ("https://dev.azure.com/myorg/proj/_git/repo", "https://dev.azure.com/myorg/proj/_git/repo"),
        ("https://github.example:8443/octo/tool/", "https://github.example:8443/octo/tool"),
        ("ssh://git@github.example:8443/Octo/tool.git", "ssh://git@github.example:8443/Octo/tool.git"),
        ("http://git.lab/Team/r", "http://git.lab/Team/r"),
    ],
)
def test_allowed_repositories_and_their_canonical_url(repo: str, canonical: str) -> None:
    assert locate_repo(repo, PROVIDERS).url == canonical


@pytest.mark.parametrize(
    "repo",
    [
        "https://gitlab.example/platform/app.git",  # only the nested group platform/infra is allowed
        "https://gitlab.example/platform/infra",  # the org itself is not a repository
        "https://gitlab.example:8443/platform/infra/app",  # another port
        "http://gitlab.example/platform/infra/app",  # http not allowed for this provider
        "git@gitlab.example:platform/infra/app.git",  # ssh not allowed for this provider
        "git@github.example:Octo/tool.git",  # scp-style has no port: port 22, not 8443
        "https://git.lab/team/r",  # generic: org case as written
        "https://gitlab.example/platform/infra/app#frag",
        "https://token@gitlab.example/platform/infra/app",
        "https://gitlab.example/platform/infra/%2e%2e/x",
        "https://gitlab.example/platform//infra/app",
        "ext::ssh -oProxyCommand=x gitlab.example",
        "file:///platform/infra/app",
        "/platform/infra/app",
    ],
)
def test_refused_repositories(repo: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^source\.repo: "):
        locate_repo(repo, PROVIDERS)


@pytest.mark.parametrize(
    ("kind", "user"), [("azure", ""), ("gitlab", "oauth2"), ("github", "x-access-token"), ("generic", "git")]
)
def test_each_provider_authenticates_in_its_own_scheme(kind: str, user: str) -> None:
    header = provider(type=kind, host="h.example").authorization_header("s3cret")
    assert header == "Authorization: Basic " + base64.b64encode(f"{user}:s3cret".encode()).decode()


def settings_with(providers: list[dict[str, Any]], tmp_path: Path, **extra: Any) -> Settings:
    return Settings.model_validate({"git_providers": providers, "work_dir": tmp_path, **extra})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "bitbucket", "host": "b.example"}, "type"),
        ({"type": "gitlab", "host": "https://gitlab.example"}, "not a host name"),
        ({"type": "gitlab", "host": "gitlab.example/org"}, "not a host name"),
        ({"type": "gitlab", "host": "gitlab.example:99999"}, "port out of range"),
        ({"type": "gitlab", "host": "g.example", "orgs": ["a//b"]}, "org"),
        ({"type": "gitlab", "host": "g.example", "credential_env": "NOT SET"}, "not an environment variable"),
        ({"type": "gitlab", "host": "g.example", "credential_env": "ARS_TEST_UNSET_TOKEN"}, "is not set"),
        ({"type": "gitlab", "host": "g.example", "ca_file": "/nonexistent/ca.pem"}, "ca_file"),
        ({"type": "gitlab", "host": "g.example", "token": "inline"}, "token"),
    ],
)
def test_a_bad_provider_configuration_is_refused(entry: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=message):
        settings_with([entry], tmp_path)


def test_a_host_listed_twice_is_refused(tmp_path: Path) -> None:
    entry = {"type": "gitlab", "host": "g.example"}
    with pytest.raises(ValidationError, match="host listed twice"):
        settings_with([entry, {**entry, "type": "github"}], tmp_path)


def test_credentials_are_resolved_once_by_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARS_TEST_TOKEN", "t0ken")
    settings = settings_with(
        [{"type": "gitlab", "host": "g.example", "credential_env": "ARS_TEST_TOKEN"}], tmp_path
    )
    secret = settings.git_credential(settings.git_providers[0])
    assert secret is not None
    assert secret.get_secret_value() == "t0ken"
    assert "t0ken" not in repr(settings)


def test_the_service_does_not_start_with_a_bad_provider(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from service.main import app"],
        env={
            "GIT_PROVIDERS": '[{"type": "gitlab", "host": "g.example", "credential_env": "NOPE_TOKEN"}]',
            "AUTH_DISABLED": "true",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "PATH": "/usr/bin:/bin",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "GIT_PROVIDERS[0] (g.example): credential_env NOPE_TOKEN is not set" in result.stderr


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with git_server(tmp_path / "srv", {"oauth2:tok"}) as running:
        yield running


def make_repo(server: GitServer, tmp_path: Path, name: str, size: int = 0) -> str:
    repo = RepoBuilder(server.root, f"team/{name}.git", tmp_path / name)
    repo.commit({"site.yml": playbook(name), "pad.bin": os.urandom(size)})
    repo.push()
    return server.url(f"team/{name}.git")


def cache_for(
    server: GitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: Any
) -> MirrorCache:
    monkeypatch.setenv("ARS_TEST_TOKEN", "tok")
    settings = settings_with(
        [
            {
                "type": "gitlab",
                "host": f"127.0.0.1:{server.port}",
                "credential_env": "ARS_TEST_TOKEN",
                "allow_http": True,
            }
        ],
        tmp_path / "work",
        **extra,
    )
    return MirrorCache(settings)


def test_least_recently_used_mirrors_are_evicted_beyond_the_bound(
    server: GitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = cache_for(server, tmp_path, monkeypatch, git_cache_max_bytes=150_000)
    providers = cache.settings.git_providers
    urls = [make_repo(server, tmp_path, name, size=60_000) for name in ("one", "two", "three")]
    for index, url in enumerate(urls):
        fetched = cache.checkout(locate_repo(url, providers), "main", tmp_path / f"out{index}")
        assert fetched.mirror_reused is False
    # 60 kB that do not compress per mirror: the third one pushed the cache past its bound.
    assert len(list(cache.root.glob("*.git"))) == 2
    # The most recently used survives, the first one went.
    assert cache.checkout(locate_repo(urls[2], providers), "main", tmp_path / "again2").mirror_reused
    assert not cache.checkout(locate_repo(urls[0], providers), "main", tmp_path / "again0").mirror_reused


def test_a_fetch_that_takes_too_long_is_stopped(
    server: GitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_repo(server, tmp_path, "slow")
    server.slow.add("team/slow.git")
    server.delay = 5
    cache = cache_for(server, tmp_path, monkeypatch, git_timeout=0.5)
    with pytest.raises(SourceError, match=r"git fetch of .*team/slow.git did not finish within 0.5 s"):
        cache.checkout(locate_repo(url, cache.settings.git_providers), "main", tmp_path / "out")


def test_a_private_ca_is_trusted_only_through_ca_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARS_TEST_TOKEN", "tok")
    cert, key = self_signed_certificate(tmp_path)
    with git_server(tmp_path / "srv", {"oauth2:tok"}, tls=(cert, key)) as server:
        url = make_repo(server, tmp_path, "tls")
        entry = {"type": "gitlab", "host": f"127.0.0.1:{server.port}", "credential_env": "ARS_TEST_TOKEN"}
        untrusted = MirrorCache(settings_with([entry], tmp_path / "a"))
        with pytest.raises(SourceError, match=r"TLS certificate of 127\.0\.0\.1:\d+ is not trusted"):
            untrusted.checkout(
                locate_repo(url, untrusted.settings.git_providers), "main", tmp_path / "a" / "out"
            )
        trusted = MirrorCache(settings_with([{**entry, "ca_file": str(cert)}], tmp_path / "b"))
        fetched = trusted.checkout(
            locate_repo(url, trusted.settings.git_providers), "main", tmp_path / "b" / "out"
        )
        assert (tmp_path / "b" / "out" / "site.yml").is_file()
        assert len(fetched.commit) == 40


def test_a_redirect_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        git_server(tmp_path / "elsewhere", {"oauth2:tok"}) as elsewhere,
        git_server(tmp_path / "srv", {"oauth2:tok"}) as server,
    ):
        make_repo(elsewhere, tmp_path, "moved")
        server.redirects["team/moved.git"] = elsewhere.url("team/moved.git", host="localhost")
        cache = cache_for(server, tmp_path, monkeypatch)
        with pytest.raises(SourceError, match="answered with a redirect, which is not followed"):
            cache.checkout(
                locate_repo(server.url("team/moved.git"), cache.settings.git_providers),
                "main",
                tmp_path / "o",
            )
        assert [item.status for item in server.served] == [302]
        # The Authorization header never reached the other host.
        assert elsewhere.served == []


def test_requirements_from_a_configured_galaxy_that_does_not_answer_give_a_clear_error(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    (project / "collections").mkdir(parents=True)
    (project / "collections" / "requirements.yml").write_text("collections:\n  - name: community.general\n")
    settings = Settings.model_validate(
        {"galaxy_server_url": "http://127.0.0.1:9/api/", "work_dir": tmp_path, "git_timeout": 60}
    )
    with pytest.raises(
        SourceError, match=r"ansible-galaxy collection install from http://127.0.0.1:9/api/ failed"
    ):
        prepare_requirements(project, tmp_path, settings)


def test_requirements_that_point_outside_galaxy_are_refused(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "roles").mkdir(parents=True)
    (project / "roles" / "requirements.yml").write_text("- src: https://evil.example/role.git\n")
    settings = Settings.model_validate({"galaxy_server_url": "http://127.0.0.1:9/api/", "work_dir": tmp_path})
    with pytest.raises(SourceError, match="not a Galaxy name"):
        prepare_requirements(project, tmp_path, settings)


def test_bundled_collections_satisfy_requirements_without_galaxy(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "collections").mkdir(parents=True)
    (project / "collections" / "requirements.yml").write_text("collections:\n  - testns.testcol\n")
    settings = Settings.model_validate(
        {"ansible_collections_path": ROOT / "tests" / "collections", "work_dir": tmp_path}
    )
    assert prepare_requirements(project, tmp_path, settings) == {}
