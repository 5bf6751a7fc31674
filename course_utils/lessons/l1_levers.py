"""Lesson 1's measuring helpers: each optimization lever, measured on Model 5 on this machine.

What lives here is what Lesson 1 needs to *measure* a lever, so the notebook keeps only the idea
and the experiment:

- the hand-written attention (``course_utils.model.manual_attention``, swapped in through ``set_attention``) next
  to the fused ``F.scaled_dot_product_attention``;
- gradient accumulation checked against one big batch, numerically;
- dtype memory tables, matmul speed per dtype, contiguous vs strided, pinned vs pageable copies;
- weight-tying arithmetic and the "Your turn" checker ``check_accumulation``.

Timed training steps come from ``course_utils.runs.measure_training``, memory from ``course_utils.memory``,
tables from ``course_utils.tables``; parallelism lives in ``l1_parallel`` (one process) and ``l1_ddp``
(``torchrun``).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..claims import CheckResult, ClaimsTable
from ..env import resolve_device
from ..losses import all_token_loss
from ..measure import Timing, time_interleaved
from ..memory import ADAMW_FP32_BYTES_PER_PARAM, BYTES_PER_PARAM, format_bytes, tensor_bytes, tensor_peak_memory
from ..model import GPT, CausalSelfAttention, GPTConfig, manual_attention, sdpa_attention
from ..tables import Table
from ..verdicts import compare_runs, speed_verdict

SECONDS_PER_DAY = 86_400


# ---- Why small savings matter --------------------------------------------------------------------
def cumulative_savings(seconds_per_step: float, iterations: float) -> dict:
    """Total time of ``seconds_per_step`` repeated ``iterations`` times, in seconds, days and years."""
    if seconds_per_step < 0 or iterations < 0:
        raise ValueError(f"seconds_per_step and iterations must be >= 0, got {seconds_per_step} and {iterations}")
    seconds = seconds_per_step * iterations
    return {"seconds": seconds, "days": seconds / SECONDS_PER_DAY, "years": seconds / SECONDS_PER_DAY / 365.25}


def paired_speedup(baseline: Timing, candidate: Timing) -> float:
    """The speed-up of ``candidate`` over ``baseline`` as ``speed_verdict`` measures it: the median of the paired
    rounds' ratios (baseline / candidate), so that a table and the verdict show the same figure."""
    if len(baseline.times) != len(candidate.times):
        raise ValueError("the two timings must come from one time_interleaved call (equal rounds)")
    return statistics.median(b / c for b, c in zip(baseline.times, candidate.times))


# ---- Data types ----------------------------------------------------------------------------------
def dtype_memory_table(n: int, dtypes: Sequence[torch.dtype] = (torch.int64, torch.int32, torch.float32, torch.uint16)
                       ) -> Table:
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


def forward_backward_per_token(cases: dict, rounds: int = 15, warmup: int = 1, device=None) -> dict:
    """The part of a training step whose cost grows with the batch: forward (with the case's loss) and backward,
    timed interleaved (``time_interleaved``) and divided by each case's tokens. The optimizer update, a fixed cost
    per step that per token favours the bigger batch (``fixed_cost_tilt`` says by how much), is left out of the
    timed call.
    ``cases`` maps a label to a ``course_utils.runs.TrainingCase``; each gets a fresh model and one fixed batch
    (drawn with seed 0). Returns ``{label: Timing}`` in seconds per token, for ``speed_verdict``."""
    from ..train import forward_loss

    device = resolve_device(device)
    steps, tokens = {}, {}
    for label, case in cases.items():
        model = case.make_model().to(device).train()
        batch = case.batches(torch.Generator().manual_seed(0))
        loss_fn = case.loss_fn if case.loss_fn is not None else all_token_loss

        def step(m=model, b=batch, f=loss_fn):
            m.zero_grad(set_to_none=True)
            forward_loss(m, b, f, device)[0].backward()
        tokens[label] = batch[0].numel()
        steps[label] = step
    timings = time_interleaved(steps, warmup=warmup, repeats=rounds, device=device)
    return {label: Timing([s / tokens[label] for s in t.times]) for label, t in timings.items()}


def fixed_cost_tilt(fixed_s: float, per_token_s: float, tokens_small: int, tokens_big: int) -> float:
    """The per-token speed-up that a fixed cost per step alone (``fixed_s``, e.g. the optimizer update) gives the
    bigger batch when every token otherwise costs ``per_token_s``: (per_token_s + fixed_s / tokens_small) /
    (per_token_s + fixed_s / tokens_big). 1.0 when the fixed cost is 0; at most tokens_big / tokens_small when the
    fixed cost is the whole step."""
    if fixed_s < 0 or per_token_s < 0 or not 0 < tokens_small <= tokens_big:
        raise ValueError(f"need costs >= 0 and 0 < tokens_small <= tokens_big, got {fixed_s}, {per_token_s}, "
                         f"{tokens_small}, {tokens_big}")
    return (per_token_s + fixed_s / tokens_small) / (per_token_s + fixed_s / tokens_big)


def matmul_benchmark(n: int, dtypes: Sequence[torch.dtype], device=None, warmup: int = 1, repeats: int = 15,
                     seed: int = 0) -> tuple[Table, dict]:
    """An ``n x n @ n x n`` product per dtype, timed in ONE ``time_interleaved`` call (``repeats`` rounds).

    Returns the table (median ms, GFLOP/s, speed-up (median of the paired rounds' ratios), memory of the two
    operands, error against float64) and ``{dtype name: Timing}`` for ``speed_verdict``."""
    device = resolve_device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    a32 = torch.randn(n, n, generator=gen)
    b32 = torch.randn(n, n, generator=gen)
    ref = (a32.double() @ b32.double())
    names = [str(dt).replace("torch.", "") for dt in dtypes]
    ops = {name: (a32.to(device=device, dtype=dt), b32.to(device=device, dtype=dt)) for name, dt in zip(names, dtypes)}
    timings = time_interleaved({name: (lambda a=a, b=b: a @ b) for name, (a, b) in ops.items()},
                               warmup=warmup, repeats=repeats, device=device)
    rows, base = [], timings[names[0]]
    for name, (a, b) in ops.items():
        timing = timings[name]
        err = ((a @ b).double().cpu() - ref).norm() / ref.norm()
        rows.append({"dtype": name, "ms (median)": timing.median * 1e3,
                     "spread ms": timing.iqr * 1e3, "GFLOP/s": 2 * n**3 / timing.median / 1e9,
                     "speed-up": paired_speedup(base, timing), "operands": format_bytes(2 * tensor_bytes(a)),
                     "rel. error": float(err)})
    return Table(rows, f"{n} x {n} matrix product on {device}, {repeats} interleaved rounds"), timings


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
def paired_figures(baseline: Timing, candidate: Timing) -> str:
    """A demonstration's figures, no verdict: the median of the paired rounds' speed-ups (baseline / candidate) and
    its sign-test interval, as ``speed_verdict`` computes them, e.g. "1.04x (96.5% interval 1.01-1.07x over 15
    interleaved rounds)". For comparisons that are not claims rows (a demonstration under the table)."""
    v = speed_verdict(baseline, candidate)  # its figures only: no row is decided here
    return f"{v.speedup:.2f}x ({v.coverage:.1%} interval {v.low:.2f}-{v.high:.2f}x over {v.rounds} interleaved rounds)"


