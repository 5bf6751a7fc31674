"""Does each lesson's full profile fit a free Colab T4? Measured on a bigger GPU made to look like one.

For each lesson's largest full-profile training step (``course_utils.preflight.LESSONS``: the model, batch,
context, gradient checkpointing and the frozen copies the lesson keeps), this script runs two AdamW steps, in
fp16 autocast with a GradScaler where the lesson uses ``amp="auto"`` (a T4 has no fast bf16: what "auto" falls
back to there) and in fp32 where it trains in fp32, while the
process may use at most 15 GiB of the GPU (``torch.cuda.set_per_process_memory_fraction``), and records the
absolute peak (``max_memory_allocated``: weights, gradients, moments, activations) or the out-of-memory error.
``preflight`` reads the file it writes (``results/<gpu>/t4_check.json``) for its T4 column.

    python scripts/t4_check.py                 # on a CUDA GPU: every lesson, results/<gpu>/t4_check.json
    python scripts/t4_check.py --dry           # anywhere: tiny shapes, same code path, prints, writes nothing

The models have random weights (memory does not depend on their values); GPT-2 small is Model 5, the others
are the lecture's architectures from their configs (``pretrained.build_from_config``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_utils import preflight  # noqa: E402
from course_utils.env import get_device  # noqa: E402

T4_BYTES = 15 * 2**30
HUB_NAME = {preflight.GPT2_MEDIUM.name: "gpt2-medium", preflight.GPT_NEO_125M.name: "EleutherAI/gpt-neo-125M",
            preflight.SMOLLM2_135M.name: "SmolLM2-135M-Instruct"}


def build(arch: preflight.Arch, context: int, device: torch.device, dry: bool) -> torch.nn.Module:
    """A random-weight model of ``arch`` on ``device`` (tiny with ``dry``: 2 layers, a 512-token vocabulary)."""
    if arch.name not in HUB_NAME or dry:
        from course_utils.model import GPT, GPTConfig

        layers, width, vocab = (2, 64, 512) if dry else (arch.n_layer, arch.n_embd, arch.vocab)
        return GPT(GPTConfig(vocab_size=vocab, block_size=context, n_layer=layers, n_head=max(1, width // 64),
                             n_embd=width, dropout=0.0)).to(device)
    from course_utils.pretrained import build_from_config

    model = build_from_config(HUB_NAME[arch.name], device=device)
    model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    return model


def loss_of(model, x):
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())


def one_lesson(step: preflight.LessonStep, device: torch.device, dry: bool) -> dict:
    if dry:
        step = replace(step, batch=2, context=16)
    half = step.amp != "off"  # the lesson's amp="auto" falls back to fp16 + GradScaler on a T4; "off" stays fp32
    rec = {"lesson": step.lesson, "shape": step.shape, "amp": "fp16 + GradScaler" if half else "fp32",
           "cap_bytes": T4_BYTES}
    model = frozen = None
    try:
        model = build(step.arch, step.context, device, dry)
        if step.grad_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        frozen = [{k: v.detach().clone() for k, v in model.state_dict().items()} for _ in range(step.frozen_copies)]
        vocab = model.config.vocab_size
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=half)
        x = torch.randint(0, vocab, (step.batch, step.context), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(2):  # the first creates AdamW's moments; the second is the step a lesson repeats
            with torch.autocast(device.type, dtype=torch.float16, enabled=half):
                loss = loss_of(model, x)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            rec["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        rec.update(fits=True, seconds=round(time.perf_counter() - t0, 2), loss=loss.item())
    except torch.OutOfMemoryError as err:
        rec.update(fits=False, error=str(err).splitlines()[0][:200])
    finally:
        del model, frozen
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny shapes on any device; write nothing")
    parser.add_argument("--lessons", nargs="*", default=list(preflight.LESSONS))
    parser.add_argument("--out", default=None, help="folder (default results/<gpu-name>)")
    args = parser.parse_args(argv)
    device = get_device()
    if device.type != "cuda" and not args.dry:
        raise SystemExit("t4_check needs a CUDA GPU (it caps the GPU's memory at 15 GiB); use --dry to test the "
                         "code path on this machine")
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, T4_BYTES / total), device)
    records = [one_lesson(preflight.LESSONS[f"{int(n):02d}"], device, args.dry) for n in args.lessons]
    for r in records:
        peak = f"{r['peak_bytes'] / 2**30:.2f} GiB" if "peak_bytes" in r else "-"
        verdict = "fits" if r["fits"] else "does NOT fit"
        print(f"lesson {r['lesson']}: {verdict} under 15 GiB in {r['amp']} (peak {peak}); {r['shape']}")
    if args.dry:
        return 0
    from datetime import date

    gpu = torch.cuda.get_device_name(device)
    out = Path(args.out) if args.out else preflight.REPO_ROOT / "results" / preflight.slug(gpu)
    out.mkdir(parents=True, exist_ok=True)
    (out / "t4_check.json").write_text(json.dumps({"date": date.today().isoformat(), "gpu": gpu,
                                                   "torch": torch.__version__, "lessons": records}, indent=1))
    print(f"wrote {out / 't4_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
