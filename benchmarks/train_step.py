"""One training step of Model 5 (course_utils) against Hugging Face's GPT2LMHeadModel, made fair.

Same configuration, same weights (Model 5 is built from the HF model with GPT.from_hf_gpt2), same batch,
same optimizer. A "step" is forward, loss, backward and an AdamW update. What each side gets:

- optimizer: both ``course_utils.train.make_optimizer`` = ``torch.optim.AdamW(fused=True)`` with weight decay
  groups, which is what HF's Trainer uses on CUDA (``optim="adamw_torch_fused"``);
- activation: the HF config uses ``gelu_pytorch_tanh`` (the same tanh-GELU kernel as Model 5's
  ``nn.GELU(approximate="tanh")``) instead of its default ``gelu_new`` (the same function written as a chain of
  element-wise ops); ``use_cache=False`` (no KV cache while training); HF's attention is SDPA like Model 5's;
- loss: HF returns logits and the step computes ``all_token_loss(logits, y)`` on them; Model 5 returns the
  loss itself (``model(x, targets=y)``: output layer + cross-entropy fused in chunks of rows, never holding the
  B x T x V logits). Both are the mean next-token cross-entropy over all B*T positions;
- compilation: a compiled row compiles both models (``torch.compile``; on a GPU with
  ``coordinate_descent_tuning``); the compile time is reported separately.

Steps of all candidates are interleaved (A, B, C, A, B, C, ...) so that load on the machine hits them alike;
warm-up steps are excluded. Extra "lever" candidates (``--levers``, on by default on CPU) measure each change
A/B in the same run: Model 5 on the logits path, a checkpoint-per-chunk loss, padded vocabulary masked in the
loss vs sliced, the HF model as a plain loop would run it (default ``gelu_new``, ``torch.optim.AdamW``
defaults), chunk sizes (``--chunks``). Peak training memory of each candidate is measured over one step taken
after the optimizer state exists (CPU: tensor memory counted by PyTorch's MemTracker; CUDA: the allocator's
peak). MFU on a GPU: tokens/s x (6N + 12 L d T) / the GPU's dense peak for the precision (bf16, or TF32 for
fp32 rows); N = parameters without the position embedding. ``--profile N`` (on by default on a GPU) also records
where Model 5's step spends its time: torch.profiler over N steps, by kernel on CUDA (and the GPU's idle share of the
wall time: host overhead, syncs) or by operator on CPU, grouped into matmul / attention / optimizer / other (what
limits MFU). Writes everything as JSON.

    python benchmarks/train_step.py                       # CPU: tiny config, fp32, contexts 256 and 1024, levers
    python benchmarks/train_step.py                       # GPU: GPT-2 small, bf16, context 1024, batch 64, compiled
    python benchmarks/train_step.py --preset gpu --device cpu --batch 1 --warmup 1 --steps 1   # dry run of the GPU path
    python benchmarks/train_step.py --compile both --no-levers   # compiled and eager rows
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_utils.env import get_device, seed_everything  # noqa: E402
from course_utils.losses import all_token_loss, linear_cross_entropy  # noqa: E402
from course_utils.measure import MIN_ROUNDS, time_interleaved  # noqa: E402
from course_utils.memory import tensor_peak_memory  # noqa: E402
from course_utils.model import GPT  # noqa: E402
from course_utils.train import TrainConfig, autocast_context, make_optimizer, resolve_amp  # noqa: E402
from course_utils.verdicts import speed_verdict  # noqa: E402

CONFIGS = {
    # name: (n_layer, n_head, n_embd, tokens per step; batch = batch_tokens // context unless --batch is given)
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, batch_tokens=1024),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, batch_tokens=65536),  # micro-batch 64 at context 1024
}

PRESETS = {  # defaults by device; every one can be overridden on the command line
    "cpu": dict(configs=["tiny"], contexts=[256, 1024], amp=["off"], compile="off", levers=True, repeats=15, profile=0),
    "gpu": dict(configs=["gpt2-small"], contexts=[1024], amp=["bf16"], compile="on", levers=False, repeats=10,
                profile=3),
}

# Dense (no sparsity) tensor-core peak FLOP/s from NVIDIA's data sheets: bf16, and TF32 (what fp32 matmuls run
# in with allow_tf32). Data sheets print the sparse figure with an asterisk; these are half of it. Matched
# against torch.cuda.get_device_name as whole words, most specific first; any other device gets no MFU.
PEAK_FLOPS = [
    # (pattern, bf16, fp32 rows (TF32; plain fp32 where there is no TF32), data sheet)
    (r"\bH200 NVL\b", 835.5e12, 417.5e12, "H200 NVL: BF16 1,671 / TF32 835 TFLOPS sparse"),
    (r"\bH200\b", 989.5e12, 494.5e12, "H200 SXM: BF16 1,979 / TF32 989 TFLOPS sparse"),
    (r"\bH100 NVL\b", 835.5e12, 417.5e12, "H100 NVL: BF16 1,671 / TF32 835 TFLOPS sparse"),
    (r"\bH100 PCIe\b", 756.5e12, 378e12, "H100 PCIe: BF16 1,513 / TF32 756 TFLOPS sparse"),
    (r"\bH100\b", 989.5e12, 494.5e12, "H100 SXM: BF16 1,979 / TF32 989 TFLOPS sparse"),
    (r"\bA100\b", 312e12, 156e12, "A100 (SXM and PCIe): BF16 312 / TF32 156 TFLOPS dense"),
    (r"\bL40S\b", 362e12, 183e12, "L40S: BF16 733 / TF32 366 TFLOPS sparse"),
    (r"\bL4\b", 121e12, 60e12, "L4: BF16 242 / TF32 120 TFLOPS sparse"),
    (r"\bT4\b", None, 8.1e12, "T4: no bf16 or TF32 tensor cores (FP16 65 TFLOPS); fp32 8.1 TFLOPS"),
]
MFU_FORMULA = ("MFU = tokens/s * (6*N + 12*n_layer*n_embd*T) / peak FLOP/s; N = parameters without the position "
               "embedding (the tied embedding counted once); peak = dense bf16 for bf16 rows, dense TF32 for fp32 rows")


def peak_flops(device: torch.device, amp: str) -> tuple[float | None, str | None]:
    """(peak FLOP/s for this precision, its source), or (None, None) off CUDA or for an unknown GPU."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for pattern, bf16, fp32, source in PEAK_FLOPS:
        if re.search(pattern, name):
            return (bf16 if amp == "bf16" else fp32), source
    return None, None


