"""One result type for every "Your turn" checker: course_utils.claims.CheckResult."""
import importlib
import inspect
import pkgutil

import pytest

import course_utils
from course_utils.claims import CheckResult


def test_check_result_is_truthy_only_when_passed_and_shows_every_message():
    ok = CheckResult(True, ["shape matches", "sum is 1"])
    assert ok and str(ok) == "PASSED\n  - shape matches\n  - sum is 1"
    bad = CheckResult(False, "divide by k")  # one message may be given as a string
    assert not bad and bad.messages == ["divide by k"] and repr(bad) == "NOT YET\n  - divide by k"
    assert bad.message == "divide by k"
    with pytest.raises(ValueError, match="at least one message"):
        CheckResult(False, [])


def _checkers():
    for info in pkgutil.walk_packages(course_utils.__path__, prefix="course_utils."):
        module = importlib.import_module(info.name)
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("check_") and fn.__module__ == module.__name__:
                yield f"{info.name.rsplit('.', 1)[-1]}.{name}", fn


def test_every_exercise_checker_returns_the_shared_result_type():
    found = dict(_checkers())
    # the five lessons' checkers; a new one must return CheckResult too
    assert {"l1_levers.check_accumulation", "l2_final_token.check_last_k_loss", "l3_xfactor.check_letter_target",
            "l4_freeze.check_mlp_only_prediction", "l5_lora.check_lora_count"} <= set(found)
    for name, fn in found.items():
        returns = inspect.signature(fn).return_annotation
        assert returns in (CheckResult, "CheckResult"), f"{name} returns {returns!r}, not CheckResult"


def test_claims_table_takes_verdicts_whole_and_keeps_facts_beside_it():
    from course_utils.claims import HOLDS, INCONCLUSIVE, NOT_MEASURABLE, VERDICTS, Claim, ClaimsTable
    from course_utils.measure import Timing
    from course_utils.verdicts import level, not_measurable, speed_verdict

    assert INCONCLUSIVE == "inconclusive" and INCONCLUSIVE in VERDICTS
    t = ClaimsTable("Lesson X", context="cpu, small profile")
    t.add("faster", "2x", speed_verdict(Timing([1.0, 1.1, 0.9, 1.0, 1.2]), Timing([1.0, 0.9, 1.1, 1.0, 1.1])))
    t.add("loss falls to about 2", "6 -> 2", level(2.3, low=1.5, high=2.5))
    t.add("GPU memory falls 25-30%", "25-30%", not_measurable("n/a", "no CUDA GPU"))
    t.fact("bf16 bytes per element", "2")
    assert t.counts() == {HOLDS: 1, "does not hold": 0, INCONCLUSIVE: 1, NOT_MEASURABLE: 1}  # a fact is not a claim
    html = t._repr_html_()
    assert "inconclusive" in html and "Facts" in html and "bf16 bytes per element" in html
    assert "<th style='text-align:left" in html  # headers aligned with their cells
    md = t.to_markdown()
    assert "| loss falls to about 2 | 6 -> 2 | 2.3 | holds | 1.5-2.5 |" in md and "bf16 bytes per element" in md
    assert "fact: bf16 bytes per element: 2" in str(t) and "NOT MEASURABLE HERE" in str(t)
    lines = str(t).splitlines()  # the text form: title, context, three lines per claim, one per fact
    assert len(lines) == 2 + 3 * 3 + 1
    assert lines[5] == "2. loss falls to about 2: HOLDS"
    assert lines[6] == "   lecture: 6 -> 2; measured: 2.3; bar: 1.5-2.5" and lines[7].startswith("   note: ")
    assert lines[8] == "3. GPU memory falls 25-30%: NOT MEASURABLE HERE" and lines[10] == "   note: no CUDA GPU"
    with pytest.raises(ValueError, match="say why"):
        Claim("x", "1", "n/a", NOT_MEASURABLE)
    with pytest.raises(ValueError, match="one of"):
        Claim("x", "1", "2", "probably")
