
import pytest
import torch
import torch.nn.functional as F

from course_utils import verdicts
from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS
from course_utils.data import get_batch
from course_utils.lessons.l2_final_token import (
    FIRST_SEED,
    GPU_NOTEBOOK,
    MORE_BAR,
    NOISIER_BAR,
    SEED_BOOK_QUOTE,
    FinalTokenHead,
    cheaper_reading,
    cheaper_verdict,
    check_last_k_loss,
    continue_each,
    count_target_tokens,
    distinct_n,
    dropout_verdict,
    final_position_loss,
    final_position_test_loss,
    final_token_logits,
    first_step_below,
    frequent_words,
    full_window_excess,
    full_window_pieces,
    generation_verdict,
    glued_rate,
    glued_split,
    glued_words,
    gpu_samples,
    head_share,
    known_word_share,
    last_k_loss_reference,
    lecture_step_flops,
    letter_vocabulary,
    loss_noise,
    nll_on_raw_logits,
    noisier_reading,
    noisier_verdict,
    on_each_text,
    per_seed,
    per_sequence_quality,
    poorer_text_verdict,
    readable,
    real_id_pieces,
    reference_nll,
    repeated_ngram_share,
    repetition_reading,
    space_token_share,
    spaces_verdict,
    step_flops,
    table_seeds,
    text_quality,
    with_sign,
    word_start_share,
    word_start_share_of_text,
    word_vocabulary,
    words,
)
from course_utils.losses import all_token_loss, final_token_loss
from course_utils.model import GPT, GPTConfig
from course_utils.tokenizer import gpt2_tokenizer
from course_utils.train import TrainConfig, train


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


def test_evaluate_losses_matches_train_evaluate_and_restores_mode(tiny_gpt):
    from course_utils.data import get_batch
    from course_utils.lessons.l2_final_token import evaluate_losses
    from course_utils.train import evaluate

    data = torch.arange(500) % 23
    model = tiny_gpt(vocab_size=23, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.5)
    model.train()

    def batches(g):
        return get_batch(data, 4, 8, generator=g)

    got = evaluate_losses(model, batches, {"all": all_token_loss, "final": final_token_loss}, n_batches=3, seed=5)
    assert model.training  # restored
    assert got["all"] == pytest.approx(evaluate(model, batches, all_token_loss, n_batches=3, seed=5), abs=1e-6)
    assert got["final"] == pytest.approx(evaluate(model, batches, final_token_loss, n_batches=3, seed=5), abs=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        evaluate_losses(model, batches, {})


# ---- the cheap final-token path ---------------------------------------------------------------------------

def test_final_token_logits_match_the_full_forward_and_its_gradients(tiny_gpt):
    model = tiny_gpt(pad_vocab_multiple=64)  # padded head: the cheap path must crop it like forward does
    x, y = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    cheap = final_token_logits(model, x)
    assert cheap.shape == (3, 1, 97)
    assert torch.allclose(cheap, model(x)[:, [-1], :], atol=1e-5)
    final_position_loss(cheap, y).backward()
    cheap_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    final_token_loss(model(x), y).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, cheap_grads[n], atol=1e-6), n
    assert final_position_loss(model(x), y).item() == pytest.approx(final_token_loss(model(x), y).item(), abs=1e-6)


def test_final_token_head_trains_model5_like_the_full_path(tiny_gpt, token_stream):
    def batches(g):
        return get_batch(token_stream, 4, 16, generator=g)

    cfg = TrainConfig(steps=3, lr=1e-2, progress=False)
    full, cheap = tiny_gpt(vocab_size=41, dropout=0.1), tiny_gpt(vocab_size=41, dropout=0.1)
    h_full = train(full, batches, cfg, loss_fn=final_token_loss)
    h_cheap = train(FinalTokenHead(cheap), batches, cfg, loss_fn=final_position_loss)
    assert h_cheap.train_loss == pytest.approx(h_full.train_loss, abs=1e-4)  # same dropout masks, same batches
    for (n, a), b in zip(full.named_parameters(), cheap.parameters()):
        assert torch.allclose(a, b, atol=1e-4), n
    prompt = token_stream[:5].unsqueeze(0)
    assert torch.equal(FinalTokenHead(cheap).generate(prompt, 6, greedy=True), cheap.generate(prompt, 6, greedy=True))


