"""Lesson 3: the x-factor target, the KL loss, the R metric, the claims' procedures and the exercise's checker."""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from course_utils.claims import VERDICTS
from course_utils.lessons.l3_xfactor import (
    BARS,
    H100_REJUDGED,
    H100_RUN,
    RUN_COLOURS,
    GenerationResult,
    Sample,
    budget_short,
    check_letter_target,
    distinct_n,
    generation_widget,
    judge_perplexity,
    kl_by_position,
    kl_to_target,
    lecture_verdicts,
    letter_token_mask,
    paired_samples,
    plot_run_scores,
    random_token_batches,
    recorded_natural,
    recorded_samples,
    recorded_tilt_figures,
    recorded_verdicts,
    rejudge_recorded,
    run_verdicts,
    sample_nll,
    start_loss_by_ratio,
    tilt_demo_text,
    tilt_figures,
    tilt_note,
    tilted_target,
    x_factor_target,
    x_rate,
)


class ToyTokenizer:
    """A 6-token vocabulary, enough to check every rule of the target by hand."""

    vocab = ["<|endoftext|>", " box", "X", "cat", " ox", "dog"]
    all_special_ids = [0]
    added_tokens_decoder = {0: "<|endoftext|>"}
    eos_token_id = 0
    pad_token_id = 0

    def __len__(self):
        return len(self.vocab)

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.vocab[i] for i in ids)

    def batch_decode(self, rows):
        return [self.decode(r) for r in rows]


TOK = ToyTokenizer()


