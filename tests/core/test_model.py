import pytest
import torch

from course_utils.model import GPT, GPTConfig


def test_logits_shape(tiny_gpt):
    model = tiny_gpt()
    x = torch.randint(0, 97, (3, 16))
    assert model(x).shape == (3, 16, 97)


def test_equals_hf_gpt2_logits():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=211, n_positions=32, n_embd=48, n_layer=3, n_head=4)).eval()
    ours = GPT.from_hf_gpt2(hf).eval()
    x = torch.randint(0, 211, (2, 32))
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff < 1e-4
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())


def test_from_hf_rejects_other_models():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    neo = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2,
                                         attention_types=[[["global", "local"], 1]], max_position_embeddings=16))
    with pytest.raises(ValueError, match="GPT-2"):
        GPT.from_hf_gpt2(neo)


def test_dropout_active_in_train_and_off_in_eval(tiny_gpt):
    model = tiny_gpt(dropout=0.2)
    x = torch.randint(0, 97, (2, 16))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_sdpa_dropout_needs_the_training_gate(tiny_gpt):
    model = tiny_gpt(dropout=0.3).eval()
    for block in model.h:
        block.attn.gate_dropout_on_training = False  # what a model without the gate would do
    x = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_tied_weights_share_storage(tiny_gpt):
    model = tiny_gpt()
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    untied = tiny_gpt(tie_weights=False)
    assert untied.num_parameters() - model.num_parameters() == 97 * 32


def test_padded_vocab_returns_real_vocab_logits(tiny_gpt):
    model = tiny_gpt(pad_vocab_multiple=64)
    assert model.wte.weight.shape[0] == 128
    assert model(torch.randint(0, 97, (1, 8))).shape[-1] == 97


def test_too_long_sequence_is_a_clear_error(tiny_gpt):
    with pytest.raises(ValueError, match="block_size=16"):
        tiny_gpt()(torch.zeros(1, 17, dtype=torch.long))


def test_device_mismatch_shows_pytorchs_own_message(tiny_gpt):
    # Model 5 adds no device check of its own: PyTorch's message shows where the tensors meet. Without a second
    # real device the meta device stands in: its embedding lookup accepts CPU ids, the loss against CPU targets
    # does not (on a GPU: "Expected all tensors to be on the same device, but found at least two devices, ...")
    from course_utils.losses import all_token_loss

    model = tiny_gpt().to("meta")
    logits = model(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(RuntimeError, match="not on the expected device"):
        all_token_loss(logits, torch.zeros(1, 4, dtype=torch.long))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_generate_greedy_is_deterministic_and_sampling_uses_generator(tiny_gpt):
    model = tiny_gpt()
    x = torch.zeros(1, 3, dtype=torch.long)
    a = model.generate(x, 5, greedy=True)
    assert a.shape == (1, 8) and torch.equal(a, model.generate(x, 5, greedy=True))
    s1 = model.generate(x, 5, generator=torch.Generator().manual_seed(1))
    s2 = model.generate(x, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s1, s2)
    assert model.training  # generate restores the mode it found


def test_the_seams_compose_to_forward():
    import torch

    from course_utils.model import GPT, GPTConfig, manual_attention

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=3, n_head=2, n_embd=32, dropout=0.0,
                          pad_vocab_multiple=64)).eval()
    idx = torch.randint(0, 97, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, 97)  # padded rows cropped
    x = model.embed(idx)
    assert torch.equal(model.blocks(model.blocks(x, 0, 1), 1), model.blocks(x))  # stages compose
    assert torch.allclose(model.unembed(model.blocks(x)), logits)
    targets = torch.randint(0, 97, (2, 16))
    full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert torch.allclose(model.loss(model.blocks(x), targets), full, atol=1e-5)
    model.set_attention(manual_attention)
    assert torch.allclose(model(idx), logits, atol=1e-5)  # the written-out attention equals the fused kernel
    model.set_attention(None)
    assert torch.equal(model(idx), logits)
