"""Lesson 3, "Maximize the X factor": measuring what a KL fine-tune did to a model's text.

    mask = letter_token_mask(tokenizer, "x", vocab_size=V)          # course_utils.losses
    result = evaluate_generations(model, tokenizer, PROMPTS, mask, judge=base_model, seed=0)
    result.rate, result.perplexity                                   # R and readability

- ``x_rate``: the lecture's metric R = generated tokens containing the letter / all generated tokens.
- ``generate_samples``: seeded sampling from several prompts (the same seed gives the same text,
  whatever ran before, and the global random state is left untouched).
- ``judge_perplexity``: readability, as the perplexity a frozen model (the original one) gives the
  generated continuations: natural text scores low, word salad scores high.
- ``random_token_batches`` / ``tilted_target``: the batches of the lecture's training loop (random
  token ids) and the target of the "beyond the lecture" run (the frozen model's own distribution,
  tilted toward the letter).
- ``kl_by_position`` / ``start_loss_by_ratio``: where the starting loss comes from (the position in the
  sequence, and the alpha/beta ratio the lecture does not give).
- ``loss_level_verdict`` / ``behaviour_verdict`` / ``start_loss_verdict`` / ``TiltRule``: the claims table's
  procedures (a run that had fewer steps than the lecture and fell short is inconclusive, never "does not hold").
- ``plot_run_scores``: R and readability per run, in neutral colours (no holds/does-not-hold semantics).
- ``generation_widget``: try prompts and temperatures on the base and fine-tuned models.
- ``check_letter_target``: the checker of the lesson's exercise.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, CheckResult
from ..model import eval_mode
from ..plots import bar_chart
from ..tables import Table

#: Prompts the lesson generates from (plain text: GPT-2 is a base model, not a chat model).
DEFAULT_PROMPTS = (
    "The weather today is",
    "My favourite food is",
    "Once upon a time, a little girl",
    "The best way to learn a new language is",
)


# ---- The lecture's target distribution and the KL loss -------------------------------------------
def _vocab_rows(tokenizer, vocab_size: int | None) -> int:
    n_tok = len(tokenizer)
    if vocab_size is None:
        return n_tok
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int (the model's output size), got {vocab_size!r}")
    if vocab_size < n_tok:
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the tokenizer ({n_tok} tokens): the model could not output "
            "every token id. Pass the model's output size, e.g. model.get_output_embeddings().weight.shape[0]."
        )
    return vocab_size


def letter_token_mask(tokenizer, letter: str = "x", vocab_size: int | None = None,
                      include_special: bool = False) -> torch.Tensor:
    """A (V,) bool tensor: True where token ``i`` decoded on its own contains ``letter`` (case-insensitive).

    ``V`` is ``vocab_size`` (the model's output size) or, when not given, ``len(tokenizer)``; rows past the
    tokenizer's length (padding rows of the embedding) are False. Special tokens (``<|endoftext|>`` contains
    an x!) do not count unless ``include_special=True``.
    """
    if not isinstance(letter, str) or not letter.strip():
        raise ValueError(f"letter must be a non-empty string such as 'x', got {letter!r}")
    rows = _vocab_rows(tokenizer, vocab_size)
    n_tok = len(tokenizer)
    needle = letter.lower()
    texts = tokenizer.batch_decode([[i] for i in range(n_tok)])
    mask = torch.zeros(rows, dtype=torch.bool)
    mask[:n_tok] = torch.tensor([needle in t.lower() for t in texts], dtype=torch.bool)
    if not include_special:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        special = [i for i in special if 0 <= i < n_tok]
        if special:
            mask[torch.tensor(special)] = False
    return mask


def x_factor_target(tokenizer, alpha: float, beta: float, letter: str = "x", vocab_size: int | None = None,
                    include_special: bool = False) -> torch.Tensor:
    """Lesson 3's target distribution P, a (V,) probability vector that sums to 1.

    Every token containing ``letter`` (see ``letter_token_mask``) gets weight ``alpha``, every other token
    ``beta``; the weights are then normalised. The lecture uses ``alpha > beta``. ``vocab_size`` is the model's
    output size when it differs from ``len(tokenizer)``: rows that are no token at all get probability 0.
    """
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0 (a weight before normalising), got {v!r}")
    if alpha == 0 and beta == 0:
        raise ValueError("alpha and beta are both 0: there is no probability to spread (use alpha > beta > 0)")
    mask = letter_token_mask(tokenizer, letter, vocab_size, include_special)
    if int(mask.sum()) == 0:
        raise ValueError(f"no token of this tokenizer contains {letter!r}: the target would not favour anything")
    return _target_from_mask(mask, len(tokenizer), alpha, beta, letter)


def _target_from_mask(mask: torch.Tensor, n_tok: int, alpha: float, beta: float, letter: str) -> torch.Tensor:
    weights = torch.zeros(mask.numel(), dtype=torch.float64)
    weights[:n_tok] = beta
    weights[mask] = alpha
    if weights.sum() == 0:
        raise ValueError(f"alpha=0 and no token without {letter!r} to give beta to: nothing is left")
    return (weights / weights.sum()).float()


def kl_to_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(P || Q_model) averaged over the B*T rows: ``F.kl_div(log_softmax(logits), P, reduction="batchmean")``.

    ``logits`` are B x T x V (or N x V); ``target`` is the (V,) distribution P shared by every row (or one
    row per position, same shape as the logits). Per row: sum_i P(i) * (log P(i) - log Q(i)); rows where
    P(i) = 0 contribute nothing for that i.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (2, 3):
        raise ValueError(f"logits must be a (batch, time, vocab) or (rows, vocab) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a tensor (e.g. from x_factor_target), got {type(target).__name__}")
    V = logits.size(-1)
    if target.size(-1) != V:
        raise ValueError(
            f"the target has {target.size(-1)} entries but the logits have V={V}: build the target with "
            f"vocab_size={V} (the model's output size), not len(tokenizer)"
        )
    log_q = F.log_softmax(logits.reshape(-1, V).float(), dim=-1)  # (B*T) x V
    p = target.to(log_q.device, torch.float32)
    if p.dim() == 1:
        p = p.expand_as(log_q)
    elif p.shape != logits.shape:
        raise ValueError(f"target must be (V,) or the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}")
    else:
        p = p.reshape(-1, V)
    return F.kl_div(log_q, p, reduction="batchmean")



def kl_by_position(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) at each position, averaged over the batch: a (T,) tensor whose mean is ``kl_to_target``.

    ``logits`` are B x T x V, ``target`` the (V,) distribution P. It shows why the starting loss depends on the
    sequence length: the first positions, with little context, sit further from P than later ones.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be a (batch, time, vocab) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if not isinstance(target, torch.Tensor) or target.dim() != 1 or target.numel() != logits.size(-1):
        raise ValueError(f"target must be a (V,) tensor with V={logits.size(-1)} (from x_factor_target)")
    log_q = F.log_softmax(logits.float(), dim=-1)
    p = target.to(log_q.device, torch.float32)
    log_p = torch.where(p > 0, p.log(), torch.zeros_like(p))  # 0 * log 0 = 0
    return (p * (log_p - log_q)).sum(-1).mean(0)


def start_loss_by_ratio(logits: torch.Tensor, tokenizer, ratios: Sequence[float], letter: str = "x",
                        vocab_size: int | None = None) -> dict:
    """The KL loss of the same logits for several ``alpha / beta`` ratios: ``{ratio: loss}``.

    Only the ratio matters (P is normalised), so each target is built with ``alpha=ratio, beta=1``. The lecture
    does not give alpha and beta; this shows which starting losses its figure is compatible with.
    """
    ratios = list(ratios)
    if not ratios or not all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in ratios):
        raise ValueError(f"ratios must be a non-empty list of finite numbers > 0 (alpha / beta), got {ratios!r}")
    mask = letter_token_mask(tokenizer, letter, vocab_size)  # decode the vocabulary once, not once per ratio
    if int(mask.sum()) == 0:
        raise ValueError(f"no token of this tokenizer contains {letter!r}: the target would not favour anything")
    return {r: kl_to_target(logits, _target_from_mask(mask, len(tokenizer), float(r), 1.0, letter)).item()
            for r in ratios}


@dataclass
class Sample:
    prompt: str
    ids: list  # the generated token ids (prompt excluded, stopped before the end-of-sequence token)
    text: str  # the generated text


@dataclass
class GenerationResult:
    samples: list = field(default_factory=list)  # Sample per prompt
    rate: float = float("nan")  # R: generated tokens containing the letter / generated tokens
    n_tokens: int = 0  # generated tokens counted
    n_letter: int = 0  # of which contain the letter
    perplexity: float | None = None  # the judge's perplexity on the generated tokens

    def texts(self) -> list[str]:
        return [s.text for s in self.samples]


def _check_model(model) -> torch.device:
    if not hasattr(model, "generate") or not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"expected a Hugging Face causal language model (from load_pretrained), got {type(model).__name__}"
        )
    return next(model.parameters()).device


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of non-empty strings, got {prompts!r}")
    return prompts


def x_rate(token_ids, mask: torch.Tensor) -> tuple[float, int, int]:
    """R = (tokens whose text contains the letter) / (all tokens), with the two counts: ``(R, hits, total)``.

    ``token_ids`` is a list of id lists (one per generation) or a tensor; ``mask`` is the (V,) bool tensor
    of ``letter_token_mask``.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
        raise ValueError("mask must be the (V,) bool tensor returned by course_utils.losses.letter_token_mask")
    if isinstance(token_ids, torch.Tensor):
        flat = token_ids.reshape(-1).tolist()
    else:
        flat = [int(i) for row in token_ids for i in (row.tolist() if isinstance(row, torch.Tensor) else row)]
    if not flat:
        raise ValueError("there are no generated tokens to count (did every generation stop at once?)")
    bad = [i for i in flat if not 0 <= i < mask.numel()]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are outside the mask's vocabulary of {mask.numel()}")
    hits = int(mask[torch.tensor(flat)].sum())
    return hits / len(flat), hits, len(flat)


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: Sequence[str] = DEFAULT_PROMPTS, max_new_tokens: int = 32,
                     temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> list[Sample]:
    """Sample a continuation of each prompt, reproducibly (one batch, drawn after ``torch.manual_seed(seed)``).

    The prompts are left-padded into one batch. Generation stops at the model's end-of-sequence token,
    which is not counted as generated text. The global random state is left as it was.
    """
    device = _check_model(model)
    prompts = _check_prompts(prompts)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature}")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    with eval_mode(model):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # Hugging Face sampling draws from torch's global generator
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=top_k or 0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    samples = []
    for prompt, row in zip(prompts, out[:, enc["input_ids"].shape[1]:].tolist()):
        ids = row[: row.index(eos)] if eos in row else row
        samples.append(Sample(prompt, ids, tokenizer.decode(ids, skip_special_tokens=True)))
    return samples


