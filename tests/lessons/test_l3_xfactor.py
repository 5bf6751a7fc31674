"""Lesson 3: the x-factor target, the KL loss, the R metric and the exercise's checker."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_utils.lessons.l3_xfactor import (
    Sample,
    check_letter_target,
    judge_perplexity,
    kl_to_target,
    letter_token_mask,
    random_token_batches,
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


def test_widget_builds_without_a_display():
    from course_utils.lessons.l3_xfactor import generation_widget

    panel = generation_widget({"toy": UniformLM(6)}, TOK, mask=letter_token_mask(TOK, "x"))
    assert type(panel).__name__ == "VBox"
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
