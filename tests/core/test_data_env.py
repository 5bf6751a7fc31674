import pytest
import torch

from course_utils import data, env
from course_utils.tokenizer import gpt2_tokenizer


def test_gpt2_tokenizer_ids():
    tok = gpt2_tokenizer()
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert len(tok) == 50257 and tok.eos_token_id == 50256


def test_texts_load_and_poe_is_tales_only():
    alice = data.load_text("alice")
    assert "Alice" in alice and len(alice) > 100_000
    poe = data.load_text("poe")
    assert poe.startswith(data.POE_TALES_START)
    assert "Life of Poe" not in poe[:2000]
    assert len(data.load_web_documents()) == 300
    assert {"instruction", "input", "output"} <= set(data.load_instructions()[0])


def test_unknown_text_and_missing_file(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="alice"):
        data.load_text("moby")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="alice_in_wonderland.txt.*data/README.md"):
        data.load_text("alice")


def test_get_batch_is_reproducible_and_shifted():
    ids = torch.arange(100)
    x, y = data.get_batch(ids, 4, 8, generator=torch.Generator().manual_seed(0))
    x2, _ = data.get_batch(ids, 4, 8, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 8) and torch.equal(x, x2) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="too few"):
        data.get_batch(torch.arange(5), 1, 8)


def test_train_test_split():
    train, test = data.train_test_split(torch.arange(100), 0.1)
    assert len(train) == 90 and test[0] == 90
    with pytest.raises(ValueError):
        data.train_test_split(torch.arange(10), 1.5)


def test_tokenize_documents_ends_each_with_eos():
    tok = gpt2_tokenizer()
    ids = data.tokenize(["a", "b"], tok)
    assert ids.tolist().count(tok.eos_token_id) == 2 and ids[-1] == tok.eos_token_id


def test_profile_and_device_switches(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "full")
    assert env.get_profile() == "full"
    monkeypatch.setenv("COURSE_PROFILE", "huge")
    with pytest.raises(ValueError, match="small.*full"):
        env.get_profile()
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert env.get_device() == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "tpu")
    with pytest.raises(ValueError, match="cuda, mps, cpu"):
        env.get_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("COURSE_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no"):
            env.get_device()


def test_default_profile_follows_hardware(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert env.get_profile() == ("full" if torch.cuda.is_available() else "small")


def test_profile_settings():
    s = env.profile_settings({"steps": 5}, {"steps": 500}, profile="small")
    assert s.steps == 5 and "small" in repr(s)
    with pytest.raises(ValueError, match="same settings"):
        env.profile_settings({"steps": 5}, {"iters": 5})
    with pytest.raises(AttributeError, match="no setting"):
        _ = s.lr


def test_seed_everything_repeats():
    env.seed_everything(7)
    a = torch.rand(3)
    env.seed_everything(7)
    assert torch.equal(a, torch.rand(3))


def test_report_env_prints_the_facts(capsys):
    facts = env.report_env()
    out = capsys.readouterr().out
    for key in ("torch", "transformers", "device", "profile", "hub"):
        assert key in facts and key in out


def test_package_report_names_the_lessons_that_need_a_missing_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    table = env.package_report()
    rows = {r["package"]: r for r in table.rows}
    assert rows["trl"]["status"] == "MISSING: pip install trl" and rows["trl"]["lessons"] == "5"
    assert rows["peft"]["status"][0].isdigit()  # a version
    assert "missing: trl" in table.note
    assert {"transformers", "peft", "trl", "bitsandbytes", "datasets"} <= set(rows)
