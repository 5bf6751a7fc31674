"""course_utils.verdicts: one Verdict type, and procedures that decide in both directions, on synthetic figures."""
import math
import random

import pytest

from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_MEASURABLE, ClaimsTable
from course_utils.measure import Timing
from course_utils.verdicts import (
    Verdict,
    all_of,
    compare_runs,
    exact,
    given,
    level,
    level_range,
    not_measurable,
    paired_difference,
    speed_verdict,
    t975,
)

SEED_BUDGET = "the notes train for 300 epochs; this run: 12 steps"


def test_paired_gains_decide_even_when_the_raw_spread_is_large():
    # raw figures spread by 1.0 across seeds, but each seed's gain is 0.09-0.11: the pairing removes the seed noise
    base = [3.0, 4.0, 5.0]
    cand = [3.0 - 0.09, 4.0 - 0.10, 5.0 - 0.11]
    v = compare_runs(base, cand)  # default min_gain=0, three seeds
    assert v.verdict == HOLDS and v.gain == pytest.approx(0.10) and 0 < v.low < v.high < 0.2
    assert v.gains == pytest.approx((0.09, 0.10, 0.11)) and v.n == 3
    assert compare_runs(cand, base).verdict == DOES_NOT_HOLD  # the mirror image


def test_mixed_signs_and_gains_inside_the_bar_are_inconclusive():
    assert compare_runs([1.0, 1.0, 1.0], [0.5, 1.3, 0.8]).verdict == INCONCLUSIVE
    v = compare_runs([1.0, 2.0, 3.0], [0.9, 1.9, 2.9], min_gain=0.1)  # exactly at the bar
    assert v.verdict == INCONCLUSIVE and "contains" in v.why


def test_identical_paired_gains_give_a_zero_width_interval():
    v = compare_runs([2.0, 3.0, 4.0], [1.5, 2.5, 3.5])
    assert v.verdict == HOLDS and v.sd == 0 and v.low == v.high == pytest.approx(0.5)
    assert compare_runs([1.0, 2.0], [1.0, 2.0]).verdict == DOES_NOT_HOLD  # exactly no gain: not better


def test_higher_is_better_and_a_bar():
    assert compare_runs([0.5, 0.6, 0.55], [0.9, 1.0, 0.95], lower=False, min_gain=0.3).verdict == HOLDS
    assert compare_runs([0.5, 0.6, 0.55], [0.6, 0.7, 0.65], lower=False, min_gain=0.3).verdict == DOES_NOT_HOLD


def test_budget_short_makes_a_clear_gain_and_a_clear_loss_both_inconclusive_and_quotes_the_budget():
    gain = compare_runs([4.0, 4.1, 4.2], [3.0, 3.1, 3.2], budget_short=SEED_BUDGET)
    loss = compare_runs([3.0, 3.1, 3.2], [4.0, 4.1, 4.2], budget_short=SEED_BUDGET)
    assert gain.verdict == loss.verdict == INCONCLUSIVE
    assert "300 epochs" in gain.why and "300 epochs" in loss.why
    # without it the same data decide both ways
    assert compare_runs([4.0, 4.1, 4.2], [3.0, 3.1, 3.2]).verdict == HOLDS
    assert compare_runs([3.0, 3.1, 3.2], [4.0, 4.1, 4.2]).verdict == DOES_NOT_HOLD
    with pytest.raises(ValueError, match="quote"):
        compare_runs([1, 2, 3], [1, 2, 3], budget_short=" ")
    fast = speed_verdict(Timing([2.0] * 15), Timing([1.0] * 15), budget_short=SEED_BUDGET)
    slow = speed_verdict(Timing([1.0] * 15), Timing([2.0] * 15), budget_short=SEED_BUDGET)
    assert fast.verdict == slow.verdict == INCONCLUSIVE
    assert level([5.0], high=2.0, budget_short=SEED_BUDGET).verdict == INCONCLUSIVE
    assert level([1.5], high=2.0, budget_short=SEED_BUDGET).verdict == INCONCLUSIVE