@torch.no_grad()
def judge_perplexity(judge, tokenizer, samples: Sequence[Sample]) -> float:
    """The ``judge`` model's perplexity on the generated tokens (given their prompts): exp(mean NLL).

    With the frozen original model as the judge, this measures how far the text has drifted from
    natural language: around 10-30 for ordinary text, hundreds or thousands for word salad.
    """
    device = _check_model(judge)
    nll, count = 0.0, 0
    with eval_mode(judge):
        for s in samples:
            if not s.ids:
                continue
            prompt_ids = tokenizer(s.prompt, return_tensors="pt")["input_ids"][0].tolist()
            ids = torch.tensor([prompt_ids + list(s.ids)], device=device)
            logp = F.log_softmax(judge(ids).logits[0, :-1].float(), dim=-1)
            tgt = ids[0, 1:]
            token_logp = logp.gather(1, tgt[:, None])[:, 0][len(prompt_ids) - 1:]  # generated tokens only
            nll -= token_logp.sum().item()
            count += token_logp.numel()
    if count == 0:
        raise ValueError("no generated tokens to judge (every sample is empty)")
    return math.exp(nll / count)


def evaluate_generations(model, tokenizer, prompts: Sequence[str], mask: torch.Tensor, judge=None,
                         max_new_tokens: int = 32, temperature: float = 1.0, top_k: int | None = None,
                         seed: int = 0) -> GenerationResult:
    """Seeded samples from every prompt, their R (``x_rate``) and, with a ``judge``, its perplexity."""
    samples = generate_samples(model, tokenizer, prompts, max_new_tokens, temperature, top_k, seed)
    res = GenerationResult(samples=samples)
    if any(s.ids for s in samples):
        res.rate, res.n_letter, res.n_tokens = x_rate([s.ids for s in samples], mask)
        if judge is not None:
            res.perplexity = judge_perplexity(judge, tokenizer, samples)
    return res


