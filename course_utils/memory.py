"""The one place for bytes: what a model, its gradients and its optimizer take, analytic and measured.

- sizes: ``tensor_bytes``, ``model_bytes`` (bitsandbytes' quantization constants included), ``format_bytes``;
  ``count_parameters -> ParamCount(trainable, total)`` (a tied matrix once);
- bytes per parameter: ``BYTES_PER_PARAM`` per storage format, ``OPTIMIZER_STATES`` per optimizer,
  ``ADAMW_FP32_BYTES_PER_PARAM`` (weight + gradient + two moments);
- training state: ``training_state_bytes`` (analytic: parameters, gradients, optimizer state),
  ``optimizer_state_bytes`` (measured from the optimizer's tensors), ``sharded_state_bytes`` (FSDP / ZeRO-3),
  ``finetune_memory`` (full fine-tuning vs LoRA vs QLoRA) and its table;
- measured peaks: ``tensor_peak_memory`` (exact: the CUDA allocator, or every tensor counted by PyTorch's
  ``MemTracker`` on a CPU), ``step_peak_memory`` (the memory procedure for claims: the peak of a training step
  taken after the optimizer state exists), ``peak_memory`` (process RSS on a CPU: an estimate),
  ``release_cpu_memory``, ``current_peak_memory``.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn

from .env import resolve_device
from .measure import synchronize
from .tables import Table

#: Bytes of one Adam/AdamW moment pair per fp32 parameter (m and v).
ADAM_MOMENT_BYTES = 8
#: Bytes per parameter while training with AdamW in fp32: weight, gradient, two moments.
ADAMW_FP32_BYTES_PER_PARAM = 4 + 4 + ADAM_MOMENT_BYTES


# ---- Sizes and counts ----------------------------------------------------------------------------
class ParamCount(NamedTuple):
    """Parameters of a model, each tensor once (a tied embedding / unembedding counts once)."""

    trainable: int
    total: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter tensor once, in order (``model.parameters()`` already skips repeats of one tensor)."""
    seen, out = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def count_parameters(model: nn.Module) -> ParamCount:
    """``ParamCount(trainable, total)``: tied weights counted once; trainable = ``requires_grad``."""
    params = unique_parameters(model)
    return ParamCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def param_bytes(p: torch.Tensor) -> int:
    """Bytes of one tensor's elements (works on meta tensors: nothing is read)."""
    return p.numel() * p.element_size()


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in an optimizer's state (Adam's two moments, step counters), measured from its tensors.

    State is created lazily: before the first ``step()`` this is 0.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return sum(tensor_bytes(v) for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


#: NF4 stores 4 bits per weight plus one absmax constant per block of 64 weights: fp32 (4 bytes), or
#: with double quantization 8 bits, themselves scaled by one fp32 constant per 256 blocks.
NF4_BLOCK = 64
DQ_BLOCK = 256
BYTES_PER_PARAM = {
    "fp32": 4.0,
    "bf16": 2.0,
    "nf4": 0.5 + 4 / NF4_BLOCK,
    "nf4 + double quant": 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * DQ_BLOCK),
}



def paper_constant_bits(double_quant: bool, block: int = NF4_BLOCK, dq_block: int = DQ_BLOCK) -> float:
    """Bits per weight spent on quantization constants, in the QLoRA paper's unit (section 3).

    One fp32 absmax per ``block`` weights: 32 / 64 = 0.5 bit. Double quantization stores those constants in
    8 bits plus one fp32 constant per ``dq_block`` of them: 8 / 64 + 32 / (64 * 256) = 0.127 bit.
    """
    if block < 1 or dq_block < 1:
        raise ValueError(f"block sizes must be >= 1, got block={block}, dq_block={dq_block}")
    return 8 / block + 32 / (block * dq_block) if double_quant else 32 / block


def quant_constant_bits(model: nn.Module) -> dict:
    """Bits per quantized weight that a bitsandbytes 4-bit model spends on constants, measured from its tensors.

    Returns ``weights`` (how many are quantized), ``blocks`` (absmax constants, nested ones and offsets, in
    bits per weight), ``codebooks`` (the 16-value NF4 code and, with double quantization, the 256-value fp32
    code of the nested constants, per layer; a tensor shared by layers counts once) and ``total``.
    Compare ``blocks`` with ``paper_constant_bits``; the codebooks are what the paper's unit leaves out.
    """
    seen, n_weights, block_bytes, code_bytes = set(), 0, 0, 0

    def nbytes(t) -> int:
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            return 0
        seen.add(key)
        return t.numel() * t.element_size()

    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is None:
            continue
        n_weights += int(torch.Size(qs.shape).numel())
        for state in (qs, getattr(qs, "state2", None)):
            if state is None:
                continue
            for name in ("absmax", "offset"):
                t = getattr(state, name, None)
                if isinstance(t, torch.Tensor):
                    block_bytes += nbytes(t)
            if isinstance(getattr(state, "code", None), torch.Tensor):
                code_bytes += nbytes(state.code)
    if not n_weights:
        raise ValueError("this model has no 4-bit (bitsandbytes) weights; load it with load_in_4bit=True")
    blocks, codebooks = 8 * block_bytes / n_weights, 8 * code_bytes / n_weights
    return {"weights": n_weights, "blocks": blocks, "codebooks": codebooks, "total": blocks + codebooks}


