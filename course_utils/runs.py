"""Measured training runs: a few real steps of a fresh model through ``course_utils.train.train``, timed (warm-up
discarded, median and spread) and with the exact peak memory of a step taken after the optimizer state exists.

    run = measure_training(make_model, batches, "fp32", repeats=5, lr=3e-4)
    run.tokens_per_s, run.peak_bytes, run.row()

Lessons that compare configurations (dtypes, batch sizes, frozen layers, LoRA) use this instead of their own
train-and-measure closures; speed claims then go through ``course_utils.measure.speed_verdict``.
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
    device = resolve_device(device, "auto")
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