def contiguity_benchmark(n: int, device=None, warmup: int = 1, repeats: int = 15,
                         seed: int = 0) -> tuple[Table, dict]:
    """A demonstration of where PyTorch copies for you (no claims row): softmax over rows on a contiguous matrix vs
    the same numbers read through a transposed, strided view (``torch.softmax`` makes a strided input contiguous
    first, so that arm does one more pass: a transposing copy), and vs calling ``.contiguous()`` yourself first;
    ONE ``time_interleaved`` call. Returns the table and ``{layout: Timing}``."""
    device = resolve_device(device)
    base = torch.randn(n, n, generator=torch.Generator().manual_seed(seed)).to(device)
    contiguous = base.t().contiguous()  # the same matrix as base.t(), laid out row by row
    strided = base.t()  # a view: rows are n elements apart in memory
    cases = {
        "contiguous": lambda: torch.softmax(contiguous, dim=-1),
        "strided view (.t())": lambda: torch.softmax(strided, dim=-1),
        ".contiguous() then softmax": lambda: torch.softmax(strided.contiguous(), dim=-1),
    }
    timings = time_interleaved(cases, warmup=warmup, repeats=repeats, device=device)
    first = timings["contiguous"]
    rows = [{"layout": name, "ms (median)": t.median * 1e3, "spread ms": t.iqr * 1e3,
             "slow-down": paired_speedup(t, first)} for name, t in timings.items()]
    title = f"softmax over the rows of a {n} x {n} matrix on {device}, {repeats} interleaved rounds (a demonstration)"
    return Table(rows, title), timings


#: The contiguous-layout row's two arms (``layout_copy_arms``): the same copy, read in memory order or through a
#: strided view.
LAYOUT_ARMS = ("contiguous source", "strided view (.transpose(1, 2))")
#: The matrices the row's numbers are held as: n x n numbers (the softmax demonstration's count) as 4 matrices of
#: n/2 x n/2, like 4 heads' T x T attention scores. Three dimensions on purpose: PyTorch's CPU copy of a transposed
#: 2-D matrix takes a path of its own (copy_same_type_transpose_: 60 x 60 tiles, one thread), while a contiguous
#: copy runs on every thread, so a 2-D pair would time threads as well as the access pattern.
LAYOUT_MATRICES = 4
#: Why the row's arms are equal work (its note).
LAYOUT_EQUAL_WORK = (
    "equal work: both arms copy the same float32 numbers ({numel:,}, {nbytes} read and {nbytes} written) into a "
    "contiguous output of the same shape {shape}, with no arithmetic, and give identical outputs (checked); they "
    "differ only in the order the source is read: in memory order, or through a transposed view whose neighbouring "
    "elements are {stride:,} elements ({stride_bytes}) apart; one copy_ call in both (3-D tensors: on a CPU, PyTorch "
    "copies a 2-D transposed matrix on a one-thread path of its own)")


def layout_copy_arms(n: int, device=None, seed: int = 0) -> dict:
    """The two arms of the contiguous-layout row, equal work: ``{arm: (source, destination)}``, each timed as
    ``destination.copy_(source)``. The same n x n float32 numbers, held as ``LAYOUT_MATRICES`` matrices of
    n/2 x n/2, are read either from a contiguous tensor (in memory order) or through ``.transpose(1, 2)`` of a tensor
    that stores each matrix transposed (a strided view holding the same values); both write into a fresh contiguous
    tensor of the same shape. Same element count, same bytes read and written, no arithmetic, the same output: only
    the read order differs. ``n`` must be even."""
    if n < 2 or n % 2:
        raise ValueError(f"n must be an even number >= 2 (the numbers are held as n/2 x n/2 matrices), got {n}")
    device = resolve_device(device)
    m = n // 2
    src = torch.randn(LAYOUT_MATRICES, m, m, generator=torch.Generator().manual_seed(seed)).to(device)
    stored_transposed = src.transpose(1, 2).contiguous()  # each matrix stored column by column
    strided = stored_transposed.transpose(1, 2)  # a view: the values of src, read with a stride of m elements
    return {LAYOUT_ARMS[0]: (src, torch.empty(src.shape, dtype=src.dtype, device=device)),
            LAYOUT_ARMS[1]: (strided, torch.empty(src.shape, dtype=src.dtype, device=device))}


def layout_copy_benchmark(n: int, device=None, warmup: int = 1, repeats: int = 15,
                          seed: int = 0) -> tuple[Table, dict, str]:
    """The contiguous-layout row: the two arms of ``layout_copy_arms`` timed in ONE ``time_interleaved`` call.
    Returns the table, ``{arm: Timing}`` for ``speed_verdict`` and the equal-work sentence for the row's note."""
    arms = layout_copy_arms(n, device, seed)
    timings = time_interleaved({name: (lambda s=s, d=d: d.copy_(s)) for name, (s, d) in arms.items()},
                               warmup=warmup, repeats=repeats, device=device)
    outs = [d for _, d in arms.values()]
    if not torch.equal(outs[0], outs[1]):
        raise RuntimeError("the two arms' outputs differ: they are not the same copy")
    src, dst = arms[LAYOUT_ARMS[0]]
    first = timings[LAYOUT_ARMS[0]]
    rows = [{"source": name, "source strides": ", ".join(map(str, s.stride())), "contiguous": s.is_contiguous(),
             "bytes read": tensor_bytes(s), "bytes written": tensor_bytes(d),
             MEDIAN_COLUMN.format(unit="ms"): t.median * 1e3, "spread ms": t.iqr * 1e3,
             "slow-down (paired)": paired_speedup(t, first)}
            for (name, (s, d)), t in zip(arms.items(), timings.values())]
    strided = arms[LAYOUT_ARMS[1]][0]
    note = LAYOUT_EQUAL_WORK.format(numel=src.numel(), nbytes=format_bytes(tensor_bytes(src)),
                                    shape=" x ".join(map(str, dst.shape)), stride=strided.stride(2),
                                    stride_bytes=format_bytes(strided.stride(2) * strided.element_size()))
    title = (f"copying {LAYOUT_MATRICES} matrices of {n // 2} x {n // 2} ({src.numel():,} numbers, as many as "
             f"{n} x {n}) into a contiguous tensor on {resolve_device(device)}, {repeats} interleaved rounds")
    return Table(rows, title), timings, note


def pinned_copy_benchmark(n_bytes: int, device=None, warmup: int = 2, repeats: int = 15) -> tuple[Table, dict] | None:
    """Host-to-GPU copy from pageable vs pinned (page-locked) host memory, ONE ``time_interleaved`` call:
    the table and ``{host memory: Timing}``. ``None`` without CUDA: on a CPU there is no host-to-device copy
    for pinning to speed up."""
    device = resolve_device(device)
    if device.type != "cuda":
        return None
    n = n_bytes // 4
    pageable = torch.randn(n)
    pinned = torch.empty(n, pin_memory=True).copy_(pageable)
    cases = {"pageable": (pageable, False), "pinned": (pinned, False), "pinned, non_blocking": (pinned, True)}
    timings = time_interleaved({name: (lambda src=src, nb=nb: src.to(device, non_blocking=nb))
                                for name, (src, nb) in cases.items()}, warmup=warmup, repeats=repeats, device=device)
    rows = [{"host memory": name, "ms (median)": t.median * 1e3, "spread ms": t.iqr * 1e3,
             "GB/s": n_bytes / t.median / 1e9} for name, t in timings.items()]
    return Table(rows, f"copying {format_bytes(n_bytes)} from host to {device}"), timings


