"""Timing, honest on CPU and GPU alike.

Timings: warm-up runs are discarded, then several repeats; report the median and the spread
(interquartile range). CUDA work is asynchronous, so the clock is read only after synchronizing.
Comparisons: ``time_interleaved`` runs the candidates round by round in a seeded shuffled order, and
``course_utils.verdicts.speed_verdict`` decides from the paired rounds (median speed-up and a distribution-free
interval). Bytes and memory live in ``course_utils.memory``.
"""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def synchronize(device: torch.device | None = None) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously); a no-op on a CPU or for None."""
    device = torch.device(device) if isinstance(device, str) else device
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Timing:
    times: list[float] = field(default_factory=list)  # seconds, one per repeat

    @property
    def median(self) -> float:
        return median(self.times)

    @property
    def iqr(self) -> float:
        if len(self.times) < 4:
            return max(self.times) - min(self.times)
        q = statistics.quantiles(self.times, n=4)
        return q[2] - q[0]

    def __str__(self) -> str:
        return f"{self.median * 1e3:.2f} ms (spread {self.iqr * 1e3:.2f} ms, n={len(self.times)})"


def time_fn(fn: Callable[[], object], warmup: int = 2, repeats: int = 5, device=None) -> Timing:
    """Time ``fn()``: ``warmup`` calls discarded, then ``repeats`` timed calls."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return Timing(times)


def round_orders(labels, repeats: int, seed: int = 0) -> list[list]:
    """The order of the candidates in each of ``repeats`` rounds: a seeded shuffle per round, so that no candidate
    always runs first (a cold cache) or right after a heavy one; the same seed gives the same orders."""
    rng = random.Random(seed)
    labels = list(labels)
    return [rng.sample(labels, len(labels)) for _ in range(repeats)]


def time_interleaved(fns: dict, warmup: int = 1, repeats: int = 5, device: torch.device | None = None,
                     seed: int = 0, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time several candidates fairly: ``{label: fn}`` -> ``{label: Timing}``.

    Every round runs each candidate once, in a seeded shuffled order (``round_orders``), so a change in
    background load (other programs on a shared CPU, GPU clocks) hits all of them alike, and order effects
    (which one runs first, which follows which) cancel over the rounds. Round i of every candidate pairs up for
    ``course_utils.verdicts.speed_verdict``. ``clock`` is injectable for tests.
    """
    if not fns:
        raise ValueError("give at least one function to time, e.g. {'baseline': f, 'candidate': g}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times = {label: [] for label in fns}
    for order in round_orders(fns, repeats, seed):
        for label in order:
            t0 = clock()
            fns[label]()
            synchronize(device)
            times[label].append(clock() - t0)
    return {label: Timing(t) for label, t in times.items()}


#: Fewest interleaved rounds ``speed_verdict`` accepts; claims use ``CLAIM_ROUNDS`` or more.
MIN_ROUNDS = 5
CLAIM_ROUNDS = 15


def median(values) -> float:
    """The one median of the course (``statistics.median``: the mean of the middle two for an even count)."""
    values = list(values)
    if not values:
        raise ValueError("the median of no values is undefined")
    return statistics.median(values)