def test_final_token_logits_errors(tiny_gpt):
    model = tiny_gpt().to("meta")
    out = final_token_logits(model, torch.zeros(2, 4, dtype=torch.long))  # the course adds no device check of its own
    with pytest.raises(RuntimeError, match="device"):  # PyTorch's own message, where the tensors meet
        final_position_loss(out, torch.zeros(2, 4, dtype=torch.long))
    model = tiny_gpt()
    with pytest.raises(ValueError, match="longer than the model's context"):
        final_token_logits(model, torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(TypeError, match="GPT"):
        FinalTokenHead(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="targets"):
        final_position_loss(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))


def test_final_token_logits_call_model5s_seams(tiny_gpt, monkeypatch):
    model = tiny_gpt()
    calls = []
    for seam in ("embed", "blocks", "unembed"):
        original = getattr(model, seam)
        monkeypatch.setattr(model, seam, lambda *a, _f=original, _n=seam, **k: calls.append(_n) or _f(*a, **k))
    final_token_logits(model, torch.zeros(2, 4, dtype=torch.long))
    assert calls == ["embed", "blocks", "unembed"]


def test_step_flops_count_the_head_at_every_position_or_at_one(tiny_gpt):
    B, T, C, V = 3, 16, 32, 97
    model = tiny_gpt()
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    all_tok = step_flops(model, all_token_loss, x, y)
    final_full = step_flops(model, final_token_loss, x, y)
    final_cheap = step_flops(FinalTokenHead(model), final_position_loss, x, y)
    assert final_full == all_tok  # the loss changes, the matrix multiplies do not
    # the head's C x V multiply runs on B instead of B*T rows: forward, input gradient and weight gradient
    assert final_full - final_cheap == 3 * 2 * B * (T - 1) * C * V
    assert all(p.grad is None for p in model.parameters())


def test_lecture_step_flops_on_meta_equal_the_count_on_real_tensors(tiny_gpt):
    model = tiny_gpt()
    cfg, B = model.config, 2
    x = torch.randint(0, cfg.vocab_size, (B, cfg.block_size))
    got = lecture_step_flops(cfg, batch_size=B)
    real = {"all-token": step_flops(model, all_token_loss, x, x),
            "final-token, full logits": step_flops(model, final_token_loss, x, x),
            "final-token": step_flops(FinalTokenHead(model), final_position_loss, x, x)}
    # on meta the attention runs PyTorch's math path and is counted (QK^T and AV, forward + 2 backward); on the
    # CPU its fused kernel may have no formula in FlopCounterMode: the rest is the same count
    attention = 3 * 2 * 2 * B * cfg.block_size ** 2 * cfg.n_embd * cfg.n_layer
    assert all(got[k] - real[k] in (0, attention) for k in got)
    assert got["all-token"] - got["final-token"] == real["all-token"] - real["final-token"]  # the head's part
    assert lecture_step_flops(cfg, batch_size=2 * B) == {k: 2 * v for k, v in got.items()}  # linear in the batch
    with pytest.raises(ValueError, match="batch_size"):
        lecture_step_flops(cfg, batch_size=0)


def test_head_share_is_the_unembeddings_part_of_the_step(tiny_gpt):
    cfg = tiny_gpt().config
    f = lecture_step_flops(cfg)
    # dropping the head at all but the last position removes (T - 1) / T of the head's FLOPs
    removed = head_share(cfg, f["all-token"]) * f["all-token"] * (cfg.block_size - 1) / cfg.block_size
    assert f["all-token"] - f["final-token"] == pytest.approx(removed)


def test_at_gpt2_smalls_shape_the_cheap_final_token_step_saves_under_1_5x():
    cfg = GPTConfig(block_size=256, n_layer=12, n_head=12, n_embd=768)  # the lecture's Model 5 (the full profile)
    f = lecture_step_flops(cfg)
    assert 0.28 < head_share(cfg, f["all-token"]) < 0.32  # about a third of the step, not the tiny model's 94%
    assert 1.40 < f["all-token"] / f["final-token"] < 1.45
    assert f["final-token, full logits"] == f["all-token"]  # the lecture's code: the same multiplies


