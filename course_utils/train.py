"""The one training loop every lesson uses.

    history = train(model, train_batches, TrainConfig(steps=200, lr=3e-4, eval_every=20),
                    loss_fn=final_token_loss, test_batches=test_batches)

- ``train_batches(generator)`` returns a batch: ``(x, y)`` tensors for Model 5, or a dict with
  ``input_ids`` / ``attention_mask`` / ``labels`` for Hugging Face models. The loop draws every
  batch from its own ``torch.Generator`` (seeded by ``TrainConfig.seed``), so runs are reproducible.
- ``loss_fn(logits, targets)`` is pluggable (see ``course_utils.losses``).
- Evaluation on the test batches every ``eval_every`` steps, in ``model.eval()`` and without
  gradients, then back to ``model.train()``.
- Gradient accumulation (``loss / grad_accum`` so the summed gradient equals the big batch's mean),
  gradient clipping (the norm is recorded every step), warmup + cosine LR schedule,
  autocast mixed precision (bf16; fp16 with a GradScaler on CUDA), a tqdm progress bar with
  a short postfix (``loss 3.214 lr 3e-4 norm 0.82 1.23k tok/s``; norm: the gradient norm before clipping),
  checkpoints with exact resume that load with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass

import torch

from .env import device_of, resolve_device
from .losses import all_token_loss
from .measure import median
from .model import eval_mode
from .validate import at_least, non_negative, positive, probability

AMP_MODES = ("off", "bf16", "fp16", "auto")
SCHEDULES = ("constant", "cosine")
DROPOUT_SCHEDULES = ("constant", "early", "linear")


@dataclass
class TrainConfig:
    steps: int
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    grad_accum: int = 1  # micro-batches per optimizer update
    clip_grad: float | None = 1.0  # max gradient norm; None = no clipping (the norm is still recorded)
    schedule: str = "constant"  # "constant" or "cosine"
    warmup_steps: int = 0  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    # dynamic regularization: the model's own dropout rates, scaled over the run. "constant" leaves them alone;
    # "early" keeps them for the first dropout_until share of the steps, then turns dropout off (Liu et al. 2023,
    # "Dropout Reduces Underfitting"); "linear" scales them from 1 down to 0 over the run
    dropout_schedule: str = "constant"
    dropout_until: float = 0.25
    eval_every: int = 0  # 0 = no evaluation
    eval_batches: int = 4
    amp: str = "off"  # "off", "bf16", "fp16" (CUDA only) or "auto"
    seed: int = 0
    checkpoint_path: str | None = None
    checkpoint_every: int = 0  # 0 = only at the end when checkpoint_path is set
    progress: bool = True
    desc: str = "train"

    def __post_init__(self):
        at_least(self, "steps", 1, "train for at least one optimizer update")
        at_least(self, "grad_accum", 1, "1 micro-batch per update is plain training")
        positive(self, "lr", "a learning rate such as 3e-4")
        non_negative(self, "weight_decay", "0 turns it off; AdamW's usual value is 0.1")
        at_least(self, "warmup_steps", 0)
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.warmup_steps = {self.warmup_steps} is more than steps = {self.steps}: "
                             "warm up over at most the whole run (e.g. 10% of the steps)")
        if self.clip_grad is not None:
            positive(self, "clip_grad", "None turns clipping off; 1.0 is the usual bound")
        probability(self, "min_lr_ratio")
        if len(self.betas) != 2:
            raise ValueError(f"TrainConfig.betas = {self.betas!r}: give two numbers, e.g. (0.9, 0.95)")
        for i, b in enumerate(self.betas):
            if not (isinstance(b, (int, float)) and 0 <= b < 1):
                raise ValueError(f"TrainConfig.betas = {self.betas!r}: betas[{i}] = {b!r} must be in [0, 1), "
                                 "e.g. (0.9, 0.95)")
        at_least(self, "eval_every", 0, "0 turns evaluation off")
        at_least(self, "eval_batches", 1)
        at_least(self, "checkpoint_every", 0)
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp={self.amp!r} is not one of {AMP_MODES}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not one of {SCHEDULES}")
        if self.dropout_schedule not in DROPOUT_SCHEDULES:
            raise ValueError(f"dropout_schedule={self.dropout_schedule!r} is not one of {DROPOUT_SCHEDULES}")
        if not 0.0 < self.dropout_until <= 1.0:
            raise ValueError(f"dropout_until is a share of the steps in (0, 1], got {self.dropout_until}")
        if self.checkpoint_every and not self.checkpoint_path:
            raise ValueError("checkpoint_every needs a checkpoint_path to write to")


@dataclass
class History:
    step: list = field(default_factory=list)  # optimizer updates done
    train_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)  # before clipping
    dropout_factor: list = field(default_factory=list)  # the multiplier on the model's dropout rates
    step_time: list = field(default_factory=list)  # seconds per update
    tokens_per_s: list = field(default_factory=list)
    tokens_seen: list = field(default_factory=list)  # input tokens processed so far
    eval_step: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    peak_memory_bytes: int | None = None  # CUDA peak allocated; None on CPU (see course_utils.measure)

    def final_train_loss(self, last: int = 10) -> float:
        """Mean training loss over the last ``last`` steps (a single step is noisy)."""
        tail = self.train_loss[-last:]
        return sum(tail) / len(tail)

    def median_step_time(self, skip: int = 2) -> float:
        """Median seconds per update, ignoring the first ``skip`` (warm-up) steps."""
        return median(self.step_time[skip:] or self.step_time)

    def as_dict(self) -> dict:
        return asdict(self)


def has_fast_bf16(device: torch.device) -> bool:
    """bf16 runs on tensor cores from compute capability 8.0 (A100, L4, H100, RTX 30xx on). Older GPUs (the T4 of
    Colab's free tier is 7.5) may *accept* bf16 (``torch.cuda.is_bf16_supported()`` counts emulation) but run it
    slowly: there the course trains in fp16 with a GradScaler."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for this device."""
    if amp == "off":
        return None, False
    cuda = device.type == "cuda"
    if amp == "auto":
        if cuda:
            return (torch.bfloat16, False) if has_fast_bf16(device) else (torch.float16, True)
        return None, False
    if amp == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU does not support bfloat16; use amp='fp16' (with loss scaling) or 'auto'")
        if device.type == "mps":
            raise ValueError("autocast on MPS is not used by this course; use amp='off'")
        return torch.bfloat16, False
    if amp == "fp16":
        if not cuda:
            raise ValueError(f"amp='fp16' needs a CUDA GPU (this run is on {device.type}); on CPU use amp='bf16'")
        return torch.float16, True
    raise ValueError(f"amp={amp!r} is not one of {AMP_MODES}")


def autocast_context(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)  # device_type, never "cuda:3"


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The multiplier on ``cfg.lr`` at ``step``: linear warmup, then constant or cosine decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def dropout_factor(step: int, cfg: TrainConfig) -> float:
    """The multiplier on the model's dropout rates at ``step`` (see ``TrainConfig.dropout_schedule``)."""
    if cfg.dropout_schedule == "early":
        return 1.0 if step < cfg.dropout_until * cfg.steps else 0.0
    if cfg.dropout_schedule == "linear":
        return 1.0 - step / cfg.steps
    return 1.0


def scale_dropout(model: torch.nn.Module, factor: float) -> None:
    """Set every dropout rate of ``model`` to ``factor`` x its rate as built: each ``nn.Dropout``'s ``p`` and the
    ``dropout_p`` that Model 5's attention passes to ``scaled_dot_product_attention``. ``factor=1`` restores them."""
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"a dropout factor is in [0, 1], got {factor}")
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = m.__dict__.setdefault("_built_p", m.p) * factor
        if isinstance(getattr(m, "dropout_p", None), float):
            m.dropout_p = m.__dict__.setdefault("_built_dropout_p", m.dropout_p) * factor


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the *trainable* parameters only (frozen ones get no optimizer state).

    Weight decay applies to matrices, not to biases and LayerNorm gains. The update runs as one
    fused kernel on CUDA and on CPU (``fused=True``: one pass over each parameter instead of a chain of
    element-wise ops; about 5% of a tiny model's CPU step, see ``benchmarks/train_step.py``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (every requires_grad is False)")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **extra)


def progress_postfix(loss: float, lr: float, grad_norm: float, tokens_per_s: float) -> str:
    """The progress bar's short postfix, e.g. ``loss 3.214 lr 3e-4 norm 0.82 1.23k tok/s``.

    A browser may break a line after "|" or "-", which split "lr 1e-" from "6" in a narrow notebook widget: so
    no "|", and the exponent's minus is a non-breaking hyphen (U+2011), which looks the same.
    """
    mantissa, exponent = f"{lr:.0e}".split("e")
    from tqdm import tqdm

    rate = tqdm.format_sizeof(tokens_per_s).strip()
    norm = f"{grad_norm:.2f}" if grad_norm < 10 else f"{grad_norm:.0f}"
    exponent = str(int(exponent)).replace("-", "\u2011")
    return f"loss {loss:.3f} lr {mantissa}e{exponent} norm {norm} {rate} tok/s"


def _to_device(batch, device: torch.device):
    """Move a batch to the device; return (model kwargs or input, targets, number of input tokens)."""
    if isinstance(batch, dict):
        batch = {k: v.to(device) for k, v in batch.items()}
        targets = batch.pop("labels")
        return batch, targets, batch["input_ids"].numel()
    x, y = batch
    x = x.to(device)
    y = y.to(device) if isinstance(y, torch.Tensor) else y
    return x, y, x.numel()


def forward_loss(model, batch, loss_fn, device, amp_dtype=None):
    """Forward one batch and return (loss, input tokens). Works for Model 5 and HF models."""
    inputs, targets, n_tokens = _to_device(batch, device)
    with autocast_context(amp_dtype, device):
        if getattr(loss_fn, "model_computes_loss", False) and isinstance(inputs, torch.Tensor):
            return model(inputs, targets=targets), n_tokens  # e.g. Model 5's fused output layer + loss
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        logits = out.logits if hasattr(out, "logits") else out
        loss = loss_fn(logits, targets)
    return loss, n_tokens


@torch.no_grad()
def evaluate(model, batches: Callable, loss_fn=all_token_loss, n_batches: int = 4, seed: int = 1234,
             device=None, amp: str = "off") -> float:
    """Mean loss over ``n_batches`` test batches, drawn from a fixed seed (the same batches every call)."""
    device = torch.device(device) if device is not None else device_of(model)
    amp_dtype, _ = resolve_amp(amp, device)
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        losses = [forward_loss(model, batches(gen), loss_fn, device, amp_dtype)[0].item() for _ in range(n_batches)]
    return sum(losses) / len(losses)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def model_description(model: torch.nn.Module) -> dict:
    """The model's class and configuration as plain values: saved in a checkpoint, compared on resume."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    config = getattr(model, "config", None)
    if is_dataclass(config):
        values = asdict(config)
    elif hasattr(config, "to_dict"):  # Hugging Face models
        values = config.to_dict()
    else:
        values = {}
    plain = {k: v for k, v in values.items()  # not the path it was loaded from, nor the library's version
             if (isinstance(v, (bool, int, float, str)) or v is None)
             and not k.startswith("_") and k not in ("transformers_version", "name_or_path")}
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"class": type(model).__name__, "config": plain, "trainable_parameters": n_trainable}


def _describe(desc: dict) -> str:
    items = ", ".join(f"{k}={v!r}" for k, v in sorted(desc["config"].items()))
    return f"{desc['class']}({items}; {desc['trainable_parameters']:,} trainable parameters)"


def save_checkpoint(path, model, optimizer, scheduler, scaler, step, batch_gen, history, cfg, device) -> None:
    """Everything an exact resume needs: weights, optimizer moments, schedule, RNG states, step.

    Only tensors and plain Python values, so ``load_checkpoint`` reads it with ``weights_only=True``.
    """
    state = {
        "model_description": model_description(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step,
        "batch_rng": batch_gen.get_state(),
        "rng": _rng_state(device),
        "history": history.as_dict(),
        "config": asdict(cfg),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "batch_rng", "rng", "history", "config")


def load_checkpoint(path, device: torch.device | str | None = None) -> dict:
    """Read a checkpoint written by ``save_checkpoint``: tensors and plain values only, never arbitrary code. Its
    tensors land on ``device`` (None: the course's device, ``env.resolve_device``).

    A file that holds anything else (a pickled object: altered, or not written by this course), a truncated
    or corrupt file, and a file missing a key raise an error that names the file and what to do.
    """
    fresh = f"delete {path} (or set TrainConfig.checkpoint_path to a new file) to start the run afresh"
    try:
        state = torch.load(path, map_location=resolve_device(device), weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"checkpoint {path} holds more than tensors and plain values, so it was not written by "
            f"course_utils.train or was altered; it was not loaded, since unpickling it could run any code. "
            f"Use a checkpoint you made yourself, or {fresh}.{_unsupported(e)}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise RuntimeError(
            f"checkpoint {path} could not be read: it is truncated or corrupt (a copy or a save cut short?). "
            f"Restore a complete copy, or {fresh}. ({str(e).splitlines()[0]})"
        ) from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a course_utils.train checkpoint (no {', '.join(missing)}); {fresh}")
    return state


def _unsupported(e: Exception) -> str:
    """The line of torch's weights_only error that names the object found, if there is one."""
    found = [line.strip() for line in str(e).splitlines() if "Unsupported" in line]
    return f" ({found[0]})" if found else ""


def _check_same_model(path, state: dict, model: torch.nn.Module) -> None:
    saved, here = state.get("model_description"), model_description(model)
    if saved is not None and saved != here:
        diff = sorted(k for k in saved["config"].keys() | here["config"].keys()
                      if saved["config"].get(k) != here["config"].get(k))
        what = f"they differ in {', '.join(diff)}" if diff else "their classes or trainable parameters differ"
        raise ValueError(
            f"checkpoint {path} was saved from another model configuration ({what}).\n"
            f"  checkpoint: {_describe(saved)}\n  this model: {_describe(here)}\n"
            f"Resume with the model the checkpoint was made with, or delete {path} "
            f"(or set TrainConfig.checkpoint_path to a new file) to train this model from the start."
        )


def train(
    model: torch.nn.Module,
    train_batches: Callable[[torch.Generator], object],
    cfg: TrainConfig,
    loss_fn: Callable = all_token_loss,
    test_batches: Callable[[torch.Generator], object] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    device: torch.device | str | None = None,
    resume: bool = False,
    stop_at: int | None = None,
) -> History:
    """Train ``model`` for ``cfg.steps`` optimizer updates and return the history.

    ``resume=True`` continues from ``cfg.checkpoint_path`` if it exists. ``stop_at`` ends the run
    early after that many updates (as an interrupted session would), for resume demonstrations.
    """
    device = resolve_device(device)
    model.to(device)
    amp_dtype, needs_scaler = resolve_amp(cfg.amp, device)
    if cfg.eval_every and test_batches is None:
        raise ValueError("eval_every is set but no test_batches were given")
    optimizer = optimizer or make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler(device.type) if needs_scaler else None
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout masks
    history, start = History(), 0

    if resume and cfg.checkpoint_path and os.path.exists(cfg.checkpoint_path):
        state = load_checkpoint(cfg.checkpoint_path, device)
        _check_same_model(cfg.checkpoint_path, state, model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        batch_gen.set_state(state["batch_rng"])
        _set_rng_state(state["rng"])
        history = History(**state["history"])
        start = state["step"]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    params = [p for p in model.parameters() if p.requires_grad]
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)

    def run_eval(step, force=False):
        due = cfg.eval_every and (force or step % cfg.eval_every == 0)
        if test_batches is not None and due and step not in history.eval_step:
            history.eval_step.append(step)
            history.test_loss.append(
                evaluate(model, test_batches, loss_fn, cfg.eval_batches, seed=cfg.seed + 1, device=device, amp=cfg.amp)
            )

    from tqdm.auto import tqdm

    # dynamic_ncols: a text bar fits the terminal's width; a notebook widget spans the cell, and in a narrow
    # one its counts and postfix move to the next line whole. No it/s: the postfix has tokens/s.
    bar = tqdm(total=cfg.steps, initial=start, desc=cfg.desc, disable=not cfg.progress, leave=True,
               dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
    model.train()
    tokens_seen = history.tokens_seen[-1] if history.tokens_seen else 0
    for step in range(start, end):
        run_eval(step)
        t0 = time.perf_counter()
        drop = dropout_factor(step, cfg)
        if cfg.dropout_schedule != "constant":
            scale_dropout(model, drop)
        optimizer.zero_grad(set_to_none=True)
        loss_sum, n_tokens = 0.0, 0
        for _ in range(cfg.grad_accum):
            loss, n = forward_loss(model, train_batches(batch_gen), loss_fn, device, amp_dtype)
            loss = loss / cfg.grad_accum  # the summed gradients then equal the big batch's mean
            (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += loss.item()
            n_tokens += n
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if cfg.clip_grad is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad).item()
        else:  # only measure the norm: clip_grad_norm_(inf) would also multiply every gradient by 1.0
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).item()
        lr = optimizer.param_groups[0]["lr"]
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        tokens_seen += n_tokens
        history.step.append(step + 1)
        history.train_loss.append(loss_sum)
        history.lr.append(lr)
        history.grad_norm.append(grad_norm)
        history.dropout_factor.append(drop)
        history.step_time.append(dt)
        history.tokens_per_s.append(n_tokens / dt)
        history.tokens_seen.append(tokens_seen)
        bar.set_postfix_str(progress_postfix(loss_sum, lr, grad_norm, n_tokens / dt), refresh=False)
        bar.update(1)
        if cfg.checkpoint_path and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(
                cfg.checkpoint_path, model, optimizer, scheduler, scaler, step + 1, batch_gen, history, cfg, device
            )
    if cfg.dropout_schedule != "constant":
        scale_dropout(model, 1.0)  # the model leaves with the rates it was built with
    if end == cfg.steps:
        run_eval(cfg.steps, force=True)  # always end with a test loss
        if cfg.checkpoint_path:
            save_checkpoint(
                cfg.checkpoint_path, model, optimizer, scheduler, scaler, end, batch_gen, history, cfg, device
            )
    bar.close()
    if device.type == "cuda":
        history.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    return history
