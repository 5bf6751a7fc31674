"""runs.compare_runs: the one procedure for claims resting on a difference between two trainings over seeds."""
import random

import pytest

from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS
from course_utils.runs import compare_runs


def test_a_clear_gain_in_every_seed_holds():
    c = compare_runs([5.0, 5.1, 5.2], [4.0, 4.1, 4.2])  # candidate lower by 1.0, spread 0.1
    assert c.verdict == HOLDS and c.gain == pytest.approx(1.0) and c.seeds == 3
    assert c.difference == pytest.approx(-1.0) and c.spread == pytest.approx(0.1)
    assert compare_runs([5.0, 5.1, 5.2], [6.0, 6.1, 6.3], lower=False).verdict == HOLDS  # "higher" claims


def test_the_opposite_beyond_the_spread_does_not_hold_unless_the_budget_was_short():
    assert compare_runs([4.0, 4.1, 4.2], [5.0, 5.1, 5.2]).verdict == DOES_NOT_HOLD
    c = compare_runs([4.0, 4.1, 4.2], [5.0, 5.1, 5.2], budget_short="12 of the lecture's 300 steps")
    assert c.verdict == INCONCLUSIVE and "12 of the lecture's 300 steps" in c.note


def test_disagreeing_seeds_or_a_gain_inside_the_spread_are_inconclusive():
    assert compare_runs([5.0, 5.1, 5.2], [5.05, 5.0, 5.3]).verdict == INCONCLUSIVE  # signs disagree
    # every seed agrees, but the gain (0.01) is far below the seed-to-seed spread (0.5): another seed could flip it
    assert compare_runs([5.0, 5.5, 6.0], [4.99, 5.49, 5.99]).verdict == INCONCLUSIVE
    # a gain every seed shows but that does not clear min_gain by more than the noise
    assert compare_runs([5.0, 5.1, 5.2], [4.9, 5.0, 5.1], min_gain=0.05).verdict == INCONCLUSIVE


def test_too_few_seeds_is_inconclusive_unless_the_spread_was_measured_elsewhere():
    two = compare_runs([5.0, 5.1], [4.0, 4.1])
    assert two.verdict == INCONCLUSIVE and "only 2 of the 3 seeds" in two.note
    assert compare_runs([5.0], [4.0], spread=0.2).verdict == HOLDS
    assert compare_runs([5.0], [4.9], spread=0.2).verdict == INCONCLUSIVE
    assert compare_runs([4.0], [5.0], spread=0.2).verdict == DOES_NOT_HOLD


def test_identical_methods_are_almost_never_decided():
    """Same method twice, seed noise only: a false verdict at most a few times in 200 seeded trials."""
    rng = random.Random(0)
    decided = 0
    for _ in range(200):
        seeds = [rng.gauss(5.0, 0.3) for _ in range(3)]  # the seed moves both runs alike (paired)...
        a = [s + rng.gauss(0, 0.05) for s in seeds]  # ...plus each run's own noise
        b = [s + rng.gauss(0, 0.05) for s in seeds]
        v = compare_runs(a, b).verdict
        assert v in VERDICTS
        decided += v != INCONCLUSIVE
    assert decided <= 5


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="same seed order"):
        compare_runs([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="spread="):
        compare_runs([1.0], [2.0])
    with pytest.raises(ValueError, match="no runs"):
        compare_runs([], [])
    with pytest.raises(TypeError, match="lower must be"):
        compare_runs([1.0, 2.0], [1.0, 2.0], lower="yes")
    with pytest.raises(ValueError, match="spread must be"):
        compare_runs([1.0], [2.0], spread=-1)