def test_cheaper_is_a_speed_verdict_on_interleaved_steps_at_the_1_5x_reading_of_high_vs_low():
    from course_utils.measure import Timing
    base = Timing([0.10 + 0.001 * i for i in range(15)])
    same = cheaper_verdict(base, Timing([t / 1.02 for t in base.times]))  # the lecture's code: about the same work
    assert same.verdict == DOES_NOT_HOLD and same.bar == "> 1.50x"
    fast = cheaper_verdict(base, Timing([t / 3.0 for t in base.times]))
    assert fast.verdict == HOLDS
    edge = cheaper_verdict(base, Timing([t / (1.3 if i % 2 else 1.7) for i, t in enumerate(base.times)]))
    assert edge.verdict == INCONCLUSIVE  # the interval straddles 1.5x
    with pytest.raises(ValueError, match="rounds"):
        cheaper_verdict(base, Timing(base.times[:10]))
    reading = "the course's 1.5x reading of 'Cao' vs 'Thấp' (lesson 1)"
    assert cheaper_reading(fast).startswith("interval 3.00-3.00x, above " + reading)
    assert cheaper_reading(cheaper_verdict(base, Timing(base.times))) == f"interval 1.00-1.00x: reaching 1.00x or " \
        f"below, below {reading}"
    assert cheaper_reading(cheaper_verdict(base, Timing([t / 1.25 for t in base.times]))) == \
        f"interval 1.25-1.25x: above 1.00x, below {reading}"
    assert cheaper_reading(edge).endswith("across " + reading)
    for v in (fast, edge, same):  # figures, no verdict words: the verdict is the row's
        assert not any(w in cheaper_reading(v) for w in ("cheaper", "holds", "margin", "noise"))


def test_nll_on_raw_logits_is_minus_the_logit():
    logits, targets = torch.randn(4, 6, 9), torch.randint(0, 9, (4, 6))
    want = -logits[torch.arange(4), -1, targets[:, -1]].mean()
    assert nll_on_raw_logits(logits, targets).item() == pytest.approx(want.item(), abs=1e-6)
    assert nll_on_raw_logits(logits + 100, targets).item() == pytest.approx(want.item() - 100, abs=1e-4)


def test_final_position_test_loss_is_the_same_yardstick_for_every_model(tiny_gpt, token_stream):
    model = tiny_gpt(vocab_size=41, dropout=0.3)
    model.train()
    got = final_position_test_loss(model, token_stream, 10, 16, seed=3, chunk=4)  # chunks of 4, 4, 2
    assert model.training
    x, y = get_batch(token_stream, 10, 16, generator=torch.Generator().manual_seed(3))
    model.eval()
    assert got == pytest.approx(final_token_loss(model(x), y).item(), abs=1e-5)
    with pytest.raises(ValueError, match="n_sequences"):
        final_position_test_loss(model, token_stream, 0, 16)



def test_word_start_share_skips_blank_tokens_and_sees_glued_ones():
    tok = gpt2_tokenizer()
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert word_start_share(enc(" the cat sat"), tok) == 1.0
    assert word_start_share([enc(" the\n\ncat"), enc(" sat")], tok) == 1.0  # a newline before a word starts it
    blanks = enc(" the" + "   " * 10 + " cat")  # runs of blanks neither help nor hurt
    assert word_start_share(blanks, tok) == 1.0
    assert word_start_share(torch.tensor(enc(" thecatsatonthemat")), tok) < 0.5
    with pytest.raises(ValueError, match="letter"):
        word_start_share(enc("   ..."), tok)

# ---- verdicts ---------------------------------------------------------------------------------------------

def test_on_each_text_is_all_of_the_texts_verdicts():
    up = verdicts.compare_runs([1.0, 1.1, 1.2], [2.0, 2.1, 2.3], lower=False)
    down = verdicts.compare_runs([2.0, 2.1, 2.3], [1.0, 1.1, 1.2], lower=False)
    mixed = verdicts.compare_runs([1.0, 2.0, 1.5], [1.2, 1.7, 1.6], lower=False)
    assert on_each_text({"Alice": up, "web": up}).verdict == up.verdict == VERDICTS[0]
    assert on_each_text({"Alice": up, "web": down}).verdict == down.verdict
    assert on_each_text({"Alice": up, "web": mixed}).verdict == mixed.verdict
    both = on_each_text({"Alice": up, "web": down}, figures={"Alice": "1.10 vs 2.13", "web": "2.13 vs 1.10"})
    assert both.measured.startswith("Alice: 1.10 vs 2.13 -> +1.033") and "web: 2.13 vs 1.10 -> " in both.measured
    assert "Alice: candidate higher" in both.why and "web: candidate higher" in both.why
    assert per_seed([6.211, 6.2, 6.45]) == "6.21/6.20/6.45"


