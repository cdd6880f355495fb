"""Variables from a request (extra vars, inline inventory vars) are data for the targets, never knobs of the
worker, at every depth.

Refused names. Ansible's `ansible_*` variables configure the connection on the worker's side:
`ansible_connection`, `ansible_ssh_common_args`, `ansible_*_executable`, `ansible_python_interpreter`,
`ansible_shell_*`, `ansible_ssh_private_key_file`… and every new connection plugin adds more. So every
`ansible_*` name is refused except the ordinary target variables below, and so is any name that mentions a
proxy (a proxy command runs on the worker), and Ansible's magic variables: Ansible sets those itself, and a
request that sets them overrides what Ansible derives from the inventory (`inventory_hostname` is where the
SSH plugin connects when `ansible_host` is not set). An operator allows more names with EXTRA_VARS_ALLOW.
(Passwords such as `ansible_password` are refused too: a request's variables are stored and shown to every
reader; target credentials belong in the Secret, see SSH_PRIVATE_KEY_FILE.)

Checked values. The target variables an allowed name carries reach command lines: `ansible_become_user`
goes unquoted into the become command, `ansible_user` and `ansible_host` into ssh's. Their values must be
what their names say, by strict patterns.

Keys at every depth. A playbook that loops over a mapping (`dict2items`, `.keys()`, `with_dict`) hands its
keys to the template engine as plain strings: a key holding `{{`, `{%` or `{#` is refused, here, and the
worker writes every key inside a value `!unsafe` besides (service.runner.workspace).
"""

from __future__ import annotations

import ipaddress
import keyword
import math
import re
from collections.abc import Callable, Collection
from typing import Any

from service.errors import InvalidRequest, as_field
from service.jobs.hosts import host_count

# Variables Ansible sets itself, besides `ansible_*` (ansible/vars/manager.py `_get_magic_variables`,
# ansible/inventory/host.py `get_magic_vars`, and the names the template engine provides).
MAGIC_VARIABLES = frozenset(
    {
        "hostvars",
        "groups",
        "group_names",
        "inventory_hostname",
        "inventory_hostname_short",
        "inventory_dir",
        "inventory_file",
        "playbook_dir",
        "play_hosts",
        "role_name",
        "role_names",
        "role_path",
        "role_uuid",
        "omit",
        "vars",
        "environment",
        "lookup",
        "query",
        "q",
        "now",
        "undef",
    }
)

_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_ZONE = re.compile(r"^[A-Za-z0-9_.-]{1,32}\Z")


def _is_user(value: Any) -> bool:
    return isinstance(value, str) and bool(_USER.match(value))


def _is_host(value: Any) -> bool:
    """A DNS name or an IP address (IPv6 with an optional zone), never an option, a user@ or a space."""
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    address, percent, zone = value.partition("%")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return not percent and all(_HOST_LABEL.match(label) for label in value.removesuffix(".").split("."))
    return not percent or bool(_ZONE.match(zone))


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


_A_USER = "a user name (letters, digits, '_', '.', '-'; not starting with '.' or '-')"
# The ordinary target variables a request may set, and what their values must be.
TARGET_VARIABLES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "ansible_host": (_is_host, "a host name or an IP address"),
    "ansible_port": (_is_port, "a port number (an integer from 1 to 65535)"),
    "ansible_user": (_is_user, _A_USER),
    "ansible_become": (lambda value: isinstance(value, bool), "true or false"),
    "ansible_become_user": (_is_user, _A_USER),
}
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_TEMPLATE_MARKERS = ("{{", "{%", "{#")
# Inventory host and group names reach Ansible's patterns and ssh's command line: never an option or a
# user@, no spaces or controls.
_INVENTORY_NAME = re.compile(r"^[A-Za-z0-9_\[][A-Za-z0-9_.:\[\]%-]{0,254}\Z")
_INVENTORY_GROUP_KEYS = ("hosts", "vars", "children")


