"""Paths given by a client never leave their root: no absolute paths, no `..`, no symlink escapes."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from service.errors import InvalidRequest

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PLAYBOOK_SUFFIXES = (".yml", ".yaml")


def check_relative(relative: str, field: str) -> PurePosixPath:
    """What can be checked without the files (a Git source is only fetched on the worker)."""
    if _CONTROL.search(relative) or "\\" in relative:
        raise InvalidRequest(f"{field}: must not contain control characters or backslashes")
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        raise InvalidRequest(f"{field}: must be relative to the source root, got an absolute path")
    if ".." in pure.parts:
        raise InvalidRequest(f"{field}: must not contain '..'")
    return pure


def resolve_inside(root: Path, relative: str, field: str) -> Path:
    """The real path of `relative` under `root`, or InvalidRequest naming `field`.

    The check is done on the resolved path, so a symlink inside the root that points outside it is refused.
    """
    pure = check_relative(relative, field)
    real_root = root.resolve()
    try:
        candidate = (real_root / pure).resolve()
        exists = candidate.exists()
    except OSError as exc:
        # A name the file system cannot hold (a component over 255 bytes), a symlink loop, …
        raise InvalidRequest(f"{field}: {relative!r} is not a usable path: {exc.strerror}") from exc
    if not candidate.is_relative_to(real_root):
        raise InvalidRequest(f"{field}: {relative!r} leads outside the source root")
    if not exists:
        raise InvalidRequest(f"{field}: {relative!r} does not exist in the source")
    return candidate


def resolve_playbook(root: Path, relative: str) -> Path:
    path = resolve_inside(root, relative, "playbook")
    if not path.is_file() or path.suffix not in PLAYBOOK_SUFFIXES:
        raise InvalidRequest(f"playbook: {relative!r} is not a .yml or .yaml file")
    return path