def test_reference_nll_scores_real_text_below_word_soup(tiny_gpt, token_stream):
    from course_utils.model import GPTConfig

    class Scorer(torch.nn.Module):  # a tiny Model 5 trained on a repeating text, with an HF-like output
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return type("Out", (), {"logits": self.model(ids)})()

    text = "the cat sat on the mat. " * 40
    chars = sorted(set(text))

    def tok(s):
        return {"input_ids": [chars.index(c) if c in chars else 0 for c in s]}

    tok.pad_token_id = 0
    torch.manual_seed(0)
    from course_utils.model import GPT

    model = GPT(GPTConfig(vocab_size=len(chars), block_size=64, n_layer=1, n_head=2, n_embd=32, dropout=0.0))
    ids = torch.tensor(tok(text)["input_ids"])
    train(model, lambda g: get_batch(ids, 8, 32, generator=g), TrainConfig(steps=60, lr=1e-2, progress=False))
    model.eval()
    real, soup = reference_nll(Scorer(model), tok, "the cat ", ["sat on the mat.", "mat the on.sat t"])
    assert real < soup
    with pytest.raises(ValueError, match="no texts"):
        reference_nll(Scorer(model), tok, "the", [])


def test_continue_each_returns_new_tokens_only(tiny_gpt):
    tok = gpt2_tokenizer()
    model = tiny_gpt(vocab_size=50257)
    prompts = [tok("Alice was")["input_ids"]] * 3
    a = continue_each(FinalTokenHead(model), prompts, 5, seed=1)
    assert len(a) == 3 and all(len(s) == 5 for s in a)
    assert a == continue_each(model, prompts, 5, seed=1)  # the cheap head samples alike


# ---- repetition and display ---------------------------------------------------------------------------

def test_distinct_n_measures_repetition():
    assert distinct_n([1, 2, 3, 4, 5]) == 1.0
    assert distinct_n([7, 7, 7, 7, 7]) == pytest.approx(1 / 4)
    assert distinct_n(torch.tensor([1, 2, 1, 2, 1])) == pytest.approx(2 / 4)
    assert distinct_n([1, 2, 3], n=1) == 1.0
    with pytest.raises(ValueError, match="at least 3 tokens"):
        distinct_n([1, 2])
    with pytest.raises(ValueError, match="n must be"):
        distinct_n([1, 2, 3], n=0)


def test_per_sequence_quality_has_one_value_per_sample():
    tok = gpt2_tokenizer()
    good = tok(" the cat sat on the mat", add_special_tokens=False)["input_ids"]
    loop = tok(" and and and and and and", add_special_tokens=False)["input_ids"]
    per = per_sequence_quality([good, loop], tok, word_vocabulary("the cat sat on the mat and"))
    assert per["distinct_2"][0] == 1.0 and per["distinct_2"][1] < 0.3
    assert len(per["known_word_share"]) == 2
    assert text_quality([good, loop], tok, {"the"}).distinct_2 == pytest.approx(sum(per["distinct_2"]) / 2)
    with pytest.raises(ValueError, match="at least 2 sequences"):
        per_sequence_quality([good], tok, {"the"})


def test_readable_drops_cut_multibyte_characters():
    tok = gpt2_tokenizer()
    ids = tok("caf\u00e9 \U0001F600 ok<|endoftext|>", add_special_tokens=False)["input_ids"]
    assert readable(ids, tok) == tok.decode(ids)  # whole characters: the same text
    cut = ids[:-3]  # ends inside the emoji's bytes
    assert "\ufffd" in tok.decode(cut) and "\ufffd" not in readable(cut, tok)
    assert readable(cut, tok) == "caf\u00e9 "
    spliced = [*cut, *tok(" ok", add_special_tokens=False)["input_ids"]]  # first byte, then an unrelated token
    assert readable(torch.tensor(spliced), tok) == "caf\u00e9  ok"


