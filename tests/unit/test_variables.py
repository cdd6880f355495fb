"""Variables from a request are data at every depth (service/jobs/variables.py), and the worker writes them
so that Ansible never renders a key (service/runner/workspace.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from service.errors import InvalidRequest
from service.jobs.variables import check_inventory, check_variables
from service.runner.workspace import dump_inventory, dump_unsafe


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"users": {"{{ x }}": 1}}, "extra_vars.users.{{ x }}"),
        ({"users": {"a": [{"{% if %}": 1}]}}, "extra_vars.users.a[0].{% if %}"),
        ({"users": {"{# c #}": 1}}, "extra_vars.users.{# c #}"),
        ({"x": float("nan")}, "extra_vars.x"),
        ({"inventory_hostname": "x"}, "extra_vars.inventory_hostname"),
        ({"hostvars": {}}, "extra_vars.hostvars"),
        ({"ansible_connection": "local"}, "extra_vars.ansible_connection"),
        ({"ansible_become_user": "root; id"}, "extra_vars.ansible_become_user"),
        ({"ansible_become": "yes"}, "extra_vars.ansible_become"),
        ({"ansible_host": "a@b"}, "extra_vars.ansible_host"),
        ({"ansible_user": "deploy\n"}, "extra_vars.ansible_user"),
        ({"a\n": 1}, "extra_vars.a\n"),
        ({"x" * 5000: 1}, "characters"),
    ],
)
def test_refused_variables_name_their_field(variables: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_variables(variables, "extra_vars", allowed=())
    assert field in refused.value.detail
    assert len(refused.value.detail) < 400


def test_allowed_names_and_ordinary_values_pass() -> None:
    check_variables(
        {
            "users": {"{x}": 1, "a{b": 2},
            "ansible_host": "fe80::1%eth0",
            "ansible_port": 2222,
            "ansible_become": True,
            "ansible_become_user": "www-data",
            "role_name": "x",
        },
        "extra_vars",
        allowed=("role_name",),
    )


def test_an_inline_inventory_is_counted_across_groups() -> None:
    inventory = {
        "a": {"hosts": {"a[0:5999]": None}},
        "b": {"children": {"c": {"hosts": {"c[0:5999]": None}}}},
    }
    with pytest.raises(InvalidRequest, match="MAX_INLINE_HOSTS"):
        check_inventory(inventory, allowed=(), max_hosts=10_000)
    check_inventory(inventory, allowed=(), max_hosts=12_000)


class _AnsibleLike(yaml.SafeLoader):
    """Reads `!unsafe` as Ansible does (a string it never renders), marked here to be seen."""


_AnsibleLike.add_constructor("!unsafe", lambda loader, node: ("unsafe", loader.construct_scalar(node)))  # type: ignore[arg-type]


def test_every_string_but_names_is_written_unsafe() -> None:
    variables = yaml.load(dump_unsafe({"users": {"{{ k }}": ["v", 1]}}), Loader=_AnsibleLike)
    assert variables == {"users": {("unsafe", "{{ k }}"): [("unsafe", "v"), 1]}}
    inventory = yaml.load(  # our own loader, safe
        dump_inventory({"all": {"hosts": {"h1": {"d": {"{{k}}": "v"}}}, "vars": {"x": "y"}}}),
        Loader=_AnsibleLike,
    )
    assert inventory == {
        "all": {
            "hosts": {"h1": {"d": {("unsafe", "{{k}}"): ("unsafe", "v")}}},
            "vars": {"x": ("unsafe", "y")},
        }
    }
