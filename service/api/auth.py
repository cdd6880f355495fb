"""Bearer tokens from `API_TOKENS`: `name:scope[,scope]:sha256-hex` entries, `;` or newline separated."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings
from service.errors import ConfigurationError, Forbidden, Unauthorized

SCOPES = ("read", "run", "admin")
_NAME = r"[A-Za-z0-9_.@-]{1,64}"
_ENTRY = re.compile(rf"^(?P<name>{_NAME}):(?P<scopes>[a-z,]+):(?P<digest>[0-9a-f]{{64}})\Z")


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


ANONYMOUS = Principal(name="anonymous", scopes=frozenset(SCOPES))


@dataclass(frozen=True)
class TokenEntry:
    principal: Principal
    digest: bytes


def parse_tokens(raw: str) -> list[TokenEntry]:
    entries = []
    for part in re.split(r"[;\n]", raw):
        part = part.strip()
        if not part:
            continue
        match = _ENTRY.match(part)
        if not match:
            raise ConfigurationError(
                "API_TOKENS: each entry must be name:scope[,scope]:<sha256 hex of the token>"
            )
        scopes = frozenset(match["scopes"].split(","))
        if not scopes <= set(SCOPES):
            raise ConfigurationError(f"API_TOKENS: unknown scope in {match['name']}: use {', '.join(SCOPES)}")
        entries.append(TokenEntry(Principal(match["name"], scopes), bytes.fromhex(match["digest"])))
    return entries


def new_token(name: str, scopes: list[str]) -> tuple[str, str]:
    """A fresh random token and its API_TOKENS entry (only the SHA-256 of the token is ever stored)."""
    if not re.fullmatch(_NAME, name):
        raise ConfigurationError("token name: 1 to 64 letters, digits, '_', '.', '@' or '-'")
    token = secrets.token_urlsafe(32)
    entry = f"{name}:{','.join(dict.fromkeys(scopes))}:{hashlib.sha256(token.encode()).hexdigest()}"
    parse_tokens(entry)  # the same rules as the service applies to API_TOKENS
    return token, entry


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.disabled = settings.auth_disabled
        self.entries = parse_tokens(settings.api_tokens or "")

    def authenticate(self, authorization: str | None) -> Principal:
        if self.disabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send Authorization: Bearer <token>")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: Principal | None = None
        # Compare against every entry, in constant time each, so timing says nothing about which matched.
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry.principal
        if found is None:
            raise Unauthorized("unknown token")
        return found


# Declares the scheme in the OpenAPI description (and the Authorize button of /docs); the header itself is
# checked by Authenticator, which answers 401 with WWW-Authenticate.
_BEARER = HTTPBearer(auto_error=False, description="a token listed in API_TOKENS (`ars token new`)")


def require(scope: str) -> object:
    # async: a plain def would be sent to the thread pool on every request, for no I/O at all.
    async def dependency(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
    ) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        principal = authenticator.authenticate(request.headers.get("authorization"))
        if scope not in principal.scopes and "admin" not in principal.scopes:
            raise Forbidden(f"token {principal.name!r} lacks the {scope!r} scope")
        return principal

    return Depends(dependency)


ReadAccess = Annotated[Principal, require("read")]
RunAccess = Annotated[Principal, require("run")]
