import pytest
import torch

from course_utils.env import is_online
from course_utils.pretrained import build_from_config, load_pretrained


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="gpt2-medium.*EleutherAI/gpt-neo-125M"):
        load_pretrained("gpt-5")


@pytest.mark.skipif(is_online(), reason="checks the offline fallback; the hub is reachable here")
def test_offline_fallback_is_smollm2_and_generates():
    model, tok, info = load_pretrained("gpt2-medium", device="cpu", verbose=False)
    assert info.used == "SmolLM2-135M-Instruct" and info.is_fallback and "not reachable" in info.reason
    assert info.n_params == 134_515_008
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_real_configs_without_weights():
    medium = build_from_config("gpt2-medium")
    assert sum(p.numel() for p in medium.parameters()) == 354_823_168
    neo = build_from_config("EleutherAI/gpt-neo-125M")
    assert sum(p.numel() for p in neo.parameters()) == 125_198_592
    assert next(neo.parameters()).device == torch.device("meta")


def test_build_from_config_converts_offline_model_on_a_fresh_cache(tmp_path, monkeypatch):
    # A learner who opens Lesson 4 first has no converted copy yet: the conversion (a from_pretrained)
    # must not run inside the meta-device context, which transformers refuses.
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    model = build_from_config("SmolLM2-135M-Instruct")
    assert next(model.parameters()).device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (tmp_path / "SmolLM2-135M-Instruct-f32" / "config.json").exists()
