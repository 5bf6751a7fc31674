"""Lesson 1's measuring helpers: each optimization lever, measured on Model 5 on this machine.

What lives here is what Lesson 1 needs to *measure* a lever, so the notebook keeps only the idea
and the experiment:

- ``measure_training``: time a few real training steps of Model 5 through ``course_utils.train.train``
  (warm-up discarded, median and spread) and its peak memory;
- ``tensor_peak_memory``: peak memory of a function; exact on CUDA (the allocator's counter), and on a
  CPU counted tensor by tensor with PyTorch's ``MemTracker`` (the process's RSS is too blunt there);
- the hand-written attention (matmul, causal mask, softmax) next to ``F.scaled_dot_product_attention``;
- gradient accumulation checked against one big batch, numerically;
- dtype memory tables, matmul speed per dtype, contiguous vs strided, pinned vs pageable copies;
- weight-tying arithmetic, a tensor-parallel linear layer, a pipeline of Model 5's blocks;
- ``Table`` (a small HTML/text table) and the "Your turn" checker ``check_accumulation``.
"""
from __future__ import annotations

import contextlib
import html
import math
import types
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .claims import CheckResult
from .losses import all_token_loss
from .measure import Timing, format_bytes, peak_memory, synchronize, tensor_bytes, time_fn
from .model import GPT, CausalSelfAttention, GPTConfig

SECONDS_PER_DAY = 86_400
#: Bytes per parameter while training with AdamW in fp32: weight, gradient, two moments.
ADAMW_FP32_BYTES_PER_PARAM = 16


# --------------------------------------------------------------------------------------------
# Small tables (the notebook's results, readable in Jupyter and as text)
# --------------------------------------------------------------------------------------------
class Table:
    """Rows of dicts shown as an HTML table in Jupyter and as aligned text elsewhere."""

    def __init__(self, rows: Sequence[dict], title: str = "", columns: Sequence[str] | None = None):
        self.rows = [dict(r) for r in rows]
        self.title = title
        self.columns = list(columns) if columns is not None else (list(self.rows[0]) if self.rows else [])

    @staticmethod
    def _fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    def column(self, name: str) -> list:
        return [r.get(name) for r in self.rows]

    def __str__(self) -> str:
        cells = [[self._fmt(r.get(c, "")) for c in self.columns] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]
        line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
        out = ([self.title] if self.title else []) + [line(self.columns), line(["-" * w for w in widths])]
        return "\n".join(out + [line(row) for row in cells])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        e = html.escape
        head = "".join(f"<th>{e(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{e(self._fmt(r.get(c, '')))}</td>" for c in self.columns) + "</tr>"
            for r in self.rows
        )
        title = f"<h4>{e(self.title)}</h4>" if self.title else ""
        return f"{title}<table><tr>{head}</tr>{body}</table>"


# --------------------------------------------------------------------------------------------
# 1. Why small savings matter
# --------------------------------------------------------------------------------------------
def cumulative_savings(seconds_per_step: float, iterations: float) -> dict:
    """Total time of ``seconds_per_step`` repeated ``iterations`` times, in seconds, days and years."""
    if seconds_per_step < 0 or iterations < 0:
        raise ValueError(f"seconds_per_step and iterations must be >= 0, got {seconds_per_step} and {iterations}")
    seconds = seconds_per_step * iterations
    return {"seconds": seconds, "days": seconds / SECONDS_PER_DAY, "years": seconds / SECONDS_PER_DAY / 365.25}