# ---- Attention by hand vs the fused kernel -------------------------------------------------------
def with_attention(model: GPT, fn) -> GPT:
    """``model`` with every block's attention function swapped through Model 5's seam (``set_attention``):
    ``course_utils.model.manual_attention`` (written out, the T x T scores materialized) or ``sdpa_attention``.
    Returns the model, so that it fits in a ``make_model`` lambda."""
    if not hasattr(model, "set_attention"):
        raise ValueError("this model has no set_attention seam (is it Model 5, course_utils.model.GPT?)")
    model.set_attention(fn)
    return model


def _forward_backward(fn: Callable, inputs: tuple) -> Callable[[], None]:
    def run():
        fn().sum().backward()
        for t in inputs:
            t.grad = None
    return run


def attention_benchmark(seq_lens: Sequence[int], batch: int, n_head: int, head_dim: int, device=None,
                        dtype: torch.dtype = torch.float32, warmup: int = 1, repeats: int = 15,
                        seed: int = 0) -> tuple[Table, dict]:
    """Forward + backward of causal attention, by hand vs ``F.scaled_dot_product_attention``, per length.

    At each length the two run in ONE ``time_interleaved`` call (``repeats`` rounds). Reports median time, peak
    memory (see ``tensor_peak_memory``) and the largest difference between the two outputs; returns the table
    and ``{T: {"manual": Timing, "sdpa": Timing}}`` for ``speed_verdict``.
    """
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    rows, timings = [], {}
    for T in seq_lens:
        q, k, v = (
            torch.randn(batch, n_head, T, head_dim, generator=gen).to(device=device, dtype=dtype).requires_grad_()
            for _ in range(3)
        )
        impls = {
            "manual": lambda q=q, k=k, v=v: manual_attention(q, k, v),
            "sdpa": lambda q=q, k=k, v=v: sdpa_attention(q, k, v),
        }
        with torch.no_grad():
            diff = (impls["manual"]().float() - impls["sdpa"]().float()).abs().max().item()
        steps = {name: _forward_backward(fn, (q, k, v)) for name, fn in impls.items()}
        timings[T] = time_interleaved(steps, warmup=warmup, repeats=repeats, device=device)
        row = {"T": T}
        for name, run in steps.items():
            row[f"{name} ms"] = timings[T][name].median * 1e3
            row[f"{name} spread ms"] = timings[T][name].iqr * 1e3
            row[f"{name} peak bytes"], _ = tensor_peak_memory(run, q, k, v, device=device)
        row["speed-up"] = paired_speedup(timings[T]["manual"], timings[T]["sdpa"])
        row["memory ratio"] = row["manual peak bytes"] / max(1, row["sdpa peak bytes"])
        row["max |diff|"] = diff
        rows.append(row)
    return Table(rows, f"causal attention, batch {batch}, {n_head} heads of {head_dim}, "
                       f"{str(dtype).replace('torch.', '')}, on {device}, {repeats} interleaved rounds"), timings


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
#: The exercise's micro-batches, in sequences of 16 tokens: unequal on purpose (the last micro-batch of an epoch,
#: or packed batches of varying length, are never all the same size).
EXERCISE_SIZES = (1, 3, 2, 2)


def _weighted_by_k(model: nn.Module, micro_batches: list) -> None:
    for xm, ym in micro_batches:
        (all_token_loss(model(xm), ym) / len(micro_batches)).backward()


def check_accumulation(accumulate: Callable, sizes: Sequence[int] = EXERCISE_SIZES, seed: int = 0,
                       tol: float = 1e-5) -> CheckResult:
    """Check a learner's ``accumulate(model, micro_batches)``.

    It receives a tiny Model 5 (dropout off) and a list of micro-batches ``(x, y)`` holding ``sizes`` sequences
    of 16 tokens each (unequal by default), and must leave in ``p.grad`` the gradient of the whole batch's mean
    loss (``all_token_loss`` over every token), as one big batch would. The checker compares with one big batch
    and explains what is off."""
    if not callable(accumulate):
        raise TypeError("pass your function itself: check_accumulation(my_accumulate), not its result")
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be micro-batch sizes >= 1, got {sizes}")
    torch.manual_seed(seed)
    model = no_dropout(GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 97, (sum(sizes), 16), generator=gen)
    y = torch.randint(0, 97, (sum(sizes), 16), generator=gen)
    micro = list(zip(x.split(list(sizes)), y.split(list(sizes))))
    ref = big_batch_gradients(model, x, y)
    model.zero_grad(set_to_none=True)
    _weighted_by_k(model, micro)
    by_k = gradients(model)
    model.zero_grad(set_to_none=True)
    accumulate(model, micro)
    if all(p.grad is None for p in model.parameters()):
        return CheckResult(False, "no gradients were left in the model; call loss.backward() for each micro-batch")
    got = gradients(model)
    diff = max_grad_difference(ref, got)
    shown = ", ".join(map(str, sizes))
    if diff < tol:
        return CheckResult(True, f"micro-batches of {shown} sequences give the big batch's gradient "
                                 f"(max |difference| below {tol:g})")
    k = len(sizes)
    if len(set(sizes)) > 1 and max_grad_difference(by_k, got) < tol:
        return CheckResult(False, f"you divided each micro-batch's loss by k={k}: right only when every micro-batch "
                                  f"holds as many tokens; here they hold {shown} sequences, so a token of the "
                                  "small one counts more than a token of a big one. Weight each micro-batch's mean "
                                  "loss by its share of all the tokens")
    ratio = grad_norm(got) / grad_norm(ref)
    if ratio > 1.5:
        hint = "the gradient is too large: each micro-batch's mean loss needs a weight below 1 before backward()"
    elif ratio < 0.5:
        hint = "only part of the micro-batches reached backward(), or zero_grad() ran between them"
    else:
        hint = "compare with one big batch: all_token_loss(model(x), y) over every sequence at once"
    return CheckResult(False, f"your gradient is {ratio:.2f}x the big batch's (max |difference| {diff:.1e}); {hint}")