class TextTokenizer:
    """Any text -> one id per character (enough to parse and re-tokenize recorded samples)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 50 for c in text]}


def kl_by_hand(logits_rows, p):
    """sum_i p_i (log p_i - log q_i) per row, averaged over rows, with plain Python floats."""
    total = 0.0
    for row in logits_rows.tolist():
        log_z = math.log(sum(math.exp(v) for v in row))
        total += sum(pi * (math.log(pi) - (zi - log_z)) for pi, zi in zip(p.tolist(), row) if pi > 0)
    return total / len(logits_rows)


def test_mask_is_case_insensitive_and_skips_special_tokens():
    assert letter_token_mask(TOK, "x").tolist() == [False, True, True, False, True, False]
    assert letter_token_mask(TOK, "x", include_special=True)[0]  # "<|endoftext|>" contains an x
    assert letter_token_mask(TOK, "O").tolist() == [False, True, False, False, True, True]


def test_target_matches_direct_formula():
    p = x_factor_target(TOK, alpha=3.0, beta=1.0)
    weights = torch.tensor([1.0, 3.0, 3.0, 1.0, 3.0, 1.0])  # the special token counts as "other": beta
    assert torch.allclose(p, weights / weights.sum())
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert p[1] / p[0] == pytest.approx(3.0)


def test_target_pads_extra_model_rows_with_zero():
    p = x_factor_target(TOK, alpha=2.0, beta=1.0, vocab_size=8)
    assert p.shape == (8,) and p[6:].tolist() == [0.0, 0.0]
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(p[:6], x_factor_target(TOK, 2.0, 1.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=-1.0, beta=1.0), "alpha must be"),
        (dict(alpha=1.0, beta=float("nan")), "beta must be"),
        (dict(alpha=0.0, beta=0.0), "both 0"),
        (dict(alpha=2.0, beta=1.0, letter="q"), "no token"),
        (dict(alpha=2.0, beta=1.0, letter=""), "non-empty"),
        (dict(alpha=2.0, beta=1.0, vocab_size=4), "smaller than the tokenizer"),
    ],
)
def test_target_bad_input_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        x_factor_target(TOK, **kwargs)


def test_kl_matches_hand_computation_and_torch_batchmean():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, generator=g)
    p = x_factor_target(TOK, alpha=5.0, beta=0.5)
    loss = kl_to_target(logits, p)
    assert loss.item() == pytest.approx(kl_by_hand(logits.reshape(-1, 6), p), abs=1e-5)
    expected = F.kl_div(F.log_softmax(logits.reshape(6, 6), -1), p.expand(6, 6), reduction="batchmean")
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_kl_handles_zero_probabilities_and_is_zero_at_the_target():
    p = x_factor_target(TOK, alpha=1.0, beta=0.0)  # zero probability on tokens without x
    assert p[0].item() == 0.0
    logits = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(1))
    assert kl_to_target(logits, p).item() == pytest.approx(kl_by_hand(logits[0], p), abs=1e-5)
    p2 = x_factor_target(TOK, 3.0, 1.0)
    perfect = torch.log(p2).expand(2, 5, 6).clone()
    assert kl_to_target(perfect, p2).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_target(torch.zeros(2, 5, 6), p2).item() > 0.01


def test_kl_gradient_moves_toward_the_target():
    p = x_factor_target(TOK, 4.0, 1.0)
    logits = torch.zeros(1, 2, 6, requires_grad=True)
    kl_to_target(logits, p).backward()
    # d/dz KL(P || softmax(z)) = (softmax(z) - P) / rows: negative (push up) on the favoured tokens
    mask = letter_token_mask(TOK, "x")
    assert (logits.grad[0, 0, mask] < 0).all() and (logits.grad[0, 0, ~mask] > 0).all()


def test_kl_accepts_a_target_per_position():
    logits = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(2))
    p = x_factor_target(TOK, 3.0, 1.0)
    same = kl_to_target(logits, p.expand(2, 3, 6))
    assert same.item() == pytest.approx(kl_to_target(logits, p).item(), abs=1e-6)


def test_kl_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="vocab_size=6"):
        kl_to_target(torch.randn(2, 3, 6), torch.full((5,), 0.2))
    with pytest.raises(ValueError, match="logits must be"):
        kl_to_target(torch.randn(6), torch.full((6,), 1 / 6))
    with pytest.raises(ValueError, match="target must be a tensor"):
        kl_to_target(torch.randn(2, 3, 6), [1 / 6] * 6)


def test_x_rate_counts_tokens_with_the_letter():
    mask = letter_token_mask(TOK, "x")
    assert x_rate([[1, 3], [2, 5, 4]], mask) == (3 / 5, 3, 5)
    assert x_rate(torch.tensor([[3, 5]]), mask)[0] == 0.0
    with pytest.raises(ValueError, match="no generated tokens"):
        x_rate([[], []], mask)
    with pytest.raises(ValueError, match="outside"):
        x_rate([[9]], mask)
    with pytest.raises(ValueError, match="bool tensor"):
        x_rate([[1]], mask.float())


def test_checker_accepts_right_target_and_explains_wrong_ones():
    good = x_factor_target(TOK, 10.0, 1.0, letter="o")
    assert check_letter_target(good, TOK, "o", 10.0, 1.0)
    assert not check_letter_target(None, TOK, "o", 10.0, 1.0)
    unnormalised = good * 2
    res = check_letter_target(unnormalised, TOK, "o", 10.0, 1.0)
    assert not res and any("sums to 2" in m for m in res.messages)
    by_hand = torch.tensor([1.0, 10.0, 1.0, 1.0, 10.0, 10.0])  # " box", " ox", "dog"; not the special token
    by_hand = by_hand / by_hand.sum()
    assert check_letter_target(by_hand, TOK, "o", 10.0, 1.0)
    wrong_letter = x_factor_target(TOK, 10.0, 1.0, letter="x")  # the x target is not the o target
    res = check_letter_target(wrong_letter, TOK, "o", 10.0, 1.0)
    assert not res and any("'dog'" in m for m in res.messages)
    assert "shape must be (6,)" in check_letter_target(torch.ones(5) / 5, TOK, "o", 10.0, 1.0).messages[0]


def test_random_token_batches_are_seeded():
    batches = random_token_batches(vocab_size=6, batch_size=2, seq_len=4)
    a, none = batches(torch.Generator().manual_seed(3))
    b, _ = batches(torch.Generator().manual_seed(3))
    assert none is None and a.shape == (2, 4) and torch.equal(a, b) and int(a.max()) < 6
    with pytest.raises(ValueError, match="seq_len"):
        random_token_batches(6, 2, 0)


def test_tilted_target_multiplies_the_reference_by_the_bonus():
    mask = letter_token_mask(TOK, "x")
    ref = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(4))
    t = tilted_target(ref, mask, math.log(3.0))
    q = F.softmax(ref, -1)
    expected = q * torch.where(mask, 3.0, 1.0)
    assert torch.allclose(t, expected / expected.sum(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(tilted_target(ref, mask, 0.0), q, atol=1e-6)


class UniformLM(torch.nn.Module):
    """A 'model' that gives every token the same probability: its perplexity is the vocabulary size."""

    def __init__(self, v):
        super().__init__()
        self.v = v
        self.w = torch.nn.Parameter(torch.zeros(1))

    def generate(self, *a, **k):  # pragma: no cover - only its presence is checked
        raise NotImplementedError

    def forward(self, ids):
        return type("Out", (), {"logits": torch.zeros(*ids.shape, self.v) + self.w})()


class ToyEncode:
    def __call__(self, text, return_tensors=None):
        return {"input_ids": torch.tensor([[1, 2]])}


def test_judge_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    samples = [Sample("hi", [3, 4, 5], "..."), Sample("yo", [1], "."), Sample("empty", [], "")]
    assert judge_perplexity(UniformLM(6), ToyEncode(), samples) == pytest.approx(6.0, rel=1e-5)
    with pytest.raises(ValueError, match="no generated tokens"):
        judge_perplexity(UniformLM(6), ToyEncode(), [Sample("x", [], "")])


def _widgets(panel):
    """Every widget inside a panel, depth first."""
    yield panel
    for child in getattr(panel, "children", ()):
        yield from _widgets(child)


def test_widget_builds_without_a_display_and_shows_whole_labels(tiny_llama):
    panel = generation_widget({"toy": tiny_llama(vocab=6)}, TOK, mask=letter_token_mask(TOK, "x"))
    assert type(panel).__name__ == "VBox"
    labelled = {w.description: w for w in _widgets(panel) if type(w).__name__ in ("FloatSlider", "IntSlider")}
    assert set(labelled) == {"temperature", "new tokens"}
    assert all(w.style.description_width == "initial" for w in labelled.values())  # not cut to "temperat..."
    with pytest.raises(ValueError, match="at least one"):
        generation_widget({}, TOK)


def test_seeded_generation_and_r_on_the_real_model():
    from course_utils.lessons.l3_xfactor import evaluate_generations, generate_samples
    from course_utils.pretrained import load_pretrained

    model, tok, _ = load_pretrained("SmolLM2-135M-Instruct", device="cpu", verbose=False)
    V = model.get_output_embeddings().weight.shape[0]
    mask = letter_token_mask(tok, "x", vocab_size=V)
    prompts = ["The weather today is", "Once upon a time"]
    a = evaluate_generations(model, tok, prompts, mask, judge=model, max_new_tokens=6, seed=3)
    b = generate_samples(model, tok, prompts, max_new_tokens=6, seed=3)
    assert [s.ids for s in a.samples] == [s.ids for s in b]  # same seed, same text
    assert a.n_tokens == sum(len(s.ids) for s in b) > 0 and 0.0 <= a.rate <= 1.0
    assert a.rate == x_rate([s.ids for s in b], mask)[0]
    assert 1.0 < a.perplexity < 1e4
    # the per-token NLLs are kept (cut_to_shorter reuses them): the judge's own, and their means are a.nll
    from course_utils.lessons.l3_xfactor import token_nll
    assert all(u == pytest.approx(w, abs=1e-5) for u, w in zip(a.token_nll, token_nll(model, tok, a.samples),
                                                                 strict=True))
    assert a.nll == [None if t is None else pytest.approx(sum(t) / len(t)) for t in a.token_nll]
    with pytest.raises(ValueError, match="temperature"):
        generate_samples(model, tok, prompts, temperature=0)
    with pytest.raises(ValueError, match="prompts"):
        generate_samples(model, tok, [])


# ---- Where the starting loss comes from -----------------------------------------------------------
def test_kl_by_position_averages_to_the_loss_and_sees_each_position():
    logits = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(5))
    p = x_factor_target(TOK, 4.0, 1.0)
    per_pos = kl_by_position(logits, p)
    assert per_pos.shape == (5,)
    assert per_pos.mean().item() == pytest.approx(kl_to_target(logits, p).item(), abs=1e-5)
    assert per_pos[2].item() == pytest.approx(kl_by_hand(logits[:, 2], p), abs=1e-5)
    assert kl_by_position(logits, x_factor_target(TOK, 1.0, 0.0)).isfinite().all()  # zeros in P
    with pytest.raises(ValueError, match="batch, time, vocab"):
        kl_by_position(logits[0], p)
    with pytest.raises(ValueError, match="V=6"):
        kl_by_position(logits, p[:5])


def test_start_loss_depends_only_on_the_ratio_and_grows_with_it():
    logits = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(6))
    by_ratio = start_loss_by_ratio(logits, TOK, [1, 10, 1000])
    assert by_ratio[10] == pytest.approx(kl_to_target(logits, x_factor_target(TOK, 1.0, 0.1)).item(), abs=1e-5)
    assert by_ratio[1] == pytest.approx(kl_to_target(logits, x_factor_target(TOK, 7.0, 7.0)).item(), abs=1e-5)
    uniform_logits = torch.zeros(1, 2, 6)  # Q uniform: KL rises as P concentrates on the x tokens
    rising = start_loss_by_ratio(uniform_logits, TOK, [1, 10, 1000])
    assert rising[1] < rising[10] < rising[1000]
    for bad in ([], [0], [float("inf")]):
        with pytest.raises(ValueError, match="ratios"):
            start_loss_by_ratio(logits, TOK, bad)


# ---- The claims' procedures -----------------------------------------------------------------------
# ---- The claims' procedures: figures in, a course_utils.verdicts Verdict out ------------------------
HOLDS_, DOES_NOT_HOLD_, INCONCLUSIVE_ = VERDICTS[:3]  # the words, read from the core (never written here)


def _gen(rate, perplexity, n=100):
    return GenerationResult(samples=[], rate=rate, n_tokens=n, n_letter=round(rate * n), perplexity=perplexity)


def _samples(x_counts, nlls, length=10):
    """A GenerationResult with one sample per entry: ``x_counts[j]`` x tokens of ``length``, judged NLL ``nlls[j]``
    (an empty sample where x_counts[j] is None)."""
    mask = letter_token_mask(TOK, "x")  # ids 1, 2, 4 contain x
    samples = [Sample("p", [] if k is None else [1] * k + [3] * (length - k), "") for k in x_counts]
    nll = [None if k is None else v for k, v in zip(x_counts, nlls)]
    n = sum(len(s.ids) for s in samples)
    hits = sum(k or 0 for k in x_counts)
    return GenerationResult(samples=samples, rate=hits / n, n_tokens=n, n_letter=hits, nll=nll, mask=mask,
                            perplexity=math.exp(sum(v for v in nll if v is not None) / len([v for v in nll if v])))


class _Hist:
    def __init__(self, final, start=6.0):
        self.final, self.train_loss = final, [start]

    def final_train_loss(self, last=10):
        return self.final


def test_budget_short_quotes_the_notes_and_ends_at_their_300_epochs():
    assert '"Epochs | 300"' in budget_short(40) and "this run: 40 steps" in budget_short(40)
    assert budget_short(300) is None and budget_short(500) is None
    with pytest.raises(ValueError, match="positive int"):
        budget_short(0)


def test_paired_samples_pair_by_position_and_drop_empty_samples():
    a = _samples([0, 1, None, 2], [2.0, 2.1, 0, 2.2])
    b = _samples([5, None, 6, 7], [3.0, 0, 3.1, 3.2])
    assert paired_samples(a, b, "rate") == ([0.0, 0.2], [0.5, 0.7])
    assert paired_samples(a, b, "nll") == ([2.0, 2.2], [3.0, 3.2])
    with pytest.raises(ValueError, match="same prompts"):
        paired_samples(a, _samples([1], [1.0]), "rate")
    with pytest.raises(ValueError, match="judge"):
        paired_samples(a, GenerationResult(samples=a.samples, mask=a.mask), "nll")


def _lecture_like(low_x, low_nll, high_x, high_nll, n=12):
    orig = _samples([0, 1] * (n // 2), [3.0 + 0.01 * j for j in range(n)])
    low = _samples([low_x + j % 2 for j in range(n)], [low_nll + 0.02 * j for j in range(n)])
    high = _samples([high_x - j % 2 for j in range(n)], [high_nll + 0.02 * j for j in range(n)])
    return {"original": orig, "lr 1e-6": low, "lr 1e-4": high}


def test_run_verdicts_decide_both_ways_at_the_lecture_budget_and_neither_below_it():
    hists = {"lr 1e-6": _Hist(2.1), "lr 1e-4": _Hist(0.0011)}
    as_lecture = run_verdicts(hists, _lecture_like(0, 3.2, 10, 12.0), steps=300)  # what the lecture describes
    assert {k: v.verdict for k, v in as_lecture.items()} == dict.fromkeys(as_lecture, HOLDS_)
    refuted = run_verdicts({"lr 1e-6": _Hist(3.9), "lr 1e-4": _Hist(0.03)},
                           _lecture_like(4, 5.0, 4, 4.0), steps=300)  # too many x at 1e-6, 1e-4 not taken over
    assert {k: v.verdict for k, v in refuted.items()} == dict.fromkeys(refuted, DOES_NOT_HOLD_)
    for finals, figures in (((2.1, 0.0011), (0, 3.2, 10, 12.0)), ((3.9, 0.03), (4, 5.0, 4, 4.0))):
        short = run_verdicts({"lr 1e-6": _Hist(finals[0]), "lr 1e-4": _Hist(finals[1])}, _lecture_like(*figures),
                             steps=40)  # 40 steps: a clear result and a clear miss alike decide nothing
        assert {v.verdict for v in short.values()} == {INCONCLUSIVE_}
        assert all('"Epochs | 300"' in v.why for v in short.values())
    assert as_lecture["few x"].bar == "<= 0.20"
    # "natural" reads as a rise of the perplexity, in one direction, whatever the verdict
    assert as_lecture["natural"].bar == "perplexity rises by < +0.693 nats/token (2x)"
    assert "perplexity rises by +0.255 nats/token" in as_lecture["natural"].why  # mean of 0.2 + 0.01 j, j < 12
    assert "wholly below +0.693" in as_lecture["natural"].why and "lower by" not in as_lecture["natural"].why
    assert "perplexity rises by +2.055" in refuted["natural"].why and "wholly above +0.693" in refuted["natural"].why
    assert as_lecture["natural"].measured.startswith("per-sample NLL rise +0.255 nats/token (")
    # row 6's figure is labelled as the per-sample statistic it is, never as a whole-text perplexity ratio
    assert as_lecture["nonsense"].measured.startswith("per-sample NLL rise +")
    assert as_lecture["nonsense"].measured.endswith(f"{math.exp(as_lecture['nonsense'].gain):,.0f}x per sample)")
    assert set(as_lecture) == {"low loss", "few x", "natural", "high loss", "R about 1", "nonsense"}
    assert set(BARS) == {"a third left", "about 0.001", "few x", "natural", "R about 1", "nonsense"}
    # row 1 judges the share of the start left, not the level: 2.1 of 6 holds, and so does 2.8 of 8 (0.35)
    assert as_lecture["low loss"].bar == "0.25-0.42 of the start left (1.5/6 to 2.5/6)"
    assert "2.10 of 6.00 left: 0.35 (exact): inside 0.25-0.42" in as_lecture["low loss"].why
    moved = run_verdicts({"lr 1e-6": _Hist(2.8, start=8.0), "lr 1e-4": _Hist(0.0011, start=8.0)},
                         _lecture_like(0, 3.2, 10, 12.0), steps=300)
    assert moved["low loss"].verdict == HOLDS_ and moved["high loss"].verdict == HOLDS_
    assert run_verdicts({"lr 1e-6": _Hist(2.0, start=3.0), "lr 1e-4": _Hist(0.0011)}, _lecture_like(0, 3.2, 10, 12.0),
                        steps=300)["low loss"].verdict == DOES_NOT_HOLD_  # the level 2, but 0.67 of the start left


def test_every_short_rows_figure_carries_the_budget_clause_even_a_straddle():
    rates = _lecture_like(0, 3.2, 10, 12.0)
    rates["lr 1e-4"] = _samples([10 - 2 * (j % 2) for j in range(12)], [12.0 + 0.02 * j for j in range(12)])
    # R 1.0 and 0.8 by turns: a mean of 0.90 whose interval straddles the bar's edge
    short = run_verdicts({"lr 1e-6": _Hist(2.1), "lr 1e-4": _Hist(0.0011)}, rates, steps=40)
    assert "straddles the edge of 0.90-1.00" in short["R about 1"].why
    for k, v in short.items():
        assert v.why.count("out of reach at this budget") == 1, k
    assert "an open result here decides nothing" in short["R about 1"].why
    full = run_verdicts({"lr 1e-6": _Hist(2.1), "lr 1e-4": _Hist(0.0011)}, rates, steps=300)
    assert "out of reach" not in full["R about 1"].why and full["R about 1"].verdict == INCONCLUSIVE_


def test_cut_to_shorter_compares_pairs_on_their_shared_length(tiny_llama):
    from course_utils.lessons.l3_xfactor import cut_text, cut_to_shorter, token_nll

    m = tiny_llama(vocab=6)
    a = GenerationResult(samples=[Sample("hi", [3, 4], ""), Sample("yo", [1, 2, 3], ""), Sample("e", [], "")])
    b = GenerationResult(samples=[Sample("hi", [3, 4, 5, 5], ""), Sample("yo", [1], ""), Sample("e", [2], "")])
    ca, cb = cut_to_shorter(m, ToyEncode(), a, b)
    assert len(ca) == len(cb) == 2  # the empty sample's pair drops out
    ta, tb = token_nll(m, ToyEncode(), a.samples), token_nll(m, ToyEncode(), b.samples)
    assert ca[0] == pytest.approx(sum(ta[0]) / 2) and cb[0] == pytest.approx(sum(tb[0][:2]) / 2)
    assert ca[1] == pytest.approx(ta[1][0]) and cb[1] == pytest.approx(tb[1][0])
    same = cut_to_shorter(m, ToyEncode(), a, a)
    assert same[0] == same[1]  # a model against itself: no rise left
    from course_utils.lessons.l3_xfactor import _natural

    decided = _natural([1.0, 2.0, 3.0], [1.5, 2.6, 3.4], budget=None, pairs="samples")  # uncut: +0.500, straddles
    assert cut_text([1.0, 2.0, 3.0], [1.5, 2.1, 3.3], decided) == (
        "each pair cut to its shorter sample, the rise is +0.300 nats/token (95% interval -0.197 to +0.797, 3 pairs: "
        "contains +0.693); the uncut +0.500 is the one judged against the bar (it counts every token each model "
        "wrote), and the cut figure gives the same verdict")
    # cut, the rise is clearly below the bar: the cut figure's own verdict differs, and the text says which
    assert cut_text([1.0, 2.0, 3.0], [1.1, 2.1, 3.12], decided).endswith("the cut figure gives another verdict (holds)")
    with pytest.raises(ValueError, match="same prompts"):
        cut_to_shorter(m, ToyEncode(), a, GenerationResult(samples=a.samples[:1]))
    here = run_verdicts({"lr 1e-6": _Hist(8.0), "lr 1e-4": _Hist(0.9)}, _lecture_like(0, 3.2, 9, 12.0), steps=40,
                        cut=([3.0, 3.1], [3.0, 3.1]))
    assert ("the rise is +0.000 nats/token (95% interval +0.000 to +0.000, 2 pairs: wholly below +0.693); the uncut "
            "+0.255 is the one judged against the bar") in here["natural"].why
    assert "the cut figure gives the same verdict; the original generated 120 tokens" in here["natural"].why


def test_recorded_h100_figures_match_the_course_results_file():
    from pathlib import Path

    md = (Path(__file__).resolve().parents[2] / "results/nvidia-h100-80gb/03_x_factor_kl.md").read_text()
    assert H100_RUN["date"] in md
    for shown in ("7.00 -> 3.92 in 300 steps", "0.032 after 300 steps", "R 0.03, perplexity 119 (original 38)",
                  "R = 1.00 (383/384)", "perplexity 270,501", "R 0.01 -> 0.72, perplexity 15"):
        assert shown in md
    v = recorded_verdicts(natural=recorded_natural())
    assert {k: x.verdict for k, x in v.items()} == {
        "low loss": DOES_NOT_HOLD_, "few x": HOLDS_, "natural": INCONCLUSIVE_, "high loss": DOES_NOT_HOLD_,
        "R about 1": HOLDS_, "nonsense": HOLDS_}
    assert "3.1x the original's (a rise of +1.134 nats/token, -0.911 to +3.178)" in v["natural"].measured
    assert "perplexity rises by +1.134" in v["natural"].why
    assert ("each pair cut to its shorter sample, the rise is +0.906 nats/token (95% interval -0.766 to +2.577, 6 "
            "pairs: contains +0.693); the uncut +1.134 is the one judged against the bar (it counts every token each "
            "model wrote), and "
            "the cut figure gives the same verdict; the original generated 357 tokens") in v["natural"].why
    assert "older code" in v["low loss"].why
    assert v["low loss"].measured == "H100, 300 steps, one run: 3.92 of 7.00 left: 0.56"
    assert "3.92 of 7.00 left: 0.56 (exact): outside 0.25-0.42" in v["low loss"].why
    assert "absolute levels at this lesson's alpha/beta 1e4: 7.00 -> 3.92 (the lecture's 6 -> 2)" in v["low loss"].why
    assert v["high loss"].bar == "0.0005-0.002"
    assert "scoped to the alpha/beta the course used, 1e4 (the notes give none; no other ratio was trained)" in \
        v["high loss"].why
    assert "any alpha/beta" not in v["high loss"].why and "whatever the target" not in v["high loss"].why
    # row 3 carries no leftover of the recorded table's old verdict (its whole-text 119 vs 38)
    assert "run's own table" not in v["natural"].why and "119" not in v["natural"].why
    assert "; the original generated 357 tokens, lr 1e-6 384" in v["natural"].why
    assert "0.032 is 16x above the band's top (0.002)" in v["high loss"].why
    assert "7,072x" in v["nonsense"].measured and "7,072x" in md  # the results file's own ratio
    # the two perplexity statistics are labelled where they are printed: row 6 pooled, row 3 per sample
    assert v["nonsense"].measured.startswith("H100, 300 steps, one run: whole-text perplexity 7,072x")
    assert "whole-text perplexity (each model's samples pooled) 270,501 vs the original's 38.25" in v["nonsense"].why
    assert "per-sample perplexity 3.1x" in v["natural"].measured and "per-sample perplexity rises" in v["natural"].why
    assert "at this ratio (no other ratio was trained)" in v["low loss"].why  # row 1 is scoped to 1e4, like row 4
    assert "R 0.031" in v["few x"].measured and "R 0.997 (383/384)" in v["R about 1"].measured
    assert "prints it rounded: R = 1.00 (383/384)" in v["R about 1"].why  # the same figure, named once
    assert "natural" not in recorded_verdicts()  # without its re-judged samples the row is this run's own


def test_the_recorded_runs_own_verdicts_are_the_ones_the_notebook_says_differ():
    """The notebook's markdown says which verdicts the recorded run printed under older rules; they are in its file."""
    from pathlib import Path

    md = (Path(__file__).resolve().parents[2] / "results/nvidia-h100-80gb/03_x_factor_kl.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[3] for line in md.splitlines()
            if line.startswith("| ") and line.count(" | ") >= 4}
    assert rows["lr 1e-6: few X tokens, natural text"] == "**does not hold**"
    assert rows["the learning rate decides over-fitting"] == "**holds**"
    assert rows["beyond: a KL-regularised objective raises R and keeps the text readable (future direction)"] == \
        "**holds**"
    assert rows["GPT-2 medium: 24 blocks, embedding 1024, vocabulary 50,257"] == "**holds**"
    assert rows["lr 1e-6: the loss starts at about 6"] == "**holds**"  # a fact here, not a row
    cells = json.loads((Path(__file__).resolve().parents[2] / "notebooks/03_x_factor_kl.ipynb").read_text())["cells"]
    prose = " ".join(" ".join("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")
    for said in ("few X tokens, natural text", "the learning rate decides over-fitting", "older rules",
                 'its "R = 1.00 (383/384)" is row 5\'s 0.997', "row 3 (natural text at 1e-6) is not established",
                 "five of its verdicts",
                 'Its "starts at about 6" *holds*', "no row compares the two rates over seeds",
                 "start is a fact because it is fixed by the target the course built before any training",
                 "3.92 of 7.00 = 0.56 of the start left, where the lecture's 6 -> 2 leaves 0.33",
                 "0.032, 16x the top of the band"):
        assert said in prose, said
    # the recorded run's row 7 was counted on the course's own GPT2Config: never called a measurement here
    assert "GPT-2 medium's configuration *holds* in both (row 7)" not in prose
    assert "counted on the course's own GPT2Config (that run was offline too)" in prose
    assert "five of its verdicts differ from this table (six offline)" in prose
    # no teaching point that no row backs (section 7 and the intro)
    assert "only sets how far 300 steps get" not in prose and "x side of the report is confirmed" not in prose
    assert "no row measures over-fitting" in prose
    assert "The uncut figure decides the row" in prose  # row 3: which of its two figures decides
    assert "any alpha/beta" not in prose and "whatever the target" not in prose  # row 4 is scoped to 1e4
    assert "rows 2, 3, 5 and 6 carry" not in prose  # row 3 is inconclusive: it carries nothing
    assert "hinge on the start" not in prose  # the share left was measured at 1e4 only
    assert "hard to balance several goals" in prose and "cannot balance" not in prose.lower()  # "Khó cân bằng"
    assert "rows 3, 6 and 7 show" not in prose.lower()  # each rate's outcome, not a verdict on "decisive"
    assert "read narrowly" not in prose.lower() and "narrowly" not in prose.lower()  # no walk-back of rows 1 and 4
    assert "for these two rows" not in prose  # only row 3 is re-judged; "readable" is section 6's demonstration


def test_recorded_samples_are_the_h100_notebooks_six_prompts():
    s = recorded_samples(TextTokenizer())
    assert set(s) == {"original", "lr 1e-6", "lr 1e-4", "tilted, lr 1e-4"} and all(len(v) == 6 for v in s.values())
    assert s["original"][0].prompt == "The weather today is" and s["lr 1e-6"][0].text.startswith(" Saturn x")
    assert s["tilted, lr 1e-4"][0].text.startswith(" Saturn x 11.2.  Max Max X")  # the second side-by-side output
    assert [x.prompt for x in s["tilted, lr 1e-4"]] == [x.prompt for x in s["original"]]  # paired by prompt
    assert all(len(v) == 6 for v in H100_REJUDGED.values())


def test_rejudged_h100_samples_match_the_stored_figures():
    from course_utils.pretrained import load_pretrained

    model, tokenizer, _ = load_pretrained("gpt2-medium")
    got = rejudge_recorded(model.requires_grad_(False), tokenizer)
    for k, stored in H100_REJUDGED.items():
        assert got[k] == pytest.approx(stored, abs=2e-3), k
    # the tilted demonstration at 300 steps: R clearly up, perplexity within the noise, distinct-2 clearly down
    mask = letter_token_mask(tokenizer, "x", vocab_size=model.get_output_embeddings().weight.shape[0])
    f = recorded_tilt_figures(tokenizer, mask)
    assert f["R"]["low"] > 0.4 and f["distinct-2"]["high"] < -0.1 and f["nll"]["low"] < 0 < f["nll"]["high"]
    text = tilt_demo_text(f)
    assert "perplexity 0.66x" in text and "distinct-2 0.96 -> 0.58" in text and "R +0.68" in text
    for word in ("holds", "does not hold", "inconclusive"):  # a demonstration: figures, no verdict
        assert word not in text and word not in tilt_note()
    note = tilt_note()  # the three H100 perplexity figures, each named
    assert "the ratio above is today's judge, per sample" in note
    assert "14.7 vs the original's 38.2 (0.38x) is the run's own, on its whole text" in note
    assert "its table's 'perplexity 15' is that 14.7 rounded" in note


def test_distinct_n_sees_repetition():
    rep = GenerationResult(samples=[Sample("p", [1, 3] * 5, ""), Sample("p", list(range(6)), ""), Sample("p", [1], "")])
    assert distinct_n(rep) == [2 / 9, 1.0, None]
    assert distinct_n(rep, 1)[0] == 0.2


def test_lecture_verdicts_use_the_recorded_run_only_when_short():
    here = run_verdicts({"lr 1e-6": _Hist(8.0), "lr 1e-4": _Hist(0.9)}, _lecture_like(0, 3.2, 9, 12.0), steps=40)
    v = lecture_verdicts(here, 40, recorded_verdicts())
    assert v["low loss"].verdict == DOES_NOT_HOLD_ and "this machine, 40 steps: 1.33" in v["low loss"].why
    assert lecture_verdicts(here, 40, None) == here
    full = run_verdicts({"lr 1e-6": _Hist(2.1), "lr 1e-4": _Hist(0.0011)}, _lecture_like(0, 3.2, 10, 12.0), 300)
    assert lecture_verdicts(full, 300, recorded_verdicts()) == full  # a full run decides for itself


def test_tilt_figures_pair_samples_and_see_loops():
    n = 12
    orig = _samples([0, 1] * (n // 2), [3.0 + 0.01 * j for j in range(n)])
    f = tilt_figures(orig, orig)  # a model against itself: no change, zero-width intervals
    assert f["R"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "n": n} and f["nll"]["diff"] == 0.0
    more_x = _samples([3 + j % 2 for j in range(n)], [3.5 + 0.01 * j for j in range(n)])
    f = tilt_figures(orig, more_x)
    assert f["R"]["diff"] == pytest.approx(0.3) and f["nll"]["diff"] == pytest.approx(0.5)
    assert f["R"]["low"] == pytest.approx(0.3) == f["R"]["high"]  # the same gain in every pair
    assert "perplexity 1.65x the original's" in tilt_demo_text(f)  # exp(0.5)
    varied = _samples([0, 1] * (n // 2), [3.0 + 0.01 * j for j in range(n)])
    for j, smp in enumerate(varied.samples):  # every token pair distinct (distinct-2 = 1), j % 2 x tokens
        smp.ids = [1 if j % 2 else 3, 5, 3, 3, 0, 0, 5, 5, 0, 3]
    looping = _samples([5] * n, [3.1 + 0.02 * j for j in range(n)])
    for smp in looping.samples:
        smp.ids = [1, 3] * 5  # more x, low perplexity, but a two-token loop: distinct-2 falls to 2/9
    f = tilt_figures(varied, looping)
    assert f["d2"] == pytest.approx((1.0, 2 / 9)) and f["distinct-2"]["diff"] == pytest.approx(2 / 9 - 1)
    assert "distinct-2 1.00 -> 0.22" in tilt_demo_text(f)
    with pytest.raises(ValueError, match="at least 2"):
        tilt_figures(_samples([1], [3.0]), _samples([2], [3.0]))


def test_sample_nll_batched_equals_one_sample_at_a_time(tiny_llama):
    m = tiny_llama(vocab=6)
    samples = [Sample("hi", [3, 4, 5], ""), Sample("yo", [1], ""), Sample("e", [], ""), Sample("a", [2, 2], "")]
    batched = sample_nll(m, ToyEncode(), samples)
    alone = [sample_nll(m, ToyEncode(), [s])[0] for s in samples]
    assert batched[2] is None and alone[2] is None
    assert [round(v, 5) for v in batched if v is not None] == [round(v, 5) for v in alone if v is not None]


def test_run_scores_use_one_neutral_colour_per_run():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    results = {k: _gen(r, p) for k, r, p in [("original", 0.0, 17.0), ("lr 1e-6", 0.01, 22.0),
                                            ("lr 1e-4", 0.91, 3e5), ("tilted", 0.23, 18.0)]}
    axes = plot_run_scores(results)
    left, right = ([to_rgb(b.get_facecolor()) for b in ax.patches] for ax in axes)
    assert left == right and len(set(left)) == 4  # a run keeps its colour; runs differ
    assert left == [to_rgb(c) for c in RUN_COLOURS[:4]]
    for r, g, b in map(to_rgb, RUN_COLOURS):  # neither green ("holds") nor red ("does not hold")
        assert not (g > r + 0.15 and g > b + 0.15) and not (r > g + 0.3 and r > b + 0.3)
    assert axes[1].get_yscale() == "log"
    plt.close("all")
    with pytest.raises(ValueError, match="judged perplexity"):
        plot_run_scores({"a": _gen(0.1, None)})
    with pytest.raises(ValueError, match="at most"):
        plot_run_scores({str(i): _gen(0.1, 1.0) for i in range(len(RUN_COLOURS) + 1)})


def test_start_fact_names_which_figure_is_which_and_gives_no_verdict():
    from course_utils.lessons.l3_xfactor import start_fact

    fact = start_fact({1: 3.27, 10: 3.50, 1e4: 7.004, 1e5: 7.04}, 1e4, 8.147, 8)
    assert fact.startswith("3.27 at 1, 3.50 at 10, 7.00 at 10000, 7.04 at 100000; ")
    assert "at this lesson's 10000, 7.00 is T = 64 (the H100 run's start: 7.00)" in fact
    assert "8.15 the first loss of this machine's runs at T = 8 (both learning rates" in fact
    assert "lr 1e-6" not in fact  # the learning rate plays no part before the first step
    for word in ("holds", "does not hold", "inconclusive"):
        assert word not in fact
    assert "5.26 is T = 64" in start_fact({100: 5.26}, 100, 9.0, 8)
    with pytest.raises(ValueError, match="not among the ratios"):
        start_fact({1: 3.27}, 1e4, 8.1, 8)


def test_recorded_drop_text_prints_the_drops_against_the_lecture():
    from course_utils.lessons.l3_xfactor import recorded_drop_text

    text = recorded_drop_text()
    assert "lr 1e-6 fell 7.00 -> 3.92, 0.56 of its start left (the lecture's 6 -> 2: 0.33 left)" in text
    assert "lr 1e-4 fell 7.00 -> 0.032, 16x the top of 'about 0.001''s band" in text
    assert "any alpha/beta" not in text
    assert "0.67 of its start left" in recorded_drop_text({**H100_RUN, "start_loss": 6.0, "low_loss": 4.0})
    for word in ("holds", "does not hold", "inconclusive"):
        assert word not in text


def test_saved_notebook_has_the_start_as_a_fact_not_a_claim():
    from pathlib import Path

    cells = json.loads((Path(__file__).resolve().parents[2] / "notebooks/03_x_factor_kl.ipynb").read_text())["cells"]
    shown = " ".join("".join(v) if isinstance(v, list) else str(v) for c in cells if c["cell_type"] == "code"
                     for o in c.get("outputs", []) for v in [o.get("text", "")] + list(o.get("data", {}).values()))
    assert "the loss starts at about 6" not in shown  # no claims row: the notes give no alpha/beta
    assert "any alpha/beta" not in shown  # row 4 is scoped to the course's alpha/beta
    # GPT-2 medium's figures, stated by the lecture, are a claims row: the vocabulary counted on the real tokenizer,
    # blocks/width/MLP only on the hub's released config: offline (as saved) not measurable, never the course's constant
    assert "GPT-2 medium, the lecture's model" not in shown
    assert re.search(r"GPT-2 medium: 24 blocks, embedding 1024, vocabulary 50,257, MLP 4x expansion: NOT MEASURABLE "
                     r"HERE\s*\n\s*lecture: 24 / 1024 / 50,257 / 4x; measured: vocabulary 50,257; blocks, embedding, "
                     r"MLP: not read \(no hub\); bar: equal to the lecture's, figure by figure", shown)
    assert "GPT-2 medium : vocabulary 50,257; blocks, embedding, MLP: not read (no hub)" in shown
    assert "354,823,168" not in shown  # the course's GPT2Config is not counted
    # the two starting losses are named where they are printed (same untouched model and target, other tokens)
    assert "the untouched model, alpha/beta 10000, on section 2's random batch" in shown
    assert "first loss: the untouched model on its first training batch" in shown
    assert "7.00 is T = 64 (the H100 run's start: 7.00)" in shown
    assert "the first loss of this machine's runs at T = 8 (both learning rates" in shown
    assert "0.56 of its start left (the lecture's 6 -> 2: 0.33 left)" in shown
    # row 3's local figure carries the same cut-to-shorter check as the H100 figure
    assert re.search(r"each pair cut to its shorter sample, the rise is [+-][\d.]+ nats/token \(95% interval "
                     r"[+-][\d.]+ to [+-][\d.]+, \d+ pairs: [a-z ]+ \+0.693\); the uncut [+-][\d.]+ is the one "
                     r"judged against the bar \(it counts every token each model wrote\), and the cut figure gives "
                     r"the same verdict; the original generated \d+ tokens, lr 1e-6 \d+", shown)


class _Vocab:
    """A tokenizer stand-in of a given length (only ``len`` is read)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_gpt2_medium_row_reads_the_released_config_online_and_is_not_measurable_offline(monkeypatch):
    from transformers import GPT2Config

    from course_utils.claims import NOT_MEASURABLE
    from course_utils.lessons import l3_xfactor as l3
    from course_utils.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    asked = []

    def hub(hub_id):  # the hub loader, replaced: what AutoConfig.from_pretrained returns for gpt2-medium
        asked.append(hub_id)
        return GPT2Config(n_layer=24, n_embd=1024, n_head=16)

    monkeypatch.setattr(l3, "_load_hub_config", hub)
    # offline: the hub is not even tried; vocabulary measured, the rest not measurable, and so the row
    monkeypatch.setattr(l3, "is_online", lambda: False)
    config, why = l3.released_gpt2m_config()
    assert config is None and asked == [] and why == l3.GPT2M_OFFLINE
    assert "unreachable offline; the course's constant says 24/1024/4x" in why and "not a measurement" in why
    off = l3.config_verdict(tok, config, why)
    assert off.verdict == NOT_MEASURABLE and off.bar == "equal to the lecture's, figure by figure"
    assert off.measured == "vocabulary 50,257; blocks, embedding, MLP: not read (no hub)"
    assert f"[{HOLDS_}] vocabulary 50,257 vs the lecture's 50,257: equal (counted on GPT-2's BPE tokenizer" in off.why
    assert f"[{NOT_MEASURABLE}] blocks, embedding, MLP expansion: the released config.json is on the Hugging Face " \
           "hub" in off.why
    assert "24 blocks" not in off.measured and "354,823,168" not in off.why  # the course's constant is not counted
    # online: read from the hub and counted on the architecture it builds; decides both ways
    monkeypatch.setattr(l3, "is_online", lambda: True)
    config, why = l3.released_gpt2m_config()
    assert asked == ["openai-community/gpt2-medium"] and why == ""
    on = l3.config_verdict(tok, config, why)
    assert on.verdict == HOLDS_ and on.measured == "24 blocks, embedding 1024, vocabulary 50,257, MLP 4x"
    assert "released config.json, read from the hub (n_layer 24, n_embd 1024, n_inner not set" in on.why
    assert "354,823,168 parameters (the notes give none)" in on.why
    small = l3.config_verdict(tok, GPT2Config())  # GPT-2 small's config: 12 blocks, 768 wide: the claim must fail
    assert small.verdict == DOES_NOT_HOLD_ and "blocks 12 vs the lecture's 24: not equal" in small.why
    assert l3.config_verdict(_Vocab(50_258), config).verdict == DOES_NOT_HOLD_  # exact: one token off fails
    assert l3.config_verdict(tok, GPT2Config(n_layer=24, n_embd=1024, n_head=16, n_inner=2048)).verdict == \
        DOES_NOT_HOLD_  # MLP 2x
    # reachable, but the download fails: still out of reach here, and said why (never a hang, never a crash)
    monkeypatch.setattr(l3, "_load_hub_config", lambda hub_id: (_ for _ in ()).throw(OSError("504 from the hub")))
    config, why = l3.released_gpt2m_config()
    assert config is None and "config.json from the hub failed (OSError: 504 from the hub)" in why
    assert l3.config_verdict(tok, config, why).verdict == NOT_MEASURABLE
    with pytest.raises(ValueError, match="say why"):
        l3.config_verdict(tok, None, "")
    assert dict(l3.LECTURE_GPT2M) == {"blocks": 24, "embedding": 1024, "vocabulary": 50_257, "MLP expansion": 4}


def test_gpt2m_figures_counts_a_gpt2_model():
    from course_utils.lessons.l3_xfactor import gpt2m_figures
    from course_utils.pretrained import build_from_config
    from course_utils.tokenizer import gpt2_tokenizer

    f = gpt2m_figures(build_from_config("gpt2"), gpt2_tokenizer())  # meta device: no weights
    assert f == {"blocks": 12, "embedding": 768, "vocabulary": 50_257, "MLP expansion": 4.0,
                 "parameters": 124_439_808}
    with pytest.raises(ValueError, match="not the same model"):
        gpt2m_figures(build_from_config("gpt2"), TOK)
    with pytest.raises(ValueError, match="GPT-2 model"):
        gpt2m_figures(torch.nn.Linear(2, 2))


def test_decoded_vocab_is_cached_per_tokenizer_and_masks_agree():
    from course_utils.lessons.l3_xfactor import decoded_vocab

    class Counting(ToyTokenizer):
        calls = 0

        def batch_decode(self, rows):
            Counting.calls += 1
            return super().batch_decode(rows)

    tok = Counting()
    first = decoded_vocab(tok)
    assert decoded_vocab(tok) is first and Counting.calls == 1  # decoded once
    assert letter_token_mask(tok, "x").tolist() == letter_token_mask(TOK, "x").tolist()
    assert Counting.calls == 1
    other = Counting()
    assert decoded_vocab(other) == first and Counting.calls == 2  # another tokenizer: decoded afresh


def test_cut_to_shorter_reuses_the_kept_token_nlls(tiny_llama):
    from course_utils.lessons.l3_xfactor import cut_to_shorter

    m = tiny_llama(vocab=6)
    a = GenerationResult(samples=[Sample("hi", [3, 4], ""), Sample("yo", [1, 2, 3], "")])
    b = GenerationResult(samples=[Sample("hi", [3, 4, 5, 5], ""), Sample("yo", [1], "")])
    fresh = cut_to_shorter(m, ToyEncode(), a, b)
    a.token_nll, b.token_nll = [[1.0, 3.0], [2.0, 2.0, 2.0]], [[5.0, 1.0, 9.0, 9.0], [4.0]]
    assert cut_to_shorter(m, ToyEncode(), a, b) == ([2.0, 2.0], [3.0, 4.0])  # kept NLLs: no forward
    assert fresh != ([2.0, 2.0], [3.0, 4.0])