class SideBySide:
    """Generated text of several models, one row per prompt, one column per model (HTML in Jupyter)."""

    def __init__(self, results: dict):
        if not results:
            raise ValueError("give at least one {label: GenerationResult}")
        self.results = results
        self.prompts = [s.prompt for s in next(iter(results.values())).samples]

    def table(self) -> Table:
        """One row per prompt, one column per model; the first row gives each model's R and judged perplexity."""
        def score(r) -> str:
            return f"R = {r.rate:.2f}" + (f", ppl {r.perplexity:,.0f}" if r.perplexity is not None else "")

        rows = [{"prompt": "(R, judged perplexity)", **{k: score(r) for k, r in self.results.items()}}]
        rows += [{"prompt": p, **{k: r.samples[j].text for k, r in self.results.items()}}
                 for j, p in enumerate(self.prompts)]
        return Table(rows, columns=["prompt", *self.results])

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def __repr__(self) -> str:
        lines = []
        for j, p in enumerate(self.prompts):
            lines.append(f"PROMPT: {p}")
            for k, r in self.results.items():
                lines.append(f"  [{k}] {r.samples[j].text!r}")
        return "\n".join(lines)


def random_token_batches(vocab_size: int, batch_size: int, seq_len: int) -> Callable[[torch.Generator], tuple]:
    """The lecture's training batches: ``(random token ids B x T, None)`` drawn from the loop's generator.

    There are no next-token targets: the loss compares every position's prediction with one fixed target
    distribution, so ``train()`` calls ``loss_fn(logits, None)``.
    """
    for name, v in (("vocab_size", vocab_size), ("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")

    def batches(generator: torch.Generator):
        return torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator), None

    return batches