# ---- the GPU run's saved samples ------------------------------------------------------------------------------

PROMPTS = {"Alice": "Alice was beginning to", "web": "The best way to"}


def _notebook(tmp_path, lines):
    import json

    path = tmp_path / "nb.ipynb"
    cells = [{"cell_type": "code", "source": "", "outputs": [{"name": "stdout", "output_type": "stream",
                                                              "text": [line + "\n" for line in lines]}]}]
    path.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    return path


def test_gpu_samples_reads_the_saved_greedy_and_sampled_texts(tmp_path):
    path = _notebook(tmp_path, ["=== web | final-token", "[greedy]  'The best way to the the\\nthe'",
                                "[sampled] \"The best way to don't\ufffd go\"", "", "=== Alice | all-token",
                                "[sampled] 'Alice was beginning to sit'"])
    got = gpu_samples(path, PROMPTS)
    assert got == {"web | final-token": [("greedy", " the the\nthe"), ("sampled", " don't go")],
                   "Alice | all-token": [("sampled", " sit")]}  # prompt cut, escapes read, U+FFFD dropped
    with pytest.raises(ValueError, match="prompt"):
        gpu_samples(_notebook(tmp_path, ["=== web | all-token", "[greedy]  'Another prompt'"]), PROMPTS)
    with pytest.raises(ValueError, match="no saved samples"):
        gpu_samples(_notebook(tmp_path, ["nothing printed here"]), PROMPTS)


def test_gpu_samples_of_the_courses_gpu_run():
    got = gpu_samples(GPU_NOTEBOOK, PROMPTS)
    assert sorted(got) == ["Alice | all-token", "Alice | final-token", "web | all-token", "web | final-token"]
    assert all([kind for kind, _ in v] == ["greedy", "sampled"] for v in got.values())
    assert all(len(text) > 50 and "\ufffd" not in text for v in got.values() for _, text in v)
    assert "andThis" in got["web | final-token"][1][1]  # the glued pair the reader saw


def test_word_start_share_of_text_tokenizes_again_and_sees_glued_words():
    tok = gpt2_tokenizer()
    assert word_start_share_of_text(" the cat sat on the mat", tok) == 1.0
    assert word_start_share_of_text([" the cat", " andThis orAccess"], tok) < 1.0
    spaced = word_start_share_of_text(" of and the one", tok)
    assert word_start_share_of_text(" ofand theone", tok) < spaced


# ---- "noisier" as a demonstration; the rules of rows 5 ("poorer text") and 6 ("missing spaces") ----------------------

SEED = __import__("pathlib").Path("/work/shared/seeds/lesson2-final-token-dropout-model5.vi.md")


def test_noisier_is_a_level_of_the_jitter_ratio_at_2x_on_every_text():
    v = noisier_verdict({"Alice": [3.0, 4.0, 5.0], "web": [5.0, 5.0, 5.1]})
    # Alice: mean 4, sd 1, t(2) = 4.303: 4 +- 2.48 -> 1.52-6.48 straddles 2x; web wholly above
    assert v.verdict == INCONCLUSIVE and "Alice" in v.why and "web" in v.why
    assert noisier_verdict({"Alice": [3.0, 3.1, 2.9], "web": [5.0, 5.0, 5.1]}).verdict == HOLDS
    assert noisier_verdict({"Alice": [1.0, 1.1, 0.9], "web": [5.0, 5.0, 5.1]}).verdict == DOES_NOT_HOLD
    with pytest.raises(ValueError, match="2 seeds"):
        noisier_verdict({"Alice": [3.0]})


def test_noisier_reading_gives_figures_without_verdict_words():
    jitter = {"Alice": [3.0, 4.0, 5.0], "web": [5.0, 5.0, 5.1]}  # Alice 1.52-6.48x, web wholly above 2x
    v = noisier_verdict(jitter)
    text = noisier_reading(jitter, v)
    assert "per seed: Alice 3.00/4.00/5.00x, web 5.00/5.00/5.10x" in text
    assert f"low end: Alice {v.figures['parts'][0].low:.2f}x, web {v.figures['parts'][1].low:.2f}x" in text
    assert not any(w in text for w in ("supported", "established", "holds", "inconclusive", "clear", "bar"))


