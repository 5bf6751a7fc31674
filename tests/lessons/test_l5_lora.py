"""LoRA from scratch vs peft: trainable counts, equal outputs with the same A and B, merging; memory arithmetic."""
import copy
import importlib.util
import warnings

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
    shared_copy,
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


def test_improvement_recovered():
    from course_utils.lessons.l5_lora import improvement_recovered

    assert improvement_recovered(2.0, 1.5, 1.0) == pytest.approx(0.5)
    assert improvement_recovered(2.0, 0.9, 1.0) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="did not improve"):
        improvement_recovered(2.0, 1.5, 2.1)


def test_forgetting_comparison_is_paired_by_seed_and_decides_both_ways():
    from course_utils.lessons.l5_lora import forgetting_comparison

    scope = "at 4 steps, lr 1e-3 for both"
    lora, full = [4.30, 4.31, 4.29], [4.38, 4.40, 4.37]  # full FT's web loss higher on every seed
    v = forgetting_comparison(lora, full, [0.1, 0.1, 0.1], [0.12, 0.11, 0.13], base=4.2, scope=scope)
    assert v.verdict == "holds" and v.gain == pytest.approx(0.0833, abs=1e-3) and "(0.83x)" in v.why
    assert "no better than the base model" not in v.why
    broke = forgetting_comparison(lora, full, [0.04] * 3, [-0.77, -0.80, -0.73], base=4.2, scope=scope)
    assert broke.verdict == "holds" and "full FT -0.767 nats;" in broke.why and "x)" not in broke.why.split("gain")[1]
    assert "full FT ended no better than the base model on the held-out task" in broke.why
    assert v.measured.startswith("LoRA's web loss lower by +0.083 nats/token (+0.") and scope in v.why
    mirror = forgetting_comparison(full, lora, [0.1] * 3, [0.1] * 3, base=4.2, scope=scope)
    assert mirror.verdict == "does not hold" and mirror.measured.startswith("LoRA's web loss lower by -0.083")
    mixed = forgetting_comparison([4.30, 4.40, 4.35], [4.35, 4.30, 4.36], [0.1] * 3, [0.1] * 3, base=4.2,
                                  scope=scope)
    assert mixed.verdict == "inconclusive"
    with pytest.raises(ValueError, match="no paired error rate"):
        forgetting_comparison([4.3], [4.4], [0.1], [0.1], base=4.2, scope=scope)  # one seed
    with pytest.raises(ValueError, match="scope"):
        forgetting_comparison(lora, full, [0.1] * 3, [0.1] * 3, base=4.2, scope=" ")


def test_forgetting_is_decided_where_full_fine_tuning_did_not_forget():
    """Full FT's web loss flat, LoRA's risen on every seed: LoRA forgot more, so the claim does not hold (it is
    not 'not measurable'); each arm's rise over the base model is in the note."""
    from course_utils.lessons.l5_lora import forgetting_comparison

    v = forgetting_comparison([4.275, 4.292, 4.265], [4.249, 4.265, 4.242], [0.06] * 3, [0.07] * 3, base=4.256,
                              scope="lr 1e-3 for both")
    assert v.verdict == "does not hold" and "LoRA's web loss lower by -0.025 nats/token (-0.031 to -0.020)" == (
        v.measured)
    assert "LoRA +0.021 (" in v.why and "full FT -0.004 (" in v.why


def test_paper_unit_of_double_quantization():
    from course_utils.memory import paper_constant_bits

    assert paper_constant_bits(False) == 0.5
    assert paper_constant_bits(True) == pytest.approx(0.127, abs=5e-4)
    assert paper_constant_bits(False) - paper_constant_bits(True) == pytest.approx(0.373, abs=5e-4)


def test_recovers_share_is_paired_over_all_seeds():
    from course_utils.lessons.l5_lora import recovers_share

    # base 2.0, reference about 1.0 (gain 1.0): 90% recovered means candidate < reference + 0.1, seed by seed
    ref = [1.0, 1.02, 0.98]
    ok = recovers_share(2.0, ref, [1.03, 1.05, 1.0], 0.9)
    assert ok.verdict == "holds" and ok.n == 3 and ok.recovered == pytest.approx(0.973, abs=1e-3)
    assert recovers_share(2.0, ref, [1.3, 1.31, 1.29], 0.9).verdict == "does not hold"
    assert recovers_share(2.0, ref, [1.3, 1.31, 1.29], 0.9, budget_short="the notes train 3 epochs").verdict == (
        "inconclusive")
    assert recovers_share(2.0, ref, [1.0, 1.3, 1.0], 0.9).verdict == "inconclusive"  # the seeds disagree
    flat = recovers_share(1.0, [1.2, 1.21, 1.19], [1.1, 1.12, 1.09], 0.9)  # the reference got worse than the base
    assert flat.verdict == "holds" and "did not improve" in flat.why  # the bar is then the reference itself
    with pytest.raises(ValueError, match="share must be"):
        recovers_share(2.0, ref, ref, 1.5)
    with pytest.raises(ValueError, match="no paired error rate"):
        recovers_share(2.0, [1.0], [1.1], 0.9)  # one seed: nothing to pair


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


