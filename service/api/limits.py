"""Request bodies are bounded before any parsing: over the size limit is 413, nested deeper than the depth
limit is 422; neither reaches a route."""

from __future__ import annotations

import json
import re
from array import array
from itertools import accumulate

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A JSON string, possessive so nothing is retried; an unterminated one runs to the end (and the body is
# refused by the JSON parser later), which keeps the scan linear on any input.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = bytes(set(range(256)) - set(b"[]{}"))
# An opening bracket → +1, a closing one → -1 (as a signed byte).
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings not counted).

    Python's parser recurses once per level: a deep enough body is a RecursionError, and a merely deep one
    breaks whatever walks the data next (YAML, Ansible). Linear time, no parsing, every loop in C: the
    deepest point is the largest running sum of +1 per opening and -1 per closing bracket.
    """
    steps = _JSON_STRING.sub(b"", body).translate(_STEP, _NOT_BRACKET)
    return max(accumulate(array("b", steps), initial=0))


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth(body) > self.max_depth:
            await self._refuse(
                send, 422, "ValidationError", f"body: JSON nested deeper than {self.max_depth} levels"
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await self._refuse(
            send, 413, "PayloadTooLarge", f"request body is larger than {self.max_bytes} bytes"
        )

    async def _refuse(self, send: Send, status: int, kind: str, detail: str) -> None:
        payload = json.dumps({"error": kind, "detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
