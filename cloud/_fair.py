"""Fair turns at decoding and the tail: one client's queue never makes another wait behind all of it.

Without it the backend serves requests in arrival order: a client that keeps 64 requests in flight on each
of several streams (allowed: the limit is per connection) filled the embedded backend's queue with
hundreds of samples, and a normal client's request waited behind all of them (``bench hostile``: p50 5 ->
46 ms, p99 12 -> 99 ms beside four streams that never read their replies), and their decodes kept the
event loop busy. :class:`FairGate` lets at most ``slots`` requests decode or run their tail at once and
hands each freed slot to the next waiting client in turn (round robin over clients, first come first
served within one), so a request waits behind at most one request of each other busy client plus the
``slots`` already admitted; a waiting request costs a future, not CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator

__all__ = ["BACKEND_SLOTS", "FairGate"]

BACKEND_SLOTS = 64
"""Requests decoding or at the backend at once: one full batch of the embedded backend (``MAX_BATCH``), so
batching is as before (``bench cloud`` on the test bundle, 64 clients: 1,329 req/s embedded and 956
Triton with the gate, 1,245 and 1,059 without; with 8 slots 835 and 815), while a newly admitted request
has at most one batch ahead of it instead of every queued request."""


class FairGate:
    """At most ``slots`` holders at once; waiting clients are served in turn."""

    def __init__(self, slots: int = BACKEND_SLOTS) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, not {slots}")
        self.slots = slots
        self._busy = 0
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[None]:
        """Hold one slot for ``client`` while the body runs."""
        await self._acquire(client)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, client: str) -> None:
        if self._busy < self.slots and not self._waiting:
            self._busy += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(future)
        try:
            await future  # _release hands its slot over: the busy count stays
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot arrived as the caller gave up: pass it on
            else:
                queue = self._waiting.get(client)
                if queue is not None and future in queue:
                    queue.remove(future)
                    if not queue:
                        del self._waiting[client]
            raise

    def _release(self) -> None:
        while self._waiting:
            client, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            del self._waiting[client]
            if queue:
                self._waiting[client] = queue  # its next request waits for its next turn
            if not future.done():
                future.set_result(None)
                return
        self._busy -= 1