def flops_per_token(n_params_no_pos: int, n_layer: int, n_embd: int, T: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N) + attention 12 L d T."""
    return 6 * n_params_no_pos + 12 * n_layer * n_embd * T


#: Where a step's time goes, by the name of a CUDA kernel or a CPU operator (first match; lower-case substrings):
#: what MFU counts (the matmuls) against everything else.
PROFILE_GROUPS = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "attn")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "triton_tem", "aten::mm", "aten::addmm", "aten::bmm",
                "aten::linear", "aten::matmul", "aten::baddbmm", "mkldnn")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
)


def profile_group(name: str) -> str:
    """``matmul``, ``attention``, ``optimizer`` or ``other`` (element-wise, norms, softmax, cross-entropy, copies)."""
    low = name.lower()
    return next((group for group, keys in PROFILE_GROUPS if any(k in low for k in keys)), "other")


def summarize_profile(events: list[tuple[str, float]], wall_s: float, steps: int, busy_is_device: bool,
                      top: int = 12) -> dict:
    """``events``: (kernel or operator name, self seconds) over ``steps`` profiled steps that took ``wall_s``.
    Per step: the busy time (their sum), its share by group and the ``top`` names; on a device, the idle share of
    the wall time (the GPU waiting for the host: launch overhead, synchronisation)."""
    if steps < 1 or wall_s <= 0:
        raise ValueError(f"need steps >= 1 and a positive wall time, got {steps} and {wall_s}")
    by_name: dict[str, float] = {}
    for name, sec in events:
        by_name[name] = by_name.get(name, 0.0) + sec
    busy = sum(by_name.values())
    if busy <= 0:
        raise ValueError("the profile recorded no time: nothing ran inside it")
    groups: dict[str, float] = {}
    for name, sec in by_name.items():
        group = profile_group(name)
        groups[group] = groups.get(group, 0.0) + sec
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
    out = {"clock": "CUDA kernels (self time)" if busy_is_device else "CPU operators (self time)", "steps": steps,
           "wall_ms_per_step": 1e3 * wall_s / steps, "busy_ms_per_step": 1e3 * busy / steps,
           "shares": {g: groups[g] / busy for g in sorted(groups, key=lambda g: -groups[g])},
           "top": [{"name": n[:120], "group": profile_group(n), "ms_per_step": 1e3 * t / steps, "share": t / busy}
                   for n, t in ranked]}
    if busy_is_device:
        out["device_idle_share"] = max(0.0, 1 - busy / wall_s)
    return out


def step_profile(step, device: torch.device, steps: int) -> dict:
    """``summarize_profile`` of ``steps`` calls of ``step`` under torch.profiler (after the timed rounds, so warm):
    CUDA kernels' self time on a GPU (the CPU operators that launch them would count it twice), else the CPU
    operators' self time."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    events = [(e.key, (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6)
              for e in prof.key_averages() if (e.device_type != DeviceType.CPU) == cuda]
    return summarize_profile(events, wall, steps, busy_is_device=cuda)