def test_the_stated_error_rate_when_the_truth_is_at_the_bar():
    # same method twice: the true mean paired gain is 0, the bar. A wrong "holds" at most 2.5% (plus sampling)
    rng = random.Random(0)
    wrong = 0
    for _ in range(400):
        base = [rng.gauss(3, 1) for _ in range(3)]
        cand = [b + rng.gauss(0, 0.05) for b in base]
        wrong += compare_runs(base, cand).verdict == HOLDS
    assert wrong <= 0.025 * 400 + 8, wrong


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="same order"):
        compare_runs([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no paired error rate"):
        compare_runs([1.0], [2.0])
    with pytest.raises(ValueError, match="finite"):
        compare_runs([1.0, math.nan], [2.0, 1.0])
    with pytest.raises(TypeError, match="lower"):
        compare_runs([1.0, 2.0], [1.0, 2.0], lower="yes")
    with pytest.raises(TypeError, match="spread"):
        compare_runs([1.0], [2.0], spread=0.2)  # the one-seed mode is gone: a single seed has no paired error rate
    with pytest.raises(ValueError, match="min_speedup"):
        speed_verdict(Timing([1.0] * 5), Timing([1.0] * 5), min_speedup=0)


def test_paired_difference_over_items_names_them():
    v = paired_difference([2.0, 2.2, 1.9, 2.5], [1.8, 2.0, 1.7, 2.3], pairs="texts", unit="nats")
    assert v.verdict == HOLDS and "4 paired texts" in v.why


def test_level_is_symmetric_and_uses_the_interval_of_several_runs():
    assert level(0.0012, low=0.0005, high=0.002).verdict == HOLDS
    assert level(0.032, low=0.0005, high=0.002).verdict == DOES_NOT_HOLD
    assert level([1.8, 2.1, 2.4], low=1.0, high=3.0).verdict == HOLDS
    assert level([1.0, 2.0, 3.0], low=1.5, high=3.0).verdict == INCONCLUSIVE  # the interval straddles 1.5
    assert level([3.92], high=3.0).verdict == DOES_NOT_HOLD and level([3.92], low=3.0).verdict == HOLDS
    with pytest.raises(ValueError, match="finite edge"):
        level([1.0])


def test_exact_figures_can_fail():
    assert exact(56.7e6, 65e6, rel_tol=0.1).verdict == DOES_NOT_HOLD
    v = exact(63e6, 65e6, rel_tol=0.1)
    assert v.verdict == HOLDS and v.ratio == pytest.approx(63 / 65) and "10%" in v.bar


def test_all_of_needs_every_part():
    yes, no, maybe = level(1.0, high=2.0), level(3.0, high=2.0), level([1.0, 3.0], high=2.0)
    assert all_of(yes, yes).verdict == HOLDS
    assert all_of(yes, no).verdict == DOES_NOT_HOLD and all_of(maybe, no).verdict == DOES_NOT_HOLD
    assert all_of(yes, maybe).verdict == INCONCLUSIVE
    assert all_of(yes, not_measurable("n/a", "no GPU")).verdict == NOT_MEASURABLE



def test_across_settings_needs_agreement_or_reads_inconclusive():
    from course_utils.verdicts import across

    yes, no = level(40.0, high=100.0), level(300.0, high=100.0)
    maybe = level([0.5, 1.5], low=1.0)
    assert across({"7B": yes, "65B": yes}).verdict == HOLDS
    assert across({"7B": no, "65B": no}).verdict == DOES_NOT_HOLD
    split = across({"7B": yes, "65B": no}, setting="model size")
    assert split.verdict == INCONCLUSIVE and "holds: 7B; does not hold: 65B" in split.why
    assert "rests on which model size is meant" in split.why
    assert across({"a": yes, "b": maybe}).verdict == INCONCLUSIVE
    assert across({"a": no, "b": not_measurable("-", "no GPU")}).verdict == NOT_MEASURABLE
    assert across({"a": yes, "b": yes}).bar == yes.bar
    with pytest.raises(TypeError):
        across({"a": yes})

def test_not_measurable_keeps_the_bar_fixed_before_the_data():
    v = not_measurable("n/a", "no tensor cores on cpu", bar="> 1.00x")
    assert (v.verdict, v.bar, v.why) == (NOT_MEASURABLE, "> 1.00x", "no tensor cores on cpu")
    assert not_measurable("n/a", "no GPU").bar == ""


def test_a_verdict_is_frozen_and_goes_into_the_table_whole():
    v = speed_verdict(Timing([2.0, 2.1, 1.9, 2.0, 2.2]), Timing([1.0, 1.0, 1.1, 0.9, 1.0]), min_speedup=1.5)
    assert isinstance(v, Verdict) and v.verdict == HOLDS and v.speedup == pytest.approx(2.0, rel=0.1)
    with pytest.raises(AttributeError):
        v.verdict = DOES_NOT_HOLD
    with pytest.raises(TypeError):
        v.figures["speedup"] = 3.0  # read-only
    with pytest.raises(AttributeError, match="figures"):
        v.no_such_figure  # noqa: B018
    with pytest.raises(ValueError, match="one of"):
        Verdict("maybe", "1x", "because")
    t = ClaimsTable("Lesson X")
    c = t.add("faster", "2x", v, note="tiny model")
    assert (c.verdict, c.measured, c.bar) == (HOLDS, v.measured, "> 1.50x") and c.why.endswith("tiny model")
    assert "> 1.50x" in t.to_markdown()
    with pytest.raises(TypeError, match="Verdict"):
        t.add("faster", "2x", "1.9x", HOLDS)


def test_fifteen_rounds_cover_the_median_at_96_5_percent():
    v = speed_verdict(Timing([1.0] * 15), Timing([1.0] * 15))
    assert v.coverage == pytest.approx(0.9648, abs=1e-4) and "96.5% interval" in v.why


def test_t_quantiles():
    assert t975(2) == pytest.approx(4.303) and t975(100) == pytest.approx(1.984, abs=0.003)
    with pytest.raises(ValueError):
        t975(0)


def test_speed_band_is_decided_the_same_way_on_both_sides():
    base = [1.0 + 0.01 * i for i in range(15)]

    def band(factor):
        return speed_verdict(Timing(base), Timing([b / f for b, f in zip(base, factor)]), 1.0, max_speedup=1.25)

    inside = band([1.1] * 15)
    assert inside.verdict == HOLDS and "wholly inside 1.00-1.25x" in inside.why
    assert inside.bar == "1.00x < speed-up < 1.25x" and inside.max_speedup == 1.25
    above, below = band([1.5] * 15), band([0.9] * 15)  # much faster / slower: both outside the band
    assert above.verdict == below.verdict == DOES_NOT_HOLD
    assert "wholly above 1.25x" in above.why and "wholly below 1.00x" in below.why
    upper, lower = band([1.15, 1.35] * 7 + [1.25]), band([0.95, 1.05] * 7 + [1.0])  # straddling either edge
    assert upper.verdict == lower.verdict == INCONCLUSIVE
    assert "contains 1.25x" in upper.why and "contains 1.00x" in lower.why
    assert speed_verdict(Timing(base), Timing(base)).max_speedup is None  # one-sided by default
    with pytest.raises(ValueError, match="max_speedup"):
        speed_verdict(Timing(base), Timing(base), 1.0, max_speedup=1.0)


# ---- given(): a comparison that needs a working reference ----
def _cmp(base, cand):
    return compare_runs(base, cand, lower=True)


@pytest.mark.parametrize("cand, expect", [((0.5, 0.6, 0.4), HOLDS), ((1.5, 1.6, 1.4), DOES_NOT_HOLD)])
def test_given_passes_the_comparison_through_when_both_preconditions_hold(cand, expect):
    v = given(_cmp((1.0, 1.1, 0.9), cand), reference_ok=(True, "full beat untouched"),
              effect_shown=(True, "full forgot"), bar_if="if full FT forgot")
    assert v.verdict == expect and "precondition met: full beat untouched; full forgot" in v.why
    assert v.bar.endswith("if full FT forgot")


@pytest.mark.parametrize("cand", [(0.5, 0.6, 0.4), (1.5, 1.6, 1.4)])
def test_given_an_invalid_reference_is_inconclusive_both_ways(cand):
    v = given(_cmp((1.0, 1.1, 0.9), cand), reference_ok=(False, "full FT was damaged"))
    assert v.verdict == INCONCLUSIVE and "full FT was damaged" in v.why


def test_given_effect_not_shown_withholds_holds_but_keeps_a_clear_miss():
    hold = given(_cmp((1.0, 1.1, 0.9), (0.5, 0.6, 0.4)), reference_ok=(True, "ok"), effect_shown=(False, "no rise"))
    miss = given(_cmp((1.0, 1.1, 0.9), (1.5, 1.6, 1.4)), reference_ok=(True, "ok"), effect_shown=(False, "no rise"))
    assert hold.verdict == INCONCLUSIVE and "no rise" in hold.why
    assert miss.verdict == DOES_NOT_HOLD and "no rise" in miss.why


def test_given_rejects_a_precondition_without_a_reason():
    with pytest.raises(ValueError, match="reason in words"):
        given(_cmp((1.0, 1.1, 0.9), (0.5, 0.6, 0.4)), reference_ok=(True, ""))
    with pytest.raises(TypeError):
        given("holds", reference_ok=(True, "ok"))


def test_level_range_judges_a_sweep_as_a_whole_both_ways():
    """level_range (notebook 01's tying row over the GPU's rounded interval): every figure inside the band
    holds, every figure outside on one side does not hold, a range across an edge is inconclusive; the open band."""
    assert level_range([0.22, 0.27, 0.30], low=0.2, high=0.35).verdict == HOLDS
    assert level_range([0.04, 0.10, 0.16], low=0.2, high=0.35).verdict == DOES_NOT_HOLD
    assert level_range([0.40, 0.50], low=0.2, high=0.35).verdict == DOES_NOT_HOLD
    across = level_range([0.04, 0.24, 0.39], low=0.2, high=0.35, fmt="{:.0%}", what="saving", over="6 shapes")
    assert across.verdict == INCONCLUSIVE and across.low == 0.04 and across.high == 0.39
    assert "saving 4%-39% over 6 shapes (3 exact figures)" in across.why and across.measured == "4% to 39%"
    assert level_range([0.01, 0.40], low=0.2, high=0.35).verdict == INCONCLUSIVE  # below and above: no side
    assert level_range([1.0, 1.2], low=1.0, high=1.25).verdict == HOLDS  # the closed band includes its edge
    assert level_range([1.0, 1.2], low=1.0, high=1.25, strict=True).verdict == INCONCLUSIVE
    with pytest.raises(ValueError, match="sweep"):
        level_range([0.3], low=0.2, high=0.35)
    with pytest.raises(ValueError, match="finite"):
        level_range([0.3, float("nan")], low=0.2)


def test_level_range_takes_the_lecture_budget_both_ways():
    short = "the notes' claim is the limit of a run; this run: 3 steps"
    for values in ([0.22, 0.27, 0.30], [0.04, 0.10, 0.16]):  # a clear hold and a clear miss alike
        v = level_range(values, low=0.2, high=0.35, budget_short=short)
        assert v.verdict == INCONCLUSIVE and short in v.why
    assert level_range([0.1, 0.3], low=0.2, high=0.35, budget_short=short).verdict == INCONCLUSIVE
    with pytest.raises(ValueError, match="budget"):
        level_range([0.22, 0.27], low=0.2, high=0.35, budget_short="  ")