# --------------------------------------------------------------------------------------------
# Memory and timing of real training steps
# --------------------------------------------------------------------------------------------
def _device_mem_tracker():
    """PyTorch's ``MemTracker``, told to forget per-module statistics when the root module runs again
    (gradient accumulation calls it several times per step). Only the per-device totals are used here,
    and those are kept."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class DeviceMemTracker(MemTracker):
        def _pre_fw_hook(self, module, inputs):
            if module in self.memory_tracking and not self._mod_tracker.is_bw:
                parents = set(self._mod_tracker.parents) - {self._mod_tracker.get_known_fqn(module)}
                if parents == {"Global"}:  # the root module again: a new micro-batch or step
                    self.reset_mod_stats()
            super()._pre_fw_hook(module, inputs)

    return DeviceMemTracker()


def tensor_peak_memory(fn: Callable[[], object], *track, device=None) -> tuple[int, str]:
    """Peak memory of ``fn()`` in bytes, and how it was counted.

    CUDA: the allocator's peak above what was allocated before (exact). Elsewhere: PyTorch's
    ``MemTracker`` counts every tensor's storage while ``fn`` runs, plus the objects passed in
    ``track`` (a model, an optimizer, input tensors created before); this is exact at the tensor
    level and repeatable, unlike the process's resident memory. If ``MemTracker`` is missing from
    this PyTorch, the resident-memory estimate of ``course_utils.measure.peak_memory`` is used.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return peak_memory(fn, device), "CUDA allocator peak"
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

    def row(self, baseline: "StepMeasurement | None" = None) -> dict:
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
    of a step), the run's history, and the peak memory of one more step on another fresh model: weights,
    gradients, AdamW state and activations (CUDA: the allocator's peak; CPU: ``tensor_peak_memory``).
    ``train_kwargs`` go to ``TrainConfig`` (``amp``, ``grad_accum``, ``lr``, ...).
    """
    from .env import get_device
    from .train import TrainConfig, train

    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    device = torch.device(device) if device is not None else get_device()
    cfg = TrainConfig(steps=warmup + repeats, progress=False, **train_kwargs)
    history = train(make_model(), batches, cfg, device=device)
    timing = Timing(history.step_time[warmup:])
    tokens = history.tokens_seen[0]
    peak, method = None, "not measured"
    if memory:
        model = make_model()  # still where it was built: train() moves it, so the weights count too
        one = TrainConfig(steps=1, progress=False, **train_kwargs)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        peak, method = tensor_peak_memory(lambda: train(model, batches, one, device=device), model, device=device)
        del model
    return StepMeasurement(label, timing, tokens, peak, method, history)


def compare_speed(baseline, candidate) -> dict:
    """Speed-up of ``candidate`` over ``baseline`` (> 1: faster) and whether it is larger than the noise.

    Takes two ``StepMeasurement`` (compared per token, so different batch sizes compare fairly) or
    two ``Timing``. Noise = the larger relative spread (IQR / median) of the two; a speed-up inside
    it is not a clear difference.
    """
    def per_unit(m):
        if isinstance(m, StepMeasurement):
            return m.seconds_per_token, m.timing.iqr / m.timing.median
        if isinstance(m, Timing):
            return m.median, m.iqr / m.median
        raise TypeError(f"compare_speed takes StepMeasurement or Timing objects, got {type(m).__name__}")

    b, nb = per_unit(baseline)
    c, nc = per_unit(candidate)
    s = b / c
    noise = max(nb, nc)
    return {"speed-up": s, "noise": noise, "clear": abs(s - 1) > noise}


def speed_verdict(cmp: dict, min_speedup: float = 1.0) -> tuple[str, str]:
    """(verdict, note) for a claim "the candidate is faster", from ``compare_speed``'s result.

    Holds when the speed-up is beyond the timing noise and at least ``min_speedup`` (e.g. 1.05: a gain
    under 5% counts as none)."""
    from .claims import DOES_NOT_HOLD, HOLDS

    if min_speedup < 1:
        raise ValueError(f"min_speedup must be >= 1, got {min_speedup}")
    s, noise = cmp["speed-up"], cmp["noise"]
    bar = f"; a gain under {min_speedup - 1:.0%} counts as none" if min_speedup > 1 else ""
    if not cmp["clear"]:
        return DOES_NOT_HOLD, f"{s:.2f}x is within the timing noise (+/-{noise:.0%}): no clear difference here"
    if s < 1:
        return DOES_NOT_HOLD, f"{s:.2f}x: slower here, beyond the timing noise (+/-{noise:.0%})"
    if s < min_speedup:
        return DOES_NOT_HOLD, f"{s:.2f}x: faster beyond the noise (+/-{noise:.0%}), but too little to matter{bar}"
    return HOLDS, f"{s:.2f}x, beyond the timing noise (+/-{noise:.0%}){bar}"


# --------------------------------------------------------------------------------------------
# 3. Data types
# --------------------------------------------------------------------------------------------
def dtype_memory_table(n: int, dtypes: Sequence[torch.dtype] = (torch.int64, torch.int32, torch.float32)) -> Table:
    """Memory of ``n`` numbers in each dtype (real tensors, ``element_size() * numel()``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rows, base = [], None
    for dt in dtypes:
        t = torch.zeros(n, dtype=dt)
        nbytes = tensor_bytes(t)
        base = base or nbytes
        rows.append({"dtype": str(dt).replace("torch.", ""), "bytes/element": t.element_size(), "bytes": nbytes,
                     "memory": format_bytes(nbytes), "vs first": f"{nbytes / base:.2f}x"})
    return Table(rows, f"{n:,} numbers")


def exact_integer_limit(dtype: torch.dtype) -> int:
    """The largest integer N such that every integer 0..N is stored exactly in ``dtype``."""
    if dtype.is_floating_point:
        return int(round(2 / torch.finfo(dtype).eps))  # 2^(mantissa bits + 1)
    return torch.iinfo(dtype).max


def matmul_benchmark(n: int, dtypes: Sequence[torch.dtype], device=None, warmup: int = 1, repeats: int = 3,
                     seed: int = 0) -> Table:
    """Time an ``n x n @ n x n`` product per dtype: median ms, GFLOP/s, memory of the two operands."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    a32 = torch.randn(n, n, generator=gen)
    b32 = torch.randn(n, n, generator=gen)
    ref = (a32.double() @ b32.double())
    rows, base = [], None
    for dt in dtypes:
        a, b = a32.to(device=device, dtype=dt), b32.to(device=device, dtype=dt)
        timing = time_fn(lambda: a @ b, warmup=warmup, repeats=repeats, device=device)
        err = ((a @ b).double().cpu() - ref).norm() / ref.norm()
        base = base or timing
        rows.append({"dtype": str(dt).replace("torch.", ""), "ms (median)": timing.median * 1e3,
                     "spread ms": timing.iqr * 1e3, "GFLOP/s": 2 * n**3 / timing.median / 1e9,
                     "speed-up": base.median / timing.median, "operands": format_bytes(2 * tensor_bytes(a)),
                     "rel. error": float(err)})
    return Table(rows, f"{n} x {n} matrix product on {device}")


# --------------------------------------------------------------------------------------------
# 5. Gradient accumulation
# --------------------------------------------------------------------------------------------
def gradients(model: nn.Module) -> dict:
    """A copy of every parameter's gradient (zeros where there is none)."""
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def max_grad_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise ValueError("the two gradient sets belong to different models (parameter names differ)")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def grad_norm(g: dict) -> float:
    return math.sqrt(sum(v.float().pow(2).sum().item() for v in g.values()))


def big_batch_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=all_token_loss) -> dict:
    """Gradients of the mean loss over the whole batch, in one backward pass."""
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    return gradients(model)


def accumulated_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, loss_fn=all_token_loss,
                          scale: bool = True) -> dict:
    """Gradients summed over ``k`` micro-batches (each loss divided by ``k`` when ``scale``)."""
    if k < 1 or len(x) % k:
        raise ValueError(f"k={k} must be >= 1 and divide the batch size {len(x)} into equal micro-batches")
    model.zero_grad(set_to_none=True)
    for xm, ym in zip(x.chunk(k), y.chunk(k)):
        loss = loss_fn(model(xm), ym)
        (loss / k if scale else loss).backward()
    return gradients(model)


