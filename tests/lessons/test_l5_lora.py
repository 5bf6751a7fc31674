"""LoRA from scratch vs peft: trainable counts, equal outputs with the same A and B, merging; memory arithmetic."""
import copy
import importlib.util

import pytest
import torch
from torch import nn

from course_utils.lessons.l5_lora import (
    LoRALinear,
    add_lora,
    check_lora_count,
    copy_lora_from_peft,
    copy_lora_to_peft,
    lora_layers,
    lora_param_count,
    merge_lora,
    randomize_lora_B,
)
from course_utils.memory import BYTES_PER_PARAM, count_parameters, finetune_memory, optimizer_state_bytes

TARGETS = ["q_proj", "v_proj", "down_proj"]
#: float32 on CPU: the same sums taken in a different order differ by a few ulps of values ~1-10.
ATOL = 1e-5


@pytest.fixture
def llama(tiny_llama):
    """The conftest tiny Llama at this file's sizes: vocabulary 101, hidden 48 (MLP 96), untied embeddings."""
    return lambda hidden=48: tiny_llama(vocab=101, hidden=hidden, intermediate=2 * hidden, tie=False)


@pytest.fixture
def ids():
    return torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(1))


def test_lora_linear_starts_as_the_base_layer_and_learns_only_A_B():
    base = nn.Linear(20, 30)
    layer = LoRALinear(base, r=4, alpha=8, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 20)
    assert torch.equal(layer(x), base(x))  # B = 0
    assert layer.lora_A.shape == (4, 20) and layer.lora_B.shape == (30, 4) and layer.scaling == 2.0
    assert (layer.lora_A.abs() <= 1 / 20 ** 0.5).all() and layer.lora_A.abs().sum() > 0
    layer(x).sum().backward()
    assert base.weight.grad is None and layer.lora_B.grad is not None
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + 2.0 * x @ (layer.lora_B @ layer.lora_A).t()
    assert torch.allclose(layer(x), expected, atol=ATOL)
    assert torch.allclose(layer.merged()(x), layer(x), atol=ATOL)


def test_add_lora_freezes_the_rest_and_counts(ids, llama):
    model = llama()
    before = model(ids).logits
    expected = lora_param_count(model, TARGETS, r=4)
    assert expected == 2 * 4 * ((48 + 48) + (48 + 24) + (96 + 48))
    names = add_lora(model, TARGETS, r=4, alpha=8, seed=0)
    assert len(names) == 6 and all(n.endswith(tuple(TARGETS)) for n in names)
    trainable, total = count_parameters(model)
    assert trainable == expected
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    assert torch.equal(model(ids).logits, before)  # unchanged at start
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model, TARGETS, r=4, alpha=8)


def _peft(model, r=4, alpha=8):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0, bias="none")
    return get_peft_model(model, cfg)


def test_same_counts_and_outputs_as_peft(ids, llama):
    ours = llama()
    theirs = _peft(copy.deepcopy(ours))
    add_lora(ours, TARGETS, r=4, alpha=8, seed=0)
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    randomize_lora_B(ours, std=0.05, seed=2)  # as after training: B != 0
    assert copy_lora_to_peft(ours, theirs) == 6
    out_ours, out_theirs = ours(ids).logits, theirs(ids).logits
    assert not torch.allclose(out_ours, llama()(ids).logits, atol=1e-3)  # the adapter does something
    assert torch.allclose(out_ours, out_theirs, atol=ATOL)
    # and back: fresh LoRA layers loaded from peft give the same outputs
    again = llama()
    add_lora(again, TARGETS, r=4, alpha=8, seed=99)
    copy_lora_from_peft(theirs, again)
    assert torch.allclose(again(ids).logits, out_theirs, atol=ATOL)


