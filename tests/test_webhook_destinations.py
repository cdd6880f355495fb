"""The address a webhook connects to is the one that was checked: a name is resolved once, every address it
resolves to is judged, and the connection goes to the judged address (DNS rebinding gains nothing)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import anyio
import httpcore
import pytest

from service.webhooks.destinations import GuardedBackend, RefusedDestination
from tests.support.receiver import Receiver, receiving


def _resolver(
    answers: dict[str, list[str]], calls: list[str]
) -> Callable[[str, int], Coroutine[Any, Any, list[str]]]:
    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[host]

    return resolve


async def _post(backend: GuardedBackend, url: str) -> int:
    async with httpcore.AsyncConnectionPool(network_backend=backend, retries=0) as pool:
        response = await pool.request("POST", url, content=b"{}")
        return response.status


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


def test_a_name_resolving_to_loopback_is_refused_and_nothing_is_sent(receiver: Receiver) -> None:
    calls: list[str] = []
    # A name that looked public when the subscription was made, and now resolves to this machine.
    backend = GuardedBackend(
        allow_private=False, resolve=_resolver({"hooks.rebind.test": ["127.0.0.1"]}, calls)
    )
    with pytest.raises(RefusedDestination, match=r"127\.0\.0\.1 is a loopback address"):
        anyio.run(_post, backend, f"http://hooks.rebind.test:{receiver.port}/hook")
    assert receiver.received("/hook") == []
    assert calls == ["hooks.rebind.test"]


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "::1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ],
)
def test_every_non_public_address_is_refused(address: str) -> None:
    backend = GuardedBackend(allow_private=False, resolve=_resolver({"h.test": [address]}, []))
    with pytest.raises(RefusedDestination):
        anyio.run(_post, backend, "http://h.test:9/")


def test_the_connection_goes_to_the_checked_address_not_to_the_name(receiver: Receiver) -> None:
    """With private addresses allowed: the request reaches the address the resolver gave for a name that
    nothing else can resolve, with the name as its Host."""
    calls: list[str] = []
    backend = GuardedBackend(allow_private=True, resolve=_resolver({"only.ours.test": ["127.0.0.1"]}, calls))
    assert anyio.run(_post, backend, f"http://only.ours.test:{receiver.port}/hook") == 200
    (request,) = receiver.received("/hook")
    assert request.headers["host"] == f"only.ours.test:{receiver.port}"
    assert calls == ["only.ours.test"]


def test_every_address_of_the_answer_is_judged(receiver: Receiver) -> None:
    """A name with several addresses: each refused one is named, none is tried."""
    calls: list[str] = []
    backend = GuardedBackend(
        allow_private=False, resolve=_resolver({"mixed.test": ["127.0.0.1", "192.0.2.1"]}, calls)
    )
    with pytest.raises(
        RefusedDestination, match=r"127\.0\.0\.1 is a loopback address; 192\.0\.2\.1 is a private address"
    ):
        anyio.run(_post, backend, f"http://mixed.test:{receiver.port}/hook")
    assert receiver.received("/hook") == []


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.1", "0177.0.0.1", "localhost"])
def test_other_spellings_of_loopback_are_refused_by_what_they_resolve_to(
    receiver: Receiver, host: str
) -> None:
    """Forms the URL check cannot read as an address (decimal, hex, octal, short, a name): the system's own
    resolver turns them into 127.0.0.1, and the connection is judged on that."""
    backend = GuardedBackend(allow_private=False)
    with pytest.raises(RefusedDestination, match="loopback"):
        anyio.run(_post, backend, f"http://{host}:{receiver.port}/hook")
    assert receiver.received("/hook") == []
