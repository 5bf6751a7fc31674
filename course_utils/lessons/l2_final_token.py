"""Lesson 2's measurements: text quality of generated text, loss noise, target tokens per batch,
and the checker for the "Your turn" exercise (a loss on the last k tokens).

    known_word_share("Alice was beginnin", vocabulary)   # share of words that exist in the training text
    space_token_share(ids, tokenizer)                     # share of tokens that begin with a space
    loss_noise(history.train_loss)                        # std of step-to-step changes, last half
    count_target_tokens(final_token_loss, 8, 64)          # -> 8: positions that get a gradient
    evaluate_losses(model, test_batches, {"all": all_token_loss, "last": final_token_loss})
    check_last_k_loss(my_last_k_loss)                     # PASSED, or NOT YET and what is wrong

The point is that "missing spaces, tokens run together" and "the curve is noisier" become numbers.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..claims import CheckResult
from ..env import resolve_device
from ..losses import all_token_loss, final_token_loss
from ..model import eval_mode
from ..plots import smooth

#: A word: letters, optionally with an apostrophe part ("alice's", "don't").
WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased (punctuation, digits and spaces are separators)."""
    if not isinstance(text, str):
        raise TypeError(f"words() needs a string, got {type(text).__name__}; decode token ids first (tokenizer.decode)")
    return [w.lower() for w in WORD_RE.findall(text)]


def word_vocabulary(text: str | Iterable[str]) -> frozenset:
    """The set of (lower-cased) words in a training text, or in a list of documents."""
    if isinstance(text, str):
        return frozenset(words(text))
    return frozenset(w for doc in text for w in words(doc))


def known_word_share(text: str, vocabulary: Iterable[str]) -> float:
    """Share of the words in ``text`` that also occur in ``vocabulary`` (e.g. the training text's words).

    Tokens run together ("Alicewas", "thequeen") make words no dictionary holds, so this share falls.
    A text with no words at all scores 0.0 (nothing readable was produced).
    """
    if isinstance(vocabulary, str):
        raise TypeError("vocabulary must be a set of words, not a string; build it with word_vocabulary(text)")
    vocab = vocabulary if isinstance(vocabulary, (set, frozenset)) else frozenset(vocabulary)
    if not vocab:
        raise ValueError("the vocabulary is empty; build it from the training text with word_vocabulary(text)")
    ws = words(text)
    if not ws:
        return 0.0
    return sum(w in vocab for w in ws) / len(ws)


def _as_id_list(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"token ids must be 1-D (one sequence), got shape {tuple(ids.shape)}; pass one row, e.g. "
                             "out[0]")
        return ids.tolist()
    return [int(i) for i in ids]


def space_token_share(ids, tokenizer) -> float:
    """Share of the tokens ``ids`` whose text begins with a space (GPT-2 marks word starts that way).

    Real English text has a typical share (measure it on held-out text); generated text whose
    tokens run together without spaces scores lower.
    """
    ids = _as_id_list(ids)
    if not ids:
        raise ValueError("no token ids given: generate some tokens first")
    pieces = [tokenizer.decode([i]) for i in ids]
    return sum(p.startswith(" ") for p in pieces) / len(pieces)


@dataclass
class TextQuality:
    n_tokens: int
    n_words: int
    known_word_share: float  # words that exist in the training text
    space_token_share: float  # tokens that start with a space
    mean_word_length: float  # run-together tokens make long non-words

    def as_row(self) -> dict:
        return {
            "tokens": self.n_tokens,
            "words": self.n_words,
            "known words": f"{self.known_word_share:.0%}",
            "tokens with a leading space": f"{self.space_token_share:.0%}",
            "mean word length": f"{self.mean_word_length:.1f}",
        }


def text_quality(ids_list: Sequence, tokenizer, vocabulary: Iterable[str]) -> TextQuality:
    """Text-quality measures over one or more token sequences (e.g. sampled continuations).

    ``ids_list`` is a list of 1-D token-id sequences (or a 2-D tensor, one row per sequence);
    the measures pool every token and every word.
    """
    if isinstance(ids_list, torch.Tensor):
        if ids_list.dim() == 1:
            ids_list = [ids_list]
        elif ids_list.dim() == 2:
            ids_list = list(ids_list)
        else:
            raise ValueError(f"expected 1-D or 2-D token ids, got shape {tuple(ids_list.shape)}")
    seqs = [_as_id_list(s) for s in ids_list]
    all_ids = [i for s in seqs for i in s]
    if not all_ids:
        raise ValueError("no token ids given: generate some tokens first")
    texts = [tokenizer.decode(s) for s in seqs]
    all_words = [w for t in texts for w in words(t)]
    if isinstance(vocabulary, str):
        raise TypeError("vocabulary must be a set of words, not a string; build it with word_vocabulary(text)")
    vocab = vocabulary if isinstance(vocabulary, (set, frozenset)) else frozenset(vocabulary)
    if not vocab:
        raise ValueError("the vocabulary is empty; build it from the training text with word_vocabulary(text)")
    known = sum(w in vocab for w in all_words) / len(all_words) if all_words else 0.0
    return TextQuality(
        n_tokens=len(all_ids),
        n_words=len(all_words),
        known_word_share=known,
        space_token_share=space_token_share(all_ids, tokenizer),
        mean_word_length=sum(map(len, all_words)) / len(all_words) if all_words else 0.0,
    )


