"""A real HTTP receiver for webhooks: records every request and answers as a test tells it."""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.embedded import free_port

# The longest a held request waits for its release: a failed test never leaves a thread behind for long.
_HOLD_MAX_S = 120


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    # The status it was answered with.
    status: int

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """On 127.0.0.1 and a port of its own (kept across `stop` and `start`). Every path answers 200 unless
    `answer` scripted other statuses for it, or `hold` holds its requests until released."""

    def __init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._scripts: dict[str, collections.deque[int]] = {}
        self._held: dict[str, threading.Event] = {}
        self._large: set[str] = set()
        # Large answers the sender read to their end.
        self.large_read_whole = 0
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, *statuses: int) -> None:
        """The next requests to `path` are answered with these statuses, in order; then 200."""
        self._scripts[path] = collections.deque(statuses)

    def hold(self, path: str) -> threading.Event:
        """Requests to `path` get no answer until the returned event is set."""
        release = threading.Event()
        self._held[path] = release
        return release

    def answer_large(self, path: str) -> None:
        """Requests to `path` are answered 200 with 64 MiB of body."""
        self._large.add(path)

    def received(self, path: str) -> list[Received]:
        with self._lock:
            return [request for request in self._requests if request.path == path]

    def wait_for(self, path: str, count: int, deadline_s: float = 60) -> list[Received]:
        deadline = time.monotonic() + deadline_s
        while len(found := self.received(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {len(found)} requests after {deadline_s} s, expected {count}")
            time.sleep(0.02)
        return found

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                release = receiver._held.get(self.path)
                if release is not None:
                    release.wait(_HOLD_MAX_S)
                with receiver._lock:
                    script = receiver._scripts.get(self.path)
                    status = script.popleft() if script else 200
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    receiver._requests.append(Received(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                if 300 <= status < 400:
                    self.send_header("Location", f"{self.path}/redirected")
                self.end_headers()
                if self.path not in receiver._large:
                    self.wfile.write(f"answered {status}".encode())
                    return
                with contextlib.suppress(OSError):  # the sender stops reading, and closes
                    for _ in range(1024):
                        self.wfile.write(b"x" * 65536)
                    self.wfile.flush()
                    receiver.large_read_whole += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until `start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def release_all(self) -> None:
        for release in self._held.values():
            release.set()


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.release_all()
        receiver.stop()
