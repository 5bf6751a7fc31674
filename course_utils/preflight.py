"""Preflight: does a lesson's full profile fit this GPU, and a free Colab T4?

``preflight.check("02")`` at the top of a lesson prints one line; ``preflight.table()`` (notebook 00) shows all
five lessons. For each lesson, the **peak memory of the largest training step of its full profile**:

- measured, where the course's GPU results hold it (``results/<gpu>/0N_*.md``, header "peak GPU memory");
- otherwise estimated by ``estimate_step_bytes``: weights + gradients + AdamW's two moments (+ frozen copies the
  lesson keeps) + activations. The activation estimate is Korthikanti et al. (2022, "Reducing activation
  recomputation in large transformer models"): per token and layer a GPT-2 block keeps about ``7h + 2f`` values
  (h the width, f the MLP width) once attention is fused (SDPA: no T x T matrix is kept), a Llama block about
  ``10h + 4f`` (SwiGLU's gate and up projections, rotary copies of q and k), and the output layer keeps the
  logits, their log-softmax and its gradient (3 x V values, fp32). ``tests/core/test_preflight.py`` checks it
  against an exact measured step (``runs.training_step_peak``) at small sizes, where it is within 0.67-1.5x.
  On a GPU: the H100 results of 2026-11-23 (older code, ``results/nvidia-h100-80gb/01_*.ipynb``) show 18.8 GiB
  for Lesson 1's fp32 step at batch 64 x 255, counted then above the weights and AdamW moments that existed
  before the step (about 1.4 GiB): about 20 GiB in all; the formula gives 19.4 GiB.

The model is the one the lecture uses, which a learner with the hub (Colab) gets; offline, the smaller
SmolLM2-135M stands in for GPT-2 medium and GPT-Neo 125M, so the figure is an upper bound there.

Against a device: the estimate must fit in 90% of its memory (the CUDA context, the allocator's caching and
fragmentation take the rest); if it does not, the line says what to change: a smaller micro-batch with gradient
accumulation (the same tokens per optimizer step), a shorter context, or 4-bit weights.
A free Colab T4 has 15 GiB and no fast bf16: ``amp="auto"`` falls back to fp16 autocast with a GradScaler there
(``train.resolve_amp``), which needs the same memory as bf16.

The lessons' step shapes below are read from each notebook's full-profile settings (the cell that calls
``profile_settings``); ``tests/core/test_preflight.py`` fails when a notebook changes them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .paths import REPO_ROOT

GiB = 2**30
#: the share of a GPU's memory a training step may plan to use (the rest: CUDA context, caching, fragmentation)
USABLE = 0.9
#: bytes a value of the activations takes: fp32, or 16-bit autocast (matmul outputs in 16 bits, norms and
#: residual sums in fp32: about one value in four stays fp32 -> 2.5 bytes on average)
ACT_BYTES = {"off": 4.0, "16-bit": 2.5}
#: bytes per vocabulary entry and token at the output: logits, log-softmax and its gradient (fp32: 3 x 4 bytes;
#: under autocast the logits are 16-bit: 2 + 4 + 4)
LOGIT_BYTES = {"off": 12.0, "16-bit": 10.0}


@dataclass(frozen=True)
class Arch:
    """What the memory formula needs to know of a model."""
    name: str
    n_params: int
    n_layer: int
    n_embd: int
    ffn: int  # MLP hidden width
    vocab: int
    kind: str = "gpt2"  # "gpt2" (GELU MLP) or "llama" (SwiGLU MLP, rotary embeddings)

    def layer_values(self) -> int:
        """Activation values one layer keeps per token for the backward pass (see the module's docstring)."""
        h, f = self.n_embd, self.ffn
        return 7 * h + 2 * f if self.kind == "gpt2" else 10 * h + 4 * f


GPT2_SMALL = Arch("Model 5, GPT-2 small shape", 124_439_808, 12, 768, 3072, 50257)
GPT2_MEDIUM = Arch("GPT-2 medium", 354_823_168, 24, 1024, 4096, 50257)
GPT_NEO_125M = Arch("GPT-Neo 125M", 125_198_592, 12, 768, 3072, 50257)
SMOLLM2_135M = Arch("SmolLM2-135M", 134_515_008, 30, 576, 1536, 49152, kind="llama")


@dataclass(frozen=True)
class LessonStep:
    """The largest training step of a lesson's full profile (from the notebook's full-profile settings)."""
    lesson: str
    title: str
    arch: Arch
    batch: int
    context: int
    amp: str = "off"  # the notebook's setting: "off" (fp32) or "auto" (bf16, or fp16 + GradScaler without bf16)
    grad_checkpointing: bool = False
    frozen_copies: int = 0  # extra whole models the lesson keeps in memory while it trains (reference, start)
    where: str = ""  # which cell and settings make this step

    @property
    def shape(self) -> str:
        return (f"{self.arch.name}, batch {self.batch} x {self.context}"
                + (", bf16/fp16 autocast" if self.amp == "auto" else ", fp32")
                + (", gradient checkpointing" if self.grad_checkpointing else ""))


LESSONS = {
    "01": LessonStep("01", "Optimization options", GPT2_SMALL, batch=16, context=1024,
                     where="training runs and the accumulation memory step: settings.batch_size x "
                           "settings.block_size, fp32, logits and loss apart (the batch-size timing, up to 128 x "
                           "255 with the fused loss, needs a little less)"),
    "02": LessonStep("02", "Final-token training, dropout", GPT2_SMALL, batch=32, context=256, amp="auto",
                     where="S.batch_size x S.context, S.amp"),
    "03": LessonStep("03", "X factor, KL loss", GPT2_MEDIUM, batch=4, context=64, frozen_copies=1,
                     where="settings.batch_size x settings.seq_len, full fine-tuning beside the frozen start model"),
    "04": LessonStep("04", "Freezing attention", GPT_NEO_125M, batch=8, context=256, frozen_copies=2,
                     where="settings.batch_size x settings.block_size, full fine-tuning; the start weights and a "
                           "LoRA copy stay in memory"),
    "05": LessonStep("05", "SFT, LoRA, QLoRA", SMOLLM2_135M, batch=16, context=384, amp="auto",
                     grad_checkpointing=True, frozen_copies=1,
                     where="settings.batch_size x settings.max_len, full SFT, settings.amp, "
                           "settings.grad_checkpointing; the base model stays in memory"),
}


def estimate_step_bytes(arch: Arch, batch: int, context: int, amp: str = "off", grad_checkpointing: bool = False,
                        frozen_copies: int = 0, trainable: int | None = None) -> int:
    """Estimated peak bytes of one training step with AdamW (fp32 master weights), after its state exists.

    ``amp``: "off" (fp32) or "16-bit" / "auto" / "bf16" / "fp16" (autocast; it also caches a 16-bit copy of the
    weights). ``trainable``: parameters with gradients and AdamW moments (default: all)."""
    mode = "off" if amp == "off" else "16-bit"
    n = arch.n_params
    t = n if trainable is None else trainable
    state = 4 * n * (1 + frozen_copies) + 4 * t + 8 * t + (2 * n if mode != "off" else 0)
    per_layer = arch.layer_values() * ACT_BYTES[mode]
    if grad_checkpointing:  # each layer's input is kept; one layer's activations exist again in its backward
        layers = arch.n_layer * arch.n_embd * ACT_BYTES[mode] + per_layer
    else:
        layers = arch.n_layer * per_layer
    activations = batch * context * (layers + arch.vocab * LOGIT_BYTES[mode])
    return int(state + activations)


def measured_peak(lesson: str, results=None) -> tuple[int, str] | None:
    """The peak GPU memory a results header states for this lesson (bytes, where), or None."""
    results = results or REPO_ROOT / "results"
    for md in sorted(results.glob(f"*/{lesson}_*.md")):
        head = md.read_text(encoding="utf-8")[:2000]
        m = re.search(r"peak GPU memory ([\d.]+) GiB", head)
        if m:
            date = re.search(r"\d{4}-\d{2}-\d{2}", head)
            return int(float(m.group(1)) * GiB), f"measured, {md.parent.name}" + (f" {date.group(0)}" if date else "")
    return None


@dataclass(frozen=True)
class Device:
    name: str
    memory: int | None  # bytes; None: not a GPU
    fast_bf16: bool = False


T4 = Device("Colab T4", 15 * GiB, fast_bf16=False)


def this_device() -> Device:
    """The device the lessons run on (``env.get_device``), with its memory read now."""
    import torch

    from .env import get_device
    from .train import has_fast_bf16

    device = get_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return Device(props.name, props.total_memory, has_fast_bf16(device))
    return Device(device.type.upper(), None)


@dataclass(frozen=True)
class Fit:
    lesson: LessonStep
    peak: int  # bytes
    source: str  # "estimate (formula)" or "measured, <gpu> <date>"

    def on(self, device: Device) -> str:
        """"fits", or what to change, on ``device``; for a CPU, the small profile."""
        if device.memory is None:
            return f"{device.name}: small profile"
        fallback = "" if device.fast_bf16 or self.lesson.amp == "off" else ", in fp16 autocast + GradScaler"
        budget = USABLE * device.memory
        return ("fits" if self.peak <= budget else self.change(budget)) + fallback

    def change(self, budget: float) -> str:
        """What to change so that the step fits in ``budget`` bytes (scaled from this fit's peak)."""
        step = self.lesson
        est = estimate_step_bytes(step.arch, step.batch, step.context, step.amp, step.grad_checkpointing,
                                  step.frozen_copies)
        fixed = estimate_step_bytes(step.arch, 0, step.context, step.amp, step.grad_checkpointing, step.frozen_copies)
        scale = self.peak / est  # a measured peak scales the formula's parts alike
        per_row = (est - fixed) * scale / step.batch
        room = budget - fixed * scale
        rows = int(room // per_row) if room > 0 else 0
        if rows >= 1:
            k = math.ceil(step.batch / rows)
            micro = math.ceil(step.batch / k)
            return f"batch {step.batch} -> {micro} with gradient accumulation x{k}"
        return "does not fit even at batch 1: 4-bit weights (QLoRA) or LoRA"


def fit(lesson: str, results=None) -> Fit:
    """The full profile's peak for one lesson ("01" .. "05"): measured where results hold it, else estimated."""
    lesson = f"{int(lesson):02d}"
    if lesson not in LESSONS:
        raise ValueError(f"no lesson {lesson!r}; the lessons are {', '.join(LESSONS)}")
    step = LESSONS[lesson]
    measured = measured_peak(lesson, results)
    if measured:
        return Fit(step, *measured)
    return Fit(step, estimate_step_bytes(step.arch, step.batch, step.context, step.amp, step.grad_checkpointing,
                                         step.frozen_copies), "estimate (formula)")


def slug(gpu_name: str) -> str:
    """A GPU's name as a results folder: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


def measured_t4(lesson: str, results=None) -> dict | None:
    """The T4 check's record for a lesson (``scripts/t4_check.py``: the step run under a 15 GiB cap in fp16 on a
    bigger GPU), newest file first, or None where it has not run."""
    import json

    results = results or REPO_ROOT / "results"
    for path in sorted(results.glob("*/t4_check.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        data = json.loads(path.read_text(encoding="utf-8"))
        for rec in data.get("lessons", []):
            if rec.get("lesson") == lesson:
                return {**rec, "where": f"{path.parent.name} {data.get('date', '')}".strip()}
    return None


def on_t4(f: Fit, results=None) -> str:
    """The T4 column: the T4 check's measurement where it ran, else the estimate's "fits" or what to change."""
    rec = measured_t4(f.lesson.lesson, results)
    if rec is None:
        return f.on(T4)
    if rec["fits"]:
        return f"fits: measured {rec['peak_bytes'] / GiB:.1f} GiB under a 15 GiB cap, {rec['amp']} ({rec['where']})"
    return (f"does not fit: out of memory under a 15 GiB cap, {rec['amp']} ({rec['where']}); "
            f"{f.change(USABLE * T4.memory)}")


def table(device: Device | None = None, results=None):
    """One row per lesson: the full profile's largest step, its peak in GiB, this device, a free Colab T4."""
    from .tables import Table

    device = device or this_device()
    here = f"this device ({device.name}" + (f", {device.memory / GiB:.0f} GiB)" if device.memory else ")")
    rows = []
    for lesson in LESSONS:
        f = fit(lesson, results)
        rows.append({"lesson": f"{lesson} {f.lesson.title}", "full profile's largest step": f.lesson.shape,
                     "peak GiB": f"{f.peak / GiB:.1f}", "from": f.source, here: f.on(device),
                     "Colab T4 (15 GiB, no bf16)": on_t4(f, results)})
    return Table(rows, "Does each lesson's full profile fit?", note=(
        "peak: one training step of the full profile (weights, gradients, AdamW moments, activations); "
        f"'fits' leaves {1 - USABLE:.0%} of the GPU's memory free. On a CPU the lessons run the small profile."))


def check(lesson: str, device: Device | None = None) -> None:
    """The one line at the top of a lesson: its full profile's peak memory against this device and a free T4.
    It prints and returns nothing (a notebook cell ending with it shows no repr); ``fit(lesson)`` gives the figures."""
    device = device or this_device()
    f = fit(lesson)
    here = (f"{device.name} ({device.memory / GiB:.0f} GiB): {f.on(device)}" if device.memory else
            f"{device.name}: this lesson runs its small profile here")
    print(f"Preflight, lesson {f.lesson.lesson}'s full profile: about {f.peak / GiB:.1f} GiB at its peak "
          f"({f.source})\n  this device: {here}\n  a free Colab T4 (15 GiB): {on_t4(f)}")
