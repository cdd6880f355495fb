"""Where a webhook may be sent: the URL's shape (checked when a subscription is created) and the address
actually connected to (checked on every connection, so a name that resolves differently later, DNS
rebinding, gains nothing).

Connections are made by `GuardedBackend`, httpcore's network backend with the resolution done here: every
address the name resolves to is checked, and the connection goes to the checked address itself, never to
the name again. httpcore follows no redirect and reads no proxy variable from the environment.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import anyio
import httpcore
from httpcore import AnyIOBackend
from httpcore._backends.base import SOCKET_OPTION

from service.errors import CONTROL

MAX_URL_LENGTH = 2048

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


class RefusedDestination(httpcore.ConnectError):
    """The destination resolves to an address webhooks may not reach."""


def check_url(url: str) -> str:
    """A URL a subscription may post to: http(s), a host, no credentials, no control characters."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"at most {MAX_URL_LENGTH} characters")
    if CONTROL.search(url) or any(character.isspace() for character in url):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials (user:password@); authenticate the signature instead")
    if not parts.hostname:
        raise ValueError("must name a host")
    try:
        parts.port  # noqa: B018 (a port out of range raises)
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.fragment:
        raise ValueError("must not have a fragment (#...)")
    return url


def refusal(address: Address) -> str | None:
    """Why webhooks may not connect to `address` (None: a public address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_private:
        return "a private address"
    if address.is_multicast or address.is_reserved or address.is_unspecified or not address.is_global:
        return "not a public address"
    return None


def literal_refusal(url: str) -> str | None:
    """For a URL whose host is an IP address: why it is refused (checked again at delivery)."""
    host = urlsplit(url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    reason = refusal(address)
    return None if reason is None else f"{host} is {reason}"


async def _resolve(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(AnyIOBackend):
    """Connects only to addresses `refusal` accepts, unless `allow_private`."""

    def __init__(self, *, allow_private: bool, resolve: Resolver = _resolve) -> None:
        self.allow_private = allow_private
        self._resolve = resolve

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                candidates = await self._resolve(host, port)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        allowed: list[str] = []
        refused: list[str] = []
        for candidate in candidates:
            reason = None if self.allow_private else refusal(ipaddress.ip_address(candidate.split("%")[0]))
            if reason is None:
                allowed.append(candidate)
            else:
                refused.append(f"{candidate} is {reason}")
        if not allowed:
            raise RefusedDestination(
                f"refused: {host} resolves to {'; '.join(refused) or 'nothing'} "
                "(WEBHOOK_ALLOW_PRIVATE=true allows it)"
            )
        error: Exception | None = None
        for address in allowed:
            try:
                # The address itself, not the name: nothing resolves it again between check and connect.
                return await super().connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error
