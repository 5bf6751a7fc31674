"""Checks for configuration values: every configuration of the course (``TrainConfig``, ``GPTConfig``, the
lessons' settings) fails early with a ``ValueError`` that names the field, the value and the fix, instead of
training on a negative or NaN learning rate.

    positive(self, "lr", "e.g. 3e-4")          # finite and > 0
    at_least(self, "steps", 1)                  # an int >= 1
    probability(self, "dropout")                # in [0, 1]
    non_negative(self, "weight_decay")          # finite and >= 0
"""
from __future__ import annotations

import math


def _fail(obj, name: str, value, need: str, fix: str = ""):
    raise ValueError(f"{type(obj).__name__}.{name} = {value!r}: it must be {need}" + (f"; {fix}" if fix else ""))


def _number(obj, name: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(obj, name, value, "a number", "give a float or an int")
    if not math.isfinite(value):
        _fail(obj, name, value, "finite (not NaN or infinite)", "give a finite number")


def positive(obj, name: str, fix: str = "") -> None:
    """``obj.name`` is a finite number > 0 (a learning rate, a scale)."""
    value = getattr(obj, name)
    _number(obj, name, value)
    if not value > 0:
        _fail(obj, name, value, "> 0", fix)


def non_negative(obj, name: str, fix: str = "") -> None:
    """``obj.name`` is a finite number >= 0 (weight decay, a norm bound)."""
    value = getattr(obj, name)
    _number(obj, name, value)
    if value < 0:
        _fail(obj, name, value, ">= 0", fix)


def at_least(obj, name: str, low: int, fix: str = "") -> None:
    """``obj.name`` is an int >= ``low`` (steps, batch size, context length)."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(obj, name, value, f"an int >= {low}", fix or f"give a whole number such as {max(low, 1)}")
    if value < low:
        _fail(obj, name, value, f">= {low}", fix)


def probability(obj, name: str, high_open: bool = False, fix: str = "") -> None:
    """``obj.name`` is a probability in [0, 1] (or [0, 1) with ``high_open``)."""
    value = getattr(obj, name)
    _number(obj, name, value)
    if value < 0 or value > 1 or (high_open and value == 1):
        _fail(obj, name, value, "in [0, 1)" if high_open else "in [0, 1]", fix)
