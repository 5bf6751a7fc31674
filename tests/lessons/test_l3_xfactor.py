"""Lesson 3: the x-factor target, the KL loss, the R metric, the claims' procedures and the exercise's checker."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE
from course_utils.lessons.l3_xfactor import (
    RUN_COLOURS,
    GenerationResult,
    Sample,
    TiltRule,
    behaviour_verdict,
    check_letter_target,
    generation_widget,
    judge_perplexity,
    kl_by_position,
    kl_to_target,
    letter_token_mask,
    loss_level_verdict,
    plot_run_scores,
    random_token_batches,
    start_loss_by_ratio,
    start_loss_verdict,
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
def test_loss_level_short_budget_is_inconclusive_never_does_not_hold():
    assert loss_level_verdict(1.9, level=2.5, steps=40, lecture_steps=300) == (HOLDS, "")  # reached early
    verdict, why = loss_level_verdict(8.0, level=2.5, steps=40, lecture_steps=300)
    assert verdict == INCONCLUSIVE and "40 of the lecture's 300 steps" in why
    verdict, why = loss_level_verdict(8.0, level=2.5, steps=300, lecture_steps=300)
    assert verdict == DOES_NOT_HOLD and "8 > 2.5" in why
    assert loss_level_verdict(2.5, 2.5, 300, 300)[0] == HOLDS
    with pytest.raises(ValueError, match="diverged"):
        loss_level_verdict(float("nan"), 2.5, 40, 300)
    with pytest.raises(ValueError, match="steps must be"):
        loss_level_verdict(1.0, 2.5, 0, 300)
    with pytest.raises(ValueError, match="level must be"):
        loss_level_verdict(1.0, -1, 40, 300)


def test_behaviour_is_judged_only_once_the_loss_got_there():
    assert behaviour_verdict(True, True, "") == (HOLDS, "")
    assert behaviour_verdict(False, True, "") == (DOES_NOT_HOLD, "")
    for condition in (True, False):  # a model that barely moved says nothing about the claim, either way
        assert behaviour_verdict(condition, False, "budget") == (INCONCLUSIVE, "budget")
    # where training leads (R about 1): reached early confirms; not yet reached is still the budget
    assert behaviour_verdict(True, False, "budget", confirms_early=True) == (HOLDS, "")
    assert behaviour_verdict(False, False, "budget", confirms_early=True) == (INCONCLUSIVE, "budget")
    with pytest.raises(ValueError, match="why_not_reached"):
        behaviour_verdict(True, False, "")
    with pytest.raises(ValueError, match="bools"):
        behaviour_verdict(0.3, True, "")


def test_start_loss_inside_the_ratio_range_is_inconclusive():
    by_ratio = {1: 3.3, 100: 5.3, 10000: 7.0}
    verdict, why = start_loss_verdict(6.0, by_ratio, lecture_model=True)
    assert verdict == INCONCLUSIVE and "does not give alpha/beta" in why and "3.30 to 7.00" in why
    assert start_loss_verdict(12.0, by_ratio, lecture_model=True)[0] == DOES_NOT_HOLD
    verdict, why = start_loss_verdict(12.0, by_ratio, lecture_model=False)
    assert verdict == INCONCLUSIVE and "another model" in why
    assert start_loss_verdict(7.9, by_ratio, lecture_model=True)[0] == INCONCLUSIVE  # within 15% of the top
    with pytest.raises(ValueError, match="by_ratio"):
        start_loss_verdict(6.0, {}, lecture_model=True)
    with pytest.raises(ValueError, match="figure must be"):
        start_loss_verdict(-1, by_ratio, lecture_model=True)


def _gen(rate, perplexity, n=100):
    return GenerationResult(samples=[], rate=rate, n_tokens=n, n_letter=round(rate * n), perplexity=perplexity)


def test_tilt_rule_has_three_outcomes():
    rule, orig = TiltRule(), _gen(0.01, 20.0)
    assert rule.verdict(orig, _gen(0.23, 25.0))[0] == HOLDS
    assert rule.verdict(orig, _gen(0.01, 20.0))[0] == DOES_NOT_HOLD  # R did not rise
    assert rule.verdict(orig, _gen(0.9, 20.0 * 11))[0] == DOES_NOT_HOLD  # nonsense
    assert rule.verdict(orig, _gen(0.04, 20.0))[0] == INCONCLUSIVE  # rose, but under min_rate
    verdict, why = rule.verdict(orig, _gen(0.3, 20.0 * 5))  # more x, less readable, not nonsense
    assert verdict == INCONCLUSIVE and "5.0x" in why
    assert rule.verdict(_gen(0.0, 20.0), _gen(0.05, 20.0))[0] == HOLDS  # from R = 0, min_rate decides
    assert "within 2x" in str(rule) and "over 10x" in str(rule)
    with pytest.raises(ValueError, match="judged perplexity"):
        rule.verdict(orig, _gen(0.3, None))
    with pytest.raises(ValueError, match="readable <= nonsense"):
        TiltRule(readable=20.0)


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
