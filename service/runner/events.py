"""From ansible-runner's event dicts to our rows, and the hand-off from the runner thread to the loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.models import utcnow
from service.redaction import Redactor

STATS_EVENT = "playbook_on_stats"
# playbook_on_stats keys → our names (Ansible calls unreachable hosts "dark").
_STAT_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failures",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}


def _created(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return utcnow()
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        return parsed
    return utcnow()


def _text(value: Any, limit: int | None = None) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return text[:limit] if limit else text


def to_row(job_id: str, event: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """A `job_event` row from one ansible-runner event, configured secrets masked.

    Every event passes here before it is stored or streamed, so this is the one place output is redacted.
    """
    data = redactor.data(event.get("event_data") or {})
    return {
        "job_id": job_id,
        "seq": int(event["counter"]),
        "event": str(event.get("event", "unknown"))[:64],
        "host": _text(data.get("host") or data.get("remote_addr"), 255),
        "task": _text(data.get("task")),
        "play": _text(data.get("play")),
        "stdout": redactor.text(event.get("stdout") or ""),
        "created": _created(event.get("created")),
        "data": data,
    }


def host_stats(stats_event_data: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per-host counts from playbook_on_stats; hosts with all-zero counts appear only in `processed`."""
    hosts: set[str] = set(stats_event_data.get("processed") or {})
    for key in _STAT_KEYS:
        hosts.update(stats_event_data.get(key) or {})
    return {
        host: {
            ours: int((stats_event_data.get(theirs) or {}).get(host, 0))
            for theirs, ours in _STAT_KEYS.items()
        }
        for host in sorted(hosts)
    }


def read_event_files(artifact_dir: Path, after: int) -> list[dict[str, Any]]:
    """ansible-runner's own record of the events (job_events/<counter>-<uuid>.json) with counter > after."""
    directory = artifact_dir / "job_events"
    found: list[tuple[int, Path]] = []
    for path in directory.glob("*.json") if directory.is_dir() else ():
        counter, _, rest = path.name.partition("-")
        if counter.isdigit() and not rest.endswith("partial.json") and int(counter) > after:
            found.append((int(counter), path))
    events = []
    for _, path in sorted(found):
        events.append(json.loads(path.read_text(encoding="utf-8")))
    return events


class EventChannel:
    """Carries events from ansible-runner's thread to the event loop without ever blocking Ansible.

    When more than `capacity` events wait (the database is slow or away), the channel stops carrying
    events and says so (`spilled`, and `put` returns False): ansible-runner then writes those to its
    job_events files, which the consumer reads at the end of the run. Nothing is dropped, and Ansible never
    waits for the database.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._capacity = capacity
        self._items: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._ended = asyncio.Event()
        self._signalled = False
        self._closed = False
        self.spilled = False

    def __len__(self) -> int:
        """Events waiting for the consumer (read without the lock: a metric, not a decision)."""
        return len(self._items)

    def put(self, event: dict[str, Any]) -> bool:
        """Called from the runner thread. True if the channel carries the event; False once it spilled."""
        with self._lock:
            if self.spilled:
                return False
            if len(self._items) >= self._capacity:
                self.spilled = True
                return False
            self._items.append(event)
            wake = not self._signalled
            self._signalled = True
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)
        return True

    def take_all(self) -> list[dict[str, Any]]:
        """What is still waiting, without waiting (for the end of a run, once the consumer stopped)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    def close(self) -> None:
        """Called once the runner returned: no more events will come."""
        with self._lock:
            self._closed = True
            wake = not self._signalled
            self._signalled = True
        self._loop.call_soon_threadsafe(self._ended.set)
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get_batch(self, max_items: int, linger: float = 0) -> list[dict[str, Any]] | None:
        """Up to `max_items` events, once some wait; None once closed and drained.

        After the first event of a batch the consumer lingers up to `linger` seconds (not once the run
        ended, nor for a full batch): Ansible emits events in bursts (task start, then one per host), and
        one write per burst instead of one per event is most of a worker's CPU on small runs. Batches also
        grow by themselves while the consumer is busy writing.
        """
        while True:
            await self._ready.wait()
            if linger and not self._ended.is_set() and len(self._items) < max_items:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ended.wait(), linger)
            with self._lock:
                batch = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
                if not self._items:
                    if self._closed and not batch:
                        return None
                    if not self._closed:
                        self._ready.clear()
                        self._signalled = False
            if batch:
                return batch
