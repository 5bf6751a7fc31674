"""course_utils.measure (interleaved timing, on a fake clock) and verdicts.speed_verdict, on synthetic paired timings.
No test here reads the wall clock."""
import random

import pytest

from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS
from course_utils.measure import Timing, median, round_orders, time_interleaved
from course_utils.verdicts import speed_verdict


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
    assert "1.50x" in v.why and v.bar == "> 1.50x"


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


class FakeClock:
    """A clock that advances only when a candidate runs: each candidate costs a fixed number of seconds, plus a
    penalty for whichever runs first in a round (a cold cache), the order effect shuffling must cancel."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def __call__(self):
        return self.now

    def run(self, label, cost):
        def fn():
            first = not self.calls or len(self.calls) % 3 == 0
            self.calls.append(label)
            self.now += cost + (0.5 if first else 0.0)
        return fn


def test_time_interleaved_shuffles_the_order_per_round_with_a_seed():
    clock = FakeClock()
    fns = {k: clock.run(k, c) for k, c in (("a", 1.0), ("b", 1.0), ("c", 2.0))}
    timings = time_interleaved(fns, warmup=1, repeats=12, clock=clock, seed=3)
    rounds = [clock.calls[i:i + 3] for i in range(3, len(clock.calls), 3)]  # after the warm-up round
    assert rounds == round_orders("abc", 12, seed=3) and all(sorted(r) == list("abc") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # not the same order every round
    firsts = {k: sum(r[0] == k for r in rounds) for k in "abc"}
    assert all(firsts.values()), firsts  # every candidate runs first sometimes: the cold-cache penalty is shared
    assert all(len(t.times) == 12 for t in timings.values())
    for k, cost in (("a", 1.0), ("b", 1.0), ("c", 2.0)):  # each pays its own cost, and the penalty when first
        assert sum(timings[k].times) == pytest.approx(12 * cost + 0.5 * firsts[k])
    assert round_orders("abc", 5, seed=1) == round_orders("abc", 5, seed=1) != round_orders("abc", 5, seed=2)
    with pytest.raises(ValueError, match="at least one"):
        time_interleaved({})


def test_one_median():
    assert median([3, 1, 2]) == 2 and median([4, 1, 2, 3]) == 2.5
    assert Timing([4.0, 1.0, 2.0, 3.0]).median == 2.5
    with pytest.raises(ValueError, match="no values"):
        median([])
