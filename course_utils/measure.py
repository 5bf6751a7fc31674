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


def current_peak_memory(device=None) -> int | None:
    """Peak allocated bytes on a CUDA device since the last reset; None on other devices."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return None


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