# ---- Alignment: a pure matrix product --------------------------------------------------------------
def pow2_divisor(n: int) -> int:
    """The largest power of two that divides ``n`` (``n & -n``): 64 for 64 * 9, 2 for 62 * 9."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return n & -n


def alignment_matmul_benchmark(rows: Sequence[int], k: int, n: int, rounds: int = 15, device=None,
                               seed: int = 0) -> tuple[Table, dict]:
    """``(M x k) @ (k x n)`` for each M in ``rows``, timed in ONE ``time_interleaved`` call.

    Returns the table (M, largest power-of-two divisor, median microseconds per row) and ``{M: Timing}`` in
    seconds per row of the output, ready for ``speed_verdict`` (a larger M does more work: compare per row)."""
    if len(rows) < 2 or min(rows) < 1 or k < 1 or n < 1:
        raise ValueError(f"give at least two row counts >= 1 and k, n >= 1; got rows={rows}, k={k}, n={n}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(k, n, generator=gen).to(device)
    xs = {m: torch.randn(m, k, generator=gen).to(device) for m in rows}
    raw = time_interleaved({m: (lambda x=xs[m]: x @ w) for m in rows}, warmup=2, repeats=rounds, device=device)
    per_row = {m: Timing([s / m for s in t.times]) for m, t in raw.items()}
    table = Table([{"M (rows)": m, "divisible by": pow2_divisor(m),
                    MEDIAN_COLUMN.format(unit="us per row"): t.median * 1e6, "spread us": t.iqr * 1e6}
                   for m, t in per_row.items()],
                  f"(M x {k}) @ ({k} x {n}) on {device}, {rounds} interleaved rounds")
    return table, per_row


def align_demo_fact(per_row: dict, rows_lo: int, rows_hi: int, k: int, device=None) -> tuple[str, str]:
    """The matrix product alone as a demonstration under the batch rows (no claims row: rows 1-2 judge the batch
    sizes in the model): ``per_row`` from ``alignment_matmul_benchmark``; returns ``(what, value)`` for the facts
    list, figures only: the paired speed-up per row of M = ``rows_hi`` over M = ``rows_lo`` and its interval."""
    device = resolve_device(device)
    where = "this CPU" if device.type == "cpu" else str(device)
    what = (f"demonstration: the matrix product alone, M = {rows_hi} vs {rows_lo} rows, on {where} (rows "
            f"{row_number('batch64')}-{row_number('batch128')} judge the batch sizes in the model)")
    value = (f"({rows_hi} x {k}) @ ({k} x {k}) vs ({rows_lo} x {k}) @ ({k} x {k}), time per row: "
             f"{paired_figures(per_row[rows_lo], per_row[rows_hi])} (paired rounds; the table's medians, each over "
             "its own rounds, give another ratio)")
    return what, value


# ---- Decisions over seeds ----------------------------------------------------------------------------
# ---- Gradient clipping as normalization ------------------------------------------------------------
def clipping_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_norm: float = 1.0,
                    loss_fn=all_token_loss) -> dict:
    """One backward pass, then ``clip_grad_norm_``: the norm before and after and the cosine between the
    gradient before and after (1.0: clipping rescales the vector, its direction is kept)."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    before = torch.cat([p.grad.flatten() for p in params]).clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    after = torch.cat([p.grad.flatten() for p in params])
    return {"norm before": before.norm().item(), "norm after": after.norm().item(),
            "cosine(before, after)": F.cosine_similarity(before.double(), after.double(), dim=0).item(),
            "scale factor": (after.norm() / before.norm()).item()}


# ---- Weight decay: which parameters decay --------------------------------------------------------
def decay_groups(model: nn.Module) -> dict:
    """nanoGPT's rule, as ``course_utils.train.make_optimizer`` applies it: every parameter with 2 or more
    dimensions (matmul weights and the embeddings) decays; biases and LayerNorm gains (1-D) do not."""
    out = {"decayed": [], "not decayed": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out["decayed" if p.dim() >= 2 else "not decayed"].append((name, p.numel()))
    return out


# ---- fp16 loss scaling -----------------------------------------------------------------------------
def loss_scaling_demo(grad_size: float = 1e-8, scale: float = 2.0**16) -> dict:
    """A gradient of ``grad_size`` computed in float16, without and with ``torch.amp.GradScaler`` (CPU).

    The weight is a float32 master copy; the forward runs in float16 (``w.half() * a``), so its gradient is
    first a float16 number. 1e-8 is below float16's smallest subnormal (6e-8) and rounds to zero; the scaler
    multiplies the loss by ``scale`` first, the float16 gradient is then representable, and ``unscale_``
    divides it back in float32. Then an overflow: a gradient of inf makes ``scaler.step`` skip the update and
    ``update()`` halve the scale."""
    a = torch.tensor([1e-4], dtype=torch.float16)
    coef = grad_size / 1e-4  # d loss / d w = coef * a = grad_size

    def loss_of(w):
        return (w.half() * a).float().sum() * coef

    w = torch.nn.Parameter(torch.ones(1))
    loss_of(w).backward()
    plain = w.grad.item()

    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=1e6)  # large enough that a 1e-8 gradient visibly moves w
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    scaler.scale(loss_of(w)).backward()
    scaled_fp16 = w.grad.item()
    scaler.unscale_(opt)
    recovered = w.grad.item()
    scaler.step(opt)
    scaler.update()
    stepped = w.item() != 1.0

    opt.zero_grad()
    scale_before = scaler.get_scale()
    (scaler.scale(w.half().float().sum()) * float("inf")).backward()  # an overflowing gradient
    w_before = w.item()
    scaler.step(opt)
    scaler.update()
    return {"true gradient": grad_size, "fp16 gradient, no scaling": plain, "scaled gradient (fp16)": scaled_fp16,
            "after unscale_ (fp32)": recovered, "update applied": stepped,
            "overflow: step skipped": w.item() == w_before, "overflow: scale before": scale_before,
            "overflow: scale after": scaler.get_scale()}


# ---- AdamW implementations -------------------------------------------------------------------------
ADAMW_IMPLS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def adamw_step_timings(make_model: Callable[[], nn.Module], rounds: int = 15, device=None,
                       lr: float = 1e-3) -> tuple[dict, float]:
    """``optimizer.step()`` of AdamW as a for-loop over tensors, ``foreach`` (one multi-tensor op per stage)
    and ``fused`` (one kernel), timed in ONE ``time_interleaved`` call on identical models and gradients.

    Returns ``({impl: Timing}, max |weight difference| after one step between the implementations)``."""
    device = resolve_device(device)
    models, opts, first = {}, {}, None
    for name, kw in ADAMW_IMPLS.items():
        m = make_model().to(device)
        if first is None:
            first = m
        else:
            m.load_state_dict(first.state_dict())  # identical weights, whatever make_model's seeding
        gen = torch.Generator().manual_seed(0)
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(device) * 1e-2
        models[name], opts[name] = m, torch.optim.AdamW(m.parameters(), lr=lr, **kw)
    for o in opts.values():
        o.step()
    ref = list(models["for-loop"].parameters())
    diff = max((a - b).abs().max().item() for name in ("foreach", "fused")
               for a, b in zip(ref, models[name].parameters()))
    return time_interleaved({n: o.step for n, o in opts.items()}, warmup=1, repeats=rounds, device=device), diff


# ---- Integer ids: an embedding gather vs a one-hot matrix product ------------------------------------
def embedding_vs_onehot(vocab: int, dim: int, n_tokens: int, rounds: int = 15, device=None,
                        seed: int = 0) -> dict:
    """Look up ``n_tokens`` ids in a ``vocab x dim`` table: ``F.embedding`` (a gather: reads n rows) against
    ``one_hot(ids).float() @ W`` (builds an n x vocab matrix and multiplies). Both timed in ONE
    ``time_interleaved`` call; peak memory per ``tensor_peak_memory``; the results must agree exactly."""
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(vocab, dim, generator=gen).to(device)
    ids = torch.randint(0, vocab, (n_tokens,), generator=gen).to(device)
    fns = {"gather (F.embedding)": lambda: F.embedding(ids, w),
           "one-hot @ W": lambda: F.one_hot(ids, vocab).to(w.dtype) @ w}
    diff = (fns["gather (F.embedding)"]() - fns["one-hot @ W"]()).abs().max().item()
    timings = time_interleaved(fns, warmup=1, repeats=rounds, device=device)
    peaks = {name: tensor_peak_memory(fn, w, ids, device=device)[0] for name, fn in fns.items()}
    return {"timings": timings, "peak bytes": peaks, "max |diff|": diff,
            "one-hot bytes": n_tokens * vocab * w.element_size()}