def test_merging_gives_the_unmerged_outputs(ids, llama):
    ours = llama()
    theirs = _peft(copy.deepcopy(ours))
    add_lora(ours, TARGETS, r=4, alpha=8, seed=0)
    randomize_lora_B(ours, std=0.05, seed=2)
    copy_lora_to_peft(ours, theirs)
    unmerged = theirs(ids).logits
    merged_peft = theirs.merge_and_unload()
    assert not any("lora" in n for n, _ in merged_peft.named_modules())
    assert torch.allclose(merged_peft(ids).logits, unmerged, atol=ATOL)
    merge_lora(ours)
    assert not any(isinstance(m, LoRALinear) for m in ours.modules())
    assert torch.allclose(ours(ids).logits, unmerged, atol=ATOL)


def test_bad_inputs_say_what_to_do(llama):
    model = llama()
    with pytest.raises(ValueError, match="linear layers are named.*q_proj"):
        add_lora(model, ["query"], r=4, alpha=8)
    with pytest.raises(ValueError, match="exceeds"):
        LoRALinear(nn.Linear(8, 3), r=4, alpha=8)
    with pytest.raises(ValueError, match="positive int"):
        lora_param_count(model, TARGETS, r=0)
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(3, 3, 1), r=1, alpha=1)
    with pytest.raises(ValueError, match="add_lora first"):
        lora_layers(model)
    with pytest.raises(ValueError, match="target_modules is empty"):
        add_lora(model, [], r=4, alpha=8)


def test_smollm2_shapes_without_weights():
    from course_utils.pretrained import build_from_config

    meta = build_from_config("SmolLM2-135M-Instruct")
    # 30 layers; q_proj 576 -> 576, v_proj 576 -> 192
    assert lora_param_count(meta, ["q_proj", "v_proj"], r=8) == 8 * 30 * ((576 + 576) + (576 + 192))


def test_checker(llama):
    model = llama()
    truth = lora_param_count(model, ["q_proj", "v_proj"], r=4)
    assert check_lora_count(truth, model).passed is True
    high = check_lora_count(truth + 1, model)
    assert high.passed is False and "too high" in high.message
    assert check_lora_count(None, model).passed is False
    with pytest.raises(TypeError):
        check_lora_count("many", model)


def test_memory_arithmetic():
    rows = {r["method"]: r for r in finetune_memory(1_000_000, n_trainable=10_000)}
    assert rows["full FT, fp32 Adam"]["bytes/param"] == 16
    assert rows["full FT, mixed precision"]["bytes/param"] == 16
    assert rows["LoRA, bf16 base"]["total"] == 2 * 1_000_000 + 16 * 10_000
    assert BYTES_PER_PARAM["nf4"] == pytest.approx(0.5625)
    assert BYTES_PER_PARAM["nf4 + double quant"] == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256))
    q65 = {r["method"]: r for r in finetune_memory(65_000_000_000, n_trainable=200_000_000)}
    assert q65["QLoRA, NF4 + double quant"]["total"] < 48e9 < q65["LoRA, bf16 base"]["total"]
    with pytest.raises(ValueError):
        finetune_memory(0)


def test_optimizer_state_is_measured(llama):
    model = llama()
    add_lora(model, TARGETS, r=4, alpha=8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(torch.randint(0, 101, (1, 8))).logits.sum().backward()
    opt.step()
    trainable = count_parameters(model)[0]
    assert optimizer_state_bytes(opt) == 2 * 4 * trainable + 4 * 12  # m and v, plus a step counter per tensor


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_nf4_on_cpu(tmp_path, llama):
    from course_utils.lessons.l5_lora import nf4_error
    from course_utils.memory import model_bytes, paper_constant_bits, quant_constant_bits

    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    err = nf4_error(w)
    assert 0.01 < err < 0.15
    assert nf4_error(w, double_quant=True) == pytest.approx(err, rel=0.05)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = llama(hidden=512)  # big enough that the weights, not the codebooks, dominate
    model.save_pretrained(tmp_path)
    sizes, bits = {}, {}
    for dq in (False, True):
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=dq,
                                 bnb_4bit_compute_dtype=torch.float32)
        q = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=cfg, device_map="cpu")
        sizes[dq] = model_bytes(q)
        bits[dq] = quant_constant_bits(q)
    assert sizes[True] < sizes[False] < model_bytes(model)
    # the block constants in the paper's unit; the per-layer codebooks come on top
    assert bits[False]["blocks"] == pytest.approx(paper_constant_bits(False), abs=1e-6)
    assert paper_constant_bits(True) <= bits[True]["blocks"] < paper_constant_bits(True) + 0.01
    assert bits[True]["codebooks"] > bits[False]["codebooks"] > 0
    assert bits[True]["weights"] == bits[False]["weights"] == sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n)


