"""Checkpoints hold only tensors and plain values; a bad file or another model gives a clear error."""
import pickle

import pytest
import torch

from course_utils.data import get_batch
from course_utils.model import GPT, GPTConfig
from course_utils.train import TrainConfig, load_checkpoint, train

DATA = torch.arange(2000) % 37


def batches(gen):
    return get_batch(DATA, 4, 16, generator=gen)


def model(n_layer=2):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=n_layer, n_head=2, n_embd=32, dropout=0.1))


@pytest.fixture
def ckpt(tmp_path):
    path = str(tmp_path / "run.pt")
    train(model(), batches, TrainConfig(steps=3, lr=1e-3, progress=False, checkpoint_path=path), device="cpu")
    return path


def test_checkpoint_loads_with_weights_only(ckpt):
    state = torch.load(ckpt, weights_only=True)  # raises if anything but tensors and plain values is inside
    assert state["step"] == 3
    assert isinstance(state["batch_rng"], torch.Tensor) and isinstance(state["rng"]["torch"], torch.Tensor)
    assert state["config"]["steps"] == 3 and state["model_description"]["class"] == "GPT"
    assert load_checkpoint(ckpt)["step"] == 3


class Payload:
    def __reduce__(self):  # what a malicious pickle does: call any function on load
        return (print, ("this ran while loading",))


def test_tampered_checkpoint_is_refused(ckpt, capsys):
    state = torch.load(ckpt, weights_only=True)
    state["extra"] = Payload()
    torch.save(state, ckpt)
    cfg = TrainConfig(steps=5, progress=False, checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="plain values") as err:
        train(model(), batches, cfg, device="cpu", resume=True)
    assert ckpt in str(err.value) and "delete" in str(err.value)
    assert "this ran" not in capsys.readouterr().out


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "old.pt"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises((ValueError, RuntimeError), match=str(path)):
        load_checkpoint(str(path))


def test_truncated_checkpoint_names_the_file(ckpt):
    data = open(ckpt, "rb").read()
    with open(ckpt, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="truncated or corrupt") as err:
        train(model(), batches, TrainConfig(steps=5, progress=False, checkpoint_path=ckpt), device="cpu", resume=True)
    assert ckpt in str(err.value) and "delete" in str(err.value)


def test_not_a_checkpoint(tmp_path):
    path = str(tmp_path / "weights.pt")
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="not a course_utils.train checkpoint"):
        load_checkpoint(path)


def test_resume_with_another_model_names_both_configurations(ckpt):
    with pytest.raises(ValueError, match="another model configuration") as err:
        train(model(n_layer=3), batches, TrainConfig(steps=5, progress=False, checkpoint_path=ckpt), device="cpu",
              resume=True)
    msg = str(err.value)
    assert "n_layer" in msg and "n_layer=2" in msg and "n_layer=3" in msg and ckpt in msg