def loss_noise(losses: Sequence[float], tail: float = 0.5) -> float:
    """How noisy a loss curve is: the standard deviation of step-to-step changes over its last ``tail``.

    Differences remove the slow downward trend, so what is left is the jitter from one batch to
    the next. Uses the last ``tail`` fraction of the steps (where the curve has mostly settled).
    """
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be a fraction in (0, 1], got {tail}")
    values = [float(v) for v in losses]
    part = values[len(values) - max(3, int(round(len(values) * tail))):]
    if len(values) < 3:
        raise ValueError(f"need at least 3 loss values to measure noise, got {len(values)}; train for more steps")
    diffs = [b - a for a, b in zip(part, part[1:])]
    mean = sum(diffs) / len(diffs)
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))


def first_step_below(steps: Sequence[int], losses: Sequence[float], level: float, smooth_window: int = 1) -> int | None:
    """The first step at which the (moving-average smoothed) loss is at or below ``level``; None if never.

    A measure of convergence speed: the run that gets there in fewer steps learns faster.
    """
    if len(steps) != len(losses):
        raise ValueError(f"steps ({len(steps)}) and losses ({len(losses)}) must have the same length")
    if smooth_window < 1:
        raise ValueError(f"smooth_window must be >= 1, got {smooth_window}")
    for s, v in zip(steps, smooth(losses, smooth_window)):
        if v <= level:
            return int(s)
    return None


def count_target_tokens(loss_fn: Callable, batch_size: int, block_size: int, vocab_size: int = 13,
                        seed: int = 0) -> int:
    """How many target tokens one batch trains on under ``loss_fn``, measured, not assumed.

    Builds random logits (batch_size x block_size x vocab_size), computes ``loss_fn(logits, targets)``,
    backpropagates, and counts the (sequence, position) pairs whose logits received a gradient:
    every position for the all-token loss, one per sequence for the final-token loss.
    """
    if batch_size < 1 or block_size < 1 or vocab_size < 2:
        raise ValueError(f"need batch_size >= 1, block_size >= 1 and vocab_size >= 2, got {batch_size}, {block_size}, "
                         f"{vocab_size}")
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch_size, block_size, vocab_size, generator=gen).requires_grad_()
    targets = torch.randint(0, vocab_size, (batch_size, block_size), generator=gen)
    loss = loss_fn(logits, targets)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a single number (a 0-d tensor), got {type(loss).__name__} "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    if not loss.requires_grad:
        raise ValueError("loss_fn's result carries no gradient: build it from the logits with torch operations")
    loss.backward()
    return int((logits.grad.abs().sum(dim=-1) > 0).sum())


@torch.no_grad()
def evaluate_losses(model, batches: Callable, loss_fns: dict, n_batches: int = 8, seed: int = 1234,
                    device=None) -> dict:
    """Several losses of one model on the same held-out batches, one forward pass per batch.

    ``loss_fns`` maps a name to ``loss_fn(logits, targets)``; returns ``{name: mean loss}``. Runs in
    ``model.eval()`` (dropout off) and restores the previous mode, like ``course_utils.train.evaluate``.
    Use it to compare models trained with different losses on one common yardstick.
    """
    if not loss_fns:
        raise ValueError("give at least one loss function, e.g. {'all-token': all_token_loss}")
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    device = resolve_device(device, model)
    gen = torch.Generator().manual_seed(seed)
    totals = {name: 0.0 for name in loss_fns}
    with eval_mode(model):
        for _ in range(n_batches):
            x, y = batches(gen)
            x, y = x.to(device), y.to(device)
            logits = model(x)
            for name, fn in loss_fns.items():
                totals[name] += float(fn(logits, y))
    return {name: total / n_batches for name, total in totals.items()}


# ---- "Your turn": the loss on the last k tokens of each sequence ---------------------------------