def test_lora_at_gpt3_scale_is_about_ten_thousand_times_fewer():
    from course_utils.lessons.l5_lora import dense_gpt_params, lora_count_from_shapes

    n = dense_gpt_params(96, 12288)
    assert 174e9 < n < 176e9  # GPT-3 175B
    lora = lora_count_from_shapes([(12288, 12288)] * 2, 96, 4)  # W_q and W_v, r = 4: the LoRA paper's setting
    assert lora == 18_874_368
    assert 9_000 < n / lora < 10_000
    with pytest.raises(ValueError, match="positive int"):
        lora_count_from_shapes([(8, 8)], 2, 0)


def test_improvement_recovered():
    from course_utils.lessons.l5_lora import improvement_recovered

    assert improvement_recovered(2.0, 1.5, 1.0) == pytest.approx(0.5)
    assert improvement_recovered(2.0, 0.9, 1.0) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="did not improve"):
        improvement_recovered(2.0, 1.5, 2.1)


def forgetting_losses():
    """Per-batch web losses: the base model's, evaluation noise, a LoRA that forgot 0.01, a full FT that forgot 0.2."""
    g = torch.Generator().manual_seed(0)
    base = (3 + torch.rand(16, generator=g)).tolist()
    noise = (0.01 * torch.randn(16, generator=g)).tolist()
    return base, noise, [b + 0.01 for b in base], [b + 0.2 + e for b, e in zip(base, noise)]


def test_forgetting_comparison_decides_only_beyond_noise_and_at_comparable_gain():
    from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE
    from course_utils.lessons.l5_lora import forgetting_comparison

    base, noise, lora, full = forgetting_losses()
    assert forgetting_comparison(base, lora, full, 0.1, 0.1, n_seeds=2)["verdict"] == HOLDS
    assert forgetting_comparison(base, full, lora, 0.1, 0.1, n_seeds=2)["verdict"] == DOES_NOT_HOLD
    # one training seed: the evaluation noise is known, the training noise is not
    one = forgetting_comparison(base, full, lora, 0.1, 0.1, n_seeds=1)
    assert one["verdict"] == INCONCLUSIVE and "training noise" in one["why"]
    same = [b + 0.1 + e for b, e in zip(base, noise)]
    assert forgetting_comparison(base, same, [b + 0.1 for b in base], 0.1, 0.1, n_seeds=2)["verdict"] == INCONCLUSIVE
    # LoRA learned a tenth as much: less forgetting may be less learning
    out = forgetting_comparison(base, lora, full, 0.01, 0.1, n_seeds=2)
    assert out["verdict"] == INCONCLUSIVE and "learn comparably" in out["why"]
    with pytest.raises(ValueError, match="same number"):
        forgetting_comparison(base, lora[:3], full, 0.1, 0.1)


def test_paper_unit_of_double_quantization():
    from course_utils.memory import paper_constant_bits

    assert paper_constant_bits(False) == 0.5
    assert paper_constant_bits(True) == pytest.approx(0.127, abs=5e-4)
    assert paper_constant_bits(False) - paper_constant_bits(True) == pytest.approx(0.373, abs=5e-4)