def test_paged_figures_say_what_each_capped_run_did():
    from course_utils.lessons.l5_lora import paged_figures

    run = lambda ok: {"completed": ok, "peak_bytes": 1, "error": None if ok else "out of memory"}
    res = lambda plain, paged: {"AdamW": run(plain), "PagedAdamW": run(paged), "figures": "cap 1.00 GiB"}
    assert paged_figures(res(False, True)) == "cap 1.00 GiB: PagedAdamW finished where AdamW ran out of memory"
    assert paged_figures(res(False, False)) == "cap 1.00 GiB: PagedAdamW ran out of memory too"
    assert "the cap did not bind" in paged_figures(res(True, True))  # nothing was paged


def test_paged_optimizer_experiment_needs_cuda_and_says_so():
    from course_utils.lessons.l5_lora import paged_optimizer_under_cap

    with pytest.raises(RuntimeError, match="needs a CUDA GPU, not cpu"):
        paged_optimizer_under_cap(lambda: torch.nn.Linear(2, 2), lambda m: m(torch.ones(1, 2)).sum(), "cpu")


# ---- NF4 in plain PyTorch, and correct gradients through the course's 4-bit layers (issue 29) ----------------

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")


@needs_bnb
@pytest.mark.parametrize("shape", [(64, 256), (192, 576), (33, 7)])
def test_nf4_in_pytorch_equals_bitsandbytes(shape):
    import bitsandbytes.functional as F

    from course_utils.lessons.l5_lora import nf4_dequantize, nf4_quantize

    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.05
    ours = nf4_quantize(w, blocksize=64)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(ours.packed, packed) and torch.equal(ours.absmax, state.absmax)
    assert torch.equal(nf4_dequantize(ours), F.dequantize_4bit(packed, state))
    assert ((nf4_dequantize(ours) - w).norm() / w.norm()).item() < 0.15
    with pytest.raises(ValueError, match="blocksize"):
        nf4_quantize(w, blocksize=63)


def _input_grad(model, ids):
    """The gradient of a fixed loss with respect to the input embeddings, through every layer of ``model``."""
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=emb).logits.float().pow(2).mean().backward()
    return emb.grad


@needs_bnb
@pytest.mark.parametrize("forced", [False, True])
def test_4bit_layers_keep_their_gradient_after_an_eval_forward(tmp_path, llama, ids, forced):
    """After an eval forward without gradients (as a notebook measures the loss before training), the gradient
    that reaches the input embeddings through the 4-bit layers is finite, non-zero and equal (to float32 noise) to
    the one through the dequantized weights. ``forced``: every layer's ``support_avx512bf16_for_cpu`` is turned on
    first, as bitsandbytes does on CPUs with AVX512-BF16, so the repacking path is tried on every CPU kind."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    from course_utils.lessons.l5_lora import load_4bit_from, make_4bit_trainable

    llama(hidden=64).save_pretrained(tmp_path)
    q = load_4bit_from(tmp_path, device="cpu")
    layers = [m for m in q.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    if forced:
        for m in layers:
            m.support_avx512bf16_for_cpu = True
        make_4bit_trainable(q)
    with torch.no_grad():
        q.eval()(ids)  # the eval forward that repacks on AVX512-BF16 CPUs when the flag is on
    assert not any(m.support_avx512bf16_for_cpu for m in layers)
    # the reference: the same model with plain float32 layers holding the dequantized weights
    ref = copy.deepcopy(q)
    for name, m in list(ref.named_modules()):
        if isinstance(m, bnb.nn.Linear4bit):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight.data = F.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent), child, lin)
    got, want = _input_grad(q, ids), _input_grad(ref, ids)
    assert torch.isfinite(got).all() and got.abs().sum() > 0
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-6 * want.abs().max().item())


@needs_bnb
def test_bitsandbytes_own_cpu_inference_path_loses_the_gradient(tmp_path, llama, ids):
    """Why ``make_4bit_trainable`` exists: layers loaded by bitsandbytes alone repack on an eval forward (on CPUs
    with AVX512-BF16) and then pass no gradient back through themselves: the fault the course's loader removes."""
    from bitsandbytes.functional import has_avx512bf16
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never takes its repacking path here")
    llama(hidden=64).save_pretrained(tmp_path)
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    raw = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=cfg, device_map="cpu").eval()
    with torch.no_grad():
        raw(ids)
    with warnings.catch_warnings():  # PyTorch warns (once) of "silently incorrect behavior": the missing backward
        warnings.simplefilter("ignore", UserWarning)
        broken = _input_grad(raw, ids)  # only the residual path carries a gradient: the linear layers give none
    from course_utils.lessons.l5_lora import load_4bit_from

    right = _input_grad(load_4bit_from(tmp_path, device="cpu"), ids)
    assert not torch.allclose(broken, right, rtol=1e-2, atol=1e-2 * right.abs().max().item())


