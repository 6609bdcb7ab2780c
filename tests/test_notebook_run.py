"""The nbclient workaround: messages are awaited in short polls, up to the caller's timeout."""

from __future__ import annotations

import asyncio
import time
from queue import Empty

import pytest

from lessons import notebook_run


class Channel:
    """A channel whose socket has a message ready only from the ``ready_after``-th poll on."""

    def __init__(self, ready_after: int | None) -> None:
        self.polls: list[int] = []
        self.socket = self
        self.ready_after = ready_after

    async def poll(self, timeout_ms: int) -> int:
        self.polls.append(timeout_ms)
        ready = self.ready_after is not None and len(self.polls) > self.ready_after
        if not ready:
            await asyncio.sleep(timeout_ms / 1000)
        return int(ready)

    async def _recv(self) -> dict:
        return {"msg_type": "status"}


def test_a_message_is_awaited_in_short_polls_until_it_comes() -> None:
    channel = Channel(ready_after=3)
    assert asyncio.run(notebook_run.sliced_get_msg(channel, timeout=None)) == {"msg_type": "status"}
    assert channel.polls == [200] * 4  # never one long poll that could miss its wake-up


def test_no_message_within_the_timeout_raises_empty_on_time() -> None:
    channel = Channel(ready_after=None)
    started = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(notebook_run.sliced_get_msg(channel, timeout=0.5))
    assert 0.45 <= time.monotonic() - started < 1.5
    assert max(channel.polls) <= 200 and len(channel.polls) >= 3


def test_the_patch_is_what_jupyter_client_calls() -> None:
    from jupyter_client.channels import AsyncZMQSocketChannel

    notebook_run.patch_message_polling()
    assert AsyncZMQSocketChannel.get_msg is notebook_run.sliced_get_msg
