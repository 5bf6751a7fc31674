"""Lesson 1's measuring helpers (course_utils.lessons.l1_levers): each one checked against a fact it must reproduce."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_utils import memory, runs, tables
from course_utils.data import get_batch
from course_utils.lessons import l1_levers as levers
from course_utils.lessons import l1_parallel
from course_utils.measure import Timing
from course_utils.model import GPT, GPTConfig

DATA = torch.arange(3000) % 41


def tiny(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=41, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return GPT(GPTConfig(**{**base, **kw}))


def batches(b, t=16):
    return lambda gen: get_batch(DATA, b, t, generator=gen)


def test_cumulative_savings_is_the_lectures_arithmetic():
    s = levers.cumulative_savings(0.05, 1e9)
    assert s["seconds"] == pytest.approx(5e7)
    assert s["days"] == pytest.approx(578.70, abs=0.01)
    with pytest.raises(ValueError, match=">= 0"):
        levers.cumulative_savings(-1, 10)


def test_manual_attention_equals_sdpa_and_in_the_model():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (levers.manual_attention(q, k, v) - ref).abs().max() < 1e-5
    # causality: changing a later token must not change earlier outputs
    v2 = v.clone()
    v2[:, :, -1] += 1.0
    assert torch.equal(levers.manual_attention(q, k, v2)[:, :, :-1], levers.manual_attention(q, k, v)[:, :, :-1])
    x, _ = batches(2)(torch.Generator().manual_seed(0))
    a, b = tiny().eval(), levers.use_manual_attention(tiny()).eval()
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="Model 5"):
        levers.use_manual_attention(torch.nn.Linear(2, 2))


def test_accumulated_gradients_equal_the_big_batch_and_unscaled_are_k_times():
    model = tiny()
    x, y = batches(8)(torch.Generator().manual_seed(0))
    big = levers.big_batch_gradients(model, x, y)
    acc = levers.accumulated_gradients(model, x, y, 4)
    assert levers.max_grad_difference(big, acc) < 1e-5
    unscaled = levers.accumulated_gradients(model, x, y, 4, scale=False)
    assert levers.grad_norm(unscaled) / levers.grad_norm(big) == pytest.approx(4.0, rel=1e-4)
    with pytest.raises(ValueError, match="divide the batch"):
        levers.accumulated_gradients(model, x, y, 3)


def test_check_accumulation_passes_the_right_answer_and_explains_the_bug():
    from course_utils.losses import all_token_loss

    def right(model, mbs):
        for x, y in mbs:
            (all_token_loss(model(x), y) / len(mbs)).backward()

    def forgot_k(model, mbs):
        for x, y in mbs:
            all_token_loss(model(x), y).backward()

    def zeroed(model, mbs):
        for x, y in mbs:
            model.zero_grad()
            (all_token_loss(model(x), y) / len(mbs)).backward()

    assert levers.check_accumulation(right).passed
    bad = levers.check_accumulation(forgot_k)
    assert not bad.passed and "4.00x" in bad.message and "divide" in bad.message
    assert not levers.check_accumulation(zeroed).passed
    assert "no gradients" in levers.check_accumulation(lambda m, mbs: None).message
    with pytest.raises(TypeError, match="function itself"):
        levers.check_accumulation(None)


def test_tying_counts_at_gpt2_small_on_the_meta_device():
    kw = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)
    with torch.device("meta"):
        tied, untied = GPT(GPTConfig(**kw)), GPT(GPTConfig(**kw, tie_weights=False))
    r = levers.tying_report(tied, untied)
    assert r["tied parameters"] == 124_439_808
    assert r["saved parameters"] == 50257 * 768
    assert r["saved weight bytes (fp32)"] == 4 * 50257 * 768
    assert memory.sharded_state_bytes(100, shards=8) == 200
    with pytest.raises(ValueError):
        memory.sharded_state_bytes(100, shards=0)


def test_dtype_tables_are_exact():
    t = levers.dtype_memory_table(1000)
    assert t.column("bytes") == [8000, 4000, 4000]
    assert levers.exact_integer_limit(torch.float16) == 2048
    assert levers.exact_integer_limit(torch.bfloat16) == 256
    assert levers.exact_integer_limit(torch.float32) == 2**24
    assert int(torch.tensor(2049.0).half()) != 2049  # beyond the limit ids get corrupted
    mm = levers.matmul_benchmark(32, [torch.float32, torch.bfloat16], repeats=1)
    assert mm.column("dtype") == ["float32", "bfloat16"]
    assert mm.column("rel. error")[0] < 1e-5 < mm.column("rel. error")[1] < 1e-2


def test_tensor_parallel_and_pipeline_reproduce_the_model():
    model = tiny().eval()
    mlp = model.h[0].mlp
    h = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        col, shapes = l1_parallel.column_parallel_linear(mlp.c_fc, h, 4)
        assert shapes == [(32, 32)] * 4 and (col - mlp.c_fc(h)).abs().max() < 1e-6
        hid = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
        row, _ = l1_parallel.row_parallel_linear(mlp.c_proj, hid, 2)
        assert (row - mlp.c_proj(hid)).abs().max() < 1e-5
        x, _ = batches(4)(torch.Generator().manual_seed(0))
        logits, groups = l1_parallel.pipeline_forward(model, x, stages=2, micro_batches=2)
        assert groups == [[0], [1]] and (logits - model(x)).abs().max() < 1e-5
    diagram, bubble = l1_parallel.pipeline_schedule(4, 4)
    assert bubble == pytest.approx(3 / 7) and diagram.splitlines()[3].endswith("0 1 2 3")
    with pytest.raises(ValueError, match="shards"):
        l1_parallel.column_parallel_linear(mlp.c_fc, h, 5)


def test_measure_training_and_memory_counts():
    m = runs.measure_training(tiny, batches(4), "tiny", warmup=1, repeats=2, device="cpu")
    assert len(m.timing.times) == 2 and m.tokens_per_step == 4 * 16
    assert m.tokens_per_s > 0 and len(m.losses) == 3
    small, _ = memory.tensor_peak_memory(lambda: torch.zeros(1000), device="cpu")
    big, method = memory.tensor_peak_memory(lambda: torch.zeros(100_000), device="cpu")
    assert big >= 400_000 > small and "MemTracker" in method
    accum = runs.measure_training(tiny, batches(1), "accum", warmup=0, repeats=1, device="cpu", grad_accum=4)
    assert accum.tokens_per_step == m.tokens_per_step


def test_compare_speed_and_verdicts_respect_the_noise():
    fast, slow, noisy = Timing([1.0] * 4), Timing([2.0] * 4), Timing([1.0, 1.0, 3.0, 3.0])
    c = levers.compare_speed(slow, fast)
    assert c["speed-up"] == 2.0 and c["clear"] and levers.speed_verdict(c)[0] == "holds"
    c2 = levers.compare_speed(noisy, Timing([1.5] * 4))
    assert not c2["clear"] and "noise" in levers.speed_verdict(c2)[1]
    small_gain = levers.compare_speed(Timing([1.03] * 4), fast)
    assert small_gain["clear"] and levers.speed_verdict(small_gain)[0] == "holds"
    assert levers.speed_verdict(small_gain, min_speedup=1.05)[0] == "does not hold"
    assert "slower" in levers.speed_verdict(levers.compare_speed(fast, slow))[1]
    with pytest.raises(TypeError):
        levers.compare_speed(1.0, 2.0)
    with pytest.raises(ValueError):
        levers.speed_verdict(c, min_speedup=0.5)


def test_layout_and_attention_benchmarks_run_and_pinned_is_cuda_only():
    lay = levers.contiguity_benchmark(64, repeats=2)
    assert lay.column("layout")[0] == "contiguous" and lay.column("slow-down")[0] == 1.0
    att = levers.attention_benchmark([32, 64], batch=1, n_head=2, head_dim=8, repeats=1)
    assert att.column("T") == [32, 64] and all(d < 1e-5 for d in att.column("max |diff|"))
    assert att.column("manual peak bytes")[1] > att.column("sdpa peak bytes")[1]  # the T x T scores
    assert levers.pinned_copy_benchmark(1024, device="cpu") is None


def test_table_renders():
    t = tables.Table([{"a": 1, "b": 2.5}, {"a": 1234567, "b": "x"}], "t")
    assert "1,234,567" in str(t) and "<table>" in t._repr_html_() and t.column("a") == [1, 1234567]
    assert math.isclose(t.rows[0]["b"], 2.5)
