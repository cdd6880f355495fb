"""`ars token new`: a token for a client and its API_TOKENS entry for the Secret."""

from __future__ import annotations

import sys

from service.api.auth import new_token


def token_new_command(name: str, scopes: list[str]) -> int:
    token, entry = new_token(name, scopes)
    sys.stdout.write(
        f"token (give it to the client; it is not stored anywhere): {token}\n"
        f"API_TOKENS entry (add it to the Secret; entries are separated by ';' or newlines):\n{entry}\n"
    )
    return 0
