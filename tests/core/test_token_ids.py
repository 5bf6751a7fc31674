"""Model 5 names the vocabulary size and the likely cause when token ids do not fit it."""
import copy

import pytest
import torch

from course_utils.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=1, n_head=2, n_embd=16, pad_vocab_multiple=8)).eval()


@pytest.mark.parametrize("bad", [37, 50000, -1])
def test_out_of_range_ids_name_the_vocabulary(model, bad):
    idx = torch.tensor([[1, 2, bad, 3]])
    with pytest.raises(ValueError, match=r"vocab_size=37") as err:
        model(idx)
    assert str(bad) in str(err.value) and "tokenizer" in str(err.value)


def test_padded_rows_are_not_valid_ids(model):  # 37 pads to 40 rows: id 39 would silently work without the check
    with pytest.raises(ValueError, match="vocab_size=37"):
        model(torch.tensor([[39]]))


def test_float_ids_are_refused(model):
    with pytest.raises(TypeError, match="integers"):
        model(torch.tensor([[1.0, 2.0]]))


def test_valid_ids_still_work(model):
    assert model(torch.tensor([[0, 36, 5]])).shape == (1, 3, 37)
    assert model(torch.tensor([[0, 36, 5]], dtype=torch.int32)).shape == (1, 3, 37)


def test_the_check_does_not_break_torch_compile(model):
    # the check is skipped while dynamo traces (torch.compiler.is_compiling()); fullgraph=True fails on a graph break
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.tensor([[0, 36, 5]])
    assert torch.equal(compiled(x), model(x))


def test_a_meta_model_runs_on_meta_ids_and_checks_cpu_ids(model):
    # Lesson 2 shows the device error with a meta model: meta ids have no values to check; CPU ids are checked
    # (the device error itself is PyTorch's own, where the tensors meet: see test_model.py)
    meta = copy.deepcopy(model).to("meta")  # a copy: the fixture is shared by the module
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        meta(torch.tensor([[0, 37, 5]]))
    assert meta(torch.tensor([[0, 36, 5]], device="meta")).shape == (1, 3, 37)
