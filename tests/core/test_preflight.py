"""Preflight (issue 30): the full profile's peak memory per lesson, against this device and a free Colab T4.

The formula is checked against an exact measured training step (``runs.training_step_peak``, MemTracker on the
CPU) at small sizes: Model 5 in fp32 and under bf16 autocast, a Llama (SwiGLU) model with and without gradient
checkpointing. The lessons' step shapes are checked against the notebooks' full-profile settings.
"""
import re

import nbformat
import pytest
import torch

from course_utils import preflight
from course_utils.data import get_batch
from course_utils.nbtools import notebook_paths
from course_utils.preflight import LESSONS, T4, USABLE, Arch, Device, GiB, estimate_step_bytes
from course_utils.runs import training_step_peak

TOKENS = torch.randint(0, 50_000, (8_000,), generator=torch.Generator().manual_seed(0))


def _measured(make_model, vocab, batch, context, **kw):
    data = TOKENS % vocab
    return training_step_peak(make_model, lambda g: get_batch(data, batch, context, generator=g), device="cpu",
                              **kw)[0]


@pytest.mark.parametrize("n_layer,n_embd,context,batch,vocab,amp", [
    (4, 128, 64, 8, 512, "off"),  # the layers dominate
    (2, 64, 32, 4, 4096, "off"),  # the logits dominate
    (2, 64, 32, 4, 4096, "bf16"),  # autocast: 16-bit matmul outputs and a 16-bit copy of the weights
])
def test_formula_matches_a_measured_model5_step(n_layer, n_embd, context, batch, vocab, amp):
    from course_utils.model import GPT, GPTConfig

    cfg = GPTConfig(n_layer=n_layer, n_head=2, n_embd=n_embd, block_size=context, vocab_size=vocab, dropout=0.0)

    def make():
        torch.manual_seed(0)
        return GPT(cfg)

    peak = _measured(make, vocab, batch, context, amp=amp)
    arch = Arch("tiny Model 5", make().num_parameters(), n_layer, n_embd, 4 * n_embd, vocab)
    est = estimate_step_bytes(arch, batch, context, amp=amp)
    assert 0.67 <= peak / est <= 1.5, f"measured {peak:,} B, estimated {est:,} B"


@pytest.mark.parametrize("checkpointing", [False, True])
def test_formula_matches_a_measured_llama_step(checkpointing):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=1024, tie_word_embeddings=True, max_position_embeddings=64)

    def make():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return model

    peak = _measured(make, 1024, 4, 64)
    n = sum(p.numel() for p in make().parameters())
    est = estimate_step_bytes(Arch("tiny Llama", n, 3, 64, 160, 1024, kind="llama"), 4, 64,
                              grad_checkpointing=checkpointing)
    assert 0.67 <= peak / est <= 1.5, f"measured {peak:,} B, estimated {est:,} B"


def test_state_alone_is_16_bytes_a_trainable_parameter():
    arch = Arch("x", 1000, 1, 8, 32, 16)
    assert estimate_step_bytes(arch, 0, 1) == 16_000  # fp32 weight + grad + 2 AdamW moments
    assert estimate_step_bytes(arch, 0, 1, trainable=10) == 4 * 1000 + 12 * 10  # grads and moments: trainable only
    assert estimate_step_bytes(arch, 0, 1, frozen_copies=1) == 20_000
    assert estimate_step_bytes(arch, 0, 1, amp="auto") == 18_000  # autocast's 16-bit copy of the weights


GPU80 = Device("NVIDIA H100", 80 * GiB, fast_bf16=True)
GPU8 = Device("small GPU", 8 * GiB, fast_bf16=True)