def refused_name(name: str, allowed: Collection[str]) -> bool:
    if name in allowed:
        return False
    lowered = name.lower()
    return (
        "proxy" in lowered
        or lowered in MAGIC_VARIABLES
        or (lowered.startswith("ansible_") and lowered not in TARGET_VARIABLES)
    )


def check_variables(variables: dict[str, Any], where: str, allowed: Collection[str]) -> None:
    """Names are valid Ansible variable names and not worker knobs; target values are what they say;
    nothing inside a value is a template key or a number JSON cannot hold."""
    for name, value in variables.items():
        field = f"{where}.{as_field(name)}"
        if not _VARIABLE_NAME.match(name) or keyword.iskeyword(name):
            raise InvalidRequest(f"{field}: not a valid Ansible variable name (letters, digits, '_')")
        if refused_name(name, allowed):
            raise InvalidRequest(
                f"{field}: refused: Ansible sets this variable itself, or it could make the worker execute "
                "something or use another path (an operator can allow it with EXTRA_VARS_ALLOW)"
            )
        target = TARGET_VARIABLES.get(name.lower())
        if target is not None:
            valid, expected = target
            if not valid(value):
                raise InvalidRequest(f"{field}: must be {expected}")
        _check_data(value, field)


def _check_data(value: Any, field: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{field}.{as_field(key)}"
            if any(marker in key for marker in _TEMPLATE_MARKERS):
                raise InvalidRequest(
                    f"{path}: a key must not hold a template ({', '.join(_TEMPLATE_MARKERS)}): a playbook "
                    "that loops over the mapping would render it"
                )
            _check_data(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_data(item, f"{field}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{field}: {value} is not a number JSON can hold")


class _HostBudget:
    """Hosts an inline inventory expands to, counted across all its groups."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, name: str, field: str) -> None:
        try:
            self.used += host_count(name)
        except ValueError as exc:
            raise InvalidRequest(f"{field}: not a host name Ansible can expand: {exc}") from None
        if self.used > self.limit:
            raise InvalidRequest(
                f"{field}: the inline inventory expands to more than {self.limit} hosts (MAX_INLINE_HOSTS; "
                "ranges count as the hosts they stand for)"
            )


def check_inventory(inventory: dict[str, Any], allowed: Collection[str], max_hosts: int) -> None:
    """An inline inventory ({group: {hosts, vars, children}}), checked throughout."""
    budget = _HostBudget(max_hosts)
    for name, group in inventory.items():
        if name == "plugin":
            # Ansible's `auto` inventory plugin reads a YAML file with a top-level `plugin` key as the
            # configuration of the inventory plugin it names.
            raise InvalidRequest("inventory.plugin: refused: a group cannot be named 'plugin'")
        _check_group(group, f"inventory.{as_field(name)}", name, allowed, budget)


def _check_name(name: str, field: str) -> None:
    if not _INVENTORY_NAME.match(name):
        raise InvalidRequest(f"{field}: not a valid host or group name")


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field}: must be an object")
    return value


def _check_group(group: Any, field: str, name: str, allowed: Collection[str], budget: _HostBudget) -> None:
    _check_name(name, field)
    body = _mapping(group, field)
    for key in body:
        if key not in _INVENTORY_GROUP_KEYS:
            raise InvalidRequest(
                f"{field}.{as_field(key)}: unknown key: a group has {', '.join(_INVENTORY_GROUP_KEYS)}"
            )
    for host, host_vars in _mapping(body.get("hosts"), f"{field}.hosts").items():
        host_field = f"{field}.hosts.{as_field(host)}"
        _check_name(host, host_field)
        budget.take(host, host_field)
        check_variables(_mapping(host_vars, host_field), host_field, allowed)
    check_variables(_mapping(body.get("vars"), f"{field}.vars"), f"{field}.vars", allowed)
    for child, child_group in _mapping(body.get("children"), f"{field}.children").items():
        _check_group(child_group, f"{field}.children.{as_field(child)}", child, allowed, budget)