def test_qlora_bytes_keep_the_unquantized_parameters_in_bf16():
    from course_utils.lessons.l5_lora import qlora_bytes

    # LLaMA-65B: 524M parameters in its untied embeddings and head stay in bf16: +0.78 GB over counting them at NF4
    n, kept, lora = 65_285_660_672, 2 * 32000 * 8192, 800_000_000
    at_nf4 = qlora_bytes(n, lora, 0, 0.5159)["total"]
    kept_bf16 = qlora_bytes(n, lora, kept, 0.5159)
    assert kept_bf16["total"] - at_nf4 == pytest.approx(kept * (2 - 0.5159))
    assert 0.77e9 < kept_bf16["total"] - at_nf4 < 0.79e9
    assert kept_bf16["16-bit weights"] == 2 * kept and kept_bf16["adapter and its Adam state"] == 12 * lora
    # the QLoRA recipe's adapter: bf16 weight 2 + bf16 gradient 2 + 32-bit Adam moments 8, no fp32 master copy
    with pytest.raises(ValueError):
        qlora_bytes(n, 0, kept, 0.5159)


def test_recovers_share_shows_paired_per_seed_ratios():
    from course_utils.lessons.l5_lora import recovers_share

    v = recovers_share(2.0, [1.0, 1.5, 1.0], [1.0, 1.5, 1.5], 0.9)
    assert "per seed 100%, 100%, 50%" in v.measured  # each seed over its own reference, not the mean gain


def test_static_state_fact_states_the_margin_and_one_sequences_checkpointed_activations():
    from course_utils.lessons.l5_lora import static_state_fact

    fact = static_state_fact(47.3e9, 48e9, 2 * 32_000 * 8192, 1_318_912, n_layers=80, d_model=8192,
                             n_lora=799_539_200)
    assert isinstance(fact, str) and fact.startswith("47.30 GB of 48 GB (+0.70 GB left)")
    assert "0.67 GB of block inputs" in fact and "96% of the margin" in fact  # 80 x 512 x 8192 x 2 bytes
    assert "the recipe's batch: 2.68 GB (383% of the margin)" in fact  # 4 sequences of 512 tokens
    assert "(524M)" in fact and "(1.3M)" in fact and "1.05 GB" in fact
    assert "12 bytes per parameter" in fact and "16 bytes: +3.20 GB" in fact  # what an fp32 master copy would add
    assert "with no margin left" in static_state_fact(49e9, 48e9, 2, 1, n_layers=2, d_model=8, n_lora=1)
    with pytest.raises(ValueError):
        static_state_fact(47e9, 48e9, 2, 1, n_layers=0, d_model=8, n_lora=1)


N65 = 65_285_660_672  # LLaMA-65B's parameters (its real configuration, counted in the notebook)
QV65 = {r: 80 * 2 * r * (8192 + 8192) for r in (8, 16, 64)}  # LoRA on W_q and W_v: 80 layers, two 8192 x 8192
ALL65 = {r: 80 * r * (4 * (8192 + 8192) + 2 * (8192 + 22016) + (22016 + 8192)) for r in (8, 16, 64)}  # every linear