# ---- bf16 on this CPU -------------------------------------------------------------------------------
def cpu_bf16_units(cpuinfo: str | None = None) -> str:
    """Which bf16 matrix instructions this CPU has, in one sentence: AMX (Intel Sapphire Rapids and later: tile
    units, the CPU's counterpart of tensor cores) and AVX512-BF16 (Intel Cooper Lake, AMD Zen 4 and later) run bf16
    dot products in hardware; without them PyTorch converts to fp32 and the products gain nothing. ``cpuinfo``:
    the text of ``/proc/cpuinfo`` (read when None; other systems report "unknown")."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return "unknown: this system has no /proc/cpuinfo to read the CPU's instruction sets from"
    flags = set(cpuinfo.split())
    units = [name for flag, name in (("amx_bf16", "AMX (bf16 tiles)"), ("avx512_bf16", "AVX512-BF16"))
             if flag in flags]
    if units:
        return f"{' and '.join(units)}: bf16 matrix products run in hardware here"
    return "no AMX or AVX512-BF16: bf16 products are converted to fp32 here, so they gain little or lose"


def cpu_fp16_units(cpuinfo: str | None = None) -> str:
    """Which fp16 arithmetic instructions this CPU has, in one sentence: AMX-FP16 (Intel Granite Rapids: fp16
    tiles) and AVX512-FP16 (Intel Sapphire Rapids and later) compute in fp16; F16C only converts fp16 to and from
    fp32, so without the first two an fp16 product is emulated. ``cpuinfo`` as in ``cpu_bf16_units``."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return "unknown: this system has no /proc/cpuinfo to read the CPU's instruction sets from"
    flags = set(cpuinfo.split())
    units = [name for flag, name in (("amx_fp16", "AMX-FP16 (fp16 tiles)"), ("avx512_fp16", "AVX512-FP16"))
             if flag in flags]
    if units:
        return f"{' and '.join(units)}: fp16 arithmetic in hardware here"
    return "no AMX-FP16 or AVX512-FP16, F16C at most (conversions only): fp16 products are emulated here"


# ---- "Fewer steps": steps to a target loss -------------------------------------------------------------
def steps_to_target(losses: Sequence[float], target: float, window: int = 3) -> int:
    """The first optimizer step (1-based) at which the mean of the last ``window`` training losses is at or
    below ``target``; ``len(losses) + 1`` when the run never gets there (censored: "more than the budget")."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    for i in range(window - 1, len(losses)):
        if sum(losses[i - window + 1:i + 1]) / window <= target:
            return i + 1
    return len(losses) + 1


def first_eval_at(eval_steps: Sequence[int], losses: Sequence[float], target: float, budget: int) -> int:
    """The first evaluated step at which a held-out loss is at or below ``target``; ``budget + 1`` when no
    evaluation gets there (censored: "more than the budget")."""
    if len(eval_steps) != len(losses):
        raise ValueError(f"one loss per evaluated step: {len(eval_steps)} steps, {len(losses)} losses")
    return next((s for s, x in zip(eval_steps, losses) if x <= target), budget + 1)


def crossing_step(eval_steps: Sequence[int], losses: Sequence[float], target: float, budget: int) -> float:
    """The (fractional) step at which the held-out loss first reaches ``target``: linear interpolation between the
    last evaluation above it and the first at or below it (evaluations at ``eval_steps``, step 0 first); 0.0 when
    the first evaluation is already there; ``budget + 1`` when none gets there (censored: "more than the budget")."""
    if len(eval_steps) != len(losses):
        raise ValueError(f"one loss per evaluated step: {len(eval_steps)} steps, {len(losses)} losses")
    for i, (s, x) in enumerate(zip(eval_steps, losses)):
        if x <= target:
            if i == 0:
                return float(s)
            s0, x0 = eval_steps[i - 1], losses[i - 1]
            return s0 + (x0 - target) / (x0 - x) * (s - s0)
    return float(budget + 1)


def steps_to_drop(a_steps: Sequence[int], a_losses: Sequence[float], b_steps: Sequence[int],
                  b_losses: Sequence[float], drop: float, budget: int) -> tuple[float, int, int]:
    """Two runs of one seed that start from the same weights and are evaluated on the same held-out batches (so
    their step-0 held-out losses are equal), each with its held-out loss at its evaluated steps (step 0 first).
    The rule, fixed before the run: the target is the shared initial loss minus ``drop`` nats, the same for both
    arms and tied to neither arm's end; each count is the fractional step at which the held-out loss crosses it
    (``crossing_step``: linear between consecutive evaluations, so two runs that cross within the same step still
    differ), ``budget + 1`` when a run never gets there (censored). Returns ``(target, steps of a, steps of b)``."""
    if drop <= 0:
        raise ValueError(f"drop must be > 0 nats, got {drop}")
    if not a_steps or not b_steps or a_steps[0] != 0 or b_steps[0] != 0:
        raise ValueError("both runs need a held-out loss at step 0 (the shared start)")
    if abs(a_losses[0] - b_losses[0]) > 1e-4:
        raise ValueError(f"the runs do not share their start: step-0 losses {a_losses[0]:.5f} vs {b_losses[0]:.5f}")
    target = a_losses[0] - drop
    return target, crossing_step(a_steps, a_losses, target, budget), crossing_step(b_steps, b_losses, target, budget)


def pilot_drop(history, at: int) -> float:
    """The target rule of the "fewer steps" rows, fixed before the compared runs: the drop in held-out loss (nats,
    from its step-0 value) that a PILOT run of the row's baseline (a seed that is not among the compared seeds)
    makes by step ``at`` (e.g. 75% of the budget, so that the target is crossed late in the run, long after the
    warmup). ``history`` has its held-out loss evaluated at step 0 and after every step."""
    steps = list(history.eval_step)
    if at not in steps or steps[0] != 0:
        raise ValueError(f"the pilot needs a held-out loss at step 0 and at step {at}; evaluated at {steps}")
    drop = history.test_loss[0] - history.test_loss[steps.index(at)]
    if drop <= 0:
        raise ValueError(f"the pilot's held-out loss did not fall by step {at} ({drop:+.3f} nats): no target to reach")
    return drop


def steps_to_drop_verdict(baseline: Sequence, candidate: Sequence, drop: float, budget: int,
                          names: tuple[str, str] = ("baseline", "candidate"), scope: str = "",
                          min_fewer: float = 0.0, target_rule: str = ""):
    """The lesson's "fewer steps" procedure: ``baseline[i]`` and ``candidate[i]`` are the ``History`` of one seed
    (held-out loss evaluated at step 0 and after every step); each seed's counts come from ``steps_to_drop`` and
    ``compare_runs`` decides on the paired differences. Bar: the candidate needs more than ``min_fewer`` steps
    fewer (0: fewer at all), symmetric. ``target_rule`` says where ``drop`` came from. Returns the ``Verdict``."""
    pairs = [steps_to_drop(a.eval_step, a.test_loss, b.eval_step, b.test_loss, drop, budget)
             for a, b in zip(baseline, candidate, strict=True)]
    targets, base, cand = ([x[i] for x in pairs] for i in range(3))

    def fmt(xs):
        return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"
    rule = target_rule or f"the shared step-0 held-out loss minus {drop:g} nats"
    return compare_runs(base, cand, unit="steps", fmt="{:+.2f}", min_gain=min_fewer).with_note(
        f"target per seed: {rule} ({', '.join(f'{t:.2f}' for t in targets)} nats); the step at which the held-out "
        f"loss crosses it, evaluated after every step and interpolated linearly between evaluations ({budget + 1} = "
        f"not reached): {names[0]} {fmt(base)}, {names[1]} {fmt(cand)}" + (f"; {scope}" if scope else ""))


def diverged_seeds(test_losses: Sequence[float], vocab_size: int) -> list[int]:
    """The seeds whose held-out loss ends above an untrained model's (ln V nats: uniform over the vocabulary)."""
    return [i for i, x in enumerate(test_losses) if x > math.log(vocab_size)]


