"""Server-side dynamic batching, as TF Serving's ``--enable_batching`` does it.

Requests for one signature queue up; a worker takes the oldest, then adds
compatible requests (same input names and per-row shapes) until
``max_batch_size`` rows or ``max_wait_s`` after the first one arrived, runs
the signature once on the concatenation and hands each request its rows.
``num_threads`` workers run batches side by side; there is no lock around a
call. When a batch fails, its requests are retried one by one so that one bad
request cannot fail its neighbours.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

Arrays = Dict[str, np.ndarray]


@dataclasses.dataclass
class BatchingConfig:
    max_batch_size: int = 64
    max_wait_s: float = 0.002
    num_threads: int = 2


@dataclasses.dataclass
class _Task:
    inputs: Arrays
    rows: int
    key: Tuple
    future: concurrent.futures.Future
    arrived: float


def _key(inputs: Arrays) -> Tuple:
    return tuple(sorted((k, v.shape[1:], v.dtype.kind) for k, v in inputs.items()))


class Batcher:
    """Runs ``fn(inputs) -> outputs`` (dicts of arrays with a leading batch
    axis) on merged requests. ``submit`` returns a future of the outputs."""

    def __init__(self, fn: Callable[[Arrays], Arrays], config: BatchingConfig,
                 name: str = "batcher"):
        self.fn = fn
        self.config = config
        self._queue: "queue.Queue[_Task]" = queue.Queue()
        self._held: List[_Task] = []          # taken from the queue, not yet batched
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self.batches = 0
        self.rows = 0
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, config.num_threads))]
        for t in self._threads:
            t.start()

    def submit(self, inputs: Arrays) -> concurrent.futures.Future:
        rows = {len(v) for v in inputs.values()}
        if len(rows) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(rows)}")
        task = _Task(inputs, rows.pop(), _key(inputs), concurrent.futures.Future(),
                     time.monotonic())
        self._queue.put(task)
        return task.future

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    # --- workers -------------------------------------------------------
    def _next(self, timeout: float):
        with self._held_lock:
            if self._held:
                return self._held.pop(0)
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _gather(self, first: _Task) -> List[_Task]:
        batch, rows = [first], first.rows
        deadline = first.arrived + self.config.max_wait_s
        while rows < self.config.max_batch_size:
            wait = deadline - time.monotonic()
            try:
                task = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if task.key != first.key or rows + task.rows > self.config.max_batch_size:
                with self._held_lock:
                    self._held.append(task)
                break
            batch.append(task)
            rows += task.rows
        return batch

    def _work(self) -> None:
        while not self._stop.is_set():
            first = self._next(timeout=0.1)
            if first is None:
                continue
            batch = self._gather(first)
            try:
                self._run(batch)
            except Exception as err:  # noqa: BLE001 - e.g. an output without a batch axis
                for task in batch:
                    if not task.future.done():
                        task.future.set_exception(err)

    def _run(self, batch: List[_Task]) -> None:
        if len(batch) == 1:
            self._run_one(batch[0])
            return
        merged = {k: np.concatenate([t.inputs[k] for t in batch]) for k in batch[0].inputs}
        try:
            out = self.fn(merged)
        except Exception:  # noqa: BLE001 - retried alone, each gets its own answer
            for task in batch:
                self._run_one(task)
            return
        self.batches += 1
        total = sum(t.rows for t in batch)
        unbatched = [k for k, v in out.items() if np.ndim(v) == 0 or len(v) != total]
        if unbatched:
            raise ValueError(f"outputs {unbatched} have no batch axis of {total} rows")
        start = 0
        for task in batch:
            stop = start + task.rows
            task.future.set_result({k: v[start:stop] for k, v in out.items()})
            start = stop
        self.rows += start

    def _run_one(self, task: _Task) -> None:
        try:
            out = self.fn(task.inputs)
        except Exception as err:  # noqa: BLE001 - handed to the caller
            task.future.set_exception(err)
            return
        self.batches += 1
        self.rows += task.rows
        task.future.set_result(out)
