"""Lesson 1's measuring helpers: each optimization lever, measured on Model 5 on this machine.

What lives here is what Lesson 1 needs to *measure* a lever, so the notebook keeps only the idea
and the experiment:

- the hand-written attention (matmul, causal mask, softmax) next to ``F.scaled_dot_product_attention``;
- gradient accumulation checked against one big batch, numerically;
- dtype memory tables, matmul speed per dtype, contiguous vs strided, pinned vs pageable copies;
- weight-tying arithmetic and the "Your turn" checker ``check_accumulation``.

Timed training steps come from ``course_utils.runs.measure_training``, memory from ``course_utils.memory``,
tables from ``course_utils.tables``; parallelism lives in ``l1_parallel`` (one process) and ``l1_ddp``
(``torchrun``).
"""
from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..claims import CheckResult
from ..env import resolve_device
from ..losses import all_token_loss
from ..measure import Timing, time_fn
from ..memory import ADAMW_FP32_BYTES_PER_PARAM, BYTES_PER_PARAM, format_bytes, tensor_bytes, tensor_peak_memory
from ..model import GPT, CausalSelfAttention, GPTConfig
from ..runs import StepMeasurement
from ..tables import Table

SECONDS_PER_DAY = 86_400


# ---- Why small savings matter --------------------------------------------------------------------
def cumulative_savings(seconds_per_step: float, iterations: float) -> dict:
    """Total time of ``seconds_per_step`` repeated ``iterations`` times, in seconds, days and years."""
    if seconds_per_step < 0 or iterations < 0:
        raise ValueError(f"seconds_per_step and iterations must be >= 0, got {seconds_per_step} and {iterations}")
    seconds = seconds_per_step * iterations
    return {"seconds": seconds, "days": seconds / SECONDS_PER_DAY, "years": seconds / SECONDS_PER_DAY / 365.25}


# ---- Memory and timing of real training steps ----------------------------------------------------
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
    from ..claims import DOES_NOT_HOLD, HOLDS

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


# ---- Data types ----------------------------------------------------------------------------------
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
    device = resolve_device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    a32 = torch.randn(n, n, generator=gen)
    b32 = torch.randn(n, n, generator=gen)
    ref = (a32.double() @ b32.double())
    rows, base = [], None
    for dt in dtypes:
        a, b = a32.to(device=device, dtype=dt), b32.to(device=device, dtype=dt)
        timing = time_fn(lambda a=a, b=b: a @ b, warmup=warmup, repeats=repeats, device=device)
        err = ((a @ b).double().cpu() - ref).norm() / ref.norm()
        base = base or timing
        rows.append({"dtype": str(dt).replace("torch.", ""), "ms (median)": timing.median * 1e3,
                     "spread ms": timing.iqr * 1e3, "GFLOP/s": 2 * n**3 / timing.median / 1e9,
                     "speed-up": base.median / timing.median, "operands": format_bytes(2 * tensor_bytes(a)),
                     "rel. error": float(err)})
    return Table(rows, f"{n} x {n} matrix product on {device}")


# ---- Gradient accumulation -----------------------------------------------------------------------
def gradients(model: nn.Module) -> dict:
    """A copy of every parameter's gradient (zeros where there is none)."""
    return {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()
    }


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


# ---- Memory layout -------------------------------------------------------------------------------
def contiguity_benchmark(n: int, device=None, warmup: int = 1, repeats: int = 5, seed: int = 0) -> Table:
    """Softmax over rows (attention's hot op) on a contiguous matrix vs the same numbers read through a
    transposed, strided view, and vs making the view contiguous first."""
    device = resolve_device(device)
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
    device = resolve_device(device)
    if device.type != "cuda":
        return None
    n = n_bytes // 4
    pageable = torch.randn(n)
    pinned = torch.empty(n, pin_memory=True).copy_(pageable)
    rows = []
    for name, src, nb in [
        ("pageable", pageable, False),
        ("pinned", pinned, False),
        ("pinned, non_blocking", pinned, True),
    ]:
        t = time_fn(
            lambda src=src, nb=nb: src.to(device, non_blocking=nb), warmup=warmup, repeats=repeats, device=device
        )
        rows.append({"host memory": name, "ms (median)": t.median * 1e3, "spread ms": t.iqr * 1e3,
                     "GB/s": n_bytes / t.median / 1e9})
    return Table(rows, f"copying {format_bytes(n_bytes)} from host to {device}")


# ---- Attention by hand vs the fused kernel -------------------------------------------------------
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
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for T in seq_lens:
        q, k, v = (
            torch.randn(batch, n_head, T, head_dim, generator=gen).to(device=device, dtype=dtype).requires_grad_()
            for _ in range(3)
        )
        impls = {
            "manual": lambda q=q, k=k, v=v: manual_attention(q, k, v),
            "sdpa": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        }
        with torch.no_grad():
            diff = (impls["manual"]().float() - impls["sdpa"]().float()).abs().max().item()
        row = {"T": T}
        for name, fn in impls.items():
            def step(fn=fn, inputs=(q, k, v)):
                fn().sum().backward()
                for t in inputs:
                    t.grad = None

            t = time_fn(step, warmup=warmup, repeats=repeats, device=device)
            mem, _ = tensor_peak_memory(step, q, k, v, device=device)
            row[f"{name} ms"] = t.median * 1e3
            row[f"{name} spread ms"] = t.iqr * 1e3
            row[f"{name} peak bytes"] = mem
        row["speed-up"] = row["manual ms"] / row["sdpa ms"]
        row["memory ratio"] = row["manual peak bytes"] / max(1, row["sdpa peak bytes"])
        row["max |diff|"] = diff
        rows.append(row)
    return Table(rows, f"causal attention, batch {batch}, {n_head} heads of {head_dim}, "
                       f"{str(dtype).replace('torch.', '')}, on {device}")


# ---- Weight tying --------------------------------------------------------------------------------
def tying_report(tied: GPT, untied: GPT) -> dict:
    """Parameters of the same Model 5 with and without tying, and what tying saves (fp32, AdamW)."""
    a, b = tied.num_parameters(), untied.num_parameters()
    saved = b - a
    return {
        "tied parameters": a,
        "untied parameters": b,
        "saved parameters": saved,
        "saved fraction of untied": saved / b,
        "saved weight bytes (fp32)": int(saved * BYTES_PER_PARAM["fp32"]),
        "saved training bytes (fp32 weight + grad + 2 AdamW moments)": saved * ADAMW_FP32_BYTES_PER_PARAM,
    }


# ---- "Your turn": the gradient-accumulation exercise ---------------------------------------------
def check_accumulation(
    accumulate: Callable, k: int = 4, batch: int = 8, seed: int = 0, tol: float = 1e-5
) -> CheckResult:
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
        hint = "compare with accumulated_gradients() in course_utils.lessons.l1_levers"
    return CheckResult(False, f"your gradient is {ratio:.2f}x the big batch's; {hint}")
