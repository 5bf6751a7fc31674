"""Timing, honest on CPU and GPU alike, and the one procedure that turns two timings into a verdict.

Timings: warm-up runs are discarded, then several repeats; report the median and the spread
(interquartile range). CUDA work is asynchronous, so the clock is read only after synchronizing.
Comparisons: ``time_interleaved`` runs the candidates in alternation, round by round, and ``speed_verdict``
decides from the paired rounds (median speed-up and a distribution-free interval). Bytes and memory live in
``course_utils.memory``.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .env import resolve_device


def synchronize(device: torch.device | str | None = None) -> None:
    device = resolve_device(device, None)
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


#: Fewest interleaved rounds ``speed_verdict`` accepts; claims use ``CLAIM_ROUNDS`` or more.
MIN_ROUNDS = 5
CLAIM_ROUNDS = 15


def median(values) -> float:
    """The one median of the course (``statistics.median``: the mean of the middle two for an even count)."""
    values = list(values)
    if not values:
        raise ValueError("the median of no values is undefined")
    return statistics.median(values)


def _median_interval_ranks(n: int, confidence: float = 0.95) -> tuple[int, float]:
    """Distribution-free interval for a median from n paired rounds: (k, coverage) such that the k-th smallest
    and k-th largest values bound the median with probability ``coverage`` >= ``confidence`` (sign test). With
    fewer than 6 rounds no k reaches 95%: k = 1 (min and max) and the coverage is stated."""
    best_k, best_cov = 1, 1 - 2 / 2**n
    for k in range(1, n // 2 + 1):
        cov = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n
        if cov >= confidence:
            best_k, best_cov = k, cov
    return best_k, best_cov


@dataclass
class SpeedVerdict:
    """Is the candidate faster than the baseline? From paired, interleaved rounds (see ``speed_verdict``)."""

    verdict: str  # one of course_utils.claims.VERDICTS
    speedup: float  # median over rounds of baseline time / candidate time: > 1 means the candidate is faster
    low: float  # a (>= 95%) interval of that median speed-up, distribution-free (sign test)
    high: float
    rounds: int
    min_speedup: float
    note: str

    def __str__(self) -> str:
        return f"{self.verdict}: {self.note}"


def speed_verdict(baseline: Timing, candidate: Timing, min_speedup: float = 1.0,
                  confidence: float = 0.95) -> SpeedVerdict:
    """The course's one procedure for speed claims ("the candidate is faster than the baseline").

    Both timings come from one ``time_interleaved`` call, so round i of each ran back to back under the same
    background load; each round gives one speed-up (baseline / candidate), and the rounds give the median
    speed-up and a distribution-free interval around it (order statistics of the rounds, the sign test's
    interval: no assumption about the shape of the noise, robust to an outlier round).

    - holds: the whole interval is above ``min_speedup`` (e.g. 1.05: "faster by at least 5%");
    - does not hold: the whole interval is below it;
    - inconclusive: the interval contains it (the difference is within the noise of these rounds).
    """
    from .claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE

    if not isinstance(baseline, Timing) or not isinstance(candidate, Timing):
        raise TypeError("speed_verdict takes two Timing objects from one time_interleaved call")
    n = len(baseline.times)
    if n != len(candidate.times):
        raise ValueError(f"the two timings have {n} and {len(candidate.times)} rounds: take both from one "
                         "time_interleaved call so that the rounds pair up")
    if n < MIN_ROUNDS:
        raise ValueError(f"{n} rounds are too few for an interval: use at least {MIN_ROUNDS} "
                         f"({CLAIM_ROUNDS} for a claim)")
    if min_speedup <= 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    ratios = sorted(b / c for b, c in zip(baseline.times, candidate.times))
    k, coverage = _median_interval_ranks(n, confidence)
    low, high, mid = ratios[k - 1], ratios[n - k], median(ratios)
    bar = f" {min_speedup:.2f}x" if min_speedup != 1 else " 1 (no difference)"
    interval = f"{mid:.2f}x faster, {coverage:.0%} interval {low:.2f}-{high:.2f}x over {n} interleaved rounds"
    if low > min_speedup:
        v, note = HOLDS, f"{interval}: wholly above{bar}"
    elif high < min_speedup:
        v, note = DOES_NOT_HOLD, f"{interval}: wholly below{bar}"
    else:
        v, note = INCONCLUSIVE, f"{interval}: contains{bar}, within the noise of these rounds"
    return SpeedVerdict(v, mid, low, high, n, min_speedup, note)


