"""Git providers (`GIT_PROVIDERS`): which repositories runs may come from, and how git authenticates.

Everything here is pure: the API uses it to refuse a repository at submit time, the worker to check it
again (the configuration may have changed in between) before it fetches anything.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.errors import CONTROL, InvalidRequest

ProviderType = Literal["azure", "gitlab", "github", "generic"]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(?P<name>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def _control_or_space(text: str) -> bool:
    return " " in text or bool(CONTROL.search(text))


# user@host:path, git's "scp-like" syntax (no scheme, and no slash before the colon).
_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[^/:@]+):(?P<path>[^/].*)\Z")
_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22}

# The Basic user name each provider expects in front of a token.
_BASIC_USER: dict[ProviderType, str] = {
    "azure": "",  # Azure DevOps: a PAT with an empty user name
    "gitlab": "oauth2",
    "github": "x-access-token",
    "generic": "git",
}


class GitProvider(BaseModel):
    """One entry of GIT_PROVIDERS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ProviderType
    host: str = Field(description="host name, with an optional :port, as it appears in repository URLs")
    orgs: tuple[str, ...] = Field(
        default=(), description="allowed first path segments (GitLab groups may be nested: 'a/b'); empty: any"
    )
    credential_env: str | None = Field(
        default=None, description="name of the environment variable holding the token; none: anonymous"
    )
    username: str | None = Field(
        default=None, description="Basic user name sent with the token (generic providers; default 'git')"
    )
    ca_file: Path | None = Field(default=None, description="CA bundle for a server with a private CA")
    allow_http: bool = Field(default=False, description="accept plain http:// URLs (labs only)")
    allow_ssh: bool = Field(default=False, description="accept ssh:// and user@host:path URLs")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        host = value.strip().lower()
        match = _HOST.match(host)
        if not match:
            raise ValueError(f"{value!r} is not a host name with an optional :port (no scheme, no path)")
        port = match.group("port")
        if port is not None and not 0 < int(port) < 65536:
            raise ValueError(f"{value!r}: port out of range")
        return host

    @field_validator("orgs")
    @classmethod
    def _orgs(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for org in values:
            parts = org.split("/")
            if not org or any(part in ("", ".", "..") or _control_or_space(part) for part in parts):
                raise ValueError(f"org {org!r} must be one or more non-empty path segments, like 'team/sub'")
        return values

    @field_validator("credential_env")
    @classmethod
    def _credential_env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = value.expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"ca_file {str(value)!r} is not a readable file")
        return path

    @property
    def hostname(self) -> str:
        return self.host.partition(":")[0]

    @property
    def port(self) -> int | None:
        port = self.host.partition(":")[2]
        return int(port) if port else None

    def basic_credentials(self, token: str) -> str:
        """The `user:password` pair of HTTP Basic auth, in this provider's scheme."""
        user = self.username if self.username is not None else _BASIC_USER[self.type]
        return f"{user}:{token}"

    def authorization_header(self, token: str) -> str:
        encoded = base64.b64encode(self.basic_credentials(token).encode()).decode()
        return f"Authorization: Basic {encoded}"

    def allows_org(self, segments: list[str]) -> bool:
        if not self.orgs:
            return True
        # Hosted providers ignore the case of group and organisation names; a generic server may not.
        fold = (lambda text: text) if self.type == "generic" else str.casefold
        path = [fold(segment) for segment in segments]
        for org in self.orgs:
            wanted = [fold(part) for part in org.split("/")]
            # The org is a prefix of the path and the repository name comes after it.
            if len(path) > len(wanted) and path[: len(wanted)] == wanted:
                return True
        return False


@dataclass(frozen=True)
class RepoLocation:
    """A repository URL that passed the allow-list, in canonical form (no credentials, no query)."""

    provider: GitProvider
    url: str
    scheme: str


_USERINFO = re.compile(r"(?<=//)[^/@]*@")


def _refuse(repo: str, why: str) -> InvalidRequest:
    # A URL with credentials in it is refused, and the credentials are not echoed back.
    return InvalidRequest(f"source.repo: {_USERINFO.sub('***@', repo)!r} {why}")