# ---- The claims table -----------------------------------------------------------------------------------
#: key -> (the claim, the lecture's words: ../shared/seeds/lesson1-optimization-options.vi.md, sections 3-4).
FEWER_STEPS = "learn faster, fewer epochs needed (section 3.6)"
#: The course's standing reading of an unsized "faster" (section 2's speed rows): any gain, strict.
UNSIZED = "unsized 'faster' read as any gain: > 0 steps fewer"
#: The notes' 3.2 names two 16-bit types; each is a choice a learner makes, so each gets its own row.
#: Section 3.8's kernel-level words (FlashAttention, fused kernels), for the rows that time a kernel alone; the 4.2
#: table's rating "kernel fusion: speed impact high" is judged on whole training steps (fused attention in a step,
#: torch.compile).
KERNEL_WORDS = "'giảm overhead, tối ưu băng thông, tăng FLOPS' (less overhead, better bandwidth, more FLOPS)"
KERNEL_RATING = "kernel fusion: speed impact high (section 4.2's table; judged on a whole step)"
#: The kernel-alone rows' bar (fused attention alone, fused AdamW): section 3.8 gives the gain no size, so by the
#: course's rule for an unsized "faster" any speed-up counts (> 1.00x); the whole-step rows keep 4.2's "Cao" (> 1.5x).
KERNEL_BAR = "bar > 1.00x from section 3.8's unsized words (any speed-up counts), fixed before the runs"
#: The column of a timing table that gives each configuration's median over its own rounds: a claims row decides on
#: the median of the PAIRED rounds' ratios instead, so the two figures differ (the notebook says why).
MEDIAN_COLUMN = "{unit} (median of this table's runs, not a row's paired figure)"
SIXTEEN_BIT = "sections 3.2-3.3: 'float16 hoặc bfloat16' instead of float32, faster transfers and compute"
CLAIMS = {
    "batch64": ("batch 64 trains faster than 62 (per token)", "powers of two: 64 better than 62; speed impact medium"),
    "batch128": ("batch 128 trains faster than 120 (per token)", "128 better than 120; speed impact medium"),
    "bf16_matmul": ("bfloat16 matrix products are faster than fp32", f"{SIXTEEN_BIT}; the bfloat16 choice"),
    "fp16_matmul": ("float16 matrix products are faster than fp32", f"{SIXTEEN_BIT}; the float16 choice"),
    "mp_speed": ("mixed precision (bf16 autocast) trains faster", "mixed precision: speed impact high"),
    "mp_memory": ("mixed precision lowers a training step's peak memory (a step whose activation share matches GPT-2 "
                  "small's at batch 16 x 1024)", "mixed precision reduces memory"),
    "mp_quality": ("mixed precision costs little quality (held-out loss, on the constant-lr recipe: the one that "
                   "learns most here)", "mixed precision: quality impact low"),
    "accum_memory": ("gradient accumulation needs less memory than the big batch",
                     "simulates a large batch without more memory"),
    "schedule": ("warmup + cosine reaches a late held-out loss target in fewer steps than a constant lr "
                 f"({UNSIZED})",
                 f"learning-rate scheduler: {FEWER_STEPS}"),
    "schedule_quality": ("warmup + cosine gives a lower held-out loss than a constant lr",
                         "scheduler: quality impact high"),
    "clip": ("gradient clipping reaches a late held-out loss target in fewer steps than no clipping (both arms "
             f"warmup + cosine; {UNSIZED})",
             f"gradient clipping and normalization: {FEWER_STEPS}"),
    "early_dropout": ("early dropout (off after 25% of the steps) reaches a late held-out loss target in fewer "
                      f"steps than dropout all along ({UNSIZED})",
                      f"dynamic regularization: {FEWER_STEPS}"),
    "contiguous_layout": ("reading a contiguous tensor is faster than reading the same numbers through a strided "
                          "(transposed) view: the same copy into the same contiguous output, equal work",
                          "contiguous memory (section 3.7): 'Giảm cache miss, Tăng tốc truy cập' (fewer cache "
                          "misses, faster access); no size given"),
    "pinned": ("pinned host memory speeds up host-to-GPU copies", "memory pinning"),
    "attention": ("fused attention is faster (attention alone, longest T)",
                  f"FlashAttention (section 3.8): {KERNEL_WORDS}"),
    "attention_step": ("fused attention makes the training step faster", KERNEL_RATING),
    "adamw": ("fused AdamW step is faster than the for-loop", f"fused kernels (section 3.8): {KERNEL_WORDS}"),
    "compile": ("torch.compile makes a training step faster", KERNEL_RATING),
    "tensor_cores": ("tensor cores: bf16 matrix products faster than fp32 (tensor cores raise FLOPS)",
                     "tensor cores raise FLOPS"),
    "tying_memory": ("weight tying lowers a training step's peak memory (GPT-2 small at batch 16 x 1024, a step once "
                     "AdamW's state exists, counted exactly)",
                     "tying saves memory (section 3.9)"),
    "tying_compute": ("weight tying makes a training step cheaper", "tying also lowers the compute cost"),
    "multi_gpu": ("several GPUs train much faster", "multi-GPU: speed impact very high"),
}

#: The course's own questions, beyond the lecture (the notes never mention the vocabulary, weight decay or plain
#: dropout, so no lecture claim and no word to fix a bar from): key -> (the question, the course's bar, fixed before
#: the runs). Measured the same way, listed under the claims table, never in it.
COURSE_EXPERIMENTS = {
    "pad": ("is nanoGPT's vocabulary padding (50,257 -> 50,304 = 393 x 128, a multiple of 128, not a power of two) "
            "faster per training step?", "> 1.05x, the course's reading of a speed-up, as in the batch rows"),
    "weight_decay": ("does weight decay 0.1 lower the held-out loss?", "lower by > 0 nats (any gain)"),
    "dropout": ("does dropout 0.1 all along lower the held-out loss?", "lower by > 0 nats (any gain)"),
}
#: The course's GPU run on the padded vocabulary (its figure, not carried over: see the note).
GPU_PAD = ("0.98x (slower beyond its +/-2% noise), but that code sliced the padded logits inside the timed step; the "
           "current step crops in the fused loss (model.loss), so the GPU figure does not carry over")


def course_experiments_text(answers: dict) -> str:
    """The lines under the claims table: each of the course's own questions (``COURSE_EXPERIMENTS``), its bar and
    the ``Verdict`` a ``course_utils.verdicts`` procedure gave it, labelled as no lecture claim."""
    lines = ["Beyond the lecture: the course's own questions (the notes never mention them: no lecture claim, not "
             "in the table; each bar is the course's, fixed before the runs)"]
    for key, (question, bar) in COURSE_EXPERIMENTS.items():
        a = answers[key]
        lines.append(f"- {question}\n  bar (the course's): {bar}; measured {a.measured}: {a.verdict} ({a.why})")
    return "\n".join(lines)

#: Where the course's older GPU run decides or informs a row: results/nvidia-h100-80gb/01_optimization_options.md
#: (H100 80GB, full profile: GPT-2-small Model 5, 124,439,808 parameters, timed steps at T=256, one seed per
#: training; 2026-11-23, code older than this notebook's). Appended to the row's note by ``claims_table``.
GPU_RUN = "course GPU run (H100, full profile, GPT-2-small Model 5, 2026-11-23, predates this code)"
#: The three-lever stack on the GPU run (a demonstration in section 11, not a claims row).
GPU_STACK = ("the same three levers (tying, batch 64, vocabulary 50,304) on its fused-attention row at T=256: "
             "0.98x tokens/s (56,920 -> 55,802, medians of one run, no interval); its 6.23x started from hand-written "
             "attention and added autocast and torch.compile, not in this stack")