def hf_config(cfg: dict, T: int, activation: str = "gelu_pytorch_tanh"):
    from transformers import GPT2Config

    return GPT2Config(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"], n_positions=max(T, 1024),
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function=activation,
                      use_cache=False)


def build_hf(cfg: dict, T: int, device: torch.device, activation: str = "gelu_pytorch_tanh", seed: int = 0):
    from transformers import GPT2LMHeadModel

    seed_everything(seed)  # the same seed: the same weights, whatever the activation
    return GPT2LMHeadModel(hf_config(cfg, T, activation)).to(device).train()


def hidden_states(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Model 5's forward up to (and including) the final LayerNorm: the rows the output layer sees."""
    pos = torch.arange(idx.size(1), device=idx.device)
    x = model.drop(model.wte(idx) + model.wpe(pos))
    for block in model.h:
        x = block(x)
    return model.ln_f(x)


def checkpointed_chunk_loss(hidden, weight, targets, vocab_size, chunk_rows):
    """The simpler fused loss: each chunk's logits + cross-entropy under activation checkpointing, so its
    logits are recomputed in the backward pass (4 output-layer matmuls instead of 3)."""
    from torch.utils.checkpoint import checkpoint

    h, t = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)

    def chunk_loss(hc, tc):
        return F.cross_entropy((hc @ weight.t())[:, :vocab_size], tc, reduction="sum")

    total = sum(checkpoint(chunk_loss, h[s:s + chunk_rows], t[s:s + chunk_rows], use_reentrant=False)
                for s in range(0, h.size(0), chunk_rows))
    return total / t.numel()


def make_loss(kind: str, model, x, y):
    """The step's loss for one candidate kind."""
    if kind == "logits":  # HF, or Model 5 the way the notebooks call it
        out = model(x)
        return all_token_loss(out.logits if hasattr(out, "logits") else out, y)
    if kind == "fused":
        return model(x, targets=y)
    m = getattr(model, "_orig_mod", model)
    V, chunk = m.config.vocab_size, m.loss_chunk_rows or 256
    if kind == "ckpt":
        return checkpointed_chunk_loss(hidden_states(m, x), m.lm_head.weight, y, V, chunk)
    if kind == "slice":  # padded vocabulary: slice the padding off the weight instead of masking it in the loss
        return linear_cross_entropy(hidden_states(m, x), m.lm_head.weight[:V], y, chunk_rows=chunk)
    raise ValueError(kind)