def test_fits_or_says_what_to_change():
    f = preflight.fit("01")
    assert f.on(GPU80) == "fits"
    advice = f.on(T4)
    m = re.fullmatch(r"batch (\d+) -> (\d+) with gradient accumulation x(\d+)", advice)
    assert m, advice
    batch, micro, k = map(int, m.groups())
    step = f.lesson
    assert batch == step.batch and micro * k >= batch
    assert estimate_step_bytes(step.arch, micro, step.context, step.amp) <= USABLE * T4.memory  # it does fit
    fewer = -(-batch // (k - 1))  # one accumulation step fewer: a bigger micro-batch, which does not fit
    assert k == 1 or estimate_step_bytes(step.arch, fewer, step.context, step.amp) > USABLE * T4.memory


def test_t4_says_the_fp16_fallback_for_autocast_lessons_only():
    assert preflight.fit("02").on(T4) == "fits, in fp16 autocast + GradScaler"
    assert preflight.fit("02").on(GPU80) == "fits"
    assert "fp16" not in preflight.fit("03").on(T4)  # fp32: nothing falls back


def test_too_big_for_any_batch_says_4_bit():
    tiny = Device("tiny GPU", GiB // 2, fast_bf16=True)
    assert "4-bit" in preflight.fit("03").on(tiny)


def test_cpu_says_small_profile(capsys):
    cpu = Device("CPU", None)
    assert preflight.fit("04").on(cpu) == "CPU: small profile"
    preflight.check("4", device=cpu)
    out = capsys.readouterr().out
    assert "lesson 04" in out and "small profile" in out and "Colab T4" in out
    assert all(len(line) <= 100 for line in out.splitlines())  # short lines: nothing wraps mid-word


def test_check_on_a_gpu_reads_its_memory(capsys):
    preflight.check("02", device=GPU8)
    assert "small GPU (8 GiB): " in capsys.readouterr().out


def test_unknown_lesson():
    with pytest.raises(ValueError, match="no lesson '07'"):
        preflight.fit("07")


def test_a_results_header_with_a_peak_is_used_instead_of_the_formula(tmp_path):
    (tmp_path / "some-gpu").mkdir()
    (tmp_path / "some-gpu" / "02_final_token_dropout.md").write_text(
        "# 02\n\n2026-12-01 | gpu X | executed in 100 s | peak GPU memory 12.50 GiB\n\n| claim |\n")
    f = preflight.fit("02", results=tmp_path)
    assert f.peak == int(12.5 * GiB) and f.source == "measured, some-gpu 2026-12-01"
    assert preflight.fit("03", results=tmp_path).source == "estimate (formula)"


def test_table_has_every_lesson_and_the_t4_column():
    t = preflight.table(device=Device("CPU", None))
    text = str(t)
    assert "Colab T4 (15 GiB, no bf16)" in text
    for lesson in LESSONS:
        assert f"\n{lesson} " in text
    assert len(text.splitlines()) <= 12


def _full_settings(lesson: str) -> str:
    path = next(p for p in notebook_paths() if p.name.startswith(lesson + "_"))
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and "profile_settings(" in c.source
                and "full=" in c.source)


def _value(source: str, key: str) -> str:
    full = source[re.search(r"\bfull\s*=", source).start():]
    for text in (full, source):  # the full profile's, else a value both profiles share (``common``)
        m = re.search(rf"[\"']?\b{key}[\"']?\s*[:=]\s*(\([^)]*\)|[^,)\n]+)", text)
        if m:
            return m.group(1).strip()
    raise AssertionError(f"no setting {key!r} in the notebook's settings cell")


# lesson -> (batch, context) settings, and the other settings the step depends on
SHAPES = {"01": ("batch_size", "block_size", {}), "02": ("batch_size", "context", {"amp": '"auto"'}),
          "03": ("batch_size", "seq_len", {}), "04": ("batch_size", "block_size", {}),
          "05": ("batch_size", "max_len", {"amp": '"auto"', "grad_checkpointing": "True"})}


@pytest.mark.parametrize("lesson", sorted(SHAPES))
def test_lesson_shapes_are_the_notebooks_full_profile(lesson):
    source, step = _full_settings(lesson), LESSONS[lesson]
    batch_key, context_key, others = SHAPES[lesson]
    batch = eval(_value(source, batch_key))  # a number or a tuple of numbers
    assert step.batch == (max(batch) if isinstance(batch, tuple) else batch), (
        f"notebook {lesson} changed {batch_key}: update course_utils.preflight.LESSONS")
    assert step.context == int(_value(source, context_key)), (
        f"notebook {lesson} changed {context_key}: update course_utils.preflight.LESSONS")
    for key, value in others.items():
        assert _value(source, key) == value
    assert step.amp == ("auto" if "amp" in others else "off")
    assert step.grad_checkpointing == ("grad_checkpointing" in others)