def test_forgetting_comparison_with_a_spread_measured_elsewhere():
    from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE
    from course_utils.lessons.l5_lora import forgetting_comparison

    base, noise, lora, full = forgetting_losses()
    # one seed each, but the seed-to-seed spread is known: a 0.19 difference beyond a spread of 0.05 decides
    assert forgetting_comparison(base, lora, full, 0.1, 0.1, n_seeds=1, spread=0.05)["verdict"] == HOLDS
    out = forgetting_comparison(base, full, lora, 0.1, 0.1, n_seeds=1, spread=0.05)
    assert out["verdict"] == DOES_NOT_HOLD and "measured elsewhere" in out["why"]
    short = forgetting_comparison(base, full, lora, 0.1, 0.1, n_seeds=1, spread=0.05, budget_short="6 steps")
    assert short["verdict"] == INCONCLUSIVE and "6 steps" in short["why"]
    # a difference smaller than what another seed changes is inconclusive, never "does not hold"
    within = forgetting_comparison(base, full, lora, 0.1, 0.1, n_seeds=1, spread=0.5)
    assert within["verdict"] == INCONCLUSIVE and "within the seed-to-seed spread" in within["why"]


def test_recovers_share_goes_through_compare_runs():
    from course_utils.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE
    from course_utils.lessons.l5_lora import recovers_share

    # base 2.0, reference 1.0 (gain 1.0): 90% recovered means candidate < 1.1
    assert recovers_share(2.0, 1.0, 1.02, 0.9, spread=0.01).verdict == HOLDS
    assert recovers_share(2.0, 1.0, 1.3, 0.9, spread=0.01).verdict == DOES_NOT_HOLD
    assert recovers_share(2.0, 1.0, 1.3, 0.9, spread=0.01, budget_short="6 steps").verdict == INCONCLUSIVE
    assert recovers_share(2.0, 1.0, 1.12, 0.9, spread=0.05).verdict == INCONCLUSIVE  # within the spread
    over_seeds = recovers_share(2.0, [1.0, 1.02, 0.98], [1.03, 1.01, 1.0], 0.9)
    assert over_seeds.verdict == HOLDS and over_seeds.seeds == 3
    with pytest.raises(ValueError, match="no improvement"):
        recovers_share(1.0, 1.2, 1.1, 0.9, spread=0.01)
    with pytest.raises(ValueError, match="share must be"):
        recovers_share(2.0, 1.0, 1.1, 1.5, spread=0.01)
    with pytest.raises(ValueError, match="spread"):
        recovers_share(2.0, 1.0, 1.1, 0.9)  # one seed and no spread


def test_batch_losses_are_the_same_batch_by_batch_or_together(llama):
    from course_utils.lessons.l5_lora import batch_losses
    from course_utils.losses import all_token_loss

    model = llama()
    data = torch.randint(0, 101, (400,), generator=torch.Generator().manual_seed(0))

    def batches(g):
        i = torch.randint(0, len(data) - 9, (3,), generator=g)
        x = torch.stack([data[j:j + 8] for j in i])
        return x, torch.stack([data[j + 1:j + 9] for j in i])

    one = batch_losses(model, batches, 5, all_token_loss, per_forward=1)
    together = batch_losses(model, batches, 5, all_token_loss, per_forward=4)
    assert len(one) == 5 and len(set(one)) == 5
    assert together == pytest.approx(one, abs=1e-5)
    with pytest.raises(ValueError, match="per_forward"):
        batch_losses(model, batches, 5, all_token_loss, per_forward=0)


def test_paged_optimizer_experiment_needs_cuda_and_says_so():
    from course_utils.lessons.l5_lora import paged_optimizer_under_cap

    with pytest.raises(RuntimeError, match="needs a CUDA GPU, not cpu"):
        paged_optimizer_under_cap(lambda: torch.nn.Linear(2, 2), lambda m: m(torch.ones(1, 2)).sum(), "cpu")
