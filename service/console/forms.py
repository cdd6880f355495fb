"""The run form: its fields, as a browser posts them, turned into the body of `POST /api/v1/jobs`."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import parse_qs

import yaml

from service.errors import InvalidRequest

FIELDS = (
    "playbook",
    "inventory",
    "extra_vars",
    "limit",
    "tags",
    "check",
    "diff",
    "priority",
    "exclusive",
    "locks",
)


class _DataLoader(yaml.SafeLoader):
    """YAML as plain data: what JSON could say, nothing more.

    Anchors and aliases are refused (a few aliased lines expand to gigabytes once written out as JSON), and
    dates stay the text they were typed as (extra vars are JSON).
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise InvalidRequest("extra_vars: YAML aliases (*name) are not accepted; write the value out")
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if getattr(event, "anchor", None) is not None:
            raise InvalidRequest("extra_vars: YAML anchors (&name) are not accepted; write the value out")
        return super().compose_node(parent, index)


_DataLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_form(body: bytes, names: Collection[str] = FIELDS) -> dict[str, str]:
    """A posted form's fields among `names` (the last value of each); others are dropped."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=len(names) + 8)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("form: not a form this console sends") from exc
    return {name: values[-1] for name, values in fields.items() if name in names}


def parse_extra_vars(text: str, max_depth: int) -> dict[str, Any]:
    """A mapping written in YAML or JSON (JSON is YAML); InvalidRequest saying where it is wrong."""
    if not text.strip():
        return {}
    try:
        value = yaml.load(text, Loader=_DataLoader)  # noqa: S506 - a SafeLoader that also refuses aliases
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"extra_vars: not valid YAML or JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequest(f"extra_vars: nested deeper than {max_depth} levels") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("extra_vars: expected a mapping of names to values, such as `who: world`")
    _check_data(value, "extra_vars", 1, max_depth)
    return value


def _check_data(value: object, where: str, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise InvalidRequest(f"{where}: nested deeper than {max_depth} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequest(f"{where}: the key {json.dumps(str(key))[:40]} is not text: quote it")
            _check_data(item, f"{where}.{key[:64]}", depth + 1, max_depth)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_data(item, f"{where}[{index}]", depth + 1, max_depth)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{where}: {value} is not a number JSON can hold")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise InvalidRequest(f"{where}: a {type(value).__name__} is not a value JSON can hold")


def job_body(form: Mapping[str, str], max_depth: int) -> dict[str, Any]:
    """The JSON body of `POST /api/v1/jobs` for a filled-in run form (validated by the API's own model)."""
    body: dict[str, Any] = {
        "playbook": form.get("playbook", ""),
        "extra_vars": parse_extra_vars(form.get("extra_vars", ""), max_depth),
        "check": "check" in form,
        "diff": "diff" in form,
        "priority": form.get("priority") or "default",
        "exclusive": "exclusive" in form,
    }
    if form.get("inventory", "").strip():
        body["inventory"] = form["inventory"].strip()
    if form.get("limit", "").strip():
        body["limit"] = form["limit"].strip()
    tags = [tag.strip() for tag in form.get("tags", "").split(",") if tag.strip()]
    if tags:
        body["tags"] = tags
    locks = [lock.strip() for lock in form.get("locks", "").split(",") if lock.strip()]
    if locks:
        body["locks"] = locks
    return body
