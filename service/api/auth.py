"""Bearer tokens from `API_TOKENS`: `name:scope[,scope]:sha256-hex` entries, `;` or newline separated.

A console login (service/console/sessions.py) stands for the token it was opened with, on every route. A
browser sends the cookie by itself, so a state-changing request carrying only the cookie must come from the
console's own pages: its `Origin` must be the service's own (cross-site request forgery is refused).
"""

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
from service.console.sessions import COOKIE, SessionSigner, fingerprint
from service.errors import ConfigurationError, Forbidden, Unauthorized

SCOPES = ("read", "run", "admin")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_NAME = r"[A-Za-z0-9_.@-]{1,64}"
_ENTRY = re.compile(rf"^(?P<name>{_NAME}):(?P<scopes>[a-z,]+):(?P<digest>[0-9a-f]{{64}})\Z")


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


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
        self.sessions = SessionSigner(settings.session_keys(), settings.session_max_age)
        self._by_fingerprint = {fingerprint(entry.digest): entry.principal for entry in self.entries}

    def authenticate(self, request: Request) -> Principal:
        """The bearer token of the request, else its console session; Forbidden for a forged request."""
        authorization = request.headers.get("authorization")
        if self.disabled:
            # No login to steal, but a page of another site can still make a visitor's browser post here.
            check_origin(request, required=False)
            return ANONYMOUS
        if authorization is None and COOKIE in request.cookies:
            principal = self.session(request.cookies[COOKIE])
            if principal is None:
                raise Unauthorized("the console session expired: log in again")
            check_origin(request, required=True)
            return principal
        return self.bearer(authorization)

    def bearer(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send Authorization: Bearer <token>")
        entry = self._entry(token.strip())
        if entry is None:
            raise Unauthorized("unknown token")
        return entry.principal

    def login(self, token: str) -> str | None:
        """The session cookie for a token typed into the login form; None for a wrong one."""
        entry = self._entry(token.strip())
        if entry is None:
            return None
        return self.sessions.issue(entry.principal.name, fingerprint(entry.digest))

    def session(self, cookie: str) -> Principal | None:
        opened = self.sessions.open(cookie)
        if opened is None:
            return None
        name, token_fingerprint = opened
        principal = self._by_fingerprint.get(token_fingerprint)
        return principal if principal is not None and principal.name == name else None

    def _entry(self, token: str) -> TokenEntry | None:
        digest = hashlib.sha256(token.encode()).digest()
        found: TokenEntry | None = None
        # Compare against every entry, in constant time each, so timing says nothing about which matched.
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found


def same_origin(request: Request, origin: str) -> bool:
    """Whether `origin` names the host the request was sent to.

    Host and port only: behind a proxy that terminates TLS the service sees plain HTTP while the browser's
    Origin says https, and a page of the same host and port is the service's own whatever the scheme.
    """
    scheme, separator, netloc = origin.partition("://")
    return bool(separator) and scheme in ("http", "https") and netloc == request.headers.get("host")


def check_origin(request: Request, *, required: bool) -> None:
    """Refuse a state-changing request that a page of another origin made a browser send."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin is None and not required:
        return
    if origin is None or not same_origin(request, origin):
        raise Forbidden(
            "a request authenticated by the console's cookie must come from the console's own pages "
            "(its Origin header must be this service's)"
        )


# Declares the scheme in the OpenAPI description (and the Authorize button of /docs); the header itself is
# checked by Authenticator, which answers 401 with WWW-Authenticate.
_BEARER = HTTPBearer(auto_error=False, description="a token listed in API_TOKENS (`ars token new`)")


def require(scope: str) -> object:
    # async: a plain def would be sent to the thread pool on every request, for no I/O at all.
    async def dependency(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
    ) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        principal = authenticator.authenticate(request)
        if not principal.may(scope):
            raise Forbidden(f"token {principal.name!r} lacks the {scope!r} scope")
        return principal

    return Depends(dependency)


ReadAccess = Annotated[Principal, require("read")]
RunAccess = Annotated[Principal, require("run")]
AdminAccess = Annotated[Principal, require("admin")]
