"""Pure parts of the API and the worker, in this process: body depth, cursors, the event hand-off."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime

import pytest

from service.api.limits import json_depth
from service.errors import InvalidRequest, shown
from service.jobs.service import decode_cursor, encode_cursor
from service.runner.events import EventChannel


@pytest.mark.parametrize(
    ("body", "depth"),
    [(b"{}", 1), (b'{"a": [[1]]}', 3), (b'{"a": "[[[[{{{"}', 1), (b'"\\"[["', 0), (b"[" * 40, 40)],
)
def test_json_depth_ignores_brackets_inside_strings(body: bytes, depth: int) -> None:
    assert json_depth(body) == depth


def test_a_cursor_round_trips_and_a_forged_one_is_refused() -> None:
    created_at = datetime(2026, 12, 1, 10, 0, 0, 123456)
    assert decode_cursor(encode_cursor(created_at, "j1")) == (created_at, "j1")
    with pytest.raises(InvalidRequest, match="cursor"):
        decode_cursor("not-a-cursor")


def test_shown_cuts_long_input() -> None:
    assert shown("abc") == "'abc'"
    assert shown("x" * 5000) == f"{'x' * 64!r}… (5000 characters)"


def test_the_channel_carries_events_in_order_then_spills_without_blocking() -> None:
    async def main() -> tuple[list[int], bool, list[int]]:
        channel = EventChannel(asyncio.get_running_loop(), capacity=3)
        accepted: list[bool] = []

        def produce() -> None:
            accepted.extend(channel.put({"counter": n}) for n in range(1, 6))
            channel.close()

        thread = threading.Thread(target=produce)
        thread.start()
        thread.join()
        first = await channel.get_batch(10)
        assert first is not None
        rest = await channel.get_batch(10)
        return (
            [event["counter"] for event in first],
            rest is None,
            [n for n, ok in enumerate(accepted, 1) if ok],
        )

    carried, ended, accepted = asyncio.run(main())
    assert carried == [1, 2, 3]
    assert ended
    # Past the capacity the channel says no: ansible-runner writes those events to its files instead.
    assert accepted == [1, 2, 3]
