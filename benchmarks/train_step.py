"""One training step of Model 5 (course_utils) against Hugging Face's GPT2LMHeadModel.

Same configuration, same weights (Model 5 is built from the HF model with GPT.from_hf_gpt2), same
batch, same loss function on the logits. A "step" is forward, loss, backward and an AdamW update:
Model 5 with the course's optimizer (``course_utils.train.make_optimizer``: fused AdamW on CPU and CUDA), the
HF model with ``torch.optim.AdamW``'s defaults (what a plain HF training loop gets). Steps of the two
are interleaved (A, B, A, B, ...) so that load on the machine hits both alike; warm-up steps are
excluded. Prints tokens/s of each and the ratio course / HF; on a GPU also the model FLOPs
utilization (MFU). Writes everything as JSON.

    python benchmarks/train_step.py                      # CPU: tiny config, fp32 (~90 s); GPU: GPT-2 small (124M)
    python benchmarks/train_step.py --configs tiny --amp off bf16 --contexts 256
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_utils.env import get_device, seed_everything  # noqa: E402
from course_utils.losses import all_token_loss  # noqa: E402
from course_utils.measure import time_interleaved  # noqa: E402
from course_utils.model import GPT  # noqa: E402
from course_utils.train import TrainConfig, autocast_context, make_optimizer, resolve_amp  # noqa: E402

CONFIGS = {
    # name: (n_layer, n_head, n_embd, batch size at context 256; scaled down for longer contexts)
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, batch_tokens=1024),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, batch_tokens=16384),
}

# Dense bf16 peak FLOP/s (no sparsity), from the vendors' data sheets, by a substring of the device name.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "T4": 65e12,  # fp16 (no bf16 tensor cores)
    "V100": 125e12,  # fp16
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():  # ordered: "H100 PCIe" is tried before "H100"
        if key in name:
            return flops
    return None


def flops_per_token(n_params_no_pos: int, n_layer: int, n_embd: int, T: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N) + attention 12 L d T."""
    return 6 * n_params_no_pos + 12 * n_layer * n_embd * T


def build_pair(cfg: dict, T: int, device: torch.device, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    seed_everything(seed)
    hf_cfg = GPT2Config(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"], n_positions=max(T, 1024),
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(hf_cfg).to(device).train()
    ours = GPT.from_hf_gpt2(hf, dropout=0.0).to(device).train()
    return ours, hf


def step_fn(model, opt, x, y, amp_dtype, device, scaler=None):
    def step():
        opt.zero_grad(set_to_none=True)
        with autocast_context(amp_dtype, device):
            out = model(x)
            logits = out.logits if hasattr(out, "logits") else out
            loss = all_token_loss(logits, y)
        loss.backward()
        opt.step()
    return step


def bench_one(name: str, T: int, amp: str, device: torch.device, warmup: int, repeats: int, compile_: bool) -> dict:
    cfg = CONFIGS[name]
    B = max(1, cfg["batch_tokens"] // T)
    ours, hf = build_pair(cfg, T, device)
    amp_dtype, _ = resolve_amp(amp, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (B, T), generator=g).to(device)
    y = torch.randint(0, 50257, (B, T), generator=g).to(device)
    with torch.no_grad():  # same weights -> same logits (fp32)
        diff = (ours.eval()(x[:1]) - hf.eval()(x[:1]).logits).abs().max().item()
    ours.train(), hf.train()
    opt_ours = make_optimizer(ours, TrainConfig(steps=1, lr=1e-4), device)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95))
    runner_ours = torch.compile(ours) if compile_ else ours
    steps = {"course": step_fn(runner_ours, opt_ours, x, y, amp_dtype, device),
             "hf": step_fn(hf, opt_hf, x, y, amp_dtype, device)}
    times = time_interleaved(steps, warmup=warmup, repeats=repeats, device=device)  # A, B, A, B, ...
    tokens = B * T
    res = {"config": name, "context": T, "batch": B, "amp": amp, "compile": compile_,
           "max_abs_logit_diff_fp32": diff, "params": ours.num_parameters()}
    for k, timing in times.items():
        med = timing.median
        res[f"{k}_step_s"] = med
        res[f"{k}_tokens_per_s"] = tokens / med
    res["ratio_course_over_hf"] = res["course_tokens_per_s"] / res["hf_tokens_per_s"]
    peak = peak_flops(device)
    if peak:
        fpt = flops_per_token(ours.num_parameters() - ours.wpe.weight.numel(), cfg["n_layer"], cfg["n_embd"], T)
        res["peak_flops"] = peak
        for k in steps:
            res[f"{k}_mfu"] = res[f"{k}_tokens_per_s"] * fpt / peak
    del ours, hf, opt_ours, opt_hf
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    device = get_device()
    default_cfg = ["gpt2-small"] if device.type == "cuda" else ["tiny"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=default_cfg, choices=sorted(CONFIGS))
    p.add_argument("--contexts", nargs="+", type=int, default=[256, 1024])
    # bf16 autocast on a CPU without native bf16 (AVX2 only) is emulated and takes minutes: fp32 only by default there
    p.add_argument("--amp", nargs="+", default=["off", "bf16"] if device.type == "cuda" else ["off"], choices=["off", "bf16"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10 if device.type == "cuda" else 15)
    p.add_argument("--compile", action="store_true", help="also run Model 5 under torch.compile (GPU)")
    p.add_argument("--out", default=None, help="JSON file (default: runs/bench/train_step-<device>.json)")
    args = p.parse_args(argv)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # both models alike
        torch.backends.cudnn.allow_tf32 = True
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    meta = {"date": date.today().isoformat(), "device": dev_name, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "python": platform.python_version()}
    print(f"device: {dev_name} | torch {meta['torch']} | transformers {meta['transformers']}")
    print(f"{'config':<11} {'T':>5} {'B':>3} {'amp':>4} {'cmp':>3} {'course tok/s':>13} {'HF tok/s':>11} {'ratio':>6}"
          + ("  course MFU  HF MFU" if device.type == "cuda" else ""))
    results = []
    t_start = time.time()
    for name in args.configs:
        for T in args.contexts:
            for amp in args.amp:
                for comp in ([False, True] if args.compile else [False]):
                    r = bench_one(name, T, amp, device, args.warmup, args.repeats, comp)
                    results.append(r)
                    line = (f"{name:<11} {T:>5} {r['batch']:>3} {amp:>4} {'yes' if comp else 'no':>3} "
                            f"{r['course_tokens_per_s']:>13,.0f} {r['hf_tokens_per_s']:>11,.0f} {r['ratio_course_over_hf']:>6.2f}")
                    if "course_mfu" in r:
                        line += f"  {r['course_mfu']:>9.1%} {r['hf_mfu']:>7.1%}"
                    print(line, flush=True)
    print(f"(course = Model 5 + course AdamW; HF = GPT2LMHeadModel + torch.optim.AdamW defaults; ratio > 1: Model 5 faster; "
          f"{time.time() - t_start:.0f} s)")
    safe = dev_name.replace(" ", "_").replace("(", "").replace(")", "")
    out = Path(args.out) if args.out else ROOT / "runs" / "bench" / f"train_step-{safe}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