def test_the_two_fluctuation_sentences_take_their_own_bars():
    jitter = {"Alice": [1.3, 1.5, 1.4], "web": [1.6, 1.5, 1.7]}  # clearly more, clearly not 2x
    assert noisier_verdict(jitter).verdict == DOES_NOT_HOLD  # 'dao động mạnh': >= 2x
    assert noisier_verdict(jitter, bar=MORE_BAR).verdict == HOLDS  # 'Dao động lớn hơn': any clear increase
    assert noisier_verdict({"Alice": [0.9, 1.2, 1.0], "web": [1.6, 1.5, 1.7]}, bar=MORE_BAR).verdict == INCONCLUSIVE
    assert MORE_BAR == 1.0 and NOISIER_BAR == 2.0


def test_table_seeds_start_after_the_earlier_revisions_seeds():
    assert table_seeds(3) == [FIRST_SEED, FIRST_SEED + 1, FIRST_SEED + 2] and FIRST_SEED >= 3
    with pytest.raises(ValueError):
        table_seeds(0)


@pytest.mark.skipif(not SEED.exists(), reason="the lecture notes are not on this machine")
def test_the_quotes_are_the_seeds_own_words():
    assert SEED_BOOK_QUOTE in SEED.read_text(encoding="utf-8")


def test_poorer_text_is_decided_by_the_data_both_ways():
    # nats/char above real text: book vs web final-token, paired by seed; bar 0.1 nats/char
    gain, loss = ([0.1, 0.2, 0.15], [0.5, 0.62, 0.55]), ([0.5, 0.62, 0.55], [0.1, 0.2, 0.15])
    assert poorer_text_verdict(*gain).verdict == HOLDS
    assert poorer_text_verdict(*loss).verdict == DOES_NOT_HOLD  # the web text clearly better: refuted, not withheld
    assert poorer_text_verdict([0.1, 0.3, 0.2], [0.1, 0.5, 0.35]).verdict == INCONCLUSIVE
    assert poorer_text_verdict([0.1, 0.2, 0.15], [0.15, 0.26, 0.2]).verdict == DOES_NOT_HOLD  # worse, by < 0.1
    assert poorer_text_verdict(*gain).bar.startswith("higher by > +0.100 nats/char")


def test_generation_compares_the_final_position_loss_of_both_losses_on_each_text():
    # final-position held-out loss per seed; final-token lower = predicts the generated position better = the claim
    good = {"Alice | all-token": [6.5, 6.6, 6.55], "Alice | final-token": [6.3, 6.35, 6.3],
            "web | all-token": [8.4, 8.45, 8.5], "web | final-token": [8.2, 8.3, 8.28]}
    assert generation_verdict(good, ["Alice", "web"]).verdict == HOLDS
    worse = dict(good, **{"web | final-token": [8.6, 8.7, 8.66]})
    v = generation_verdict(worse, ["Alice", "web"])
    assert v.verdict == DOES_NOT_HOLD and "Alice" in v.why and "web" in v.why
    noisy = dict(good, **{"web | final-token": [8.2, 8.6, 8.5]})
    assert generation_verdict(noisy, ["Alice", "web"]).verdict == INCONCLUSIVE
    assert "nats" in v.bar and "6.500/6.600/6.550 vs 6.300/6.350/6.300" in v.measured
    # a clear loss on one text decides the claim, whatever the other text shows
    assert generation_verdict(dict(noisy, **{"Alice | final-token": [6.7, 6.8, 6.75]}),
                              ["Alice", "web"]).verdict == DOES_NOT_HOLD


def test_full_window_generation_predicts_every_token_from_a_whole_window():
    ids = torch.arange(1000) % 97
    prompts, real = full_window_pieces(ids, 4, new_tokens=5, context=8)
    assert [len(p) for p in prompts] == [8] * 4 and [len(r) for r in real] == [5] * 4
    for p, r in zip(prompts, real):  # the real continuation follows its prompt in the held-out text
        start = int(p[0])
        assert [int(x) for x in p + r] == [(start + i) % 97 for i in range(13)]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=8, n_layer=1, n_head=2, n_embd=16))
    seen = []
    head = FinalTokenHead(model)
    original = head.forward
    head.forward = lambda idx: seen.append(idx.size(1)) or original(idx)
    out = continue_each(head, prompts, new_tokens=5, seed=0)
    assert [len(o) for o in out] == [5] * 4 and seen == [8] * 5  # every step sees a full window of 8
    assert out == continue_each(head, prompts, new_tokens=5, seed=0)  # seeded: the same samples again
    with pytest.raises(ValueError, match="one length"):
        continue_each(head, [[1, 2, 3], [1, 2]], new_tokens=2)


