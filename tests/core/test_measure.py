"""course_utils.measure: interleaved timing and the one speed-verdict procedure, on synthetic paired timings."""
import random

import pytest

from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS
from course_utils.measure import Timing, median, speed_verdict, time_interleaved


def paired(cost_a: float, cost_b: float, rounds: int, seed: int, noise: float = 0.1) -> tuple[Timing, Timing]:
    """Two timings as a shared machine makes them: each round has a load factor that hits both candidates
    (they run back to back), plus independent jitter per measurement."""
    rng = random.Random(seed)
    a, b = [], []
    for _ in range(rounds):
        load = rng.lognormvariate(0, 0.3)  # the machine's load in this round, shared
        a.append(cost_a * load * rng.lognormvariate(0, noise))
        b.append(cost_b * load * rng.lognormvariate(0, noise))
    return Timing(a), Timing(b)


def test_identical_costs_are_inconclusive_at_least_85_times_in_100():
    outcomes = [speed_verdict(*paired(1.0, 1.0, 15, seed)).verdict for seed in range(100)]
    assert outcomes.count(INCONCLUSIVE) >= 85, outcomes.count(INCONCLUSIVE)


@pytest.mark.parametrize("seed", range(5))
def test_a_true_2x_holds_and_a_true_half_does_not(seed):
    base, fast = paired(2.0, 1.0, 15, seed)
    v = speed_verdict(base, fast)
    assert v.verdict == HOLDS and v.low > 1 and 1.6 < v.speedup < 2.5
    base, slow = paired(1.0, 2.0, 15, seed)
    assert speed_verdict(base, slow).verdict == DOES_NOT_HOLD


@pytest.mark.parametrize("seed", range(5))
def test_a_true_1_1x_does_not_reach_a_required_1_5x(seed):
    base, cand = paired(1.1, 1.0, 15, seed)
    v = speed_verdict(base, cand, min_speedup=1.5)
    assert v.verdict == DOES_NOT_HOLD and v.high < 1.5
    assert "1.50x" in v.note


def test_interval_contains_the_median_and_the_verdict_is_a_course_verdict():
    v = speed_verdict(*paired(1.0, 0.8, 20, 3))
    assert v.low <= v.speedup <= v.high and v.rounds == 20 and v.verdict in VERDICTS
    assert str(v).startswith(v.verdict)


def test_one_outlier_round_does_not_decide():
    # 14 rounds equal, one round where the baseline was hit by a 10x load spike: still no evidence of a speed-up
    base = Timing([1.0] * 14 + [10.0])
    cand = Timing([1.0 + 0.01 * (i % 3 - 1) for i in range(15)])
    assert speed_verdict(base, cand).verdict == INCONCLUSIVE


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="one time_interleaved call"):
        speed_verdict(Timing([1.0] * 5), Timing([1.0] * 6))
    with pytest.raises(ValueError, match="at least 5"):
        speed_verdict(Timing([1.0] * 4), Timing([1.0] * 4))
    with pytest.raises(TypeError, match="Timing"):
        speed_verdict([1.0] * 5, [1.0] * 5)


def test_time_interleaved_alternates_the_candidates():
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4 and all(len(t.times) == 3 for t in timings.values())
    with pytest.raises(ValueError, match="at least one"):
        time_interleaved({})


def test_one_median():
    assert median([3, 1, 2]) == 2 and median([4, 1, 2, 3]) == 2.5
    assert Timing([4.0, 1.0, 2.0, 3.0]).median == 2.5
    with pytest.raises(ValueError, match="no values"):
        median([])