GPU_NOTES = {
    "batch64": "1.01x per token (56,957 vs 56,548 tokens/s, whole steps at T=256, medians of one run): no medium "
               "gain there (one run, no interval), as section 2's alignment argument predicts: at T=256, B x T is a "
               "multiple of 128 (the largest tile) whatever B is, so 62 x 256 is as aligned as 64 x 256; this "
               "machine's verdict is scoped to T=3 on this CPU",
    "batch128": "1.00x per token (57,351 vs 57,579 tokens/s, whole steps at T=256, medians of one run): no medium "
                "gain there (one run, no interval), as section 2's alignment argument predicts: at T=256, B x T is a "
                "multiple of 128 (the largest tile) whatever B is, so 120 x 256 is as aligned as 128 x 256; this "
                "machine's verdict is scoped to T=3 on this CPU",
    "bf16_matmul": "bf16 13.80x fp32 at 4096 x 4096 on tensor cores: above the 1.00x bar there, one run (no "
                   "interval: no verdict)",
    "fp16_matmul": "fp16 13.25x fp32 at 4096 x 4096 on tensor cores: above the 1.00x bar there, one run (no "
                   "interval: no verdict)",
    "mp_speed": "3.86x tokens/s (autocast, GPT-2 small): far above the 1.5x bar there, one run (no interval: no "
                "verdict)",
    "mp_memory": "a whole step's peak 15.0 vs 18.8 GiB, 0.80x (bf16 autocast vs fp32, batch 16 x 1024, CUDA "
                 "allocator peak of a fresh model's first step, before AdamW's moments exist): less there too",
    "mp_quality": "its table printed 'final loss +0.006 nats' (bf16 minus fp32, final TRAINING loss, not held-out, "
                  "60 steps), i.e. lower by -0.006 nats in this row's convention, one seed (no interval): above the "
                  "-0.01 bar there too (no verdict)",
    "accum_memory": "whole step 0.29x (batch 16 x 1024, CUDA allocator peak of a fresh model's first step, before "
                    "AdamW's moments exist), activations 0.68x (measured at batch "
                    "16 x 64, where fixed-size temporaries such as the embedding's V x d gradient dominate): two "
                    "shapes, so there the whole step's ratio sits below the activations'; agrees (less memory)",
    "schedule": "it did not count steps to a target; held-out loss after 60 steps at lr 6e-4, clipping in both "
                "arms: constant 6.04, warmup+cosine 5.92 nats (one seed); cosine helps there and not here for row "
                f"{list(CLAIMS).index('schedule_quality') + 1}'s reason: at lr 1e-3 and 20 steps this tiny model has "
                "no instability for warmup to tame, so the cosine only takes learning rate away",
    "schedule_quality": "its table printed 'test loss -0.515 nats vs constant LR' (warmup+cosine minus constant, "
                        "i.e. cosine better: lower by +0.515 in this row's convention), from a constant lr WITHOUT "
                        "clipping against the better of two warmup+cosine runs (one clipped), so clipping and a "
                        "best-of-two pick are in that figure; with clipping in both arms (60 steps at lr 6e-4): "
                        "constant 6.04 vs warmup+cosine 5.92 nats, lower by +0.12 nats: above the 0.1 bar there, "
                        "one seed (no interval: no verdict). The two differ because at lr 1e-3 and 20 steps this "
                        "tiny model has no instability for warmup to tame, so the cosine only takes learning rate "
                        "away (section 6); this row's 'does not hold' is scoped to 20 steps of this model",
    "clip": "it did not count steps to a target; held-out loss after 60 steps, clipping lower by +0.39 nats under "
            "a constant lr (6.43 -> 6.04) and +0.07 under warmup+cosine (5.99 -> 5.92), one seed",
    "contiguous_layout": "it timed softmax, not this copy: softmax on a contiguous operand vs the strided view, "
                         "8192 x 8192, 2.81x (medians of one run), a gap that includes the transposing copy softmax "
                         "makes of a strided input (the softmax demonstration under the table); no figure there for "
                         "this row's equal-work copy",
    "pinned": "6.94x the bandwidth of pageable memory (256 MiB): above the 1.00x bar there, one run (no interval: "
              "no verdict)",
    "attention": "29.03x at T=4096 (bf16, batch 8, 12 heads): above the 1.00x bar there, one run (no interval: "
                 "no verdict)",
    "attention_step": "a whole step at T=256 (batch 62, fp32, untied): 1.08x tokens/s (medians of one run, no "
                      "interval): below the 1.5x bar there",
    "compile": "about 1.20x: below the 1.5x bar there, one run (no interval: no verdict)",
    "tensor_cores": "bf16 13.8x fp32 (4096 x 4096) on tensor cores, one run (no interval: no verdict); on a GPU this "
                    f"row is the same product as row {list(CLAIMS).index('bf16_matmul') + 1}'s bfloat16 row",
    "tying_memory": "step peak (torch.cuda.max_memory_allocated) untied 18.3 -> tied 18.2 GiB at batch 62 x 256, "
                    "printed to 0.1 GiB, of a FRESH model's FIRST step (commit 7747e44, course_utils/levers.py "
                    "measure_training: train(model, batches, one step), the optimizer created inside): AdamW's "
                    "moments did not exist at that step's backward peak, so tying saved one V x d fp32 weight, "
                    "38,597,376 x 4 B = 147 MiB = 0.14 GiB, which its printed 18.3 -> 18.2 GiB agrees with: it agrees "
                    "on the mechanism (what tying removes from a step's peak), not on the verdict: its ratio, about "
                    "0.99x, is by the other definition (a first step, before AdamW's moments exist)",
    "tying_compute": "tied vs untied step at T=256 (batch 62, fused attention): 0.99x tokens/s (281 vs 279 ms, "
                     "medians of one run, no interval): no gain there, where the optimizer is a small part of the step",
    "multi_gpu": "0.67x with 2 processes sharing one GPU: not measurable there either",
}

#: The GPU run's softmax figures (the softmax demonstrations in the facts list, not claims rows): the strided view
#: vs a contiguous operand, and .contiguous() called first vs the strided view.
GPU_SOFTMAX_STRIDED = "GPU run, 8192 x 8192: strided 2.81x slower (medians of one run)"
GPU_CONTIGUOUS = "GPU run, 8192 x 8192: 0.854 vs 0.859 ms, 1.01x (medians of one run)"

#: The GPU run's tying peaks as printed (GiB, rounded to 0.1): untied, tied (batch 62 x 256, a fresh model's first
#: step: no AdamW moments at its backward peak).
GPU_TYING_PEAKS_GIB = (18.3, 18.2)
#: The GPU run's fp32 step peak of tied GPT-2 small at batch 16 x 1024 (GiB, rounded), beside the fake-tensor count:
#: a fresh model's first step, before AdamW's moments exist (124.4M x 8 B = 0.93 GiB below a later step's peak).
GPU_GPT2_FP32_PEAK_GIB = 18.8


