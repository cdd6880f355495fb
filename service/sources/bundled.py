"""Playbooks bundled with the service (the image's /app/playbooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.sources.paths import PLAYBOOK_SUFFIXES

# Directories that hold roles, variables and inventories next to playbooks, not playbooks themselves.
_NOT_PLAYBOOKS = {
    "roles",
    "group_vars",
    "host_vars",
    "vars",
    "inventory",
    "inventories",
    "files",
    "templates",
}


def list_playbooks(root: Path) -> list[tuple[str, str | None]]:
    """(relative path, name of the first play) of every file under `root` that parses as a playbook."""
    found: list[tuple[str, str | None]] = []
    if not root.is_dir():
        return found
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.suffix not in PLAYBOOK_SUFFIXES or not path.is_file():
            continue
        if _NOT_PLAYBOOKS.intersection(relative.parts[:-1]) or not path.resolve().is_relative_to(root):
            continue
        plays = _load_plays(path)
        if plays is not None:
            first = plays[0].get("name") if plays else None
            found.append((relative.as_posix(), first if isinstance(first, str) else None))
    return found


def _load_plays(path: Path) -> list[dict[str, Any]] | None:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(content, list) or not content:
        return None
    if not all(isinstance(play, dict) and ("hosts" in play or "import_playbook" in play) for play in content):
        return None
    return content
