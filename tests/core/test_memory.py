"""course_utils.memory: counts, analytic bytes, and the measured step peak (the memory procedure for claims)."""
import pytest
import torch

from course_utils.memory import (
    ADAMW_FP32_BYTES_PER_PARAM,
    ParamCount,
    count_parameters,
    optimizer_state_bytes,
    sharded_state_bytes,
    step_peak_memory,
    tensor_peak_memory,
    training_state_bytes,
)


def test_count_parameters_counts_a_tied_matrix_once(tiny_gpt):
    tied, untied = tiny_gpt(), tiny_gpt(tie_weights=False)
    c = count_parameters(tied)
    assert isinstance(c, ParamCount) and c.trainable == c.total == tied.num_parameters()
    assert count_parameters(untied).total - c.total == 97 * 32  # the separate unembedding
    tied.wte.weight.requires_grad_(False)
    c = count_parameters(tied)
    assert c.frozen == 97 * 32 and c.trainable == c.total - 97 * 32


def test_training_state_bytes_matches_the_optimizer_after_a_step(tiny_gpt):
    model = tiny_gpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 97, (2, 16))).sum().backward()
    opt.step()
    analytic = training_state_bytes(model)
    assert optimizer_state_bytes(opt) == analytic["optimizer"]
    n = count_parameters(model).total
    assert analytic["parameters"] == analytic["gradients"] == 4 * n
    with pytest.raises(ValueError, match="unknown optimizer"):
        training_state_bytes(model, "lion")


def test_sharded_state_bytes():
    assert sharded_state_bytes(100) == 100 * ADAMW_FP32_BYTES_PER_PARAM
    assert sharded_state_bytes(100, shards=8) == 200
    with pytest.raises(ValueError, match="shards"):
        sharded_state_bytes(100, shards=0)


def test_tensor_peak_memory_is_exact_on_cpu():
    small, _ = tensor_peak_memory(lambda: torch.zeros(1000), device="cpu")
    big, method = tensor_peak_memory(lambda: torch.zeros(100_000), device="cpu")
    assert "MemTracker" in method and big - small == pytest.approx(99_000 * 4, rel=0.01)


def test_step_peak_after_the_optimizer_state_exists_holds_weights_grads_and_both_moments(tiny_gpt):
    model = tiny_gpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 97, (4, 16))

    def step():
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        opt.step()

    peak, method = step_peak_memory(step, model, opt, x, device="cpu")
    n = count_parameters(model).total
    assert "MemTracker" in method
    assert peak >= n * ADAMW_FP32_BYTES_PER_PARAM  # weights + gradients + m + v, at least
    with pytest.raises(ValueError, match="warmup_steps"):
        step_peak_memory(step, model, opt, device="cpu", warmup_steps=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU test above checks the same rule)")
def test_cuda_step_peak_is_the_same_absolute_quantity(tiny_gpt):
    device = torch.device("cuda")
    model = tiny_gpt().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 97, (4, 16), device=device)

    def step():
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        opt.step()

    peak, method = step_peak_memory(step, model, opt, x, device=device)
    assert "CUDA" in method and peak >= count_parameters(model).total * ADAMW_FP32_BYTES_PER_PARAM