def no_dropout(model: nn.Module) -> nn.Module:
    """Switch every dropout off (modules and the attention's ``dropout_p``), so two passes are comparable."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, CausalSelfAttention):
            m.dropout_p = 0.0
    return model


# --------------------------------------------------------------------------------------------
# 7. Memory layout
# --------------------------------------------------------------------------------------------
def contiguity_benchmark(n: int, device=None, warmup: int = 1, repeats: int = 5, seed: int = 0) -> Table:
    """Softmax over rows (attention's hot op) on a contiguous matrix vs the same numbers read through a
    transposed, strided view, and vs making the view contiguous first."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    base = torch.randn(n, n, generator=torch.Generator().manual_seed(seed)).to(device)
    contiguous = base.t().contiguous()  # the same matrix as base.t(), laid out row by row
    strided = base.t()  # a view: rows are n elements apart in memory
    cases = [
        ("contiguous", lambda: torch.softmax(contiguous, dim=-1)),
        ("strided view (.t())", lambda: torch.softmax(strided, dim=-1)),
        (".contiguous() then softmax", lambda: torch.softmax(strided.contiguous(), dim=-1)),
    ]
    rows, first = [], None
    for name, fn in cases:
        t = time_fn(fn, warmup=warmup, repeats=repeats, device=device)
        first = first or t
        rows.append({"layout": name, "ms (median)": t.median * 1e3, "spread ms": t.iqr * 1e3,
                     "slow-down": t.median / first.median})
    return Table(rows, f"softmax over the rows of a {n} x {n} matrix on {device}")


def pinned_copy_benchmark(n_bytes: int, device=None, warmup: int = 2, repeats: int = 10) -> Table | None:
    """Host-to-GPU copy from pageable vs pinned (page-locked) host memory. ``None`` without CUDA:
    on a CPU there is no host-to-device copy for pinning to speed up."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        return None
    n = n_bytes // 4
    pageable = torch.randn(n)
    pinned = torch.empty(n, pin_memory=True).copy_(pageable)
    rows = []
    for name, src, nb in [("pageable", pageable, False), ("pinned", pinned, False), ("pinned, non_blocking", pinned, True)]:
        t = time_fn(lambda: src.to(device, non_blocking=nb), warmup=warmup, repeats=repeats, device=device)
        rows.append({"host memory": name, "ms (median)": t.median * 1e3, "spread ms": t.iqr * 1e3,
                     "GB/s": n_bytes / t.median / 1e9})
    return Table(rows, f"copying {format_bytes(n_bytes)} from host to {device}")


# --------------------------------------------------------------------------------------------
# 8. Attention by hand vs the fused kernel
# --------------------------------------------------------------------------------------------
def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention written out: softmax(q k^T / sqrt(d) + mask) v. Materializes the T x T scores."""
    T, d = q.size(-2), q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # B x H x T x T
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))  # no peeking at later tokens
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


