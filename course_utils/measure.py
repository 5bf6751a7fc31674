"""Timing and memory measurements that are honest on CPU and GPU alike.

Timings: warm-up runs are discarded, then several repeats; report the median and the spread
(interquartile range). CUDA work is asynchronous, so the clock is read only after synchronizing.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Timing:
    times: list[float] = field(default_factory=list)  # seconds, one per repeat

    @property
    def median(self) -> float:
        return statistics.median(self.times)

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


def time_interleaved(fns: dict, warmup: int = 1, repeats: int = 5, device=None) -> dict:
    """Time several candidates fairly: ``{label: fn}`` -> ``{label: Timing}``.

    The candidates alternate within each round (a, b, c, a, b, c, ...), so a change in background
    load (other programs on a shared CPU, GPU clocks) hits all of them alike instead of whichever
    happened to be timed last.
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
    for _ in range(repeats):
        for label, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[label].append(time.perf_counter() - t0)
    return {label: Timing(t) for label, t in times.items()}


@dataclass
class PairedComparison:
    """Two interleaved timings compared round by round (see ``compare_paired``)."""

    ratio: float  # median over rounds of candidate / baseline (> 1: the candidate is slower)
    slower: int  # rounds in which the candidate was slower
    rounds: int
    p_value: float  # one-sided sign test: chance of >= `slower` slower rounds if neither were slower

    def __str__(self) -> str:
        return (f"{self.ratio - 1:+.1%} (slower in {self.slower} of {self.rounds} interleaved rounds, "
                f"sign test p = {self.p_value:.3f})")


def compare_paired(baseline: Timing, candidate: Timing) -> PairedComparison:
    """Is ``candidate`` slower than ``baseline``? Both from one ``time_interleaved`` call.

    Round i of each ran back to back, under the same background load, so the per-round ratios
    cancel most of a shared machine's noise; the sign test says how often chance alone would make
    the candidate look slower in that many rounds.
    """
    import math

    if len(baseline.times) != len(candidate.times):
        raise ValueError("the two timings need the same number of rounds: take both from one time_interleaved call")
    ratios = [c / b for b, c in zip(baseline.times, candidate.times)]
    n, k = len(ratios), sum(r > 1 for r in ratios)
    p = sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
    return PairedComparison(statistics.median(ratios), k, n, p)


def speedup(baseline: Timing, candidate: Timing) -> float:
    """How many times faster ``candidate`` is than ``baseline`` (medians): > 1 means faster."""
    return baseline.median / candidate.median


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_memory(fn: Callable[[], object], device=None, interval: float = 0.0005) -> int:
    """Extra memory (bytes) ``fn()`` needs at its peak, above what was in use before.

    On CUDA: the allocator's peak (``max_memory_allocated``), exact. On CPU: the process's resident
    memory sampled every ``interval`` seconds in a thread, so short spikes can be missed and
    the allocator may reuse freed pages; treat it as an estimate and say so.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], _rss())
    return peak[0] - base


def release_cpu_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that a
    following CPU ``peak_memory`` measures the new work instead of reusing what an earlier run freed.

    Without it, a second training run on CPU can appear to need almost no memory: the allocator
    hands it the pages the first run released, and the process's resident size does not grow.
    A no-op where there is no glibc (macOS, Windows).
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:  # no C library to load: nothing to trim
        pass


def current_peak_memory(device=None) -> int | None:
    """Peak allocated bytes on a CUDA device since the last reset; None on other devices."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return None


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in an optimizer's state (Adam's two moments, step counters), measured from its tensors.

    State is created lazily: before the first ``step()`` this is 0.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return sum(tensor_bytes(v) for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
