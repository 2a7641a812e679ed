"""FairGate: bounded holders, turns by client, cancellation never loses a slot."""

from __future__ import annotations

import asyncio

import pytest

from splitserve.cloud._fair import FairGate


def test_a_busy_client_does_not_make_another_wait_behind_all_its_requests() -> None:
    async def scenario() -> list[str]:
        gate, order, release = FairGate(slots=1), [], asyncio.Event()

        async def request(client: str, i: int) -> None:
            async with gate.slot(client):
                order.append(f"{client}{i}")
                await release.wait()

        busy = [asyncio.create_task(request("a", i)) for i in range(5)]
        await asyncio.sleep(0)
        other = asyncio.create_task(request("b", 0))
        await asyncio.sleep(0)
        for _ in range(6):  # let one holder finish at a time
            release.set()
            await asyncio.sleep(0)
            release.clear()
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*busy, other)
        return order

    order = asyncio.run(scenario())
    assert order[:3] == ["a0", "a1", "b0"]  # b waited for the holder and a1 (a's turn), not for a2-a4
    assert sorted(order) == ["a0", "a1", "a2", "a3", "a4", "b0"]


def test_at_most_slots_hold_and_cancelled_waiters_give_their_turn_on() -> None:
    async def scenario() -> tuple[int, int]:
        gate, peak, held = FairGate(slots=2), 0, 0
        go = asyncio.Event()

        async def request(client: str) -> None:
            nonlocal peak, held
            async with gate.slot(client):
                held += 1
                peak = max(peak, held)
                await go.wait()
                held -= 1

        tasks = [asyncio.create_task(request(c)) for c in "aabbcc"]
        await asyncio.sleep(0)
        tasks[3].cancel()  # a waiter gives up
        await asyncio.sleep(0)
        go.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return peak, gate.waiting

    peak, waiting = asyncio.run(scenario())
    assert peak == 2 and waiting == 0
    gate = FairGate(slots=1)
    assert asyncio.run(_acquire_all(gate)) == 1 and gate._busy == 0  # every slot came back
    with pytest.raises(ValueError):
        FairGate(slots=0)


async def _acquire_all(gate: FairGate) -> int:
    async def one() -> None:
        async with gate.slot("x"):
            await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(10)))
    return gate.slots