def step_fn(model, opt, x, y, kind, amp_dtype, device):
    def step():
        opt.zero_grad(set_to_none=True)
        with autocast_context(amp_dtype, device):
            loss = make_loss(kind, model, x, y)
        loss.backward()
        opt.step()
    return step


def peak_step_memory(step, model, opt, x, y, device) -> tuple[int | None, str]:
    """Peak bytes of one training step, counting the model, its gradients, the optimizer state, the batch and
    every temporary. Taken with no gradients alive before the step, after the optimizer state exists."""
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        own = sum(p.numel() * p.element_size() for p in model.parameters())
        own += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor) and t.device.type == "cuda")
        own += x.numel() * x.element_size() + y.numel() * y.element_size()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before + own, "CUDA allocator peak (max_memory_allocated)"
    try:
        return tensor_peak_memory(step, model, opt, x, y, device=device)
    except Exception as e:  # a private tool: never lose the timings to it
        return None, f"not measured ({type(e).__name__}: {e})"


def candidates_for(args, compiled: bool) -> list[tuple[str, str, str, dict]]:
    """(label, model side, loss kind, options) of every candidate in one row."""
    rows = [("hf", "hf", "logits", {}), ("course", "course", "fused", {})]
    if compiled:
        rows += [("hf_eager", "hf", "logits", {"eager": True}), ("course_eager", "course", "fused", {"eager": True})]
    elif args.levers:
        rows += [
            ("course_logits", "course", "logits", {}),  # the notebooks' path: model(x) -> logits -> loss
            ("course_ckpt", "course", "ckpt", {}),
            ("course_pad_mask", "course", "fused", {"pad": 64}),
            ("course_pad_slice", "course", "slice", {"pad": 64}),
            ("hf_plain", "hf", "logits", {"activation": "gelu_new", "plain_adamw": True}),  # the old, unfair baseline
        ]
    for c in args.chunks or []:
        rows.append((f"course_chunk{c}", "course", "fused", {"chunk": c}))
    return rows


