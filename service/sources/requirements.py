"""A repository's `collections/requirements.yml` and `roles/requirements.yml`.

With GALAXY_SERVER_URL set, they are installed into the run's own scratch space (never shared between
runs). Without it, the collections bundled under ANSIBLE_COLLECTIONS_PATH must already hold what they name;
what is missing ends the run with a reason that names it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from service.config import Settings
from service.errors import SourceError

COLLECTIONS_FILE = "collections/requirements.yml"
ROLES_FILE = "roles/requirements.yml"


def prepare_requirements(project_dir: Path, private_dir: Path, settings: Settings) -> dict[str, str]:
    """Install or check the repository's requirements; return the environment Ansible needs to find them."""
    wanted = {
        name: _read(project_dir / name, name)
        for name in (COLLECTIONS_FILE, ROLES_FILE)
        if (project_dir / name).is_file()
    }
    collections = [item for found, _ in wanted.values() for item in found]
    roles = [item for _, found in wanted.values() for item in found]
    if not collections and not roles:
        return {}
    if settings.galaxy_server_url is None:
        _check_bundled(collections, roles, project_dir, settings)
        return {}
    env: dict[str, str] = {}
    collections_dir, roles_dir = private_dir / "collections", private_dir / "roles"
    for name, (found_collections, found_roles) in wanted.items():
        path = str(project_dir / name)
        if found_collections:
            _galaxy(["collection", "install", "-r", path, "-p", str(collections_dir)], private_dir, settings)
            bundled = settings.ansible_collections_path
            env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([str(collections_dir), str(bundled)])
        if found_roles:
            _galaxy(["role", "install", "-r", path, "-p", str(roles_dir)], private_dir, settings)
            env["ANSIBLE_ROLES_PATH"] = os.pathsep.join([str(roles_dir), str(project_dir / "roles")])
    return env


def _read(path: Path, name: str) -> tuple[list[str], list[str]]:
    """(collection names, role names) in a requirements file; anything but Galaxy names is refused."""
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SourceError(f"{name} cannot be read: {exc}") from None
    if isinstance(content, list):
        content = {"collections" if name == COLLECTIONS_FILE else "roles": content}
    if content is None:
        return [], []
    if not isinstance(content, dict):
        raise SourceError(f"{name}: expected a mapping with 'collections' and/or 'roles'")
    return _names(content.get("collections"), name), _names(content.get("roles"), name)


def _names(entries: Any, name: str) -> list[str]:
    names: list[str] = []
    for entry in entries or []:
        if isinstance(entry, str):
            requirement = entry.split(",")[0].strip()
        elif isinstance(entry, dict) and isinstance(entry.get("name") or entry.get("src"), str):
            if entry.get("type") in ("git", "url", "file", "dir", "subdirs") or "scm" in entry:
                raise SourceError(f"{name}: {entry.get('name') or entry.get('src')!r} is not a Galaxy name")
            requirement = str(entry.get("name") or entry.get("src"))
        else:
            raise SourceError(f"{name}: entry {entry!r} has no name")
        # Only names from the configured server: a URL here would fetch from anywhere, past GIT_PROVIDERS.
        if "://" in requirement or "@" in requirement or requirement.startswith(("/", ".", "git+")):
            raise SourceError(f"{name}: {requirement!r} is not a Galaxy name (URLs and paths are refused)")
        names.append(requirement)
    return names


def _check_bundled(collections: list[str], roles: list[str], project_dir: Path, settings: Settings) -> None:
    search = [settings.ansible_collections_path, *(Path(entry) for entry in sys.path if entry)]
    missing = [
        name
        for name in collections
        if name.partition(":")[0] != "ansible.builtin"
        and not any((root / "ansible_collections" / Path(*name.split(".", 1))).is_dir() for root in search)
    ]
    if missing:
        raise SourceError(
            f"{COLLECTIONS_FILE} needs {', '.join(missing)}, not bundled under ANSIBLE_COLLECTIONS_PATH "
            f"({settings.ansible_collections_path}), and no GALAXY_SERVER_URL is configured to install them"
        )
    missing_roles = [name for name in roles if not (project_dir / "roles" / name).is_dir()]
    if missing_roles:
        raise SourceError(
            f"{ROLES_FILE} needs {', '.join(missing_roles)}, not in the repository's roles/, and no "
            "GALAXY_SERVER_URL is configured to install them"
        )


def _galaxy(args: list[str], private_dir: Path, settings: Settings) -> None:
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), settings.path]),
        "HOME": str(private_dir),
        "LANG": "C.UTF-8",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_GALAXY_SERVER_LIST": "configured",
        "ANSIBLE_GALAXY_SERVER_CONFIGURED_URL": str(settings.galaxy_server_url),
    }
    if settings.galaxy_token is not None:
        env["ANSIBLE_GALAXY_SERVER_CONFIGURED_TOKEN"] = settings.galaxy_token.get_secret_value()
    what = f"ansible-galaxy {args[0]} install from {settings.galaxy_server_url}"
    try:
        result = subprocess.run(
            ["ansible-galaxy", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=settings.git_timeout,
        )
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what} did not finish within {settings.git_timeout:g} s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()
        detail = output[-1] if output else f"exit code {result.returncode}"
        if settings.galaxy_token is not None:
            detail = detail.replace(settings.galaxy_token.get_secret_value(), "***")
        raise SourceError(f"{what} failed: {detail}")