def tilted_target(ref_logits: torch.Tensor, mask: torch.Tensor, log_bonus: float) -> torch.Tensor:
    """The frozen model's distribution, tilted toward the letter: P'(i) ∝ Q_ref(i) * exp(log_bonus * [i has it]).

    ``ref_logits`` (B x T x V) come from the frozen original model; the result has the same shape and sums to 1
    over V. This is the optimum of "more x, but stay close to the original model" (maximize the x-reward minus
    a KL penalty toward the reference), the idea behind RLHF's KL-regularised objective.
    """
    if mask.dtype != torch.bool or mask.dim() != 1 or mask.numel() != ref_logits.size(-1):
        raise ValueError(f"mask must be a (V,) bool tensor with V={ref_logits.size(-1)} (the logits' last size)")
    if not math.isfinite(log_bonus):
        raise ValueError(f"log_bonus must be a finite number (log(alpha/beta)), got {log_bonus}")
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    return F.softmax(logq + log_bonus * mask.to(logq.device, logq.dtype), dim=-1)


# ---- The claims table's procedures ---------------------------------------------------------------
def _check_steps(steps, lecture_steps):
    for name, v in (("steps", steps), ("lecture_steps", lecture_steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int (optimizer steps), got {v!r}")


def loss_level_verdict(final_loss: float, level: float, steps: int, lecture_steps: int) -> tuple[str, str]:
    """Did a run reach the lecture's loss level? Returns ``(verdict, why)``.

    Holds when ``final_loss <= level``, however few steps it took (reaching the figure sooner confirms it).
    Falling short with fewer steps than the lecture's is INCONCLUSIVE (the budget, not the claim); falling
    short with the lecture's steps or more does not hold.
    """
    _check_steps(steps, lecture_steps)
    if not (isinstance(level, (int, float)) and math.isfinite(level) and level > 0):
        raise ValueError(f"level must be a finite loss > 0 (the lecture's figure, with its tolerance), got {level!r}")
    if not math.isfinite(final_loss):
        raise ValueError(f"final_loss is {final_loss}: the run diverged; lower the learning rate and rerun it")
    if final_loss <= level:
        return HOLDS, ""
    if steps < lecture_steps:
        return INCONCLUSIVE, (f"{final_loss:.3g} after {steps} of the lecture's {lecture_steps} steps "
                              "(this profile's budget): run the full profile (a GPU) to decide")
    return DOES_NOT_HOLD, f"{final_loss:.3g} > {level:g} after {steps} steps (the lecture's {lecture_steps})"


def behaviour_verdict(condition: bool, loss_reached: bool, why_not_reached: str,
                      confirms_early: bool = False) -> tuple[str, str]:
    """A claim about a model at the end of the lecture's run, judged only once the run got there.

    ``condition`` is the measured claim (e.g. few x tokens and natural text); ``loss_reached`` whether the run's
    loss reached the lecture's level (``loss_level_verdict(...)[0] == HOLDS``). Before that, the model is not
    yet the one the lecture describes: INCONCLUSIVE, with ``why_not_reached`` as the reason. With
    ``confirms_early=True`` (a claim about where training leads, e.g. "R is about 1"), a condition already met
    before the lecture's level holds; one not yet met is still inconclusive.
    """
    if not all(isinstance(v, bool) for v in (condition, loss_reached, confirms_early)):
        raise ValueError("condition, loss_reached and confirms_early must be bools "
                         "(what was measured; whether the loss got there; whether an early result confirms)")
    if loss_reached or (confirms_early and condition):
        return (HOLDS if condition else DOES_NOT_HOLD), ""
    if not why_not_reached:
        raise ValueError("say why the run is not at the lecture's level (why_not_reached), e.g. its step budget")
    return INCONCLUSIVE, why_not_reached


def start_loss_verdict(figure: float, by_ratio: dict, lecture_model: bool, tolerance: float = 0.15
                       ) -> tuple[str, str]:
    """The lecture's starting loss against ``start_loss_by_ratio``: ``(verdict, why)``; never holds.

    The lecture does not give alpha and beta, so a figure inside the range the ratios span (within
    ``tolerance``, relative) is INCONCLUSIVE: some ratio gives it, and nothing says which one the lecture used.
    Outside that range it does not hold on the lecture's own model (``lecture_model=True``); on another model
    it is inconclusive too (the start depends on the model).
    """
    if not by_ratio or not all(math.isfinite(v) for v in by_ratio.values()):
        raise ValueError("by_ratio must be the non-empty {ratio: loss} of start_loss_by_ratio, with finite losses")
    if not (isinstance(figure, (int, float)) and figure > 0 and 0 <= tolerance < 1):
        raise ValueError(f"figure must be a loss > 0 and 0 <= tolerance < 1, got {figure!r}, {tolerance!r}")
    lo, hi = min(by_ratio.values()), max(by_ratio.values())
    span = (f"alpha/beta from {min(by_ratio):g} to {max(by_ratio):g} gives a starting loss from {lo:.2f} to "
            f"{hi:.2f}")
    if lo * (1 - tolerance) <= figure <= hi * (1 + tolerance):
        return INCONCLUSIVE, f"the lecture does not give alpha/beta; {span}, which includes {figure:g}"
    if lecture_model:
        return DOES_NOT_HOLD, f"{span}: no ratio gives {figure:g}"
    return INCONCLUSIVE, f"{span}, but on another model than the lecture's: the start depends on the model"


@dataclass(frozen=True)
class TiltRule:
    """The rule for "a KL-regularised objective raises R and keeps the text readable", fixed before the run.

    Perplexities are the original model's, on each model's own samples from the same prompts and seed.
    Holds: R reaches ``min_rate`` and at least ``min_gain`` times the original's, with a perplexity within
    ``readable`` times the original's. Does not hold: R did not rise, or the perplexity is over ``nonsense``
    times the original's (the lecture's "nonsense"). Anything between: inconclusive.
    """

    min_rate: float = 0.05
    min_gain: float = 2.0
    readable: float = 2.0
    nonsense: float = 10.0

    def __post_init__(self):
        if not (0 < self.min_rate <= 1 and self.min_gain >= 1 and 1 <= self.readable <= self.nonsense):
            raise ValueError(f"need 0 < min_rate <= 1, min_gain >= 1 and 1 <= readable <= nonsense, got {self}")

    def __str__(self) -> str:
        return (f"holds if R >= max({self.min_gain:g} x the original's R, {self.min_rate:g}) and the perplexity is "
                f"within {self.readable:g}x the original's; does not hold if R does not rise or the perplexity is "
                f"over {self.nonsense:g}x; otherwise inconclusive")

    def verdict(self, original: GenerationResult, tilted: GenerationResult) -> tuple[str, str]:
        """``(verdict, why)`` for the tilted model's generations against the original model's."""
        for name, r in (("original", original), ("tilted", tilted)):
            if not isinstance(r, GenerationResult) or r.perplexity is None or not r.n_tokens:
                raise ValueError(f"{name} must be a GenerationResult with a judged perplexity "
                                 "(evaluate_generations(..., judge=original_model))")
        ratio = tilted.perplexity / original.perplexity
        if tilted.rate <= original.rate or ratio > self.nonsense:
            return DOES_NOT_HOLD, f"rule fixed before the run: {self}"
        if tilted.rate >= max(self.min_gain * original.rate, self.min_rate) and ratio <= self.readable:
            return HOLDS, f"rule fixed before the run: {self}"
        return INCONCLUSIVE, (f"R rose to {tilted.rate:.2f} with a perplexity {ratio:.1f}x the original's: between "
                              f"the rule's bounds ({self})")


# ---- The plot ------------------------------------------------------------------------------------
#: One neutral colour per run: no green (the tables' "holds") and no red ("does not hold").
RUN_COLOURS = ("#4c72b0", "#8172b3", "#937860", "#64b5cd", "#7f7f7f")


def plot_run_scores(results: dict, axes=None):
    """Two bar charts, one bar per run: R, and the original model's perplexity on its samples (log scale).

    Each run keeps its own neutral colour in both charts (``RUN_COLOURS``), so that no bar reads as a verdict.
    """
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("give at least one {label: GenerationResult}")
    if len(results) > len(RUN_COLOURS):
        raise ValueError(f"at most {len(RUN_COLOURS)} runs (one neutral colour each), got {len(results)}")
    if any(r.perplexity is None for r in results.values()):
        raise ValueError("every result needs a judged perplexity: evaluate_generations(..., judge=original_model)")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = list(results)
    bar_chart(labels, [results[k].rate for k in labels], "R: share of generated tokens containing x", "R",
              ax=axes[0], annotate="{:.2f}")
    bar_chart(labels, [results[k].perplexity for k in labels], "Readability: the original model's perplexity",
              "perplexity (log scale)", ax=axes[1], annotate="{:,.0f}")
    axes[1].set_yscale("log")
    for ax in axes:
        for bar, colour in zip(ax.patches, RUN_COLOURS):
            bar.set_color(colour)
    return axes


# ---- The widget ----------------------------------------------------------------------------------


def generation_widget(models: dict, tokenizer, mask: torch.Tensor | None = None, prompt: str = DEFAULT_PROMPTS[0],
                      max_new_tokens: int = 32):
    """An ipywidgets panel: pick a model, type a prompt, set the temperature and seed, generate.

    ``models`` maps a label to a model. With ``mask``, each generation also shows its R. Returns the widget
    (display it as a cell's last expression); headless runs just show its text form.
    """
    import ipywidgets as w

    if not models:
        raise ValueError("give at least one {label: model}")
    choice = w.Dropdown(options=list(models), description="model")
    text = w.Textarea(value=prompt, description="prompt", layout=w.Layout(width="95%"))
    wide = {"description_width": "initial"}  # the whole label ("temperature", not "temperat...")
    temp = w.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.1, description="temperature", style=wide)
    seed = w.IntText(value=0, description="seed", style=wide)
    n_tokens = w.IntSlider(value=max_new_tokens, min=4, max=128, step=4, description="new tokens", style=wide)
    button = w.Button(description="Generate", button_style="primary")
    out = w.Output()

    def on_click(_):
        with out:
            out.clear_output()
            try:
                s = generate_samples(models[choice.value], tokenizer, [text.value], n_tokens.value,
                                     temp.value, None, seed.value)[0]
            except ValueError as err:
                print(f"cannot generate: {err}")
                return
            print(f"[{choice.value}] {s.prompt}{s.text}")
            if mask is not None and s.ids:
                r, hits, total = x_rate([s.ids], mask)
                print(f"R = {hits}/{total} = {r:.2f}")

    button.on_click(on_click)
    return w.VBox([choice, text, w.HBox([temp, seed]), n_tokens, button, out])


# ---- The exercise --------------------------------------------------------------------------------


def check_letter_target(candidate, tokenizer, letter: str, alpha: float, beta: float,
                        vocab_size: int | None = None, atol: float = 1e-6) -> CheckResult:
    """The exercise's checker: is ``candidate`` the target distribution for ``letter`` with these weights?

    Checks, in order, and reports every failure with what to fix: a tensor of shape (V,), no negative
    entries, sums to 1, and equals ``x_factor_target(tokenizer, alpha, beta, letter, vocab_size)``
    (naming tokens that got the wrong weight).
    """
    msgs = []
    if candidate is None:
        return CheckResult(False, ["nothing to check yet: build your target tensor and pass it in"])
    if not isinstance(candidate, torch.Tensor):
        return CheckResult(False, [f"expected a torch.Tensor, got {type(candidate).__name__}"])
    reference = x_factor_target(tokenizer, alpha, beta, letter, vocab_size)
    V = reference.numel()
    if tuple(candidate.shape) != (V,):
        return CheckResult(False, [f"shape must be ({V},): one probability per vocabulary row; got "
                                   f"{tuple(candidate.shape)}"])
    cand = candidate.detach().double().cpu()
    if not torch.isfinite(cand).all():
        return CheckResult(False, ["the target has NaN or infinite entries (did you divide by zero?)"])
    if (cand < 0).any():
        msgs.append(f"{int((cand < 0).sum())} entries are negative; probabilities are >= 0")
    total = cand.sum().item()
    if abs(total - 1) > 1e-4:
        msgs.append(f"it sums to {total:.6f}, not 1: divide the weights by their sum")
    mask = letter_token_mask(tokenizer, letter, vocab_size)
    ref = reference.double()
    wrong = (cand - ref).abs() > atol + 1e-4 * ref
    if wrong.any():
        idx = wrong.nonzero()[:, 0].tolist()
        miss = [i for i in idx if mask[i]]
        extra = [i for i in idx if not mask[i]]
        show = lambda ids: ", ".join(repr(tokenizer.decode([i])) for i in ids[:5])
        if miss:
            msgs.append(f"{len(miss)} tokens containing {letter!r} have the wrong probability, e.g. {show(miss)} "
                        f"(expected {ref[miss[0]].item():.3g}, got {cand[miss[0]].item():.3g})")
        if extra:
            msgs.append(f"{len(extra)} tokens without {letter!r} have the wrong probability, e.g. {show(extra)} "
                        f"(expected {ref[extra[0]].item():.3g}, got {cand[extra[0]].item():.3g}); "
                        "matching is case-insensitive and special tokens do not count")
    if msgs:
        return CheckResult(False, msgs)
    n = int(mask.sum())
    return CheckResult(True, [f"{n} tokens contain {letter!r}; they carry {ref[mask].sum().item():.1%} of the "
                              "probability",
                              "shape, sum and every entry match"])