def _manual_attention_forward(self: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    # The same steps as CausalSelfAttention.forward, with the hand-written attention in the middle.
    B, T, C = x.shape
    q, k, v = self.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
    p = self.dropout_p if (self.training or not self.gate_dropout_on_training) else 0.0
    y = manual_attention(q, k, v, dropout_p=p)
    y = y.transpose(1, 2).reshape(B, T, C)
    return self.resid_dropout(self.c_proj(y))


def use_manual_attention(model: nn.Module) -> nn.Module:
    """Make every attention layer of a Model 5 use ``manual_attention`` (in place; returns the model)."""
    layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    if not layers:
        raise ValueError("this model has no course_utils.model.CausalSelfAttention layers (is it Model 5?)")
    for m in layers:
        m.forward = types.MethodType(_manual_attention_forward, m)
    return model


def attention_benchmark(seq_lens: Sequence[int], batch: int, n_head: int, head_dim: int, device=None,
                        dtype: torch.dtype = torch.float32, warmup: int = 1, repeats: int = 3, seed: int = 0) -> Table:
    """Forward + backward of causal attention, by hand vs ``F.scaled_dot_product_attention``, per length.

    Reports median time, peak memory (see ``tensor_peak_memory``) and the largest difference
    between the two outputs.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for T in seq_lens:
        q, k, v = (torch.randn(batch, n_head, T, head_dim, generator=gen).to(device=device, dtype=dtype).requires_grad_()
                   for _ in range(3))
        impls = {
            "manual": lambda: manual_attention(q, k, v),
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        }
        with torch.no_grad():
            diff = (impls["manual"]().float() - impls["sdpa"]().float()).abs().max().item()
        row = {"T": T}
        for name, fn in impls.items():
            def step(fn=fn):
                fn().sum().backward()
                q.grad = k.grad = v.grad = None

            t = time_fn(step, warmup=warmup, repeats=repeats, device=device)
            mem, _ = tensor_peak_memory(step, q, k, v, device=device)
            row[f"{name} ms"] = t.median * 1e3
            row[f"{name} spread ms"] = t.iqr * 1e3
            row[f"{name} peak bytes"] = mem
        row["speed-up"] = row["manual ms"] / row["sdpa ms"]
        row["memory ratio"] = row["manual peak bytes"] / max(1, row["sdpa peak bytes"])
        row["max |diff|"] = diff
        rows.append(row)
        del q, k, v
    return Table(rows, f"causal attention, batch {batch}, {n_head} heads of {head_dim}, {str(dtype).replace('torch.', '')}, on {device}")


# --------------------------------------------------------------------------------------------
# 9. Weight tying
# --------------------------------------------------------------------------------------------
def tying_report(tied: GPT, untied: GPT) -> dict:
    """Parameters of the same Model 5 with and without tying, and what tying saves (fp32, AdamW)."""
    a, b = tied.num_parameters(), untied.num_parameters()
    saved = b - a
    return {
        "tied parameters": a,
        "untied parameters": b,
        "saved parameters": saved,
        "saved fraction of untied": saved / b,
        "saved weight bytes (fp32)": saved * 4,
        "saved training bytes (fp32 weight + grad + 2 AdamW moments)": saved * ADAMW_FP32_BYTES_PER_PARAM,
    }


def sharded_state_bytes(n_params: int, shards: int = 1, bytes_per_param: int = ADAMW_FP32_BYTES_PER_PARAM) -> int:
    """Bytes per device for weights + gradients + AdamW moments, fully sharded over ``shards`` devices
    (what FSDP / ZeRO-3 does; activations not included)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return math.ceil(n_params * bytes_per_param / shards)


# --------------------------------------------------------------------------------------------
# 10. Model (tensor) and pipeline parallelism, demonstrated on one device
# --------------------------------------------------------------------------------------------
def column_parallel_linear(layer: nn.Linear, x: torch.Tensor, shards: int) -> tuple[torch.Tensor, list]:
    """Tensor parallelism: split a Linear's output features over ``shards`` "devices"; each computes its
    slice of the output, and concatenating the slices (an all-gather) gives the full output."""
    if layer.out_features % shards:
        raise ValueError(f"{layer.out_features} output features do not split into {shards} equal shards")
    ws = layer.weight.chunk(shards, dim=0)
    bs = layer.bias.chunk(shards) if layer.bias is not None else [None] * shards
    parts = [F.linear(x, w, b) for w, b in zip(ws, bs)]
    return torch.cat(parts, dim=-1), [tuple(w.shape) for w in ws]


def row_parallel_linear(layer: nn.Linear, x: torch.Tensor, shards: int) -> tuple[torch.Tensor, list]:
    """Tensor parallelism the other way: split the input features; each shard makes a partial sum of
    the full output, and adding them (an all-reduce) gives the output."""
    if layer.in_features % shards:
        raise ValueError(f"{layer.in_features} input features do not split into {shards} equal shards")
    ws = layer.weight.chunk(shards, dim=1)
    xs = x.chunk(shards, dim=-1)
    out = sum(F.linear(xi, wi) for xi, wi in zip(xs, ws))
    if layer.bias is not None:
        out = out + layer.bias
    return out, [tuple(w.shape) for w in ws]


def pipeline_forward(model: GPT, idx: torch.Tensor, stages: int, micro_batches: int) -> tuple[torch.Tensor, list]:
    """Pipeline parallelism: Model 5's blocks cut into ``stages`` consecutive groups (one per "device");
    the batch cut into ``micro_batches`` that flow through the stages one after another.
    Returns the logits and, per stage, the block indices it holds."""
    n = len(model.h)
    if not 1 <= stages <= n:
        raise ValueError(f"stages must be between 1 and the number of blocks ({n}), got {stages}")
    if len(idx) % micro_batches:
        raise ValueError(f"batch {len(idx)} does not split into {micro_batches} equal micro-batches")
    bounds = [round(i * n / stages) for i in range(stages + 1)]
    groups = [list(range(bounds[i], bounds[i + 1])) for i in range(stages)]
    outs = []
    for mb in idx.chunk(micro_batches):
        T = mb.size(1)
        x = model.drop(model.wte(mb) + model.wpe(torch.arange(T, device=mb.device)))  # stage 0 also embeds
        for group in groups:  # on real hardware: send x to the next device here
            for i in group:
                x = model.h[i](x)
        logits = model.lm_head(model.ln_f(x))[..., : model.config.vocab_size]  # the last stage unembeds
        outs.append(logits)
    return torch.cat(outs), groups


def pipeline_schedule(stages: int, micro_batches: int) -> tuple[str, float]:
    """A GPipe forward schedule as text (rows = stages, columns = time slots, digits = micro-batch)
    and its bubble fraction (p - 1) / (m + p - 1): the share of slots a stage sits idle."""
    if stages < 1 or micro_batches < 1:
        raise ValueError("stages and micro_batches must be >= 1")
    slots = micro_batches + stages - 1
    lines = []
    for s in range(stages):
        row = ["."] * slots
        for m in range(micro_batches):
            row[s + m] = str(m % 10)
        lines.append(f"stage {s}: " + " ".join(row))
    return "\n".join(lines), (stages - 1) / slots


# --------------------------------------------------------------------------------------------
# "Your turn": the gradient-accumulation exercise
# --------------------------------------------------------------------------------------------
def check_accumulation(accumulate: Callable, k: int = 4, batch: int = 8, seed: int = 0, tol: float = 1e-5) -> CheckResult:
    """Check a learner's ``accumulate(model, micro_batches)``.

    It receives a tiny Model 5 (dropout off) and a list of ``k`` micro-batches ``(x, y)``, and must
    leave in ``p.grad`` the gradient of the whole batch's mean loss (``all_token_loss``), as one big
    batch would. The checker compares with one big batch and explains what is off.
    """
    if not callable(accumulate):
        raise TypeError("pass your function itself: check_accumulation(my_accumulate), not its result")
    torch.manual_seed(seed)
    model = no_dropout(GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 97, (batch, 16), generator=gen)
    y = torch.randint(0, 97, (batch, 16), generator=gen)
    ref = big_batch_gradients(model, x, y)
    model.zero_grad(set_to_none=True)
    accumulate(model, list(zip(x.chunk(k), y.chunk(k))))
    if all(p.grad is None for p in model.parameters()):
        return CheckResult(False, "no gradients were left in the model; call loss.backward() for each micro-batch")
    got = gradients(model)
    diff = max_grad_difference(ref, got)
    if diff < tol:
        return CheckResult(True, f"{k} accumulated micro-batches give the big batch's gradient "
                                 f"(max |difference| below {tol:g})")
    ratio = grad_norm(got) / grad_norm(ref)
    if abs(ratio - k) < 0.01 * k:
        hint = f"divide each micro-batch's loss by k={k} before backward()"
    elif abs(ratio - 1 / k) < 0.01 / k:
        hint = "the loss is divided by k twice, or the gradients are averaged after summing"
    elif abs(ratio - 1 / k) < 0.5 / k or ratio < 0.5:
        hint = "only part of the micro-batches reached backward(), or zero_grad() ran between them"
    else:
        hint = "compare with accumulated_gradients() in course_utils.levers"
    return CheckResult(False, f"your gradient is {ratio:.2f}x the big batch's; {hint}")