#: Section 11's comparison table: the course's GPU run (results/nvidia-h100-80gb/01_optimization_options.md, its own
#: comparison table) beside each lever, and why it differs from this machine where it does.
GPU_COMPARISON = {
    "batch power of two": "64 vs 62: 1.01x; 128 vs 120: 1.00x (whole steps at T=256, one run, no interval): no "
                          "medium gain there; at T=256, B x T is a multiple of 128 whatever B is (section 2)",
    "mixed precision": "3.86x tokens/s; its table printed 'final loss +0.006 nats' (bf16 minus fp32, training "
                       f"loss), i.e. lower by -0.006 nats in row {list(CLAIMS).index('mp_quality') + 1}'s convention; "
                       "the speed is far above 1.5x there on "
                       "tensor cores (one run); a CPU's bf16 units give far less (hardware, not a contradiction); "
                       "quality above the -0.01 bar there too (one seed); no interval, no verdict",
    "multi-GPU (DDP)": "0.67x, 2 processes sharing one GPU: not measurable there either (agrees)",
    "scheduler": "its table printed -0.515 nats (warmup+cosine minus constant, i.e. cosine better: lower by +0.515 in "
                 "the rows' convention), a constant lr without clipping vs the better scheduled run (clipping and a "
                 "best-of-two pick in the figure); clipping in both arms: lower by +0.12 nats, above the 0.1 bar "
                 "there, one seed (no interval: no verdict); no steps counted. Differs: at lr 1e-3 and 20 steps "
                 "this tiny model has no instability for warmup to tame, so the cosine only takes learning rate "
                 "away",
    "kernel fusion (SDPA)": "attention alone 29.03x at T=4096, above section 3.8's 1.00x there; a whole step at "
                            "T=256 1.08x and torch.compile about 1.20x, below 4.2's 1.5x there (one run, no interval)",
}


def row_number(key: str) -> int:
    """The claims table's row number (1-based) of the claim ``key`` of ``CLAIMS``, so that a cell or a note names a
    row by its key, never by a number typed in."""
    return list(CLAIMS).index(key) + 1


def row_verdicts(verdicts: dict, rows: Sequence[tuple[str, str]]) -> str:
    """Each claims row's verdict on its own, for the lecture's comparison table: ``rows`` holds (label, key of
    ``CLAIMS``) pairs; returns "row N (label): verdict; ...", N the row's number in the claims table, so one rating
    judged on two setups never reads as one verdict."""
    order = list(CLAIMS)
    return "; ".join(f"row {order.index(key) + 1} ({label}): {verdicts[key].verdict}" for label, key in rows)


def claims_table(verdicts: dict, facts: Sequence[tuple[str, str]], context: str = "",
                 title: str = "Lesson 1: optimization options") -> ClaimsTable:
    """The lesson's table: one row per ``CLAIMS`` key, in that order, with the ``Verdict`` a
    ``course_utils.verdicts`` procedure returned for it; then the facts (``(what, value)`` pairs)."""
    unknown = set(verdicts) - set(CLAIMS)
    missing = set(CLAIMS) - set(verdicts)
    if unknown or missing:
        raise ValueError(f"claims_table needs one Verdict per claim: unknown keys {sorted(unknown)}, "
                         f"missing {sorted(missing)} (see l1_levers.CLAIMS)")
    table = ClaimsTable(title, context=context)
    for key, (claim, lecture) in CLAIMS.items():
        gpu = GPU_NOTES.get(key)
        table.add(claim, lecture, verdicts[key].with_note(f"{GPU_RUN}: {gpu}") if gpu else verdicts[key])
    for what, value in facts:
        table.fact(what, value)
    return table


def bubble_departures(run: dict, schedule: str = "gpipe", tol: float = 0.05) -> list[int]:
    """The micro-batch counts m at which the measured idle fraction (the mean over stages, as ``bubble_measured``
    shows it) lies more than ``tol`` above GPipe's (p - 1) / (m + p - 1): where a measurement departs from the
    formula (the fixed cost of each send and receive, and processes contending for shared cores, are not in it)."""
    from .l1_parallel import bubble_fraction, median

    out = []
    for r in sorted((r for r in run["runs"] if r["schedule"] == schedule and "skipped" not in r), key=lambda r: r["m"]):
        stages = r.get("idle_per_stage") or [median(s[1:] or s) for s in r["idle_steps_per_stage"]]
        if sum(stages) / len(stages) - bubble_fraction(run["world_size"], r["m"]) > tol:
            out.append(r["m"])
    return out


# ---- A training step's exact peak at the lecture's size, without the memory ------------------------------------
def fake_step_peak(config: GPTConfig, batch: int, seq_len: int, amp: str = "off", clip_grad: float | None = 1.0,
                   first_step: bool = False) -> dict:
    """The exact tensor peak of one whole training step of Model 5 (``config``) at ``batch x seq_len``, taken
    after AdamW's state exists (with ``first_step``: a fresh model's first step, whose AdamW moments are created
    inside it, after backward, as a training run's first step measures it), counted without allocating it: the
    model, the batch and every intermediate are ``FakeTensor``s (shapes, dtypes and a CPU device, no data), so the
    dispatcher picks the same CPU kernels as a real step (fused attention included; a ``meta``-device model would
    fall back to attention's T x T math path) and ``MemTracker`` counts every storage, as
    ``course_utils.memory.step_peak_memory`` does on a CPU. The step is ``course_utils.train``'s: the default loss
    (``all_token_loss`` on the logits), clipping at ``clip_grad``, the fused AdamW of ``make_optimizer``, autocast
    when ``amp`` is ``"bf16"``.

    Returns ``{"peak": bytes, "state": weights + gradients + AdamW moments (training_state_bytes), "activation
    share": 1 - state / peak}``: the share of the peak that is not training state (activations and temporaries)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..memory import _device_mem_tracker, training_state_bytes
    from ..train import TrainConfig, autocast_context, make_optimizer, resolve_amp

    device = torch.device("cpu")
    amp_dtype, _ = resolve_amp(amp, device)
    with FakeTensorMode():
        model = GPT(config)
        model._check_token_ids = lambda idx: None  # it reads the ids' values; a fake batch has none
        x = torch.zeros(batch, seq_len, dtype=torch.long)
        y = torch.zeros(batch, seq_len, dtype=torch.long)
        optimizer = make_optimizer(model, TrainConfig(steps=1), device)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(amp_dtype, device):
                loss = all_token_loss(model(x), y)
            loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()

        if not first_step:
            step()  # AdamW creates its moments on its first step
        tracker = _device_mem_tracker()
        tracker.track_external(model, optimizer, x, y)
        with tracker:
            step()
        snap = tracker.get_tracker_snapshot("peak")
        state = training_state_bytes(model)["total"]
    peak = int(max(v["Total"] for k, v in snap.items() if torch.device(k).type == "cpu" and "Total" in v))
    return {"peak": peak, "state": state, "activation share": 1 - state / peak}


def closest_share_batch(config: GPTConfig, seq_len: int, share: float, batch_sizes: Sequence[int] = (2, 4, 8, 16)
                        ) -> tuple[int, dict]:
    """The batch size (of ``batch_sizes``) at which a training step of ``config`` has the activation share of its
    fp32 peak (``fake_step_peak``) closest to ``share``, e.g. GPT-2 small's at the full profile's batch x context;
    a rule fixed before any figure it serves is measured. Returns ``(batch, {batch: share})``."""
    if not batch_sizes or min(batch_sizes) < 1 or not 0 < share < 1:
        raise ValueError(f"give batch sizes >= 1 and a share in (0, 1), got {batch_sizes} and {share}")
    shares = {b: fake_step_peak(config, b, seq_len)["activation share"] for b in batch_sizes}
    return min(shares, key=lambda b: abs(shares[b] - share)), shares
