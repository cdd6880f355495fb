"""Git sources on a worker: a mirror per repository, a private checkout per run.

Mirrors live under WORK_DIR/cache/git, one bare repository per canonical URL, guarded by a file lock
(threads of one worker and workers sharing the directory alike). A fetch brings only what changed; a run
gets the files of one commit in its own directory. The cache is trimmed to `GIT_CACHE_MAX_BYTES`, least
recently used mirror first.

Credentials reach git only through its environment (`GIT_CONFIG_*` → `http.extraHeader`), never argv, a
URL, a file or a message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import SecretStr

from service.config import Settings
from service.errors import Canceled, SourceError
from service.faults import Backoff
from service.sources.providers import RepoLocation

log = structlog.get_logger(__name__)

_FULL_SHA = re.compile(r"^[0-9a-f]{40}\Z")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}\Z")
_LAST_USED = "ars-last-used"


@dataclass(frozen=True)
class _GitResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Fetched:
    commit: str
    mirror_reused: bool
    # Bringing the mirror up to date (the network part), then writing the run's files.
    fetch_seconds: float
    checkout_seconds: float


class MirrorCache:
    """The worker's Git mirrors. One instance per worker process, made at startup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.git_cache_dir

    def checkout(
        self, location: RepoLocation, ref: str, destination: Path, cancel: threading.Event | None = None
    ) -> Fetched:
        """Write the files of `ref` in `location` into `destination` (created); return the commit. Setting
        `cancel` ends a git command under way, or the wait for the mirror's lock, within `_CANCEL_POLL_S`
        (Canceled)."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(location.url.encode()).hexdigest()[:32]
        mirror = self.root / f"{key}.git"
        git = _Git(self.settings, location, cancel)
        with _locked(self.root / f"{key}.lock", cancel=cancel):
            started = time.monotonic()
            reused = (mirror / "HEAD").is_file()
            if not reused:
                shutil.rmtree(mirror, ignore_errors=True)  # a half-made mirror of an interrupted clone
                git.run(["init", "--quiet", "--bare", "--template=", str(mirror)], what="init")
            # A commit never changes: one the mirror holds needs no fetch. Branches and tags may move.
            commit = _resolve(git, mirror, ref) if _FULL_SHA.match(ref) else None
            if commit is None:
                git.fetch(mirror)
                commit = _resolve(git, mirror, ref)
            if commit is None and _FULL_SHA.match(ref):
                commit = _fetch_commit(git, mirror, ref)
            if commit is None:
                raise SourceError(f"ref {ref!r} not found in {location.url} (not a branch, tag or commit)")
            fetched_at = time.monotonic()
            destination.mkdir(parents=True)
            git.run(
                [
                    "--git-dir",
                    str(mirror),
                    "--work-tree",
                    str(destination),
                    "checkout",
                    "--force",
                    commit,
                    "--",
                    ".",
                ],
                what="checkout",
                # The index of this checkout is the run's own: the mirror is only read.
                extra_env={"GIT_INDEX_FILE": str(destination.parent / f".{destination.name}.index")},
            )
            (mirror / _LAST_USED).touch()
            done = time.monotonic()
        self._trim(keep=mirror)
        return Fetched(commit, reused, fetched_at - started, done - fetched_at)

    def _trim(self, keep: Path) -> None:
        """Remove least recently used mirrors until the cache fits; mirrors in use are left alone."""
        mirrors = [path for path in self.root.glob("*.git") if path.is_dir()]
        sizes = {path: _size(path) for path in mirrors}
        total = sum(sizes.values())
        if total <= self.settings.git_cache_max_bytes:
            return
        for mirror in sorted(mirrors, key=_last_used):
            if total <= self.settings.git_cache_max_bytes:
                return
            if mirror == keep:
                continue
            with _locked(self.root / f"{mirror.stem}.lock", wait=False) as acquired:
                if not acquired:
                    continue
                trash = self.root / f".evicted-{uuid.uuid4().hex}"
                mirror.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            total -= sizes[mirror]
            log.info("git mirror evicted", mirror=mirror.name, freed_bytes=sizes[mirror], cache_bytes=total)


def _resolve(git: _Git, mirror: Path, ref: str) -> str | None:
    candidates = [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    if _FULL_SHA.match(ref) or _SHORT_SHA.match(ref):
        candidates.append(ref)
    for candidate in candidates:
        result = git.run(
            [
                "--git-dir",
                str(mirror),
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{candidate}^{{commit}}",
            ],
            what="rev-parse",
            check=False,
        )
        if result.returncode == 0:
            return result.stdout.strip()
    return None


def _fetch_commit(git: _Git, mirror: Path, ref: str) -> str | None:
    """A commit no branch or tag points to: servers allowing it (GitHub, GitLab) send it on request."""
    result = git.fetch(mirror, refspecs=[ref], check=False)
    return _resolve(git, mirror, ref) if result.returncode == 0 else None


# A fetch dropped on the way is tried this many times more, after 0.5 s, then 2 s.
_FETCH_RETRIES = 2
# How often a git command or the wait for a mirror's lock looks at the run's cancel flag.
_CANCEL_POLL_S = 0.2
_TRANSIENT_FETCH = re.compile(
    r"connection reset|recv failure|empty reply from server|unexpected disconnect", re.I
)


class _Git:
    """git with an environment built from nothing: no user or system config, no prompts, no helpers."""

    def __init__(
        self, settings: Settings, location: RepoLocation, cancel: threading.Event | None = None
    ) -> None:
        self.settings = settings
        self.location = location
        self.cancel = cancel
        provider = location.provider
        self.credential: SecretStr | None = settings.git_credential(provider)
        allowed = (
            {"https"}
            | ({"http"} if provider.allow_http else set())
            | ({"ssh"} if provider.allow_ssh else set())
        )
        config: list[tuple[str, str]] = [
            ("protocol.allow", "never"),
            *((f"protocol.{scheme}.allow", "always") for scheme in sorted(allowed)),
            # A redirect could send the Authorization header to another host.
            ("http.followRedirects", "false"),
            ("credential.helper", ""),
            ("core.askPass", ""),
            ("core.hooksPath", os.devnull),
            ("gc.auto", "0"),
            ("advice.detachedHead", "false"),
        ]
        if provider.ca_file is not None:
            config.append(("http.sslCAInfo", str(provider.ca_file)))
        if self.credential is not None:
            config.append(
                ("http.extraHeader", provider.authorization_header(self.credential.get_secret_value()))
            )
        env = {
            "PATH": settings.path,
            "HOME": str(settings.git_cache_dir),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_SSH_COMMAND": _ssh_command(settings),
            "GIT_CONFIG_COUNT": str(len(config)),
        }
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        self.env = env

    def fetch(self, mirror: Path, refspecs: list[str] | None = None, *, check: bool = True) -> _GitResult:
        wanted = refspecs or ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
        args = ["--git-dir", str(mirror), "fetch", "--quiet", "--no-write-fetch-head", "--no-tags"]
        if refspecs is None:
            args.append("--prune")
        command = [*args, "--end-of-options", self.location.url, *wanted]
        # A fetch changes nothing until it succeeds: a connection dropped on the way (a proxy or a load
        # balancer restarting, a busy server) is worth another try or two before the run gives up.
        backoff = Backoff(first=0.5, factor=4)
        for _ in range(_FETCH_RETRIES):
            result = self.run(command, what="fetch", check=False)
            if result.returncode == 0 or not _TRANSIENT_FETCH.search(result.stderr):
                break
            log.warning(
                "git fetch interrupted, trying again", repo=self.location.url, error=result.stderr.strip()
            )
            time.sleep(backoff.next())
        else:
            result = self.run(command, what="fetch", check=False)
        if check and result.returncode != 0:
            raise SourceError(self._explain("fetch", result.stderr))
        return result

    def run(
        self, args: list[str], *, what: str, check: bool = True, extra_env: dict[str, str] | None = None
    ) -> _GitResult:
        env = {**self.env, **(extra_env or {})}
        timeout = self.settings.git_timeout
        # A session of its own: on timeout, git's helpers (git-remote-https) go with it.
        with subprocess.Popen(
            ["git", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as process:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    # Asked again after a timeout, communicate() loses none of the output.
                    stdout, stderr = process.communicate(timeout=_CANCEL_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    canceled = self.cancel is not None and self.cancel.is_set()
                    if not canceled and time.monotonic() < deadline:
                        continue
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                if canceled:
                    raise Canceled(f"git {what} of {self.location.url} stopped: the run was canceled")
                raise SourceError(
                    f"git {what} of {self.location.url} did not finish within {timeout:g} s (GIT_TIMEOUT)"
                )
        result = _GitResult(process.returncode, stdout, self._scrub(stderr))
        if check and result.returncode != 0:
            raise SourceError(self._explain(what, result.stderr))
        return result

    def _scrub(self, text: str) -> str:
        if self.credential is None:
            return text
        token = self.credential.get_secret_value()
        header = self.location.provider.authorization_header(token)
        return text.replace(header, "Authorization: ***").replace(token, "***")

    def _explain(self, what: str, stderr: str) -> str:
        """A reason a person can act on, from git's (C-locale) messages."""
        url = self.location.url
        provider = self.location.provider
        text = stderr.lower()
        if any(sign in text for sign in ("could not read username", "authentication failed", "error: 401")):
            if provider.credential_env is None:
                return f"authentication failed for {url}: provider {provider.host} has no credential_env"
            return f"authentication failed for {url} (check the token in {provider.credential_env})"
        if "error: 403" in text:
            return f"access denied to {url} (the token in {provider.credential_env} lacks read access)"
        if "error: 404" in text or "not found" in text or "does not appear to be a git repository" in text:
            return f"repository {url} not found (or not visible with the configured token)"
        if re.search(r"error: 30[1278]", text):
            return f"{url} answered with a redirect, which is not followed: use the repository's own URL"
        if "could not resolve host" in text:
            return f"cannot resolve the host of {url}"
        if "failed to connect" in text or "connection refused" in text or "timed out" in text:
            return f"cannot connect to the server of {url}"
        if any(sign in text for sign in ("ssl certificate", "certificate verif", "server certificate")):
            return f"TLS certificate of {provider.host} is not trusted (set ca_file on the provider)"
        last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "no output")
        return f"git {what} of {url} failed: {last.strip()}"


def _ssh_command(settings: Settings) -> str:
    """ssh for git over ssh: never a prompt, host keys checked against SSH_KNOWN_HOSTS_FILE when set."""
    options = ["-o", "BatchMode=yes"]
    if settings.ssh_known_hosts_file is not None:
        options += ["-o", f"UserKnownHostsFile={settings.ssh_known_hosts_file}"]
    if not settings.ssh_host_key_checking:
        options += ["-o", "StrictHostKeyChecking=no"]
    return shlex.join(["ssh", *options])


@contextlib.contextmanager
def _locked(path: Path, *, wait: bool = True, cancel: threading.Event | None = None) -> Iterator[bool]:
    """Hold the file lock at `path`; without `wait`, yield False at once if another holds it. While it
    waits, setting `cancel` ends the wait (Canceled)."""
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (fcntl.LOCK_NB if cancel is not None or not wait else 0))
                break
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                if cancel is not None and cancel.wait(_CANCEL_POLL_S):
                    raise Canceled("the run was canceled while another run fetched its repository") from None
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


def _last_used(mirror: Path) -> float:
    try:
        return (mirror / _LAST_USED).stat().st_mtime
    except OSError:
        return 0.0
