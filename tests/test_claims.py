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
    for info in pkgutil.iter_modules(course_utils.__path__):
        module = importlib.import_module(f"course_utils.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("check_") and fn.__module__ == module.__name__:
                yield f"{info.name}.{name}", fn


def test_every_exercise_checker_returns_the_shared_result_type():
    found = dict(_checkers())
    # the five lessons' checkers; a new one must return CheckResult too
    assert {"levers.check_accumulation", "textstats.check_last_k_loss", "xfactor.check_letter_target",
            "freeze.check_mlp_only_prediction", "lora.check_lora_count"} <= set(found)
    for name, fn in found.items():
        returns = inspect.signature(fn).return_annotation
        assert returns in (CheckResult, "CheckResult"), f"{name} returns {returns!r}, not CheckResult"
