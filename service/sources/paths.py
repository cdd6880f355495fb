"""Paths given by a client never leave their root: no absolute paths, no `..`, no symlink escapes; never an
option; an inventory is a file or a directory of inventory sources, not the whole source."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from service.errors import CONTROL, InvalidRequest, shown

PLAYBOOK_SUFFIXES = (".yml", ".yaml")
# Entries an inventory directory may hold: Ansible reads every file under it as an inventory source.
_MAX_INVENTORY_ENTRIES = 10_000


def check_relative(relative: str, field: str) -> PurePosixPath:
    """What can be checked without the files (a Git source is only fetched on the worker)."""
    if CONTROL.search(relative) or "\\" in relative:
        raise InvalidRequest(f"{field}: must not contain control characters or backslashes")
    if relative.startswith("-"):
        # ansible-runner puts the playbook on ansible-playbook's command line as it is.
        raise InvalidRequest(f"{field}: must not start with '-'")
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


def resolve_inventory(root: Path, relative: str) -> Path:
    """The real path of an inventory file or directory under `root`.

    Not the root itself: Ansible would read every file of the source as an inventory source. A directory
    must not hold a link leading out of the root, which Ansible would follow and parse (printing what it
    cannot parse). Executables are read as files: the `script` plugin that would run them is disabled unless
    the operator enables it (INVENTORY_PLUGINS, service.runner.execute).
    """
    path = resolve_inside(root, relative, "inventory")
    real_root = root.resolve()
    if path == real_root:
        raise InvalidRequest(
            "inventory: the source root is not an inventory: name a file or a directory of inventory sources"
        )
    if path.is_dir():
        entries = 0
        for directory, names, files in os.walk(path, followlinks=True):
            for name in [*names, *files]:
                entries += 1
                if entries > _MAX_INVENTORY_ENTRIES:
                    raise InvalidRequest(
                        f"inventory: {shown(relative)} holds more than {_MAX_INVENTORY_ENTRIES} entries"
                    )
                if not (Path(directory) / name).resolve().is_relative_to(real_root):
                    raise InvalidRequest(
                        f"inventory: {shown(relative)} holds a link leading outside the source root"
                    )
    return path
