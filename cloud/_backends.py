"""Tail backends behind one interface, and the embedded ONNX Runtime one.

A backend runs the tail of a split (or the whole model, for offload) on one decoded sample and says how
long the sample waited and how long the computation took::

    servicer --(TailSpec, y_hat)--> TailBackend.infer --> TailResult(logits, queue_s, tail_s)

:class:`EmbeddedBackend` runs ONNX Runtime in this process. Its batching adds no delay: a tail has at
most ``threads`` batches running; a sample that arrives while they are busy waits, and the next batch
takes every waiting sample (up to 64). At low load every sample runs alone at once; under load, batches
grow with the queue, as Triton's dynamic batcher does. ``TritonBackend`` (``_triton.py``) sends the
samples to Triton, which batches them itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from splitserve.core.errors import BundleError, InferenceError, ModelNotReadyError

from ._registry import OUTPUT, TailSpec

__all__ = ["MAX_BATCH", "EmbeddedBackend", "TailBackend", "TailResult"]

MAX_BATCH = 64
_EWMA = 0.2


@dataclass(frozen=True)
class TailResult:
    """One sample's logits and where its time went.

    Attributes:
        logits: float32 ``(num_classes,)``.
        queue_s: time waiting in front of the tail (the backend's queue; Triton's, estimated).
        tail_s: time computing (for Triton: the round trip less the queue estimate).
    """

    logits: NDArray[Any]
    queue_s: float
    tail_s: float


class TailBackend(Protocol):
    """What the servicer needs from a tail backend."""

    name: str

    async def start(self) -> None:
        """Connect (or start) the backend; raise ``UnavailableError`` if it cannot be reached."""

    async def load(self, specs: Sequence[TailSpec]) -> None:
        """Make ``specs`` runnable; raise ``BundleError``/``ModelNotReadyError`` if one cannot be."""

    async def unload(self, specs: Sequence[TailSpec]) -> None:
        """Release ``specs`` (no request uses them any more)."""

    async def infer(self, spec: TailSpec, x: NDArray[Any], timeout_s: float | None = None) -> TailResult:
        """Run one sample (no batch axis); raise a ``SplitServeError`` on failure."""

    async def ready(self) -> bool:
        """Whether the backend is reachable and every loaded spec can run."""

    def queue_delay_s(self, spec: TailSpec) -> float:
        """The current queueing delay in front of ``spec``, for the orchestrator."""

    async def close(self) -> None:
        """Release everything (and stop what the backend started)."""


@dataclass
class _Item:
    x: NDArray[Any]
    future: asyncio.Future[TailResult]
    enqueued: float


@dataclass
class _Session:
    spec: TailSpec
    session: ort.InferenceSession
    pending: deque[_Item] = field(default_factory=deque)
    running: int = 0
    queue_ewma_s: float = 0.0


class EmbeddedBackend:
    """Tails run in-process by ONNX Runtime (CPU), with zero-delay batching.

    Args:
        threads: batches of one tail that may run at the same time (each on its own thread, ONNX
            Runtime intra-op threads 1).
    """

    name = "embedded"

    def __init__(self, threads: int = 1) -> None:
        self._threads = threads
        self._sessions: dict[tuple[str, str, str], _Session] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="splitserve-ort")

    async def load(self, specs: Sequence[TailSpec]) -> None:
        loop = asyncio.get_running_loop()
        sessions = await asyncio.gather(*(loop.run_in_executor(self._pool, _open_session, s) for s in specs))
        for spec, session in zip(specs, sessions, strict=True):
            self._sessions[spec.key] = _Session(spec, session)

    async def unload(self, specs: Sequence[TailSpec]) -> None:
        for spec in specs:
            self._sessions.pop(spec.key, None)

    async def infer(self, spec: TailSpec, x: NDArray[Any], timeout_s: float | None = None) -> TailResult:
        state = self._sessions.get(spec.key)
        if state is None:
            raise ModelNotReadyError(f"{spec.model} {spec.version} split {spec.split}: tail is not loaded")
        future: asyncio.Future[TailResult] = asyncio.get_running_loop().create_future()
        state.pending.append(_Item(x, future, time.perf_counter()))
        if state.running < self._threads:
            state.running += 1
            task = asyncio.create_task(self._drain(state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, state: _Session) -> None:
        loop = asyncio.get_running_loop()
        try:
            while state.pending:
                items: list[_Item] = []
                while state.pending and len(items) < MAX_BATCH:
                    item = state.pending.popleft()
                    if not item.future.done():  # its caller gave up (deadline, cancelled RPC)
                        items.append(item)
                if not items:
                    continue
                start = time.perf_counter()
                batch = np.stack([item.x for item in items])
                try:
                    logits = await loop.run_in_executor(self._pool, _run, state.session, state.spec, batch)
                except Exception as exc:  # noqa: BLE001 - ONNX Runtime errors are not typed
                    error = InferenceError(f"{state.spec.model} split {state.spec.split}: tail failed: {exc}")
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(error)
                    continue
                tail_s = time.perf_counter() - start
                for i, item in enumerate(items):
                    queue_s = start - item.enqueued
                    state.queue_ewma_s += _EWMA * (queue_s - state.queue_ewma_s)
                    if not item.future.done():
                        item.future.set_result(TailResult(logits[i], queue_s, tail_s))
        finally:
            state.running -= 1

    async def ready(self) -> bool:
        return self._pool is not None

    def queue_delay_s(self, spec: TailSpec) -> float:
        state = self._sessions.get(spec.key)
        if state is None:
            return 0.0
        oldest = time.perf_counter() - state.pending[0].enqueued if state.pending else 0.0
        return max(oldest, state.queue_ewma_s)

    async def close(self) -> None:
        self._sessions.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _open_session(spec: TailSpec) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(spec.onnx), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BundleError(f"{spec.onnx}: ONNX Runtime cannot load it: {exc}") from exc
    inputs = {i.name: i for i in session.get_inputs()}
    if spec.input_name not in inputs or OUTPUT not in {o.name for o in session.get_outputs()}:
        raise BundleError(
            f"{spec.onnx}: expected input {spec.input_name!r} and output {OUTPUT!r}, found inputs "
            f"{sorted(inputs)} and outputs {[o.name for o in session.get_outputs()]}"
        )
    return session


def _run(session: ort.InferenceSession, spec: TailSpec, batch: NDArray[Any]) -> NDArray[Any]:
    (logits,) = session.run([OUTPUT], {spec.input_name: batch})
    return np.asarray(logits, dtype=np.float32)
