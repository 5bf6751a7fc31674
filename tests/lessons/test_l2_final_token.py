
import pytest
import torch
import torch.nn.functional as F

from course_utils.lessons.l2_final_token import (
    check_last_k_loss,
    count_target_tokens,
    first_step_below,
    known_word_share,
    last_k_loss_reference,
    loss_noise,
    space_token_share,
    text_quality,
    word_vocabulary,
    words,
)
from course_utils.losses import all_token_loss, final_token_loss
from course_utils.tokenizer import gpt2_tokenizer


def test_words_and_known_word_share():
    vocab = word_vocabulary("Alice was beginning to get very tired. Don't stop, Alice!")
    assert words("Alice's cat, DON'T 42 go") == ["alice's", "cat", "don't", "go"]
    assert known_word_share("Alice was tired", vocab) == 1.0
    assert known_word_share("Alicewas very tired", vocab) == pytest.approx(2 / 3)  # run-together tokens
    assert known_word_share("... 123 !!", vocab) == 0.0  # nothing readable
    with pytest.raises(TypeError, match="set of words"):
        known_word_share("Alice", "Alice was")
    with pytest.raises(ValueError, match="empty"):
        known_word_share("Alice", set())


def test_space_token_share_and_text_quality():
    tok = gpt2_tokenizer()
    spaced = tok(" the cat sat on the mat", add_special_tokens=False)["input_ids"]
    glued = tok("thecatsatonthemat", add_special_tokens=False)["input_ids"]
    assert space_token_share(spaced, tok) == 1.0
    assert space_token_share(torch.tensor(glued), tok) < 0.5
    vocab = word_vocabulary("the cat sat on the mat")
    good = text_quality([spaced], tok, vocab)
    bad = text_quality(torch.tensor([glued]), tok, vocab)
    assert good.known_word_share == 1.0 and bad.known_word_share == 0.0
    assert bad.mean_word_length > good.mean_word_length
    assert good.n_tokens == len(spaced) and good.n_words == 6
    assert set(good.as_row()) >= {"known words", "tokens with a leading space"}
    with pytest.raises(ValueError, match="no token ids"):
        space_token_share([], tok)
    with pytest.raises(ValueError, match="1-D"):
        space_token_share(torch.zeros(2, 3, dtype=torch.long), tok)


def test_loss_noise_measures_jitter_not_trend():
    smooth_trend = [10 - 0.01 * i for i in range(100)]
    assert loss_noise(smooth_trend) == pytest.approx(0.0, abs=1e-9)
    gen = torch.Generator().manual_seed(0)
    quiet = [v + 0.01 * torch.randn(1, generator=gen).item() for v in smooth_trend]
    loud = [v + 0.5 * torch.randn(1, generator=gen).item() for v in smooth_trend]
    assert loss_noise(loud) > 10 * loss_noise(quiet)
    # only the tail counts: a noisy start does not matter
    start_noisy = [v + (1.0 * (-1) ** i if i < 50 else 0.0) for i, v in enumerate(smooth_trend)]
    assert loss_noise(start_noisy, tail=0.5) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 3"):
        loss_noise([1.0, 2.0])
    with pytest.raises(ValueError, match="tail"):
        loss_noise(smooth_trend, tail=0)


def test_first_step_below():
    steps = [1, 2, 3, 4, 5]
    assert first_step_below(steps, [5, 4, 3, 2, 1], 3) == 3
    assert first_step_below(steps, [5, 4, 3, 2, 1], 0.5) is None
    assert first_step_below(steps, [5, 1, 5, 1, 5], 2) == 2
    assert first_step_below(steps, [5, 1, 5, 1, 5], 2, smooth_window=2) is None  # smoothing removes the dips
    with pytest.raises(ValueError, match="same length"):
        first_step_below([1, 2], [1.0], 1)


def test_count_target_tokens_measures_the_training_signal():
    assert count_target_tokens(all_token_loss, 8, 64) == 8 * 64
    assert count_target_tokens(final_token_loss, 8, 64) == 8
    assert count_target_tokens(lambda lg, t: last_k_loss_reference(lg, t, 5), 3, 16) == 15
    with pytest.raises(ValueError, match="single number"):
        count_target_tokens(lambda lg, t: F.cross_entropy(lg.transpose(1, 2), t, reduction="none"), 2, 4)
    with pytest.raises(ValueError, match="no gradient"):
        count_target_tokens(lambda lg, t: torch.tensor(1.0), 2, 4)


def test_last_k_reference_ends():
    logits, targets = torch.randn(3, 6, 9), torch.randint(0, 9, (3, 6))
    assert last_k_loss_reference(logits, targets, 1).item() == pytest.approx(
        final_token_loss(logits, targets).item(), abs=1e-6
    )
    assert last_k_loss_reference(logits, targets, 6).item() == pytest.approx(
        all_token_loss(logits, targets).item(), abs=1e-6
    )
    with pytest.raises(ValueError, match="k must be"):
        last_k_loss_reference(logits, targets, 7)


def _right(logits, targets, k):
    lp = F.log_softmax(logits[:, -k:], dim=-1)
    return F.nll_loss(lp.reshape(-1, lp.size(-1)), targets[:, -k:].reshape(-1))


def test_checker_passes_a_correct_answer():
    result = check_last_k_loss(_right)
    assert result.passed is True and str(result).startswith("PASSED")


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda lg, t, k: F.nll_loss(lg[:, -k:].reshape(-1, lg.size(-1)), t[:, -k:].reshape(-1)), "log_softmax"),
        (lambda lg, t, k: _right(lg[:, :k], t[:, :k], k), "FIRST k"),
        (lambda lg, t, k: _right(lg, t, k) * lg.size(0) * k, "sum"),
        (lambda lg, t, k: final_token_loss(lg, t), "final position"),
        (lambda lg, t, k: all_token_loss(lg, t), "every position"),
        (lambda lg, t, k: torch.tensor(_right(lg, t, k).item()), "no gradient"),
        (lambda lg, t, k: _right(lg, t, k).reshape(1, 1).expand(2, 1), "one number"),
    ],
)
def test_checker_names_the_mistake(wrong, hint):
    result = check_last_k_loss(wrong)
    assert result.passed is False
    assert str(result).startswith("NOT YET") and hint in result.message


def test_checker_on_an_unfinished_exercise():
    def stub(logits, targets, k):
        raise NotImplementedError

    result = check_last_k_loss(stub)
    assert result.passed is False and "not written yet" in result.message
    with pytest.raises(TypeError, match="callable"):
        check_last_k_loss("my loss")


def test_evaluate_losses_matches_train_evaluate_and_restores_mode():
    from course_utils.data import get_batch
    from course_utils.lessons.l2_final_token import evaluate_losses
    from course_utils.model import GPT, GPTConfig
    from course_utils.train import evaluate

    data = torch.arange(500) % 23
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=23, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    model.train()

    def batches(g):
        return get_batch(data, 4, 8, generator=g)

    got = evaluate_losses(model, batches, {"all": all_token_loss, "final": final_token_loss}, n_batches=3, seed=5)
    assert model.training  # restored
    assert got["all"] == pytest.approx(evaluate(model, batches, all_token_loss, n_batches=3, seed=5), abs=1e-6)
    assert got["final"] == pytest.approx(evaluate(model, batches, final_token_loss, n_batches=3, seed=5), abs=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        evaluate_losses(model, batches, {})