def locate_repo(repo: str, providers: list[GitProvider]) -> RepoLocation:
    """The provider serving `repo`, or InvalidRequest naming `source.repo` and what is wrong."""
    if repo.startswith("-"):
        raise _refuse(repo, "must not start with '-'")
    if _control_or_space(repo) or "\\" in repo:
        raise _refuse(repo, "must not contain spaces, control characters or backslashes")
    scp = _SCP_LIKE.match(repo) if "://" not in repo else None
    if scp:
        scheme, user, password = "ssh", scp.group("user"), None
        hostname, port, raw_path = scp.group("host").lower(), None, "/" + scp.group("path")
    else:
        try:
            parts = urlsplit(repo)
            port = parts.port
        except ValueError as exc:
            raise _refuse(repo, f"is not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or "://" not in repo:
            raise _refuse(
                repo, "must be an https:// URL (file://, local paths and other transports are refused)"
            )
        if parts.query or parts.fragment or "?" in repo or "#" in repo:
            raise _refuse(repo, "must not have a query or a fragment")
        user, password = parts.username, parts.password
        hostname, raw_path = (parts.hostname or ""), parts.path
    if password is not None or (user is not None and scheme != "ssh"):
        raise _refuse(repo, "must not carry credentials: tokens come from the provider's credential_env")
    provider = _provider_for(hostname, port, scheme, providers)
    if provider is None:
        raise _refuse(repo, "is not on a configured Git provider (GIT_PROVIDERS)")
    if scheme == "http" and not provider.allow_http:
        raise _refuse(repo, f"must use https:// (provider {provider.host} does not allow http)")
    if scheme == "ssh" and not provider.allow_ssh:
        raise _refuse(repo, f"must use https:// (provider {provider.host} does not allow ssh)")
    segments = _path_segments(repo, raw_path)
    if not provider.allows_org(segments):
        allowed = ", ".join(provider.orgs)
        raise _refuse(repo, f"is not under an allowed org of {provider.host} (allowed: {allowed})")
    netloc = hostname if port is None else f"{hostname}:{port}"
    if scheme == "ssh" and user is not None:
        netloc = f"{user}@{netloc}"
    return RepoLocation(provider=provider, url=f"{scheme}://{netloc}/{'/'.join(segments)}", scheme=scheme)


def _provider_for(
    hostname: str, port: int | None, scheme: str, providers: list[GitProvider]
) -> GitProvider | None:
    effective = port if port is not None else _DEFAULT_PORTS[scheme]
    for provider in providers:
        wanted = provider.port if provider.port is not None else _DEFAULT_PORTS[scheme]
        if provider.hostname == hostname and wanted == effective:
            return provider
    return None


def _path_segments(repo: str, raw_path: str) -> list[str]:
    segments = unquote(raw_path).strip("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments) or any(
        _control_or_space(segment) or "\\" in segment for segment in segments
    ):
        raise _refuse(repo, "must be a repository path like /org/repo, without '.', '..' or empty segments")
    if len(segments) < 2:
        raise _refuse(repo, "must name an org and a repository, like https://host/org/repo")
    return segments


# Git's own rules for reference names (`git check-ref-format --allow-onelevel`), plus: never an option.
_REF_FORBIDDEN = re.compile(r"[ ~^:?*\[\\]")


def check_ref(ref: str) -> None:
    """InvalidRequest naming `source.ref` unless git would accept `ref` as a (one-level) reference name."""

    def refuse(why: str) -> InvalidRequest:
        return InvalidRequest(f"source.ref: {ref!r} {why}")

    if ref.startswith("-"):
        raise refuse("must not start with '-'")
    if _REF_FORBIDDEN.search(ref) or CONTROL.search(ref):
        raise refuse("must not contain spaces, control characters or any of ~ ^ : ? * [ \\")
    if ".." in ref or "@{" in ref or ref == "@":
        raise refuse("must not contain '..' or '@{', nor be '@'")
    if ref.startswith("/") or ref.endswith("/") or "//" in ref:
        raise refuse("must not start or end with '/' nor contain '//'")
    if ref.endswith("."):
        raise refuse("must not end with '.'")
    for component in ref.split("/"):
        if component.startswith(".") or component.endswith(".lock"):
            raise refuse("has a component starting with '.' or ending with '.lock'")