def bench_one(name: str, T: int, amp: str, compiled: bool, device: torch.device, args) -> dict:
    cfg = CONFIGS[name]
    B = args.batch or max(1, cfg["batch_tokens"] // T)
    amp_dtype, _ = resolve_amp(amp, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (B, T), generator=g).to(device)
    y = torch.randint(0, 50257, (B, T), generator=g).to(device)
    hf = build_hf(cfg, T, device)
    res = {"config": name, "context": T, "batch": B, "amp": amp, "compile": compiled,
           "hf_attn_implementation": hf.config._attn_implementation}
    ours = GPT.from_hf_gpt2(hf, dropout=0.0).train()
    with torch.no_grad():  # same weights -> same logits (fp32), and the fused loss equals the logits' loss
        ref = all_token_loss(hf.eval()(x[:1]).logits, y[:1])
        res["max_abs_logit_diff_fp32"] = (ours.eval()(x[:1]) - hf(x[:1]).logits).abs().max().item()
        res["fused_loss_diff_fp32"] = abs(ours(x[:1], targets=y[:1]).item() - ref.item())
    hf.train()
    res["params"] = ours.num_parameters()
    del ours

    steps, models, opts, compile_s = {}, {}, {}, {}
    for label, side, kind, opt_ in candidates_for(args, compiled):
        if side == "hf":
            model = hf if label == "hf" else build_hf(cfg, T, device, opt_.get("activation", "gelu_pytorch_tanh"))
        else:
            model = GPT.from_hf_gpt2(hf, dropout=0.0, pad_vocab_multiple=opt_.get("pad", 1)).to(device).train()
            if "chunk" in opt_:
                model.loss_chunk_rows = opt_["chunk"]
        if opt_.get("plain_adamw"):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
        else:
            opt = make_optimizer(model, TrainConfig(steps=1, lr=1e-4), device)
        runner = torch.compile(model) if compiled and not opt_.get("eager") else model
        step = step_fn(runner, opt, x, y, kind, amp_dtype, device)
        if runner is not model:  # the first call compiles: time it on its own
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compile_s[label] = time.perf_counter() - t0
        steps[label], models[label], opts[label] = step, model, opt

    times = time_interleaved(steps, warmup=args.warmup, repeats=args.repeats, device=device)  # A, B, A, B, ...
    tokens = B * T
    for k, timing in times.items():
        res[f"{k}_step_s"] = timing.median
        res[f"{k}_tokens_per_s"] = tokens / timing.median
    for k in steps:
        res[f"{k}_peak_bytes"], res["memory_method"] = peak_step_memory(steps[k], models[k], opts[k], x, y, device)
    if compile_s:
        res["compile_s"] = compile_s
    if args.profile:
        res["course_profile"] = step_profile(steps["course"], device, args.profile)
    res["ratio_course_over_hf"] = res["course_tokens_per_s"] / res["hf_tokens_per_s"]
    # > 1: Model 5 (fused loss, compiled in compiled rows) is that much faster than the candidate: the ratio of
    # medians, and the course's speed procedure over the paired rounds (rounds ran back to back, so load drift
    # cancels): the median per-round speed-up with its distribution-free 95% interval and verdict
    res["course_speedup_vs"] = {k: res[f"{k}_step_s"] / res["course_step_s"] for k in steps if k != "course"}
    res["course_speedup_vs_paired"] = {}
    for k in steps:
        if k != "course" and len(times[k].times) >= MIN_ROUNDS:  # a dry run (--steps 1) gets no interval
            v = speed_verdict(times[k], times["course"])  # the candidate is Model 5: speedup > 1 = course faster
            res["course_speedup_vs_paired"][k] = {"median_round_speedup": v.speedup, "low": v.low, "high": v.high,
                                                  "rounds": v.rounds, "verdict": v.verdict}
    peak, source = peak_flops(device, amp)
    if peak:
        m = models["course"]
        fpt = flops_per_token(m.num_parameters() - m.wpe.weight.numel(), cfg["n_layer"], cfg["n_embd"], T)
        res.update(peak_flops=peak, peak_flops_source=source, flops_per_token=fpt)
        for k in steps:
            res[f"{k}_mfu"] = res[f"{k}_tokens_per_s"] * fpt / peak
    del hf, models, opts, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def mib(b):
    return "-" if b is None else f"{b / 2**20:,.0f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best available)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="defaults of a device kind (default: gpu on CUDA, else cpu); other flags override them")
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS))
    p.add_argument("--contexts", nargs="+", type=int)
    p.add_argument("--batch", type=int, default=None, help="micro-batch (default: the config's tokens / context)")
    # bf16 autocast on a CPU without native bf16 (AVX2 only) is emulated and takes minutes: fp32 only there
    p.add_argument("--amp", nargs="+", choices=["off", "bf16"])
    p.add_argument("--compile", choices=["off", "on", "both"], help="compiled rows compile both models")
    p.add_argument("--levers", action=argparse.BooleanOptionalAction, default=None,
                   help="also time Model 5 / HF variants (eager rows), each lever A/B in the same run")
    p.add_argument("--chunks", nargs="+", type=int, default=None, help="also time these loss chunk sizes (rows)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", "--steps", dest="repeats", type=int, default=None, help="timed steps per candidate")
    p.add_argument("--profile", type=int, default=None, metavar="N",
                   help="profile N of Model 5's steps: where the time goes (default: 3 on a GPU, 0 = off on CPU)")
    p.add_argument("--out", default=None, help="JSON file (default: runs/bench/train_step-<device>.json)")
    args = p.parse_args(argv)

    device = torch.device(args.device) if args.device else get_device()
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # both models alike; fp32 rows' MFU uses the TF32 peak
        torch.backends.cudnn.allow_tf32 = True
    if args.compile != "off":
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True  # Triton kernels' block sizes (GPU); no effect on CPU
    cuda = device.type == "cuda"
    dev_name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    meta = {"date": date.today().isoformat(), "device": dev_name, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "python": platform.python_version(),
            "mfu_formula": MFU_FORMULA, "warmup": args.warmup, "repeats": args.repeats,
            "fairness": "both: fused AdamW (make_optimizer), same weights, same batch; HF gelu_pytorch_tanh, "
                        "use_cache=False, loss all_token_loss(logits); Model 5 model(x, targets=y) (fused loss); "
                        "compiled rows compile both"}
    print(f"device: {dev_name} | torch {meta['torch']} | transformers {meta['transformers']}")
    results = []
    t_start = time.time()
    for name in args.configs:
        for T in args.contexts:
            for amp in args.amp:
                for comp in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
                    t_row = time.time()
                    r = bench_one(name, T, amp, comp, device, args)
                    r["wall_s"] = time.time() - t_row
                    results.append(r)
                    mfu = f" | MFU course {r['course_mfu']:.1%} HF {r['hf_mfu']:.1%}" if "course_mfu" in r else ""
                    print(f"\n{name} T={T} B={r['batch']} amp={amp} compile={'yes' if comp else 'no'}: "
                          f"course/HF = {r['ratio_course_over_hf']:.2f}{mfu} ({r['wall_s']:.0f} s)")
                    print(f"  {'candidate':<18} {'tok/s':>9} {'vs course':>9} {'paired':>7} {'peak MiB':>9}")
                    for k in [k[:-len("_step_s")] for k in r if k.endswith("_step_s")]:
                        vs = r["course_step_s"] / r[f"{k}_step_s"]
                        peak = mib(r.get(f"{k}_peak_bytes"))
                        pr = r["course_speedup_vs_paired"].get(k)
                        paired = f"{1 / pr['median_round_speedup']:.2f}" if pr else ("1.00" if k == "course" else "-")
                        band = f" ({1 / pr['high']:.2f}-{1 / pr['low']:.2f})" if pr else ""
                        print(f"  {k:<18} {r[f'{k}_tokens_per_s']:>9,.0f} {vs:>9.2f} {paired:>7}{band} {peak:>9}")
                    if "compile_s" in r:
                        print("  compile time (first step): "
                              + ", ".join(f"{k} {v:.0f} s" for k, v in r["compile_s"].items()))
                    if "course_profile" in r:
                        pr = r["course_profile"]
                        idle = (f"; GPU idle {pr['device_idle_share']:.0%} of the wall time"
                                if "device_idle_share" in pr else "")
                        print(f"  Model 5's step by {pr['clock']}: {pr['busy_ms_per_step']:.1f} of "
                              f"{pr['wall_ms_per_step']:.1f} ms busy{idle}; "
                              + ", ".join(f"{g} {v:.0%}" for g, v in pr["shares"].items()))
                        for t in pr["top"][:5]:
                            print(f"    {t['share']:5.1%} {t['ms_per_step']:8.2f} ms  [{t['group']}] {t['name'][:70]}")
                    print(f"  memory: {r['memory_method']}", flush=True)
    print(f"\n(vs course: the candidate's tokens/s over Model 5's, from medians; paired: the median over rounds of "
          f"Model 5's step time over the candidate's; < 1 means slower than Model 5; "
          f"{time.time() - t_start:.0f} s in all)")
    meta["wall_s"] = time.time() - t_start
    safe = dev_name.replace(" ", "_").replace("(", "").replace(")", "")
    out = Path(args.out) if args.out else ROOT / "runs" / "bench" / f"train_step-{safe}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
