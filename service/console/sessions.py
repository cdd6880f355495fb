"""Console logins: a signed, expiring cookie that names the token it was opened with.

The cookie holds no secret, only which `API_TOKENS` entry logged in, and until when; it is signed with the
first `SESSION_SECRET` key and accepted under any of them (rotation). Each request looks the entry up again,
so removing a token from `API_TOKENS` ends its sessions, and its scopes are always the current ones.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Sequence

COOKIE = "ars_session"
_MAX_COOKIE = 1024


def fingerprint(digest: bytes) -> str:
    """Names a token entry in a cookie without repeating its digest."""
    return hashlib.sha256(b"ars-session:" + digest).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: str, payload: str) -> str:
    return _b64(hmac.new(key.encode(), payload.encode(), hashlib.sha256).digest())


class SessionSigner:
    def __init__(self, keys: Sequence[str], max_age: int) -> None:
        self._keys = list(keys)
        self.max_age = max_age

    def issue(self, name: str, token_fingerprint: str) -> str:
        body = json.dumps(
            {"n": name, "t": token_fingerprint, "e": int(time.time()) + self.max_age}, separators=(",", ":")
        )
        payload = _b64(body.encode())
        return f"{payload}.{_sign(self._keys[0], payload)}"

    def open(self, cookie: str) -> tuple[str, str] | None:
        """(token name, token fingerprint) of an unexpired cookie signed by one of the keys; else None."""
        if len(cookie) > _MAX_COOKIE:
            return None
        payload, _, signature = cookie.partition(".")
        # Every key is tried, each in constant time: which key matched is not told by the timing.
        valid = False
        for key in self._keys:
            valid |= hmac.compare_digest(_sign(key, payload), signature)
        if not valid:
            return None
        try:
            claims = json.loads(_unb64(payload))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("e"), int) or claims["e"] < time.time():
            return None
        name, token = claims.get("n"), claims.get("t")
        if not isinstance(name, str) or not isinstance(token, str):
            return None
        return name, token