def test_fewer_parameters_is_one_row_that_needs_every_rank_the_notes_list():
    from course_utils.lessons.l5_lora import fewer_params_row

    v = fewer_params_row(N65, QV65, all_linear_by_rank=ALL65)  # the real LLaMA-65B counts
    assert v.verdict == "does not hold" and v.measured == "r=8: 3,113x; r=16: 1,557x; r=64: 389x"
    assert v.bar == ">= 1,000x at every rank the notes list (r = 8, 16, 64)"
    assert "r=8: 653x; r=16: 327x; r=64: 82x" in v.why
    assert "the same for either choice of layers (r = 64 misses on both)" in v.why
    # synthetic counts: every rank above 1,000x holds; one rank below does not hold; all below does not hold
    assert fewer_params_row(10**9, {8: 10**5, 16: 2 * 10**5}).verdict == "holds"
    assert fewer_params_row(10**9, {8: 10**5, 16: 2 * 10**6}).verdict == "does not hold"
    assert fewer_params_row(10**9, {8: 10**7, 16: 2 * 10**7}).verdict == "does not hold"
    assert fewer_params_row(N65, QV65, min_factor=300).verdict == "holds"
    held = fewer_params_row(10**9, {8: 10**5, 16: 2 * 10**5}, all_linear_by_rank={8: 10**7, 16: 2 * 10**7})
    assert "on every linear layer the row would read 'does not hold'" in held.why
    # the model: the same layers on a smaller LLaMA (7B: 6.74B parameters, 32 layers of width 4096)
    qv7 = {r: r * 2 * (4096 + 4096) * 32 for r in (8, 16, 64)}
    with_7b = fewer_params_row(N65, QV65, other_models={"LLaMA-7B": (6_738_415_616, qv7)})
    assert with_7b.verdict == "does not hold" and "LLaMA-7B 1,607x/803x/201x" in with_7b.why
    assert "the same verdict at every size" in with_7b.why
    assert "would read otherwise" in fewer_params_row(N65, QV65, min_factor=300,
                                                      other_models={"LLaMA-7B": (6_738_415_616, qv7)}).why
    with pytest.raises(ValueError):
        fewer_params_row(N65, {8: QV65[8]})  # one rank is not a reading at the ranks the notes list
    with pytest.raises(ValueError):
        fewer_params_row(N65, {8: 0, 16: 1})
    with pytest.raises(ValueError):
        fewer_params_row(N65, QV65, all_linear_by_rank={8: 1, 16: 1})


