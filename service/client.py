"""A small client of the API for the `ars` command line: JSON calls and the live event stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from service.errors import ClientError
from service.faults import Backoff

# Reconnections in a row (resuming with Last-Event-ID) before a broken stream is given up.
_STREAM_RETRIES = 5
# The server sends a keep-alive comment every 15 s: a minute of silence is a dead connection.
_STREAM_READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class StreamMessage:
    event: str
    data: dict[str, Any]
    seq: int | None


def _messages(lines: Iterator[str]) -> Iterator[StreamMessage]:
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                seq = fields.get("id")
                yield StreamMessage(fields.get("event", "message"), json.loads("\n".join(data)), _int(seq))
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


class ApiClient:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _unreachable(self, exc: httpx.TransportError) -> ClientError:
        reason = str(exc) or type(exc).__name__
        return ClientError(f"cannot reach the API at {self.base_url} ({reason}); is ARS_URL right?")

    @staticmethod
    def _refused(response: httpx.Response) -> ClientError:
        try:
            body = response.json()
            detail = f"{body['error']}: {body['detail']}"
        except (ValueError, KeyError, TypeError):
            detail = response.text[:500] or response.reason_phrase
        return ClientError(f"the API answered {response.status_code}: {detail}")

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, f"/api/v1{path}", **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise self._refused(response)
        return response

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        job: dict[str, Any] = self._call("POST", "/jobs", json=body).json()
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("GET", f"/jobs/{job_id}").json()
        return job

    def jobs(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call("GET", "/jobs", params=params).json()["items"]
        return items

    def cancel(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("POST", f"/jobs/{job_id}/cancel").json()
        return job

    def create_webhook(self, body: dict[str, Any]) -> dict[str, Any]:
        webhook: dict[str, Any] = self._call("POST", "/webhooks", json=body).json()
        return webhook

    def webhooks(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call("GET", "/webhooks").json()["items"]
        return items

    def webhook(self, webhook_id: str) -> dict[str, Any]:
        webhook: dict[str, Any] = self._call("GET", f"/webhooks/{webhook_id}").json()
        return webhook

    def delete_webhook(self, webhook_id: str) -> None:
        self._call("DELETE", f"/webhooks/{webhook_id}")

    def deliveries(self, webhook_id: str, limit: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call(
            "GET", f"/webhooks/{webhook_id}/deliveries", params={"limit": limit}
        ).json()["items"]
        return items

    def create_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        schedule: dict[str, Any] = self._call("POST", "/schedules", json=body).json()
        return schedule

    def schedules(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call("GET", "/schedules").json()["items"]
        return items

    def schedule(self, schedule_id: str) -> dict[str, Any]:
        schedule: dict[str, Any] = self._call("GET", f"/schedules/{schedule_id}").json()
        return schedule

    def change_schedule(self, schedule_id: str, body: dict[str, Any]) -> dict[str, Any]:
        schedule: dict[str, Any] = self._call("PATCH", f"/schedules/{schedule_id}", json=body).json()
        return schedule

    def delete_schedule(self, schedule_id: str) -> None:
        self._call("DELETE", f"/schedules/{schedule_id}")

    def schedule_fires(self, schedule_id: str, limit: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call(
            "GET", f"/schedules/{schedule_id}/fires", params={"limit": limit}
        ).json()["items"]
        return items

    def stdout(self, job_id: str, *, ansi: bool) -> str:
        return self._call("GET", f"/jobs/{job_id}/stdout", params={"ansi": ansi}).text

    def stream(self, job_id: str, *, after: int = 0) -> Iterator[StreamMessage]:
        """Every event after `after`, then the `end` message; a dropped connection resumes where it was."""
        failures = 0
        backoff = Backoff(first=1, cap=5)
        while True:
            try:
                with self._http.stream(
                    "GET",
                    f"/api/v1/jobs/{job_id}/stream",
                    headers={"Last-Event-ID": str(after)},
                    timeout=httpx.Timeout(self._http.timeout.connect, read=_STREAM_READ_TIMEOUT),
                ) as response:
                    if response.is_error:
                        response.read()
                        raise self._refused(response)
                    for message in _messages(response.iter_lines()):
                        failures = 0
                        backoff.reset()
                        yield message
                        if message.event == "end":
                            return
                        after = message.seq if message.seq is not None else after
                problem: ClientError = ClientError("the API closed the stream before the job ended")
            except httpx.TransportError as exc:
                problem = self._unreachable(exc)
            failures += 1
            if failures > _STREAM_RETRIES:
                raise problem
            time.sleep(backoff.next())
