"""A small Server-Sent Events reader for the tests, independent of the service's own client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Message:
    id: str | None
    event: str
    data: str

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


def messages(lines: Iterator[str]) -> Iterator[Message]:
    """Messages as the SSE spec dispatches them; comments (keep-alives) are skipped."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        if line == "":
            if fields:
                ids = fields.get("id")
                yield Message(
                    id=ids[-1] if ids else None,
                    event=fields.get("event", ["message"])[-1],
                    data="\n".join(fields.get("data", [])),
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))


def read_stream(
    client: httpx.Client, job_id: str, *, headers: dict[str, str] | None = None, **params: Any
) -> list[Message]:
    """The whole stream of a job, until the server closes it."""
    with client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=headers, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(messages(response.iter_lines()))