def test_adapter_size_is_one_row_at_every_rank_the_notes_list_and_every_llama_size():
    from course_utils.lessons.l5_lora import LLAMA_SIZES, adapter_size_row, llama_meta_models, lora_param_count
    from course_utils.memory import count_parameters

    llamas = llama_meta_models()
    assert list(llamas) == list(LLAMA_SIZES) and count_parameters(llamas["LLaMA-65B"]).total == N65
    qv = {n: {r: lora_param_count(m, ["q_proj", "v_proj"], r) for r in (8, 16, 64)} for n, m in llamas.items()}
    assert qv["LLaMA-65B"] == QV65 and qv["LLaMA-7B"] == {r: r * 2 * (4096 + 4096) * 32 for r in (8, 16, 64)}
    n = {name: count_parameters(m).total for name, m in llamas.items()}
    v = adapter_size_row(qv, n)  # bf16: 7B within 100 MB at every rank, 13B-65B above at r = 64
    assert v.verdict == "inconclusive" and v.measured.startswith("r = 8/16/64: LLaMA-7B 8.4/16.8/67.1 MB; ")
    assert "LLaMA-65B 41.9/83.9/335.5 MB" in v.measured and "LLaMA-13B: [does not hold] r=64 (104.9 MB) above" in v.why
    assert "holds: LLaMA-7B; does not hold: LLaMA-13B, LLaMA-33B, LLaMA-65B" in v.why and "130.6 GB" in v.why
    assert v.bar.startswith("<= 100 MB") and "for every model size" in v.bar
    # the sizes decide: every size within at every rank holds, every size above at some rank does not hold
    small = {"a": {8: 10 * 10**6, 16: 20 * 10**6}, "b": {8: 1_000, 16: 2_000}}  # 20 and 40 MB; 0.002 MB
    assert adapter_size_row(small, {"a": 10**9, "b": 10**9}).verdict == "holds"
    big = {"a": {8: 20 * 10**6, 16: 80 * 10**6}, "b": {8: 100 * 10**6, 16: 200 * 10**6}}  # 160 MB; 200, 400 MB
    assert adapter_size_row(big, {"a": 10**9, "b": 10**9}).verdict == "does not hold"
    assert adapter_size_row(big, {"a": 1, "b": 1}, bytes_per_param=1).verdict == "inconclusive"  # a: 20, 80 MB
    all_lin = {name: {r: lora_param_count(m, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"], r) for r in (8, 16, 64)} for name, m in llamas.items()}
    assert "LLaMA-7B 40.0/80.0/319.8 MB" in adapter_size_row(qv, n, all_linear=all_lin).why
    assert "would read 'does not hold'" in adapter_size_row(qv, n, all_linear=all_lin).why
    with pytest.raises(ValueError, match="2 or more models"):
        adapter_size_row({"LLaMA-65B": QV65}, n)
    with pytest.raises(ValueError):
        adapter_size_row({"a": {8: 1}, "b": {8: 1}}, {"a": 1, "b": 1})  # one rank is not every rank the notes list
    with pytest.raises(ValueError, match="the ranks"):
        adapter_size_row({"a": {8: 1, 16: 1}, "b": {8: 1, 64: 1}}, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="missing"):
        adapter_size_row(qv, {"LLaMA-7B": 1})
    with pytest.raises(ValueError):
        adapter_size_row(qv, n, high_mb=0)


def test_full_ft_vram_fact_is_the_training_memory_at_each_precision_from_byte_counts():
    from course_utils.lessons.l5_lora import FULL_FT_VRAM_FACT, TRAINING_BYTES, full_ft_vram_fact
    from course_utils.memory import ADAM_MOMENT_BYTES, BYTES_PER_PARAM

    gib, mib = 2**30, 2**20
    what, f = full_ft_vram_fact(gib, 513 * mib, 2268 * mib, scope="a test model, batch 3 x 64 tokens, fp32")
    assert what == FULL_FT_VRAM_FACT and "gấp nhiều lần" in what and "not a row" in what
    # the real byte counts: (4 + 4 + 8) / 4, (2 + 2 + 8) / 2, (2 + 2 + 4 + 8) / 2
    assert "fp32 training (4 + 4 + 8) / 4 = 4x" in f and "no master copy (2 + 2 + 8) / 2 = 6x" in f
    assert "master copy (2 + 2 + 4 + 8) / 2 = 8x" in f and "the optimizer states alone: 2x, 4x, 6x" in f
    assert "Adam state 1.0 GiB = 2.0x" in f and "= 4.42x (activations included)" in f and "3 x 64 tokens" in f
    # the table is built from the byte constants, not typed ratios
    fp32 = TRAINING_BYTES["fp32 training"]
    assert fp32 == {"weights": BYTES_PER_PARAM["fp32"], "gradients": BYTES_PER_PARAM["fp32"],
                    "optimizer states": ADAM_MOMENT_BYTES}
    assert TRAINING_BYTES["bf16 mixed precision + fp32 master copy"]["master copy"] == BYTES_PER_PARAM["fp32"]
    small = {"a": {"weights": 4, "gradients": 1, "optimizer states": 1}, "b": fp32}  # another table, other figures
    assert "a (4 + 1 + 1) / 4 = 1.5x" in full_ft_vram_fact(gib, gib, gib, precisions=small)[1]
    with pytest.raises(ValueError):
        full_ft_vram_fact(gib, 0, gib)
    with pytest.raises(ValueError):
        full_ft_vram_fact(gib, gib, gib, precisions={"a": TRAINING_BYTES["fp32 training"]})  # one precision
    with pytest.raises(ValueError):
        full_ft_vram_fact(gib, gib, gib, precisions={"a": {"weights": 4, "gradients": 4}, "b": fp32})  # no state


def test_memory_row_shows_the_step_shape_and_decides_both_ways():
    from course_utils.lessons.l5_lora import memory_row

    mib = 2**20
    kw = dict(batch=3, tokens=61, precision="fp32", how="tensor memory (MemTracker)", model="a test model")
    v = memory_row(900 * mib, 2250 * mib, **kw)
    assert v.verdict == "holds" and v.measured == "0.40x at 3 x 61 (900.0 MiB vs 2.2 GiB)"
    assert "at batch 3 x 61 tokens, fp32, a test model" in v.why and "tensor memory (MemTracker)" in v.why
    assert memory_row(2240 * mib, 2250 * mib, **kw).verdict == "does not hold"  # a saving under 1%
    with pytest.raises(ValueError):
        memory_row(900 * mib, 2250 * mib, **{**kw, "tokens": 0})
    # over a sweep: every ratio within the bar holds, none does not hold, a range across it is inconclusive
    sweep = {(1, 256): {"full FT": 2268 * mib, "LoRA": 1099 * mib}, (8, 1024): {"full FT": 26004 * mib,
                                                                               "LoRA": 24005 * mib}}
    swept = memory_row(900 * mib, 2250 * mib, **kw, sweep=sweep)
    assert swept.verdict == "holds" and swept.measured.endswith("0.92x at 8 x 1024 (23.4 GiB vs 25.4 GiB)")
    assert "0.40-0.92x over 3 shapes" in swept.why and "meta device" in swept.why
    vanishes = {**sweep, (8, 1024): {"full FT": 26004 * mib, "LoRA": 25900 * mib}}  # 0.996x: the saving is gone
    assert memory_row(900 * mib, 2250 * mib, **kw, sweep=vanishes).verdict == "inconclusive"
    assert memory_row(2240 * mib, 2250 * mib, **kw, sweep={(8, 1024): vanishes[8, 1024]}).verdict == "does not hold"
    with pytest.raises(ValueError, match="sweep"):
        memory_row(900 * mib, 2250 * mib, **kw, sweep={(1, 256): {"full FT": 1}})


def test_meta_memory_sweep_counts_full_ft_and_lora_on_the_meta_device():
    from transformers import LlamaConfig

    from course_utils.lessons.l5_lora import meta_memory_sweep

    tiny = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128)
    out = meta_memory_sweep(tiny, ["q_proj", "v_proj"], r=2, alpha=4, shapes=[(1, 8), (4, 64)])
    assert set(out) == {(1, 8), (4, 64)} and all(set(p) == {"full FT", "LoRA"} for p in out.values())
    assert all(p["LoRA"] < p["full FT"] for p in out.values())  # the frozen weights' gradients and Adam state
    small, large = (out[s]["LoRA"] / out[s]["full FT"] for s in [(1, 8), (4, 64)])
    assert small < large < 1  # activations, which LoRA keeps, grow with the shape


def test_nf4_beats_a_uniform_grid_on_normal_weights_and_not_on_uniform_ones():
    import torch

    from course_utils.lessons.l5_lora import (
        NF4_LEVELS,
        UNIFORM4_LEVELS,
        bnb_4bit_error,
        grid_error,
        nf4_dequantize,
        nf4_quantize,
        rounding_comparison,
    )

    g = torch.Generator().manual_seed(0)
    normal = [torch.randn(64, 64, generator=g) for _ in range(4)]
    nf4_err = lambda ws: [grid_error(w, NF4_LEVELS) for w in ws]
    uni_err = lambda ws: [grid_error(w, UNIFORM4_LEVELS) for w in ws]
    assert all(a < b for a, b in zip(nf4_err(normal), uni_err(normal)))
    assert all(bnb_4bit_error(w, "nf4") == pytest.approx(e, abs=1e-6) for w, e in zip(normal, nf4_err(normal)))
    assert all(bnb_4bit_error(w, "fp4") > e for w, e in zip(normal, nf4_err(normal)))  # the QLoRA paper's finding
    shown = rounding_comparison(normal)
    assert "4 weight matrices (mean) 0.09" in shown and "NF4 the lowest on 4 of 4 matrices" in shown
    assert "normal samples 0.0920 / 0.1219 / 0.1005" in shown  # NF4 / bitsandbytes' FP4 / uniform, 2**20 samples
    w = normal[0]
    ref = float((nf4_dequantize(nf4_quantize(w)) - w).norm() / w.norm())
    assert abs(grid_error(w, NF4_LEVELS) - ref) < 1e-6  # the same rounding as our NF4
    flat = [torch.rand(64, 64, generator=g) * 2 - 1 for _ in range(4)]  # uniform weights: the uniform grid wins
    assert all(a > b for a, b in zip(nf4_err(flat), uni_err(flat)))
    assert "NF4 the lowest on 0 of 4 matrices" in rounding_comparison(flat)
    with pytest.raises(ValueError, match="'nf4' or 'fp4'"):
        bnb_4bit_error(w, "int4")


def test_code_entropy_is_four_bits_only_where_every_code_is_used_equally():
    """NF4's levels are N(0, 1) quantiles (the control on NF4's own scale: equal use), yet after one absmax per
    block its codes are not used equally."""
    import torch

    from course_utils.lessons.l5_lora import NF4_LEVELS, NF4_NORMALIZER, UNIFORM4_LEVELS, code_entropy, normal_samples

    lv = torch.tensor(UNIFORM4_LEVELS)
    equal = lv.repeat(64)  # blocks of 64 each holding all 16 levels 4 times (absmax 1): every code equally
    assert code_entropy(equal, UNIFORM4_LEVELS) == pytest.approx(4.0)
    assert code_entropy(torch.ones(128), UNIFORM4_LEVELS) == pytest.approx(0.0)  # one code only
    normal = normal_samples(2**16)
    assert code_entropy(normal, NF4_LEVELS, scale=NF4_NORMALIZER) > 3.99  # the levels are N(0, 1)'s quantiles
    assert 3.8 < code_entropy(normal, NF4_LEVELS) < 3.95 and code_entropy(normal, UNIFORM4_LEVELS) < 3.7
    assert code_entropy(normal, NF4_LEVELS, blocksize=32) > code_entropy(normal, NF4_LEVELS, blocksize=256)
    assert NF4_NORMALIZER == pytest.approx(1.848, abs=1e-3)
    with pytest.raises(ValueError, match="scale must be > 0"):
        code_entropy(normal, NF4_LEVELS, scale=0.0)


def test_the_nf4_row_decides_both_ways_on_injected_data():
    """Normal data after absmax blocks: does not hold; data built to use every code equally: holds. The weight
    matrices are reported, never deciding."""
    import torch

    from course_utils.lessons.l5_lora import NF4_EQUAL_USE_BITS, NF4_LEVELS, nf4_design_entropy, nf4_optimal_row

    assert nf4_design_entropy() == pytest.approx(3.99616, abs=1e-5)  # 8 + 7 levels and midpoint edges: not 4
    assert NF4_EQUAL_USE_BITS == pytest.approx(nf4_design_entropy() - 0.001)
    g = torch.Generator().manual_seed(1)
    normal = [torch.randn(64, 64, generator=g) for _ in range(2)]
    v = nf4_optimal_row(normal)
    assert v.verdict == "does not hold" and v.bar == ">= 3.995 bits"
    assert v.measured.startswith("code entropy, one absmax per block of 64: normal samples 3.884 bits; beside it")
    assert "3.884 bits (mean of 4, 95% interval 3.88" in v.why  # 4 parts of the 2**20 samples: a sampling interval
    assert "no blocks) 3.996 bits; NF4's design figure from the normal CDF 3.99616 bits" in v.why
    assert "largest absolute value of 64 normal values averages 2.60 sigma" in v.why
    assert "every block size bitsandbytes offers misses the bar (32: 3.95, 64: 3.88" in v.why
    assert "arXiv 2306.06965" in v.why and "NF4 the lowest on 2 of 2 matrices" in v.why
    assert "QLoRA stores weights only this way" in v.why  # why the stored reading decides, not the levels alone
    equal = torch.tensor(NF4_LEVELS).repeat(4 * 64)  # every code 4 times per block of 64, absmax 1: equal use
    assert nf4_optimal_row(normal, samples=equal).verdict == "holds"  # the weights (normal, 3.88 bits) do not decide
    assert nf4_optimal_row([equal, equal], samples=normal[0].reshape(-1)).verdict == "does not hold"
    with pytest.raises(ValueError, match="at least 2"):
        nf4_optimal_row(normal[:1])
    with pytest.raises(ValueError, match="whole blocks of 64"):
        nf4_optimal_row(normal, samples=torch.randn(1000))


def test_full_ft_preconditions_both_ways_on_synthetic_figures():
    from course_utils.lessons.l5_lora import full_ft_beat_untouched, full_ft_forgot

    ok, why = full_ft_beat_untouched([0.10, 0.08, 0.06])
    assert ok and "better in all 3 seeds" in why
    ok, why = full_ft_beat_untouched([0.10, -0.01, 0.06])  # one seed worse than untouched
    assert not ok and "1 of 3 seeds" in why and "-0.010" in why
    assert not full_ft_beat_untouched([0.01, 0.0, 0.03])[0]  # no gain is not a gain
    ok, why = full_ft_forgot([0.11, 0.10, 0.13])
    assert ok and "wholly above 0" in why
    ok, why = full_ft_forgot([0.20, -0.15, 0.01])
    assert not ok and "did not clearly forget" in why
    with pytest.raises(ValueError):
        full_ft_beat_untouched([])


def test_forgetting_verdict_is_gated_by_given_symmetrically():
    from course_utils.lessons.l5_lora import forgetting_comparison, forgetting_verdict

    base, lora_gain = 4.2, [0.04] * 3
    lora_low, lora_high = [4.21, 4.20, 4.22], [4.45, 4.47, 4.46]
    full = [4.31, 4.33, 4.32]  # full FT forgot (+0.12)
    good = [0.10, 0.08, 0.06]
    held = forgetting_verdict(lora_low, full, lora_gain, good, base, scope="4 steps")
    assert held.verdict == "holds" and "precondition met" in held.why and "beat the untouched" in held.bar
    assert held.verdict == forgetting_comparison(lora_low, full, lora_gain, good, base, scope="4 steps").verdict
    assert forgetting_verdict(lora_high, full, lora_gain, good, base, scope="x").verdict == "does not hold"
    damaged = [0.10, -0.20, 0.06]  # the same web losses, but full FT worse than the untouched model in one seed
    for lora in (lora_low, lora_high):  # inconclusive whichever arm wins, never "not measurable"
        v = forgetting_verdict(lora, full, lora_gain, damaged, base, scope="4 steps")
        assert v.verdict == "inconclusive" and "reference run is not valid" in v.why and "1 of 3" in v.why
        assert "+0.120" in v.why and "4 steps" in v.why  # the rises and the scope are shown
        assert "the second precondition (full FT forgot) is met" in v.why
        assert "LoRA's held-out gain over the untouched model per seed +0.040, +0.040, +0.040" in v.why
    v = forgetting_verdict(lora_low, [4.19, 4.22, 4.20], lora_gain, damaged, base, scope="4 steps")
    assert v.verdict == "inconclusive" and "reference run is not valid" in v.why
    assert "the second precondition (full FT forgot) fails too" in v.why and "did not clearly forget" in v.why
    no_forgetting = [4.19, 4.22, 4.20]
    v = forgetting_verdict([4.15, 4.16, 4.17], no_forgetting, lora_gain, good, base, scope="4 steps")
    assert v.verdict == "inconclusive" and "did not clearly forget" in v.why  # "holds" withheld
    v = forgetting_verdict(lora_high, no_forgetting, lora_gain, good, base, scope="4 steps")
    assert v.verdict == "does not hold" and "did not clearly forget" in v.why  # a clear miss stands


def test_close_to_full_verdict_is_gated_by_given_symmetrically():
    from course_utils.lessons.l5_lora import close_to_full_verdict, recovers_share

    ref = [1.0, 1.02, 0.98]  # full FT gained about 1.0 over the untouched 2.0 in every seed
    assert close_to_full_verdict(2.0, ref, [1.03, 1.05, 1.0], 0.9, "4 steps").verdict == "holds"
    miss = close_to_full_verdict(2.0, ref, [1.3, 1.31, 1.29], 0.9, "4 steps")
    assert miss.verdict == "does not hold" and "precondition met" in miss.why
    assert miss.recovered == pytest.approx(recovers_share(2.0, ref, [1.3, 1.31, 1.29], 0.9).recovered)
    short = close_to_full_verdict(2.0, ref, [1.03, 1.05, 1.0], 0.9, "4 steps", budget_short="the notes train 3 epochs")
    assert short.verdict == "inconclusive" and "the notes train 3 epochs" in short.why
    damaged = [2.8, 2.7, 2.5]  # full FT worse than the untouched model: no gain to share
    for lora in ([1.9, 1.92, 1.88], [2.9, 2.95, 2.85]):  # LoRA better or worse: inconclusive either way
        v = close_to_full_verdict(2.0, damaged, lora, 0.9, "4 steps", budget_short="the notes train 3 epochs")
        assert v.verdict == "inconclusive" and "3 of 3 seeds" in v.why and "+0.667" in v.measured
        assert "the notes train 3 epochs" in v.why  # the budget survives the failed precondition
        assert v.bar.startswith("recovers >= 90% of full FT's held-out gain")
        assert v.recovered != v.recovered  # nan: no share of a gain that is not there
    one_bad = close_to_full_verdict(2.0, [1.0, 2.05, 0.98], [1.03, 1.05, 1.0], 0.9, "4 steps")
    assert one_bad.verdict == "inconclusive" and "1 of 3 seeds" in one_bad.why


def test_qlora_65b_row_is_not_measurable_with_the_arithmetic():
    from course_utils.lessons.l5_lora import qlora_65b_verdict

    v = qlora_65b_verdict(44.05e9, 48e9, 2 * 32_000 * 8192, 1_318_912, n_layers=80, d_model=8192,
                          n_lora=799_539_200)
    assert v.verdict == "not measurable here"
    assert v.measured == "static state by arithmetic: 44.05 of 48 GB (+3.95 GB left)"
    assert "17% of the margin" in v.why and "(68% of the margin)" in v.why
    assert "48 GB cap" in v.why and "LLaMA-65B-shaped NF4 weights (random values" in v.why
    assert "0.67 GB of block inputs" in v.why and "a check this course does not make on any device" in v.why
    assert v.bar == "a whole training step's peak <= 48 GB on one GPU"  # fixed before any data, shown all the same
    assert qlora_65b_verdict(44.05e9, 48e9, 2 * 32_000 * 8192, 1_318_912, n_layers=80, d_model=8192,
                             n_lora=799_539_200, bar="another bar").bar == "another bar"




def test_shared_copy_shares_weights_not_parameters(ids, tiny_llama):
    """LoRA on a shared copy trains as on a deep copy and leaves the original untouched (trainable, same values);
    tied weights stay tied; a dtype move stays on the copy."""
    base = tiny_llama(vocab=101, hidden=48, intermediate=96, tie=True)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    shared, deep = shared_copy(base), copy.deepcopy(base)
    assert shared.get_input_embeddings().weight is shared.get_output_embeddings().weight
    assert shared.get_input_embeddings().weight is not base.get_input_embeddings().weight
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(shared.parameters(), base.parameters()))
    for m in (shared, deep):
        add_lora(m, TARGETS, r=4, alpha=8, seed=0)
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            m(ids).logits.square().mean().backward()
            opt.step()
            opt.zero_grad()
    assert torch.equal(shared(ids).logits, deep(ids).logits)
    assert all(p.requires_grad for p in base.parameters())
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())
    assert shared_copy(base).to(torch.bfloat16).lm_head.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in base.parameters())