def test_full_window_excess_is_paired_by_prompt():
    assert full_window_excess([2.0, 3.0, 2.5], [1.0, 2.5, 1.0]) == pytest.approx((1.0 + 0.5 + 1.5) / 3)
    with pytest.raises(ValueError):
        full_window_excess([2.0, 3.0], [1.0])


def test_with_sign_says_what_each_signed_figure_means():
    v = poorer_text_verdict([0.5, 0.62, 0.55], [0.1, 0.2, 0.15])
    signed = with_sign(v, "web scored better", "web scored worse")
    assert signed.measured == v.measured + " (negative: web scored better)" and signed.verdict == v.verdict
    both = generation_verdict({"A | all-token": [1.0, 1.1, 1.2], "A | final-token": [1.1, 1.2, 1.3],
                               "B | all-token": [1.3, 1.4, 1.5], "B | final-token": [1.0, 1.1, 1.2]}, ["A", "B"])
    text = with_sign(both, "final-token worse", "final-token better").measured
    assert text.index("(negative: final-token worse)") < text.index("B:") < text.index("(positive: final-token better)")


def test_repeated_ngram_share_measures_repetition():
    assert repeated_ngram_share([1, 2, 3, 4, 5, 6, 7]) == 0.0
    assert repeated_ngram_share([7] * 10) == pytest.approx(1 - 1 / 7)  # 7 four-grams, one distinct
    # 1 2 3 4 1 2 3 4: five 4-grams, four distinct -> 1/5 repeat; a list of sequences is averaged
    assert repeated_ngram_share([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(0.2)
    assert repeated_ngram_share([[1, 2, 3, 4, 1, 2, 3, 4], [1, 2, 3, 4, 5]]) == pytest.approx(0.1)
    assert repeated_ngram_share(torch.tensor([5, 5, 5, 5, 5]), n=2) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        repeated_ngram_share([1, 2, 3])  # too short for two 4-grams


def test_repetition_reading_says_whether_the_lead_follows_the_repetition():
    excess = {"A | all-token": [1.30, 1.53, 1.21], "A | final-token": [1.34, 1.58, 1.27]}  # all-token leads
    repeat = {"A | all-token": [0.23, 0.04, 0.16], "A | final-token": [0.02, 0.00, 0.01]}
    text = repetition_reading("A", excess, repeat)  # lead 0.04 where it repeats +0.21 more, 0.05 where +0.04
    assert "all-token" in text and "the lead does not follow the repetition" in text and "seed 1" in text
    assert "weak check" in text
    follows = dict(excess, **{"A | final-token": [1.50, 1.55, 1.30]})  # the lead is largest where it repeats most
    assert "may be repetition" in repetition_reading("A", follows, repeat)
    same = {"A | all-token": [0.0] * 3, "A | final-token": [0.0] * 3}
    assert "does not explain its lead" in repetition_reading("A", excess, same)


def test_real_id_pieces_cut_held_out_ids_like_a_generation():
    tok = gpt2_tokenizer()
    ids = torch.tensor(tok("Alice was beginning to get very tired of sitting by her sister on the bank, and of "
                           "having nothing to do: once or twice she had peeped into the book")["input_ids"])
    prompts, conts = real_id_pieces(ids, 3, 6)
    assert [len(p) for p in prompts] == [5] * 3 and [len(c) for c in conts] == [6] * 3
    assert prompts[0] == ids[:5].tolist() and conts[0] == ids[5:11].tolist()


def test_missing_spaces_is_decided_on_the_per_seed_difference_both_ways():
    # glued words per word of the samples, per seed, minus real text's rate: any clear excess (> 0); no reach rule
    assert spaces_verdict([0.05, 0.06, 0.055], 0.02).verdict == HOLDS
    assert spaces_verdict([0.005, 0.008, 0.006], 0.02).verdict == DOES_NOT_HOLD
    v = spaces_verdict([0.013, 0.008, 0.042], 0.024)  # one run's figures: scattered around real text's rate
    assert v.verdict == INCONCLUSIVE and v.low < 0 < v.high
    assert v.measured.startswith("-0.003 glued words per word") and "(-0.011, -0.016, +0.018)" in v.why
    assert v.bar == "higher by > +0.000 glued words per word"
    with pytest.raises(ValueError):
        spaces_verdict([0.01, 0.02, 0.03], float("nan"))
    with pytest.raises(TypeError):
        spaces_verdict([0.01, 0.02, 0.03], 0.02, "a budget")  # the row takes no budget_short


def test_glued_words_are_unknown_words_that_split_into_two_known_ones():
    known = letter_vocabulary("And this is the Access page, or a way: I and the queen.")
    assert glued_split("andThis", known) == ("and", "this")
    assert glued_split("this", known) is None  # a known word is not glued
    assert glued_split("queens", known) is None  # "s" is no word: a plural is not a glued pair
    assert glued_split("Iand", known) == ("i", "and") and glued_split("aThe", known) == ("a", "the")
    glued, n = glued_words("the andThis, orAccess page2queen xyz", known)
    assert glued == ["andThis", "orAccess"] and n == 6  # "page2queen": a digit separates two known words
    assert glued_rate(["the the", "andThis"], known) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no letter-word"):
        glued_rate("... 42", known)
    with pytest.raises(ValueError, match="frozenset"):
        glued_words("the", {"the"})


def test_glued_words_find_the_gpu_runs_glued_pairs():
    # the known words as the notebook builds them: the web training text (the offline C4 sample, 300 documents)
    from course_utils.data import load_fineweb, load_text, tokenize, train_test_split

    tok = gpt2_tokenizer()
    docs, _ = load_fineweb(n_docs=300)
    train_ids, test_ids = train_test_split(tokenize(docs, tok))
    known = letter_vocabulary(tok.decode(train_ids.tolist()))
    sampled = gpu_samples(GPU_NOTEBOOK, PROMPTS)["web | final-token"][1][1]
    glued, n = glued_words(sampled, known)
    assert {"andThis", "orAccess"} <= set(glued) and n > 50
    alice = gpu_samples(GPU_NOTEBOOK, PROMPTS)["Alice | final-token"]
    assert "thethe" in glued_words(alice[0][1], letter_vocabulary(load_text("alice")))[0]
    # real held-out web text has a level of its own (rare words split by chance), below the glued sample's
    assert 0 < glued_rate(tok.decode(test_ids.tolist()), known) < len(glued) / n


def test_dropout_needs_a_valid_reference_that_overfits():
    p0_test, better = [7.0, 7.2, 7.1], [6.5, 6.6, 6.55]
    untrained, trained = [10.8] * 3, [7.0, 7.1, 7.2]
    overfit, no_overfit = [5.0, 5.2, 5.1], [7.1, 7.0, 7.3]
    assert dropout_verdict(p0_test, better, untrained, trained, overfit).verdict == HOLDS
    held = dropout_verdict(p0_test, better, untrained, trained, no_overfit)
    assert held.verdict == INCONCLUSIVE and "did not show" in held.why  # a gain without overfitting: not "holds"
    broken = dropout_verdict(p0_test, better, untrained, [11.0, 7.1, 7.2], overfit)
    assert broken.verdict == INCONCLUSIVE and "not valid" in broken.why
    worse = dropout_verdict(p0_test, [7.5, 7.7, 7.6], untrained, trained, no_overfit)
    assert worse.verdict == DOES_NOT_HOLD  # a clear loss stands


def test_glued_words_can_be_limited_to_splits_into_frequent_words():
    text = "the cat and the dog and the cat sat on the mat near Avenue Ave nue"
    known, top = letter_vocabulary(text), frequent_words(text, 3)
    assert top == frozenset({"the", "cat", "and"})
    assert glued_split("thecat", known, top) == ("the", "cat")  # two frequent words run together
    assert glued_split("avenues", known) is None and glued_split("nuesat", known) == ("nue", "sat")
    assert glued_split("nuesat", known, top) is None  # rare pieces: a chance split, not counted with parts
    glued, n = glued_words("thecat andthe nuesat", known, top)
    assert glued == ["thecat", "andthe"] and n == 3
    assert glued_rate("thecat andthe nuesat", known, top) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        frequent_words(text, 0)