def last_k_loss_reference(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """The reference answer: mean of -log P(x_t | x_<t) over the last ``k`` positions of every sequence."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (B, T, V) and targets (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    T = logits.size(1)
    if not 1 <= k <= T:
        raise ValueError(f"k must be between 1 and the sequence length {T}, got {k}")
    log_probs = F.log_softmax(logits[:, -k:, :].float(), dim=-1)
    return F.nll_loss(log_probs.reshape(-1, log_probs.size(-1)), targets[:, -k:].reshape(-1))


def _diagnose(value: float, logits, targets, k) -> str:
    """Name the usual mistakes when a learner's value is wrong."""
    def close(other) -> bool:
        return math.isclose(value, float(other), rel_tol=1e-4, abs_tol=1e-5)

    raw = F.nll_loss(logits[:, -k:].reshape(-1, logits.size(-1)), targets[:, -k:].reshape(-1))
    if close(raw):
        return "it equals NLLLoss on the raw logits: apply log_softmax (dim=-1) before NLLLoss"
    if close(last_k_loss_reference(logits[:, :k], targets[:, :k], k)):
        return "it uses the FIRST k positions; take the last k: logits[:, -k:], targets[:, -k:]"
    if close(last_k_loss_reference(logits, targets, k) * logits.size(0) * k):
        return "it is the sum over the B*k targets; average instead (the mean, as NLLLoss does by default)"
    if k > 1 and close(final_token_loss(logits, targets)):
        return "it only uses the final position; it should use the last k"
    if k < logits.size(1) and close(all_token_loss(logits, targets)):
        return "it uses every position; it should use only the last k"
    neighbours = [j for j in (k - 1, k + 1) if 1 <= j <= logits.size(1)]
    if any(close(last_k_loss_reference(logits, targets, j)) for j in neighbours):
        return "it uses k-1 or k+1 positions (an off-by-one in the slice); logits[:, -k:] has exactly k"
    return "compare your slice and your log_softmax step with final_token_loss in course_utils.losses"


def check_last_k_loss(fn: Callable, seed: int = 0) -> CheckResult:
    """Test a learner's ``fn(logits, targets, k)`` against the reference on random inputs.

    Checks values for several shapes and k (k=1 must equal the final-token loss, k=T the all-token
    loss), that only the last k positions get a gradient, and that adding a constant to every
    logit changes nothing (a real log-probability loss is shift-invariant). Returns a ``CheckResult``:
    PASSED, or NOT YET with the first thing that is wrong.
    """
    if not callable(fn):
        raise TypeError(f"check_last_k_loss needs your loss function (a callable), got {type(fn).__name__}")
    gen = torch.Generator().manual_seed(seed)
    cases = [(2, 5, 7, 1), (3, 8, 11, 3), (4, 6, 5, 6), (1, 9, 13, 4), (5, 16, 17, 7)]
    for B, T, V, k in cases:
        logits = (3 * torch.randn(B, T, V, generator=gen)).requires_grad_()
        targets = torch.randint(0, V, (B, T), generator=gen)
        try:
            got = fn(logits, targets, k)
        except NotImplementedError:
            return CheckResult(False, "not written yet: replace the `raise NotImplementedError` with your loss")
        except Exception as err:  # the learner's code failed: say where
            return CheckResult(False, f"calling it with logits {(B, T, V)}, targets {(B, T)}, k={k} raised "
                               f"{type(err).__name__}: {err}")
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            return CheckResult(False, f"it must return one number (a 0-d tensor), got {type(got).__name__}"
                               + (f" of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else ""))
        want = last_k_loss_reference(logits, targets, k)
        if not torch.isfinite(got) or not math.isclose(got.item(), want.item(), rel_tol=1e-4, abs_tol=1e-5):
            return CheckResult(False, f"with B={B}, T={T}, V={V}, k={k} it gave {got.item():.4f}, the right value is "
                               f"{want.item():.4f}: {_diagnose(got.item(), logits.detach(), targets, k)}")
        if not got.requires_grad:
            return CheckResult(False, "the result carries no gradient (did you call .item(), .detach() or use numpy?)")
        got.backward()
        touched = (logits.grad.abs().sum(dim=(0, 2)) > 0).tolist()  # per position
        expected = [t >= T - k for t in range(T)]
        if touched != expected:
            return CheckResult(False, f"with T={T}, k={k} the positions that get a gradient are "
                               f"{[t for t, g in enumerate(touched) if g]}, expected the last {k}: "
                               f"{list(range(T - k, T))}")
        shifted = fn(logits.detach() + 5.0, targets, k)
        if not math.isclose(float(shifted), want.item(), rel_tol=1e-4, abs_tol=1e-4):
            return CheckResult(False, "adding 5 to every logit changed the loss; a log-probability loss does not "
                                      "change "
                               "(apply log_softmax before NLLLoss)")
    # the two ends of the family: k=1 is Lesson 2's final-token loss, k=T the all-token loss
    logits = torch.randn(3, 8, 10, generator=gen)
    targets = torch.randint(0, 10, (3, 8), generator=gen)
    if not math.isclose(
        float(fn(logits, targets, 1)), final_token_loss(logits, targets).item(), rel_tol=1e-4, abs_tol=1e-5
    ):
        return CheckResult(False, "k=1 should equal final_token_loss")
    if not math.isclose(
        float(fn(logits, targets, 8)), all_token_loss(logits, targets).item(), rel_tol=1e-4, abs_tol=1e-5
    ):
        return CheckResult(False, "k=T should equal all_token_loss")
    return CheckResult(True, f"your last-k loss matches the reference on {len(cases)} random cases, trains only the "
                             "last k "
                       "positions, and gives the final-token loss at k=1 and the all-token loss at k=T.")