def finetune_memory(n_params: int, n_trainable: int | None = None) -> list[dict]:
    """Bytes for weights, gradients, Adam moments and master copy: full fine-tuning vs LoRA vs QLoRA.

    ``n_trainable`` is the number of LoRA parameters (for the adapter rows). Activations are not
    included (they depend on batch and sequence length, not on the method). Rows, in bytes:

    - full FT, fp32: 4 (weights) + 4 (gradients) + 8 (Adam m and v) = 16 bytes per parameter
    - full FT, mixed precision: 2 (bf16 weights) + 2 (bf16 gradients) + 4 (fp32 master) + 8 (moments) = 16
    - LoRA: frozen bf16 base (2 bytes, no gradients, no optimizer state) + the adapter at 16 bytes
    - QLoRA: frozen NF4 base (0.5625 bytes, 0.5159 with double quantization) + the adapter at 16 bytes
    """
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    if n_trainable is not None and not 0 < n_trainable <= n_params:
        raise ValueError(f"n_trainable must be between 1 and n_params ({n_params}), got {n_trainable}")
    rows = [
        {"method": "full FT, fp32 Adam", "weights": 4 * n_params, "gradients": 4 * n_params,
         "optimizer": ADAM_MOMENT_BYTES * n_params, "master copy": 0},
        {"method": "full FT, mixed precision", "weights": 2 * n_params, "gradients": 2 * n_params,
         "optimizer": ADAM_MOMENT_BYTES * n_params, "master copy": 4 * n_params},
    ]
    if n_trainable:
        t = n_trainable
        for method, base in (("LoRA, bf16 base", BYTES_PER_PARAM["bf16"]), ("QLoRA, NF4 base", BYTES_PER_PARAM["nf4"]),
                             ("QLoRA, NF4 + double quant", BYTES_PER_PARAM["nf4 + double quant"])):
            rows.append({"method": method, "weights": base * n_params + 2 * t, "gradients": 2 * t,
                         "optimizer": ADAM_MOMENT_BYTES * t, "master copy": 4 * t})
    for row in rows:
        row["total"] = row["weights"] + row["gradients"] + row["optimizer"] + row["master copy"]
        row["bytes/param"] = row["total"] / n_params
    return rows


def finetune_memory_table(rows: list[dict], unit: float = 1e9, unit_name: str = "GB", title: str = "") -> Table:
    """``finetune_memory`` rows as a ``Table`` in ``unit_name`` (Markdown with ``.to_markdown()``)."""
    cols = ["weights", "gradients", "optimizer", "master copy", "total"]
    out = [{"method": r["method"], **{f"{c} ({unit_name})": f"{r[c] / unit:,.2f}" for c in cols},
            "bytes/param": f"{r['bytes/param']:.3f}"} for r in rows]
    return Table(out, title)


def _quant_state_tensors(qs) -> list:
    out = [getattr(qs, name, None) for name in ("absmax", "code", "offset")]
    nested = getattr(qs, "state2", None)
    return [t for t in out if isinstance(t, torch.Tensor)] + (
        _quant_state_tensors(nested) if nested is not None else []
    )


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, plus bitsandbytes' quantization constants (absmax,
    codebook, and the nested ones of double quantization), which ``get_memory_footprint`` leaves out.
    A tensor shared by several layers (tied weights, a common codebook) is counted once."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        key = (t.data_ptr(), t.numel(), t.dtype) if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()

    for t in list(model.parameters()) + list(model.buffers()):
        add(t)
        qs = getattr(t, "quant_state", None)
        if qs is not None:
            for q in _quant_state_tensors(qs):
                add(q)
    return total


# ---- Training state: analytic and measured -------------------------------------------------------

#: Optimizer-state tensors kept per trainable parameter, in units of the parameter's own size.
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd-momentum": 1, "sgd": 0}


