"""Course texts, tokenization, train/test split and reproducible batches."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from .env import is_online
from .paths import data_dir

#: The texts the lessons use, by short name (see data/README.md for sources and licences).
TEXTS = {
    "alice": "alice_in_wonderland.txt",
    "poe": "poe_works_volume1.txt",
    "web": "web_text_c4_sample.jsonl",
}
INSTRUCTIONS = "alpaca_gpt4_sample.json"
# Volume I of Poe's works opens with ~920 lines of essays *about* Poe; his own tales start here.
POE_TALES_START = "THE UNPARALLELED ADVENTURES OF ONE HANS PFAAL"
POE_TALES_END = "~~~ End of Text ~~~"


def data_path(filename: str) -> Path:
    """Full path of a file in the course's data folder, with a clear error when it is missing."""
    path = data_dir() / filename
    if not path.exists():
        raise FileNotFoundError(
            f"The course data file {filename!r} is missing: looked for {path}. The files ship in the "
            "repository's data/ folder (see data/README.md); run from a full clone, or point "
            "COURSE_DATA_DIR at a folder that holds them."
        )
    return path


def load_web_documents(n_docs: int | None = None) -> list[str]:
    """The web-text sample (300 C4 documents), the offline stand-in for FineWeb."""
    with open(data_path(TEXTS["web"]), encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    return docs[:n_docs] if n_docs else docs


def load_text(name: str) -> str:
    """One course text as a string: ``"alice"``, ``"poe"`` (the tales only) or ``"web"`` (documents joined)."""
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; the course texts are {sorted(TEXTS)}")
    if name == "web":
        return "\n\n".join(load_web_documents())
    text = data_path(TEXTS[name]).read_text(encoding="utf-8")
    if name == "poe":
        start, end = text.index(POE_TALES_START), text.find(POE_TALES_END)
        text = text[start : end if end > 0 else None]
    return text


def load_fineweb(n_docs: int = 300, verbose: bool = True) -> tuple[list[str], str]:
    """Diverse web text: FineWeb from the hub when reachable, else the C4 web sample in data/.

    Returns the documents and a sentence naming what was actually used.
    """
    if is_online():
        try:
            from datasets import load_dataset

            stream = load_dataset("HuggingFaceFW/fineweb", name="sample-10BT", split="train", streaming=True)
            docs = [row["text"] for _, row in zip(range(n_docs), stream)]
            source = f"FineWeb (HuggingFaceFW/fineweb, sample-10BT), first {len(docs)} documents"
            if verbose:
                print(f"[course_utils] web text: {source}")
            return docs, source
        except Exception as err:
            reason = f"the hub download failed ({type(err).__name__})"
    else:
        reason = "the Hugging Face hub is not reachable"
    docs = load_web_documents(n_docs)
    source = f"C4 web sample from data/ ({len(docs)} documents) instead of FineWeb: {reason}"
    if verbose:
        print(f"[course_utils] web text: {source}")
    return docs, source


def load_instructions() -> list[dict]:
    """The Alpaca-GPT4 sample: a list of ``{"instruction", "input", "output"}`` (CC BY-NC 4.0)."""
    with open(data_path(INSTRUCTIONS), encoding="utf-8") as f:
        return json.load(f)


def tokenize(text: str | list[str], tokenizer) -> torch.Tensor:
    """Token ids of a text (or of documents, each ended by the tokenizer's EOS) as one 1-D LongTensor."""
    if isinstance(text, str):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        eos = tokenizer.eos_token_id
        ids = []
        for row in tokenizer(list(text), add_special_tokens=False)["input_ids"]:
            ids.extend(row + [eos])
    return torch.tensor(ids, dtype=torch.long)


@lru_cache(maxsize=8)
def load_tokens(name: str) -> torch.Tensor:
    """A course text tokenized with the GPT-2 tokenizer (cached for the session)."""
    from .tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    return tokenize(load_web_documents() if name == "web" else load_text(name), tok)


def train_test_split(ids: torch.Tensor, test_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a token stream into a train part and a held-out test part (the last ``test_fraction``)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    n_test = int(len(ids) * test_fraction)
    return ids[: len(ids) - n_test], ids[len(ids) - n_test :]


def get_batch(
    data: torch.Tensor,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows ``x`` (B x T) and their next-token targets ``y`` (x shifted by one), reproducibly.

    Every draw comes from ``generator``, so the same seed gives the same batches regardless of what
    else (dropout, other notebooks' cells) consumes torch's global random state.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D token stream, got shape {tuple(data.shape)}")
    if len(data) <= block_size + 1:
        raise ValueError(
            f"the token stream has {len(data)} tokens, too few for windows of block_size={block_size} "
            "(need at least block_size + 2); use a longer text or a smaller block_size"
        )
    starts = torch.randint(0, len(data) - block_size - 1, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = data[starts[:, None] + offsets]
    y = data[starts[:, None] + offsets + 1]
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y
