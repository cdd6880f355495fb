"""A real Git server for the tests: git's own `git http-backend` (CGI) behind a threaded HTTP server on
127.0.0.1 that demands HTTP Basic auth, and helpers to build bare repositories with playbooks in them."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


@dataclass
class Served:
    """One request the server answered."""

    method: str
    path: str
    user: str | None
    status: int
    bytes_sent: int


@dataclass
class GitServer:
    root: Path
    port: int
    # Accepted `user:password` pairs of Basic auth.
    accepted: set[str]
    served: list[Served] = field(default_factory=list)
    # Repository paths whose upload-pack answers are held back `delay` seconds: keeps a clone running long
    # enough to be observed.
    slow: set[str] = field(default_factory=set)
    delay: float = 0.0
    # Network emulation for benchmarks: seconds added to every answer, and bytes per second (0: unlimited).
    latency: float = 0.0
    bandwidth: float = 0.0
    # Repository path prefix → URL prefix this server redirects to (302) instead of answering.
    redirects: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"
    # Repository path prefix → how many more upload-pack requests to drop with a TCP reset.
    resets: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}/{path}"

    def bytes_for(self, repo_path: str) -> int:
        with self.lock:
            return sum(item.bytes_sent for item in self.served if item.path.startswith(f"/{repo_path}/"))

    def requests_for(self, repo_path: str) -> list[Served]:
        with self.lock:
            return [item for item in self.served if item.path.startswith(f"/{repo_path}/")]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `served` instead."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        git = self.server.git
        user = self._user()
        path, _, query = self.path.partition("?")
        # Read the body whatever the answer: a socket closed with unread data is reset, not closed.
        body = self._body()
        if user is None:
            self._send_plain(401, b"authentication required\n", {"WWW-Authenticate": 'Basic realm="git"'})
            self._record(path, None, 401, 0)
            return
        for prefix, target in git.redirects.items():
            if path.startswith(f"/{prefix}"):
                location = target + self.path[len(prefix) + 1 :]
                self._send_plain(302, b"", {"Location": location})
                self._record(path, user, 302, 0)
                return
        if path.endswith("/git-upload-pack") and self._drop(path):
            return
        if path.endswith("/git-upload-pack") and any(path.startswith(f"/{slow}/") for slow in git.slow):
            time.sleep(git.delay)
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "GIT_PROJECT_ROOT": str(git.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user,
            "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        result = subprocess.run([HTTP_BACKEND], input=body, env=env, capture_output=True, check=False)
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        self._send_plain(status, payload, headers)
        self._record(path, user, status, len(payload))

    def _drop(self, path: str) -> bool:
        """Reset the connection (SO_LINGER 0) if `resets` asks for it, as a restarting proxy would."""
        git = self.server.git
        with git.lock:
            prefix = next(
                (p for p, left in git.resets.items() if left > 0 and path.startswith(f"/{p}")), None
            )
            if prefix is None:
                return False
            git.resets[prefix] -= 1
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()
        return True

    def _user(self) -> str | None:
        value = self.headers.get("Authorization", "")
        if not value.startswith("Basic "):
            return None
        try:
            pair = base64.b64decode(value[6:]).decode()
        except ValueError:
            return None
        return pair.partition(":")[0] if pair in self.server.git.accepted else None

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send_plain(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        git = self.server.git
        if git.latency:
            time.sleep(git.latency)
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not git.bandwidth:
            self.wfile.write(payload)
            return
        chunk = 64 * 1024
        for start in range(0, len(payload), chunk):
            self.wfile.write(payload[start : start + chunk])
            time.sleep(min(chunk, len(payload) - start) / git.bandwidth)

    def _record(self, path: str, user: str | None, status: int, sent: int) -> None:
        with self.server.git.lock:
            self.server.git.served.append(Served(self.command, path, user, status, sent))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # git opens several connections per fetch and runs fetch concurrently: socketserver's default backlog
    # of 5 is too short under load.
    request_queue_size = 128
    git: GitServer


@contextmanager
def git_server(root: Path, accepted: set[str], tls: tuple[Path, Path] | None = None) -> Iterator[GitServer]:
    """A server on 127.0.0.1; with `tls` (certificate, key), it speaks https."""
    root.mkdir(parents=True, exist_ok=True)
    server = _Server(("127.0.0.1", 0), _Handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.git = GitServer(
        root=root, port=server.server_address[1], accepted=accepted, scheme="https" if tls else "http"
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.git
    finally:
        server.shutdown()
        server.server_close()


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(cwd or Path.cwd()),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


class RepoBuilder:
    """A working repository whose commits are pushed to a bare one under the server's root."""

    def __init__(self, server_root: Path, path: str, work: Path) -> None:
        self.bare = server_root / path
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--bare", str(self.bare))
        self.work = work
        git("init", "--quiet", "--initial-branch", "main", str(work))

    def commit(self, files: dict[str, str | bytes], message: str = "change") -> str:
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str) -> None:
        git("tag", "--annotate", "-m", name, name, cwd=self.work)

    def push(self) -> None:
        git("push", "--quiet", "--tags", str(self.bare), "+refs/heads/*:refs/heads/*", cwd=self.work)

    def branch(self, name: str) -> None:
        """Start a new branch at the current commit and continue on it."""
        git("switch", "--quiet", "--create", name, cwd=self.work)

    def switch(self, name: str) -> None:
        git("switch", "--quiet", name, cwd=self.work)


def playbook(marker: str, hosts: str = "localhost") -> str:
    """A tiny playbook that prints `marker`, on localhost with the worker's own Python."""
    return f"""- name: from git
  hosts: {hosts}
  gather_facts: false
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  tasks:
    - name: say
      ansible.builtin.debug:
        msg: "{marker}"
"""


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost that is its own CA: the private CA of a lab server."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