def training_state_bytes(model: nn.Module, optimizer: str = "adamw") -> dict:
    """Analytic bytes that training keeps, activations not included:

    parameters (all of them, frozen or not), gradients (trainable only), optimizer state (AdamW: two
    moments per trainable parameter, plus a 4-byte step counter per trainable tensor), and the total.
    Works on meta-device models (nothing is allocated).
    """
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {sorted(OPTIMIZER_STATES)}")
    infos = unique_parameters(model)
    params = sum(param_bytes(p) for p in infos)
    trainable = [p for p in infos if p.requires_grad]
    grads = sum(param_bytes(p) for p in trainable)
    k = OPTIMIZER_STATES[optimizer]
    steps = 4 * len(trainable) if optimizer in ("adam", "adamw") else 0
    opt = k * grads + steps
    return {"parameters": params, "gradients": grads, "optimizer": opt, "total": params + grads + opt}


def sharded_state_bytes(n_params: int, shards: int = 1, bytes_per_param: int = ADAMW_FP32_BYTES_PER_PARAM) -> int:
    """Bytes per device for weights + gradients + AdamW moments, fully sharded over ``shards`` devices
    (what FSDP / ZeRO-3 does; activations not included)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return math.ceil(n_params * bytes_per_param / shards)


# ---- Measured peaks ------------------------------------------------------------------------------

def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss



def _cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    """The CUDA allocator's peak while ``fn()`` runs, after a reset to what is allocated now (so tensors that
    exist before ``fn`` count): the one CUDA measurement both ``peak_memory`` and ``tensor_peak_memory`` use."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def peak_memory(fn: Callable[[], object], device: torch.device | str | None = None,
                interval: float = 0.0005) -> int:
    """Extra memory (bytes) ``fn()`` needs at its peak, above what was in use before (a process-level figure).

    On CUDA: the allocator's peak (``max_memory_allocated``) above what was allocated before, exact. On CPU: the
    process's resident memory sampled every ``interval`` seconds in a thread, so short spikes can be missed and
    the allocator may reuse freed pages; treat it as an estimate and say so. Claims about a training step's memory
    use ``step_peak_memory`` instead (the absolute tensor peak, the same quantity on every device).
    """
    device = resolve_device(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        return _cuda_peak(fn, device) - base
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], _rss())
    return peak[0] - base


def release_cpu_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that a
    following CPU ``peak_memory`` measures the new work instead of reusing what an earlier run freed.

    Without it, a second training run on CPU can appear to need almost no memory: the allocator
    hands it the pages the first run released, and the process's resident size does not grow.
    A no-op where there is no glibc (macOS, Windows).
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:  # no C library to load: nothing to trim
        pass


def current_peak_memory(device: torch.device | None) -> int | None:
    """Peak allocated bytes on a CUDA device since the last reset; None on other devices."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return None



def _device_mem_tracker():
    """PyTorch's ``MemTracker``, told to forget per-module statistics when the root module runs again
    (gradient accumulation calls it several times per step). Only the per-device totals are used here,
    and those are kept."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

    class DeviceMemTracker(MemTracker):
        def _update_peak_stats(self, peak_state):
            # Only the per-device totals (the second half of MemTracker's own method, unchanged). Its first half
            # updates every tracked module's local peak on every operation: with LoRA on SmolLM2 (about 700
            # modules, 16,000 operations a step) that made one measured step take 25 s instead of 1.3 s.
            for dev, dev_snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < dev_snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = dev_snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(dev_snap)

        def _pre_fw_hook(self, module, inputs):
            if module in self.memory_tracking and not self._mod_tracker.is_bw:
                parents = set(self._mod_tracker.parents) - {self._mod_tracker.get_known_fqn(module)}
                if parents == {"Global"}:  # the root module again: a new micro-batch or step
                    self.reset_mod_stats()
            super()._pre_fw_hook(module, inputs)

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            # A frozen parameter (requires_grad=False: partial fine-tuning, LoRA's base) cannot take a gradient
            # hook, and MemTracker would raise. The hooks only label gradients; the totals used here count every
            # tensor either way, so a module with a frozen parameter is tracked without them.
            hooks = install_grad_hooks and all(p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks=hooks)

    return DeviceMemTracker()


def tensor_peak_memory(fn: Callable[[], object], *track, device: torch.device | str | None = None
                       ) -> tuple[int, str]:
    """The absolute tensor peak while ``fn()`` runs, in bytes, and how it was counted: every live tensor at the
    peak, **including** those that existed before (weights, gradients, optimizer state passed in ``track``), not
    only what ``fn`` added. The same quantity on every device:

    - CUDA: the allocator's ``max_memory_allocated`` after a reset to what is allocated now (so the tensors that
      exist before ``fn`` count). It counts every tensor of the process on that device: measure in a process
      that holds nothing else (the course's procedures create a fresh model for it).
    - Elsewhere: PyTorch's ``MemTracker`` counts every tensor's storage while ``fn`` runs, plus the objects passed
      in ``track`` (a model, an optimizer, input tensors created before); exact at the tensor level and
      repeatable, unlike the process's resident memory. If ``MemTracker`` is missing from this PyTorch, the
      resident-memory estimate of ``peak_memory`` is used, and the method says so.
    """
    device = resolve_device(device)
    if device.type == "cuda":
        return _cuda_peak(fn, device), "CUDA allocator peak (all live tensors)"
    try:
        tracker = _device_mem_tracker()
    except ImportError:  # a private tool; say plainly when it is not there
        return peak_memory(fn, device), "process RSS (estimate; MemTracker unavailable)"
    if track:
        tracker.track_external(*track)
    with tracker:
        fn()
    snap = tracker.get_tracker_snapshot("peak")
    totals = [v["Total"] for k, v in snap.items() if torch.device(k).type == device.type and "Total" in v]
    if not totals:  # nothing was allocated on this device, or the tool changed its snapshot format
        return peak_memory(fn, device), "process RSS (estimate; MemTracker gave no total)"
    return int(max(totals)), "tensor memory (MemTracker)"


