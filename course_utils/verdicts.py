"""The course's verdicts: one result type, ``Verdict``, and the few procedures that decide one from figures.

A lesson computes figures and hands them to one of these procedures; nothing else in the course picks a verdict
(a test in the suite scans for places that do). Every procedure is symmetric: the data decide in both directions,

- ``holds``: the whole interval (or the exact figure) is on the claim's side of its bar;
- ``does not hold``: the whole interval is on the other side: the lecture is refuted, scoped to what was measured;
- ``inconclusive``: the interval straddles the bar, or ``budget_short`` says the claim's quantity is out of reach
  at this budget. ``budget_short`` turns a clear gain **and** a clear loss into inconclusive alike, and its text
  must quote the budget the lecture's notes state (e.g. "the notes train for 300 epochs");
- ``not measurable here``: this setup cannot run the experiment: the hardware, or an asset it cannot reach
  offline (``not_measurable``).

The procedures:

- ``speed_verdict(baseline, candidate, min_speedup)``: two ``measure.Timing`` from one interleaved call; the
  median of the paired round ratios and its distribution-free interval (sign test) against the bar.
- ``compare_runs(baseline, candidate, lower=, min_gain=)``: two trainings over paired seeds; Student's t interval
  of the mean paired difference against the bar.
- ``paired_difference(baseline, candidate, lower=, min_gain=)``: the same test over paired items that are not
  seeds (the same texts, prompts or held-out examples scored by two models).
- ``level(values, low=, high=)``: "reaches about X": a figure (one exact figure, or one per seed: t interval of
  their mean) inside or outside the band the claim names. ``exact(value, lecture, rel_tol=)`` is the level test
  of one exact figure (a count, bytes by arithmetic) against the lecture's figure. ``level_range(values, low=,
  high=)``: one exact figure per setting of a sweep the claim does not name: the whole range against the band.
- ``given(comparison, reference_ok=, effect_shown=)``: a comparison whose reference arm must be valid and show
  the effect (full fine-tuning beat the untouched model and forgot): inconclusive when it does not, never flipped.
- ``all_of(...)``: a claim made of several parts: holds when every part holds, does not hold when any part does
  not, inconclusive otherwise.

Error rates: the t interval and the sign-test interval each cover the true value with >= 95% probability, so
when the truth sits exactly at the bar a procedure says "holds" (or "does not hold") wrongly at most 2.5% of the
time (one side of a two-sided 95% interval); further from the bar, less. The t interval assumes the paired
differences are roughly normal; the sign test assumes nothing about their shape.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_MEASURABLE, VERDICTS

#: Two-sided 95% quantiles of Student's t, t_{0.975}(df) for df = 1..30; beyond 30 the normal 1.96 plus a
#: correction (error under 0.3%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """Student's t quantile for a two-sided 95% interval with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 values), got df={df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict with what decided it. ``ClaimsTable.add(claim, lecture, verdict)`` takes it whole.

    - ``verdict``: one of ``claims.VERDICTS``;
    - ``measured``: the figure as the table shows it (e.g. ``"1.31x (1.22-1.40x)"``);
    - ``why``: one plain sentence: the rule and what the data did against it;
    - ``figures``: the numbers behind it (read-only; also readable as attributes: ``v.speedup``, ``v.low``);
    - ``bar``: the bar the claim was judged against, fixed before the data (shown next to the claim).
    """

    verdict: str
    measured: str
    why: str
    figures: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    bar: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if not str(self.why).strip():
            raise ValueError("a Verdict needs a `why`: one sentence saying what decided it")
        object.__setattr__(self, "figures", MappingProxyType(dict(self.figures)))

    def __getattr__(self, name):
        figures = object.__getattribute__(self, "figures")
        if name in figures:
            return figures[name]
        raise AttributeError(f"Verdict has no field or figure {name!r}; its figures: {sorted(figures)}")

    def __str__(self) -> str:
        return f"{self.verdict}: {self.measured} ({self.why})"

    def with_measured(self, measured: str) -> Verdict:
        """The same verdict shown with another figure text (the decision and its figures are unchanged)."""
        return Verdict(self.verdict, measured, self.why, self.figures, self.bar)

    def with_note(self, note: str) -> Verdict:
        """The same verdict with context appended to ``why`` (the model used, the profile, the procedure)."""
        return Verdict(self.verdict, self.measured, f"{self.why}; {note}" if note else self.why, self.figures,
                       self.bar)


def not_measurable(measured: str, why: str, bar: str = "") -> Verdict:
    """This setup cannot run the experiment: the hardware (no CUDA GPU for a CUDA-only kernel, no compiler, ...) or
    an asset it cannot reach offline (a base model only the Hugging Face hub has). ``why`` says which; ``bar`` the bar
    the claim is judged against where it can be measured, fixed before the data and shown all the same."""
    return Verdict(NOT_MEASURABLE, measured, why, bar=bar)


def _check_budget(budget_short):
    if budget_short is not None and not str(budget_short).strip():
        raise ValueError("budget_short must say which budget the lecture's notes state (quote them), e.g. "
                         "\"the notes train for 300 epochs; this run: 12 steps\"; or leave it None")


def _decide(low: float, high: float, bar_low: float, bar_high: float, budget_short: str | None,
            inside: str, outside: str, straddle: str, strict: bool = False) -> tuple[str, str]:
    """The symmetric rule: an interval [low, high] against the band [bar_low, bar_high] (``strict``: the open band,
    for "more than the bar" claims, so that no difference at a zero bar never holds)."""
    within = (bar_low < low and high < bar_high) if strict else (bar_low <= low and high <= bar_high)
    if within:
        v, why = HOLDS, inside
    elif high < bar_low or low > bar_high or (strict and (high <= bar_low or low >= bar_high)):
        v, why = DOES_NOT_HOLD, outside
    else:
        return INCONCLUSIVE, straddle
    if budget_short:
        return INCONCLUSIVE, (f"{why}, but the claim's quantity is out of reach at this budget "
                              f"({budget_short}): {'a clear result' if v == HOLDS else 'a clear miss'} here decides "
                              "nothing about the lecture's setting")
    return v, why


# ---- speed ----------------------------------------------------------------------------------------------------
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


def speed_verdict(baseline, candidate, min_speedup: float = 1.0, confidence: float = 0.95, *,
                  budget_short: str | None = None, max_speedup: float | None = None) -> Verdict:
    """The course's one procedure for speed claims ("the candidate is faster than the baseline by ``min_speedup``").

    Both ``measure.Timing``s come from one ``measure.time_interleaved`` call (shuffled order per round), so round
    i of each ran under the same background load; each round gives one speed-up (baseline / candidate), and the
    rounds give the median speed-up and a distribution-free interval around it (the sign test's order statistics:
    no assumption about the noise's shape, robust to an outlier round; 96.5% coverage for 15 rounds).

    holds: the whole interval is above ``min_speedup``; does not hold: wholly below; inconclusive: it contains it.
    A claim of "no slower" or "about the same" is a ``level`` test of the ratio instead.

    ``max_speedup`` makes the bar a band, for claims such as "slightly faster" (1.00x < speed-up <= 1.25x): holds
    when the whole interval lies inside (``min_speedup``, ``max_speedup``), does not hold when it lies wholly below
    ``min_speedup`` or wholly above ``max_speedup`` (much faster is not "slightly"), inconclusive when it contains
    either edge. The same rule on both sides.
    """
    from .measure import MIN_ROUNDS, Timing

    if not isinstance(baseline, Timing) or not isinstance(candidate, Timing):
        raise TypeError("speed_verdict takes two measure.Timing objects from one time_interleaved call")
    n = len(baseline.times)
    if n != len(candidate.times):
        raise ValueError(f"the two timings have {n} and {len(candidate.times)} rounds: take both from one "
                         "time_interleaved call so that the rounds pair up")
    if n < MIN_ROUNDS:
        raise ValueError(f"{n} rounds are too few for an interval: use at least {MIN_ROUNDS}")
    if not min_speedup > 0:
        raise ValueError(f"min_speedup must be > 0 (1.0: faster at all; 1.5: 50% faster), got {min_speedup}")
    if max_speedup is not None and not max_speedup > min_speedup:
        raise ValueError(f"max_speedup must be above min_speedup ({min_speedup}), got {max_speedup}")
    _check_budget(budget_short)
    ratios = sorted(b / c for b, c in zip(baseline.times, candidate.times))
    k, coverage = _median_interval_ranks(n, confidence)
    low, high, mid = ratios[k - 1], ratios[n - k], statistics.median(ratios)
    interval = f"{coverage:.1%} interval {low:.2f}-{high:.2f}x over {n} interleaved rounds"
    if max_speedup is None:
        bar = f"> {min_speedup:.2f}x"
        v, why = _decide(low, high, min_speedup, math.inf, budget_short,
                         f"{interval}, wholly above {min_speedup:.2f}x", f"{interval}, wholly below {min_speedup:.2f}x",
                         f"{interval} contains {min_speedup:.2f}x: within the noise of these rounds", strict=True)
    else:
        bar = f"{min_speedup:.2f}x < speed-up < {max_speedup:.2f}x"
        side = f"above {max_speedup:.2f}x" if low >= max_speedup else f"below {min_speedup:.2f}x"
        edge = f"{max_speedup:.2f}x" if high >= max_speedup else f"{min_speedup:.2f}x"
        v, why = _decide(low, high, min_speedup, max_speedup, budget_short,
                         f"{interval}, wholly inside {min_speedup:.2f}-{max_speedup:.2f}x",
                         f"{interval}, wholly {side}", f"{interval} contains {edge}: within the noise of these rounds",
                         strict=True)
    return Verdict(v, f"{mid:.2f}x ({low:.2f}-{high:.2f}x)", why,
                   {"speedup": mid, "low": low, "high": high, "rounds": n, "coverage": coverage,
                    "min_speedup": min_speedup, "max_speedup": max_speedup}, bar)


# ---- paired differences (seeds, or items) -----------------------------------------------------------------------
def _paired(baseline, candidate, lower, min_gain, budget_short, unit, fmt, pairs: str) -> Verdict:
    if not isinstance(lower, bool):
        raise TypeError(f"lower must be True (claim: the candidate's figure is lower) or False (higher), "
                        f"got {lower!r}")
    a, b = [float(v) for v in baseline], [float(v) for v in candidate]
    if len(a) != len(b):
        raise ValueError(f"{len(a)} baseline and {len(b)} candidate figures: give one of each per {pairs[:-1]}, "
                         "in the same order, so that they pair up")
    if len(a) < 2:
        raise ValueError(f"{len(a)} {pairs[:-1]} gives no paired error rate: give at least 2 paired {pairs} "
                         "(3 or more to decide anything but a large effect)")
    if not all(map(math.isfinite, a + b)):
        raise ValueError(f"the figures must be finite, got baseline {a} and candidate {b} (a diverged run? "
                         "report it as a fact and compare the runs that finished)")
    if not math.isfinite(min_gain):
        raise ValueError(f"min_gain must be finite, got {min_gain}")
    _check_budget(budget_short)
    gains = [(x - y) if lower else (y - x) for x, y in zip(a, b)]
    n, gain = len(gains), statistics.fmean(gains)
    sd = statistics.stdev(gains)
    half = t975(n - 1) * sd / math.sqrt(n)
    low, high = gain - half, gain + half
    direction = "lower" if lower else "higher"
    shown = ", ".join(fmt.format(g) for g in gains) if n <= 5 else f"sd {sd:.3g}"
    interval = (f"candidate {direction} by {fmt.format(gain)} {unit} over {n} paired {pairs} ({shown}), "
                f"95% interval {fmt.format(low)} to {fmt.format(high)}")
    bar_text = f"{fmt.format(min_gain)} {unit}"
    below = "wholly below" if high < min_gain else "at most"  # a zero-width interval can sit on the bar
    v, why = _decide(low, high, min_gain, math.inf, budget_short, f"{interval}: wholly above {bar_text}",
                     f"{interval}: {below} {bar_text}", f"{interval}: contains {bar_text}", strict=True)
    measured = f"{fmt.format(gain)} {unit} ({fmt.format(low)} to {fmt.format(high)})"
    return Verdict(v, measured, why,
                   {"gain": gain, "gains": tuple(gains), "low": low, "high": high, "sd": sd, "n": n,
                    "difference": statistics.fmean(b) - statistics.fmean(a), "min_gain": min_gain},
                   f"{direction} by > {bar_text}")


def compare_runs(baseline: Sequence[float], candidate: Sequence[float], *, lower: bool = True,
                 min_gain: float = 0.0, budget_short: str | None = None, unit: str = "nats",
                 fmt: str = "{:+.3f}") -> Verdict:
    """The course's one procedure for "this training ends better than that one" (loss, perplexity, accuracy,
    forgetting), over seeds.

    ``baseline[i]`` and ``candidate[i]`` come from the same seed (same initial weights and batches), so each seed
    gives one paired gain: the candidate's advantage in the claimed direction (``lower=True``: its figure is
    lower). The rule is Student's t interval of the mean paired gain (95%, n - 1 degrees of freedom):

    - holds: the whole interval is above ``min_gain``;
    - does not hold: the whole interval is below ``min_gain`` (the lecture refuted at this size and budget);
    - inconclusive: the interval contains ``min_gain``; or ``budget_short`` (a quote of the budget the lecture's
      notes state) makes either clear result inconclusive.

    Error rate: where the true mean gain equals ``min_gain``, a wrong holds (or a wrong does not hold) comes at most
    2.5% of the time for normal paired gains. Needs 2 seeds or more (3 to decide anything but a large effect);
    identical paired gains give a zero-width interval (no division by the spread).
    """
    return _paired(baseline, candidate, lower, min_gain, budget_short, unit, fmt, "seeds")


def paired_difference(baseline: Sequence[float], candidate: Sequence[float], *, lower: bool = True,
                      min_gain: float = 0.0, budget_short: str | None = None, unit: str = "",
                      fmt: str = "{:+.3f}", pairs: str = "items") -> Verdict:
    """``compare_runs``'s test for paired figures that are not training seeds: the same texts, prompts, held-out
    examples or sampling seeds, scored by two models or two procedures. ``pairs`` names them in the note
    (e.g. ``"texts"``). The interval covers the items' noise only, not a new training seed's: a claim about two
    trainings needs ``compare_runs`` over seeds."""
    return _paired(baseline, candidate, lower, min_gain, budget_short, unit, fmt, pairs)


# ---- levels ("reaches about X") and exact figures ---------------------------------------------------------------
def level(values, *, low: float = -math.inf, high: float = math.inf, budget_short: str | None = None,
          unit: str = "", fmt: str = "{:.3g}", what: str = "") -> Verdict:
    """"Reaches about X", "falls 25-30%", "at least 3x": does the figure sit inside the band [``low``, ``high``]?

    ``values`` is one figure (an exact measurement: a count, bytes, a deterministic ratio) or one per seed/run
    (then Student's t 95% interval of their mean). holds: the interval lies inside the band; does not hold: it
    lies wholly outside; inconclusive: it straddles an edge, or ``budget_short`` (a quote of the lecture's stated
    budget) says the level is out of reach at this budget, in both directions.
    """
    vals = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if not vals:
        raise ValueError("level() needs at least one figure")
    if not all(map(math.isfinite, vals)):
        raise ValueError(f"level() needs finite figures, got {vals}")
    if not low <= high or (math.isinf(low) and math.isinf(high)):
        raise ValueError(f"the band needs low <= high and at least one finite edge, got low={low}, high={high}")
    _check_budget(budget_short)
    mean = statistics.fmean(vals)
    if len(vals) > 1:
        half = t975(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
        lo, hi = mean - half, mean + half
        fig = (f"{what + ' ' if what else ''}{fmt.format(mean)}{unit} (mean of {len(vals)}, 95% interval "
               f"{fmt.format(lo)}-{fmt.format(hi)}{unit})")
    else:
        lo = hi = mean
        fig = f"{what + ' ' if what else ''}{fmt.format(mean)}{unit} (exact)"
    if math.isinf(low):
        band = f"<= {fmt.format(high)}{unit}"
    elif math.isinf(high):
        band = f">= {fmt.format(low)}{unit}"
    else:
        band = f"{fmt.format(low)}-{fmt.format(high)}{unit}"
    v, why = _decide(lo, hi, low, high, budget_short, f"{fig}: inside {band}", f"{fig}: outside {band}",
                     f"{fig}: straddles the edge of {band}")
    measured = (f"{fmt.format(mean)}{unit}" if len(vals) == 1
                else f"{fmt.format(mean)}{unit} ({fmt.format(lo)}-{fmt.format(hi)})")
    return Verdict(v, measured, why, {"value": mean, "low": lo, "high": hi, "n": len(vals), "band_low": low,
                                      "band_high": high}, band)


def exact(value: float, lecture: float, *, rel_tol: float, unit: str = "", fmt: str = "{:,.4g}") -> Verdict:
    """An exact figure (a parameter count, bytes by arithmetic) against the lecture's figure: holds when within
    ``rel_tol`` of it (e.g. 0.1 for "about 65M"), does not hold otherwise."""
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0 (0.1: within 10% of the lecture's figure), got {rel_tol}")
    if lecture == 0:
        raise ValueError("exact() compares against a non-zero lecture figure; use level(high=...) for a bound")
    lo, hi = sorted((lecture * (1 - rel_tol), lecture * (1 + rel_tol)))
    v = level([value], low=lo, high=hi, unit=unit, fmt=fmt)
    return Verdict(v.verdict, f"{fmt.format(value)}{unit}",
                   f"{fmt.format(value)}{unit} is {value / lecture:.3f}x the lecture's {fmt.format(lecture)}{unit} "
                   f"({'within' if v.verdict == HOLDS else 'outside'} the {rel_tol:.0%} the claim allows)",
                   {"value": value, "lecture": lecture, "ratio": value / lecture, "rel_tol": rel_tol},
                   f"within {rel_tol:.0%} of {fmt.format(lecture)}{unit}")



def level_range(values: Sequence[float], *, low: float = -math.inf, high: float = math.inf, strict: bool = False,
                unit: str = "", fmt: str = "{:.3g}", what: str = "", over: str = "the settings swept",
                budget_short: str | None = None) -> Verdict:
    """A figure measured EXACTLY at several settings that the claim does not name (a sweep over batch and context,
    on the meta device): the claim holds only if it holds over the whole sweep. The range [min, max] of the figures
    against the band [``low``, ``high``] (``strict``: the open band): holds when every figure lies inside, does not
    hold when every figure lies outside on one side, inconclusive when the range straddles an edge (the claim then
    depends on the setting the lecture does not give). ``over`` names the sweep in the note. ``budget_short`` (a quote
    of the lecture's stated budget, as for ``level``): the claim's quantity is out of reach at this budget, and a
    clear result either way reads inconclusive."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        raise ValueError(f"level_range() needs a sweep (2 figures or more); for one figure use level(), got {vals}")
    if not all(map(math.isfinite, vals)):
        raise ValueError(f"level_range() needs finite figures, got {vals}")
    if not low <= high or (math.isinf(low) and math.isinf(high)):
        raise ValueError(f"the band needs low <= high and at least one finite edge, got low={low}, high={high}")
    lo, hi = min(vals), max(vals)
    if math.isinf(low):
        band = f"{'<' if strict else '<='} {fmt.format(high)}{unit}"
    elif math.isinf(high):
        band = f"{'>' if strict else '>='} {fmt.format(low)}{unit}"
    else:
        band = f"{fmt.format(low)}-{fmt.format(high)}{unit}" + (" (open)" if strict else "")
    span = " to " if lo < 0 else "-"  # "-0.085 to -0.043", not "-0.085--0.043"
    fig = (f"{what + ' ' if what else ''}{fmt.format(lo)}{span}{fmt.format(hi)}{unit} over {over} "
           f"({len(vals)} exact figures)")
    _check_budget(budget_short)
    v, why = _decide(lo, hi, low, high, budget_short, f"{fig}: every one inside {band}",
                     f"{fig}: every one outside {band}", f"{fig}: the range straddles the edge of {band}",
                     strict=strict)
    return Verdict(v, f"{fmt.format(lo)}{unit} to {fmt.format(hi)}{unit}", why,
                   {"low": lo, "high": hi, "n": len(vals), "band_low": low, "band_high": high}, band)


# ---- claims made of parts -----------------------------------------------------------------------------------
def all_of(*parts: Verdict, measured: str | None = None) -> Verdict:
    """A claim that needs every part ("few X tokens **and** natural text"): holds when every part holds, does not
    hold when any part does not hold, inconclusive otherwise; not measurable when any part is."""
    if not parts or not all(isinstance(p, Verdict) for p in parts):
        raise TypeError("all_of takes one or more Verdicts")
    kinds = [p.verdict for p in parts]
    if NOT_MEASURABLE in kinds:
        v = NOT_MEASURABLE
    elif DOES_NOT_HOLD in kinds:
        v = DOES_NOT_HOLD
    elif all(k == HOLDS for k in kinds):
        v = HOLDS
    else:
        v = INCONCLUSIVE
    why = " AND ".join(f"[{p.verdict}] {p.why}" for p in parts)
    return Verdict(v, measured if measured is not None else "; ".join(p.measured for p in parts), why,
                   {"parts": tuple(parts)}, " and ".join(p.bar for p in parts if p.bar))


def across(parts: dict, *, measured: str | None = None, setting: str = "setting") -> Verdict:
    """A claim that names no setting (which model, which layers), read at each ``setting`` it could mean (``parts``:
    {setting's name: its Verdict}, two or more): holds when it holds at every one, does not hold when it fails at
    every one, inconclusive when they disagree (the verdict would rest on a choice the lecture does not make) or
    any is inconclusive; not measurable when any is. The same rule as ``level_range`` for a sweep of shapes."""
    parts = dict(parts)
    if len(parts) < 2 or not all(isinstance(p, Verdict) for p in parts.values()):
        raise TypeError(f"across() takes {{{setting}: Verdict}} for 2 or more {setting}s, got {parts!r}")
    kinds = {p.verdict for p in parts.values()}
    if NOT_MEASURABLE in kinds:
        v = NOT_MEASURABLE
    elif kinds == {HOLDS}:
        v = HOLDS
    elif kinds == {DOES_NOT_HOLD}:
        v = DOES_NOT_HOLD
    else:
        v = INCONCLUSIVE
    sides = {k: [n for n, p in parts.items() if p.verdict == k] for k in (HOLDS, DOES_NOT_HOLD)}
    if v == INCONCLUSIVE and sides[HOLDS] and sides[DOES_NOT_HOLD]:
        head = (f"the {setting}s disagree (holds: {', '.join(sides[HOLDS])}; does not hold: "
                f"{', '.join(sides[DOES_NOT_HOLD])}): the verdict rests on which {setting} is meant")
    else:
        head = {HOLDS: f"holds at every {setting}", DOES_NOT_HOLD: f"does not hold at any {setting}"}.get(
            v, f"not decided at every {setting}")
    why = head + ": " + "; ".join(f"{n}: [{p.verdict}] {p.why}" for n, p in parts.items())
    return Verdict(v, measured if measured is not None else "; ".join(f"{n} {p.measured}" for n, p in parts.items()),
                   why, {"parts": MappingProxyType(parts)},
                   next(iter(parts.values())).bar if len({p.bar for p in parts.values()}) == 1 else "")


# ---- a comparison that needs a working reference ------------------------------------------------------------
def given(comparison: Verdict, *, reference_ok: tuple[bool, str], effect_shown: tuple[bool, str] | None = None,
          bar_if: str = "") -> Verdict:
    """A comparison that means something only when its reference arm did what the claim presupposes, with the
    preconditions fixed before the data and looking at the reference arm alone.

    - ``reference_ok`` ``(met, reason)``: the reference is a valid run (e.g. full fine-tuning beat the untouched
      model: not a run the learning rate damaged). Failed: inconclusive, whichever arm wins; a comparison with a
      broken reference decides nothing in either direction.
    - ``effect_shown`` ``(met, reason)``: the reference shows the effect the claim says the candidate has less of
      (e.g. full fine-tuning clearly forgot). Failed: a "holds" cannot be told from noise, so it is inconclusive;
      a clear "does not hold" stands (the candidate did clearly worse than a reference that barely showed the
      effect: the claim is refuted without it), and so does an inconclusive comparison.

    Not measurable stays not measurable. The rule never turns one verdict into its opposite; it only withholds a
    verdict the data cannot support."""
    if not isinstance(comparison, Verdict):
        raise TypeError(f"given() takes the comparison's Verdict, got {type(comparison).__name__}")
    for name, pre in (("reference_ok", reference_ok), ("effect_shown", effect_shown)):
        if pre is not None and not (isinstance(pre, tuple) and len(pre) == 2 and str(pre[1]).strip()):
            raise ValueError(f"{name} must be (met: bool, reason: str) with the reason in words, got {pre!r}")
    bar = f"{comparison.bar}, {bar_if}" if comparison.bar and bar_if else (comparison.bar or bar_if)
    if comparison.verdict == NOT_MEASURABLE:
        return Verdict(NOT_MEASURABLE, comparison.measured, comparison.why, comparison.figures, bar)
    if not reference_ok[0]:
        return Verdict(INCONCLUSIVE, comparison.measured, f"the reference run is not valid: {reference_ok[1]}; the "
                       "comparison decides nothing either way", comparison.figures, bar)
    met = [reference_ok[1]]
    if effect_shown is not None:
        if not effect_shown[0] and comparison.verdict == HOLDS:
            return Verdict(INCONCLUSIVE, comparison.measured, f"{comparison.why}, but the reference did not show "
                           f"the effect: {effect_shown[1]}; less of an effect that is not there cannot be told "
                           "from noise", comparison.figures, bar)
        if not effect_shown[0]:
            return Verdict(comparison.verdict, comparison.measured, f"{comparison.why} (the reference did not "
                           f"clearly show the effect: {effect_shown[1]})", comparison.figures, bar)
        met.append(effect_shown[1])
    return Verdict(comparison.verdict, comparison.measured, f"{comparison.why}; precondition met: "
                   + "; ".join(met), comparison.figures, bar)
