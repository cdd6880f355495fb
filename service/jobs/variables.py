"""Variables from a request (extra vars, inline inventory vars) are data for the targets, never knobs of the
worker: names that could make the worker execute something or read another path are refused.

Ansible's `ansible_*` variables configure the connection on the worker's side: `ansible_connection`,
`ansible_ssh_common_args`, `ansible_*_executable`, `ansible_python_interpreter`, `ansible_shell_*`,
`ansible_ssh_private_key_file`… and every new connection plugin adds more. So every `ansible_*` name is
refused except the ordinary target variables below, and so is any name that mentions a proxy (a proxy
command runs on the worker). An operator allows more names with EXTRA_VARS_ALLOW. (Passwords such as
`ansible_password` are refused too: a request's variables are stored and shown to every reader; target
credentials belong in the Secret, see SSH_PRIVATE_KEY_FILE.)
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Collection
from typing import Any

from service.errors import InvalidRequest

TARGET_VARIABLES = frozenset(
    {
        "ansible_host",
        "ansible_port",
        "ansible_user",
        "ansible_become",
        "ansible_become_user",
    }
)
# Values that reach ssh's command line as a host or user: never an option, no spaces, no controls.
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_\[][A-Za-z0-9_.:@\[\]%-]{0,254}$")
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_INVENTORY_GROUP_KEYS = ("hosts", "vars", "children")


def refused_name(name: str, allowed: Collection[str]) -> bool:
    if name in allowed:
        return False
    lowered = name.lower()
    return "proxy" in lowered or (lowered.startswith("ansible_") and lowered not in TARGET_VARIABLES)


def check_variables(variables: dict[str, Any], where: str, allowed: Collection[str]) -> None:
    """Names are valid Ansible variable names and not worker knobs; host and user values are not options."""
    for name, value in variables.items():
        field = f"{where}.{name}"
        if not _VARIABLE_NAME.match(name) or keyword.iskeyword(name):
            raise InvalidRequest(f"{field}: not a valid Ansible variable name (letters, digits, '_')")
        if refused_name(name, allowed):
            raise InvalidRequest(
                f"{field}: refused: this variable could make the worker execute something or use another "
                "path (an operator can allow it with EXTRA_VARS_ALLOW)"
            )
        if name in ("ansible_host", "ansible_user") and not (
            isinstance(value, str) and _TARGET_NAME.match(value)
        ):
            raise InvalidRequest(f"{field}: must be a host or user name, not starting with '-'")
        if name == "ansible_port" and not (
            isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
        ):
            raise InvalidRequest(f"{field}: must be a port number (an integer from 1 to 65535)")


def check_inventory(inventory: dict[str, Any], allowed: Collection[str]) -> None:
    """An inline inventory ({group: {hosts, vars, children}}), checked throughout."""
    for name, group in inventory.items():
        _check_group(group, f"inventory.{name}", name, allowed)


def _check_name(name: str, field: str) -> None:
    if not _TARGET_NAME.match(name):
        raise InvalidRequest(f"{field}: not a valid host or group name")


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field}: must be an object")
    return value


def _check_group(group: Any, field: str, name: str, allowed: Collection[str]) -> None:
    _check_name(name, field)
    body = _mapping(group, field)
    for key in body:
        if key not in _INVENTORY_GROUP_KEYS:
            raise InvalidRequest(
                f"{field}.{key}: unknown key: a group has {', '.join(_INVENTORY_GROUP_KEYS)}"
            )
    for host, host_vars in _mapping(body.get("hosts"), f"{field}.hosts").items():
        _check_name(host, f"{field}.hosts.{host}")
        check_variables(_mapping(host_vars, f"{field}.hosts.{host}"), f"{field}.hosts.{host}", allowed)
    check_variables(_mapping(body.get("vars"), f"{field}.vars"), f"{field}.vars", allowed)
    for child, child_group in _mapping(body.get("children"), f"{field}.children").items():
        _check_group(child_group, f"{field}.children.{child}", child, allowed)