def step_peak_memory(step: Callable[[], object], *track, device: torch.device | str | None = None,
                     warmup_steps: int = 1) -> tuple[int, str]:
    """The memory procedure for claims, one definition on every device: the absolute tensor peak of one whole
    training step taken **after** the optimizer state exists: weights, gradients, optimizer state and activations
    together (``tensor_peak_memory``). ``step()`` runs ``warmup_steps`` times first (AdamW creates its moments on
    its first step), then one measured step. Pass the model, the optimizer and the batch tensors in ``track`` so
    that the tensors allocated before the measured step count on a CPU too (on CUDA the allocator sees them)."""
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1 (the optimizer state must exist first), got {warmup_steps}")
    for _ in range(warmup_steps):
        step()
    return tensor_peak_memory(step, *track, device=device)


def meta_step_sweep(model: nn.Module, shapes, clip_grad: float | None = 1.0, flops: bool = True) -> dict:
    """One whole training step of ``model``, its trainable parameters as they are (``requires_grad``), on PyTorch's
    ``meta`` device, at every ``(batch_size, block_size)`` in ``shapes``: ``{shape: {"peak": bytes, "flops": matmul
    FLOPs}}`` (``flops=False``: 0, and a third less time).

    - ``peak``: the exact tensor peak of the same step as ``train`` (forward, all-token loss, backward, gradient
      clipping, AdamW update, gradients released), taken after AdamW's moments exist, every tensor counted by
      ``MemTracker`` as in ``runs.training_step_peak``, but with shapes only, no arithmetic: a realistic batch costs
      about a second on a CPU, where the real step would take minutes.
    - ``flops``: what PyTorch's ``FlopCounterMode`` counts (matmuls, attention) in the same step's forward and
      backward (the AdamW update and elementwise work are not matmuls): frozen weights skip their weight-gradient
      matmuls. Exact counts; their ratio between two arms estimates a speed-up where matmuls dominate.

    AdamW's moments are created once, by AdamW itself, from zero gradients (no forward pass), and every shape is
    then measured with the same optimizer. ``model`` must be on the meta device (``build_from_config``) and use
    eager attention (what GPT-Neo runs on a CPU; on CUDA it also offers flash_attention_2): a fused attention kernel
    (SDPA, flash) has no meta version of its memory savings, so the meta step would count the eager path's score
    matrices for it (tested in the lesson's tests)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .losses import all_token_loss

    if next(model.parameters()).device.type != "meta":
        raise ValueError("meta_step_sweep needs a model on the meta device, e.g. build_from_config(name)")
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl not in (None, "eager"):
        raise ValueError(f"meta_step_sweep counts eager attention; this model uses {impl!r}: load it with "
                         "attn_implementation='eager' or measure the real step (runs.training_step_peak)")
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise ValueError(f"give (batch_size, block_size) pairs of positive sizes, got {shapes}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("meta_step_sweep needs a model with trainable parameters (requires_grad=True)")
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for p in params:  # AdamW creates its moments on its first step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    vocab = model.get_input_embeddings().num_embeddings
    model.train()
    out = {}
    for batch_size, block_size in shapes:
        x = torch.randint(0, vocab, (batch_size, block_size), device="meta")
        y = torch.randint(0, vocab, (batch_size, block_size), device="meta")
        tracker = _device_mem_tracker()
        tracker.track_external(model, optimizer, x, y)
        counter = FlopCounterMode(display=False) if flops else contextlib.nullcontext()
        with counter, tracker:
            all_token_loss(model(x).logits, y).backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        snap = tracker.get_tracker_snapshot("peak")
        peak = sum(v.get("Total", 0) for k, v in snap.items() if torch.device(k).type == "meta")
        out[(batch_size, block_size)] = {"peak": int(peak), "flops": int(counter.get_total_flops()) if flops else 0}
    optimizer.state.clear()
    for p in params:
        p.grad = None
    return out
