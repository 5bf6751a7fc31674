"""Measured training runs: a few real steps of a fresh model through ``course_utils.train.train``, timed (warm-up
discarded, median and spread) and with the exact peak memory of a step taken after the optimizer state exists.

    run = measure_training(make_model, batches, "fp32", repeats=5, lr=3e-4)
    run.tokens_per_s, run.peak_bytes, run.row()

Lessons that compare configurations (dtypes, batch sizes, frozen layers, LoRA) use this instead of their own
train-and-measure closures; speed claims then go through ``course_utils.verdicts.speed_verdict``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .env import resolve_device
from .measure import Timing
from .memory import format_bytes, step_peak_memory
from .train import TrainConfig, make_optimizer, train


@dataclass
class StepMeasurement:
    """Timed training steps of one configuration."""

    label: str
    timing: Timing  # seconds per optimizer update, warm-up steps excluded
    tokens_per_step: int
    peak_bytes: int | None
    memory_method: str
    history: object  # the course_utils.train.History of the timed run

    @property
    def losses(self) -> list:
        return self.history.train_loss

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.timing.median

    @property
    def seconds_per_token(self) -> float:
        return self.timing.median / self.tokens_per_step

    def row(self, baseline: StepMeasurement | None = None) -> dict:
        r = {
            "configuration": self.label,
            "tokens/step": self.tokens_per_step,
            "ms/step (median)": self.timing.median * 1e3,
            "spread ms": self.timing.iqr * 1e3,
            "tokens/s": self.tokens_per_s,
        }
        if baseline is not None:
            r["speed-up"] = self.tokens_per_s / baseline.tokens_per_s
        r["peak memory"] = format_bytes(self.peak_bytes) if self.peak_bytes is not None else "n/a"
        return r


def measure_training(
    make_model: Callable[[], nn.Module],
    batches: Callable[[torch.Generator], object],
    label: str = "",
    warmup: int = 1,
    repeats: int = 3,
    memory: bool = True,
    device=None,
    **train_kwargs,
) -> StepMeasurement:
    """Run ``warmup + repeats`` real training steps of a fresh model through ``course_utils.train.train``.

    Returns the step times without the warm-up (median and spread), tokens per step (all micro-batches
    of a step), the run's history, and the peak memory of a training step on another fresh model, taken after
    its optimizer state exists (``course_utils.memory.step_peak_memory``): weights, gradients, AdamW moments and
    activations, exact on CUDA (the allocator) and on a CPU (every tensor, PyTorch's ``MemTracker``).
    ``train_kwargs`` go to ``TrainConfig`` (``amp``, ``grad_accum``, ``lr``, ...).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    device = resolve_device(device)
    cfg = TrainConfig(steps=warmup + repeats, progress=False, **train_kwargs)
    history = train(make_model(), batches, cfg, device=device)
    timing = Timing(history.step_time[warmup:])
    tokens = history.tokens_seen[0]
    peak, method = None, "not measured"
    if memory:
        model: nn.Module = make_model().to(device)
        one = TrainConfig(steps=1, progress=False, **train_kwargs)
        optimizer = make_optimizer(model, one, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        peak, method = step_peak_memory(lambda: train(model, batches, one, optimizer=optimizer, device=device),
                                        model, optimizer, device=device)
        del model, optimizer
    return StepMeasurement(label, timing, tokens, peak, method, history)


@dataclass
class TrainingCase:
    """One configuration for ``time_training_interleaved``: a fresh model, its batches, ``TrainConfig`` options."""

    make_model: Callable[[], nn.Module]
    batches: Callable[[torch.Generator], object]
    train_kwargs: dict | None = None
    loss_fn: Callable | None = None  # None: train()'s default (all_token_loss); e.g. losses.fused_all_token_loss


def time_training_interleaved(cases: dict, rounds: int = 15, warmup: int = 1, per_token: bool = True,
                              device=None) -> dict:
    """Time real training steps of several configurations in ONE ``time_interleaved`` call.

    ``cases`` maps a label to a ``TrainingCase`` (or a ``(make_model, batches[, train_kwargs])`` tuple). Each
    configuration gets a fresh model and its own optimizer (``make_optimizer``); then round after round each
    takes one optimizer update (all its micro-batches) through ``course_utils.train.train``, in alternation, so a
    change in background load hits all of them alike. Returns ``{label: Timing}`` ready for
    ``course_utils.verdicts.speed_verdict``: seconds per token when ``per_token`` (each round's seconds divided by
    that configuration's tokens per update, so batch sizes compare fairly), else seconds per update.
    """
    from .measure import time_interleaved

    if not cases:
        raise ValueError("give at least one configuration, e.g. {'batch 64': TrainingCase(make_model, batches)}")
    device = resolve_device(device)
    steps, tokens = {}, {}
    for label, case in cases.items():
        if isinstance(case, tuple):
            case = TrainingCase(*case)
        if not isinstance(case, TrainingCase):
            raise TypeError(f"configuration {label!r}: give a TrainingCase or a (make_model, batches, kwargs) tuple, "
                            f"got {type(case).__name__}")
        cfg = TrainConfig(steps=1, progress=False, **(case.train_kwargs or {}))
        model = case.make_model().to(device)
        optimizer = make_optimizer(model, cfg, device)
        loss = {"loss_fn": case.loss_fn} if case.loss_fn is not None else {}
        hist = train(model, case.batches, cfg, optimizer=optimizer, device=device, **loss)  # the optimizer state
        tokens[label] = hist.tokens_seen[-1]
        steps[label] = (lambda m=model, c=case, o=optimizer, cfg=cfg, loss=loss:
                        train(m, c.batches, cfg, optimizer=o, device=device, **loss))
    timings = time_interleaved(steps, warmup=warmup, repeats=rounds, device=device)
    if not per_token:
        return timings
    return {label: Timing([s / tokens[label] for s in t.times]) for label, t in timings.items()}


def training_step_peak(make_model: Callable[[], nn.Module], batches: Callable[[torch.Generator], object],
                       device=None, loss_fn: Callable | None = None, **train_kwargs) -> tuple[int, str]:
    """The memory procedure alone: the exact peak (bytes, method) of one training step of a fresh model taken
    after its optimizer state exists (``course_utils.memory.step_peak_memory``), without timing anything.
    ``train_kwargs`` go to ``TrainConfig`` (``amp``, ``grad_accum``, ...); ``loss_fn`` to ``train`` (None: its
    default)."""
    device = resolve_device(device)
    model: nn.Module = make_model().to(device)
    one = TrainConfig(steps=1, progress=False, **train_kwargs)
    optimizer = make_optimizer(model, one, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    loss = {"loss_fn": loss_fn} if loss_fn is not None else {}
    return step_peak_memory(lambda: train(model, batches, one, optimizer=optimizer, device=device, **loss),
                            model, optimizer, device=device)
