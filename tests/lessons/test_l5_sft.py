"""Response-only SFT labels (exact masking), the collator, TRL agreement, the synthetic instruction set."""
import pytest
import torch

from course_utils.lessons.l5_sft import (
    IGNORE_INDEX,
    SFTCollator,
    alpaca_prompt,
    format_example,
    instruction_set,
    normalize_answer,
    sft_dataset,
    sft_example,
    trl_completion_labels,
)
from course_utils.losses import causal_lm_loss
from course_utils.tokenizer import gpt2_tokenizer


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoTokenizer

    from course_utils.pretrained import offline_model_dir

    return AutoTokenizer.from_pretrained(offline_model_dir(verbose=False))


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


PROMPT, RESPONSE = "Reverse the word cat.", "tac"


def _prompt_len(tok):
    msgs = [{"role": "user", "content": PROMPT}]
    return len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def test_chat_template_masks_exactly_the_prompt_and_keeps_eos(smol):
    ex = sft_example(smol, PROMPT, RESPONSE, max_len=64)
    n_prompt = _prompt_len(smol)
    response_ids = smol("tac<|im_end|>\n", add_special_tokens=False)["input_ids"]
    n = n_prompt + len(response_ids)
    assert set(ex) == {"input_ids", "attention_mask", "labels"}
    assert all(v.shape == (64,) and v.dtype == torch.long for v in ex.values())
    assert (ex["labels"][:n_prompt] == IGNORE_INDEX).all()
    assert ex["labels"][n_prompt:n].tolist() == response_ids == ex["input_ids"][n_prompt:n].tolist()
    assert smol.eos_token_id in ex["labels"][n_prompt:n].tolist()  # <|im_end|> is learned
    # padding: by position, although SmolLM2's pad id equals its EOS id
    assert smol.pad_token_id == smol.eos_token_id
    assert ex["attention_mask"].tolist() == [1] * n + [0] * (64 - n)
    assert (ex["labels"][n:] == IGNORE_INDEX).all() and (ex["input_ids"][n:] == smol.pad_token_id).all()


def test_alpaca_fallback_appends_eos(gpt2):
    assert not getattr(gpt2, "chat_template", None)
    prompt_text, response_text = format_example(gpt2, PROMPT, RESPONSE)
    assert prompt_text.endswith("### Response:\n") and response_text == "tac" + gpt2.eos_token
    ex = sft_example(gpt2, PROMPT, RESPONSE, max_len=80, pad=False)
    n_prompt = len(gpt2(prompt_text)["input_ids"])
    assert (ex["labels"][:n_prompt] == IGNORE_INDEX).all()
    assert ex["labels"][n_prompt:].tolist() == gpt2("tac")["input_ids"] + [gpt2.eos_token_id]
    assert ex["attention_mask"].tolist() == [1] * len(ex["input_ids"])


def test_truncation_keeps_the_start_and_cuts_the_eos(smol):
    n_prompt = _prompt_len(smol)
    long_response = "one two three four five six seven eight nine ten " * 3
    ex = sft_example(smol, PROMPT, long_response, max_len=n_prompt + 5)
    assert len(ex["input_ids"]) == n_prompt + 5 and ex["attention_mask"].all()
    assert (ex["labels"][:n_prompt] == IGNORE_INDEX).all()
    assert (ex["labels"][n_prompt:] != IGNORE_INDEX).all()
    assert smol.eos_token_id not in ex["labels"].tolist()  # the end, with its EOS, was cut
    with pytest.raises(ValueError, match="fills max_len"):
        sft_example(smol, PROMPT, RESPONSE, max_len=n_prompt)
    kept, skipped = sft_dataset(smol, [(PROMPT, RESPONSE), (PROMPT, long_response)], n_prompt + 5, drop_truncated=True)
    assert len(kept) == 1 and skipped == 1


def test_loss_on_all_tokens_keeps_the_prompt_but_not_the_padding(smol):
    ex = sft_example(smol, PROMPT, RESPONSE, max_len=64, loss_on="all")
    n = int(ex["attention_mask"].sum())
    assert ex["labels"][:n].tolist() == ex["input_ids"][:n].tolist()
    assert (ex["labels"][n:] == IGNORE_INDEX).all()


def test_response_only_loss_ignores_the_prompt(smol):
    ex = sft_example(smol, PROMPT, RESPONSE, max_len=48)
    labels = ex["labels"][None]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 48, 50, generator=gen)
    labels = labels.clamp(max=49).where(labels != IGNORE_INDEX, torch.tensor(IGNORE_INDEX))
    before = causal_lm_loss(logits, labels)
    n_prompt = _prompt_len(smol)
    changed = logits.clone()
    changed[:, : n_prompt - 1] += 5 * torch.randn(1, n_prompt - 1, 50, generator=gen)  # predict prompt tokens
    assert torch.allclose(before, causal_lm_loss(changed, labels))


def test_collator_pads_to_the_longest(smol):
    a = sft_example(smol, PROMPT, RESPONSE, 64, pad=False)
    b = sft_example(smol, "Name three colours of the rainbow, please.", "Red, orange and yellow.", 64, pad=False)
    batch = SFTCollator(smol.pad_token_id)([a, b])
    width = max(len(a["input_ids"]), len(b["input_ids"]))
    assert all(v.shape == (2, width) for v in batch.values())
    na = len(a["input_ids"])
    assert batch["labels"][0, :na].tolist() == a["labels"].tolist()
    assert (batch["labels"][0, na:] == IGNORE_INDEX).all() and (batch["attention_mask"][0, na:] == 0).all()
    with pytest.raises(ValueError, match="empty"):
        SFTCollator(0)([])
    with pytest.raises(KeyError, match="sft_example"):
        SFTCollator(0)([{"input_ids": [1]}])


@pytest.mark.parametrize("which,system", [("smol", None), ("smol", "Be brief."), ("gpt2", None)])
def test_same_labels_as_trl_completion_only_loss(which, system, request, tmp_path):
    tok = request.getfixturevalue(which)
    pairs = [(PROMPT, RESPONSE), ("Give me two fruits.", "Apples and pears."),
             ("Tell a story. " * 4, "Once upon a time, there was a castle. " * 6)]  # the last one is truncated
    theirs = trl_completion_labels(tok, pairs, max_len=64, workdir=str(tmp_path), system=system)
    assert len(theirs) == len(pairs)
    for (p, r), t in zip(pairs, theirs):
        ours = sft_example(tok, p, r, max_len=64, pad=False, system=system)
        assert ours["input_ids"].tolist() == t["input_ids"]
        assert ours["labels"].tolist() == t["labels"]
    assert any(len(t["input_ids"]) == 64 for t in theirs)  # the truncation case was exercised


def test_system_message(smol, gpt2):
    prompt_text, _ = format_example(smol, PROMPT, RESPONSE, system="Be brief.")
    assert "Be brief." in prompt_text and "SmolLM" not in prompt_text
    assert "SmolLM" in format_example(smol, PROMPT, RESPONSE)[0]  # the template's default system message
    alpaca, _ = format_example(gpt2, PROMPT, RESPONSE, system="Be brief.")
    assert alpaca.startswith("Be brief.\n\n### Instruction:\n")


def test_bad_inputs_say_what_to_do(smol):
    with pytest.raises(ValueError, match="max_len"):
        sft_example(smol, PROMPT, RESPONSE, max_len=1)
    with pytest.raises(ValueError, match="response is empty"):
        sft_example(smol, PROMPT, "  ", max_len=64)
    with pytest.raises(ValueError, match="loss_on"):
        sft_example(smol, PROMPT, RESPONSE, 64, loss_on="prompt")
    with pytest.raises(ValueError, match="no chat template"):
        sft_example(gpt2_tokenizer(), PROMPT, RESPONSE, 64, template="chat")
    with pytest.raises(KeyError, match="instruction"):
        alpaca_prompt({"output": "x"})


def test_instruction_set_is_seeded_and_correct():
    a = instruction_set(["reverse", "sort_numbers", "nth_word", "count_letters"], 5, seed=3)
    assert a == instruction_set(["reverse", "sort_numbers", "nth_word", "count_letters"], 5, seed=3)
    assert a != instruction_set(["reverse", "sort_numbers", "nth_word", "count_letters"], 5, seed=4)
    assert a[:5] == instruction_set(["reverse"], 5, seed=3)  # a task's examples do not depend on the others
    for e in a:
        if e["task"] == "reverse":
            word = e["prompt"].split("'")[1]
            assert e["answer"] == word[::-1]
        if e["task"] == "sort_numbers":
            nums = [int(x) for x in e["answer"].split(", ")]
            assert nums == sorted(nums)
        if e["task"] == "count_letters":
            assert int(e["answer"]) == len(e["prompt"].split("'")[1])
    with pytest.raises(ValueError, match="unknown task"):
        instruction_set(["translate"], 2, seed=0)


def test_normalize_answer():
    assert normalize_answer("  'APPLE'.\nmore text") == "APPLE"
    assert normalize_answer("**42**") == "42"
    assert normalize_answer("apple") != normalize_answer("APPLE")


def test_instruction_sets_reach_the_full_profile_sizes():
    # Lesson 5's full profile: 25 evaluation + 400 training prompts per trained task, 50 for the held-out one,
    # all distinct. With 49 words the one-word tasks could not get there (a full-profile run failed on it).
    from course_utils.lessons import l5_sft as sft

    for task in sft.TASKS:
        ev = sft.instruction_set([task], 50, seed=1)
        tr = sft.instruction_set([task], 400, seed=0, exclude=ev)
        prompts = [e["prompt"] for e in ev + tr]
        assert len(set(prompts)) == 450, task
    assert sft.word_pool()[: len(sft.WORDS)] == sft.WORDS


def test_generalization_is_decided_on_the_held_out_prompts_both_ways():
    from course_utils.lessons.l5_sft import generalization_verdict

    none, most = [False] * 8, [True] * 6 + [False] * 2
    up = generalization_verdict(0.1, 0.9, none, most, steps=8)
    assert up.verdict == "holds" and "0/8 -> 6/8" in up.measured and "90%" in up.measured
    assert generalization_verdict(0.1, 0.9, most, none, steps=8).verdict == "does not hold"
    assert generalization_verdict(0.1, 0.9, none, [True] + [False] * 7, steps=8).verdict == "inconclusive"
    flat = generalization_verdict(0.0, 0.08, none, none, steps=8)  # nothing changed: no transfer at this budget
    assert flat.verdict == "does not hold" and "8 LoRA steps" in flat.why
    with pytest.raises(ValueError, match="same held-out prompts"):
        generalization_verdict(0.1, 0.9, none, most[:4], steps=8)


def test_exact_match_scores_case_and_format_separately(smol):
    from course_utils.lessons import l5_sft

    examples = [{"task": "uppercase", "prompt": "p1", "answer": "CAT"}, {"task": "uppercase", "prompt": "p2",
                                                                          "answer": "DOG"}]
    fake = ["cat.", "The word is DOG"]
    orig = l5_sft.generate_responses
    l5_sft.generate_responses = lambda *a, **k: fake
    try:
        out = l5_sft.exact_match(None, smol, examples)
    finally:
        l5_sft.generate_responses = orig
    assert out["accuracy"]["uppercase"] == 0  # case counts
    assert out["nocase"]["uppercase"] == 0.5  # "cat" is right ignoring case
    assert out["terse"]["uppercase"] == 0.5  # "The word is DOG" is not in the requested format
    fake = ["CAT [cut at 12 tokens]", "DOG"]  # an answer that hit the token limit: scored without the marker
    l5_sft.generate_responses = lambda *a, **k: fake
    try:
        out = l5_sft.exact_match(None, smol, examples)
    finally:
        l5_sft.generate_responses = orig
    assert out["accuracy"]["uppercase"] == 1 and out["shown"] == fake and out["answers"] == ["CAT", "DOG"]


def test_train_measured_peak_covers_weights_gradients_and_adam(tiny_llama):
    from course_utils.lessons.l5_sft import SFTCollator, random_batches, train_measured
    from course_utils.train import TrainConfig

    model = tiny_llama(hidden=64, layers=2)
    n = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(8):
        ids = torch.randint(0, 100, (12,), generator=g)
        labels = ids.clone()
        labels[:4] = IGNORE_INDEX
        examples.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long), "labels": labels})
    cfg = TrainConfig(steps=3, lr=1e-3, progress=False)
    out = train_measured(model, random_batches(examples, 2, SFTCollator(0)), cfg, causal_lm_loss, device="cpu")
    assert len(out["history"].train_loss) == 3 and out["history"].step == [1, 2, 3]
    assert out["optimizer_bytes"] >= 8 * n
    # the measured step holds the fp32 weights, their gradients and both Adam moments at once
    assert out["how"] == "tensor memory (MemTracker)"
    assert out["peak"] >= 16 * n
    # it trains on exactly the batches of an uninterrupted run of cfg.steps steps: no batch of another seed's run
    def recorded(seen):
        draw = random_batches(examples, 2, SFTCollator(0))

        def batches(gen):
            batch = draw(gen)
            seen.append(batch["input_ids"])
            return batch
        return batches

    def batches_of(run, seed):
        seen = []
        run(tiny_llama(hidden=64, layers=2), recorded(seen), TrainConfig(steps=3, lr=1e-3, progress=False, seed=seed))
        return seen

    from course_utils.train import train
    measured = batches_of(lambda m, b, c: train_measured(m, b, c, causal_lm_loss, device="cpu"), 0)
    plain = batches_of(lambda m, b, c: train(m, b, c, loss_fn=causal_lm_loss, device="cpu"), 0)
    used = measured  # each batch drawn once (a notebook counts its draws)
    assert len(measured) == 3 and all(torch.equal(a, b) for a, b in zip(used, plain))
    next_seed = batches_of(lambda m, b, c: train(m, b, c, loss_fn=causal_lm_loss, device="cpu"), 1)
    assert not any(torch.equal(used[-1], b) for b in next_seed)  # seed 0's last batch is not seed 1's
    with pytest.raises(ValueError, match="steps >= 2"):
        train_measured(model, random_batches(examples, 2, SFTCollator(0)), TrainConfig(steps=1), causal_lm_loss)
    # LoRA: frozen base weights (no gradients, no Adam state), measured the same way
    from course_utils.lessons.l5_lora import add_lora

    lora = tiny_llama(hidden=64, layers=2)
    add_lora(lora, ["q_proj", "v_proj"], r=4, alpha=8)
    n_lora = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    out_lora = train_measured(lora, random_batches(examples, 2, SFTCollator(0)), cfg, causal_lm_loss, device="cpu")
    assert out_lora["how"] == "tensor memory (MemTracker)"
    assert 4 * n <= out_lora["peak"] < out["peak"]  # the weights, but not full FT's gradients and moments
    assert out_lora["optimizer_bytes"] < 9 * n_lora
    assert all(p.register_hook.__self__ is p for p in lora.parameters())  # the hooks are restored


def test_example_losses_score_each_example_as_mean_label_loss_would(tiny_llama):
    from course_utils.lessons.l5_sft import example_losses, mean_label_loss

    model = tiny_llama(hidden=64, layers=2)
    g = torch.Generator().manual_seed(0)
    examples = []
    for n in (10, 14, 7):
        ids = torch.randint(0, 100, (n,), generator=g)
        labels = ids.clone()
        labels[:3] = IGNORE_INDEX
        examples.append({"input_ids": ids, "attention_mask": torch.ones(n, dtype=torch.long), "labels": labels})
    got = example_losses(model, examples, SFTCollator(0), batch_size=2)
    want = [mean_label_loss(model, [e], SFTCollator(0)) for e in examples]
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="no examples"):
        example_losses(model, [], SFTCollator(0))


def test_generated_answers_say_when_they_are_cut(smol, tiny_llama):
    from course_utils.lessons.l5_sft import generate_responses

    model = tiny_llama(vocab=len(smol), hidden=64, layers=1)
    plain = generate_responses(model, smol, ["Name a colour."], 3, system="Be brief.")
    marked = generate_responses(model, smol, ["Name a colour."], 3, system="Be brief.", mark_cut=True)
    # a random tiny model almost surely does not emit the end-of-turn token within 3 tokens
    assert marked == [plain[0] + " [cut at 3 tokens]"]


def test_generalization_scoped_by_the_lectures_scale_and_exact_interval():
    from course_utils.lessons.l5_sft import exact_share_interval, generalization_verdict

    low, high = exact_share_interval(0, 8)
    assert low == 0.0 and 0.36 < high < 0.38  # 0/8 is consistent with up to ~37%
    assert exact_share_interval(8, 8)[1] == 1.0
    none = [False] * 8
    flat = generalization_verdict(0.0, 0.08, none, none, steps=8, budget_short="thousands of examples")
    assert flat.verdict == "inconclusive" and "0% to 37%" in flat.why
    up = generalization_verdict(0.1, 0.9, none, [True] * 6 + [False] * 2, steps=8, budget_short="thousands")
    assert up.verdict == "inconclusive"  # a clear gain is inconclusive too, below the lecture's scale


def test_base_model_is_unreachable_offline_and_the_row_says_which_model(monkeypatch):
    from course_utils.lessons.l5_sft import BASE_HUB_ID, base_unreachable_verdict, load_base_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, why = load_base_model()
    assert model is None and BASE_HUB_ID in why and "hub" in why
    v = base_unreachable_verdict(why, "SmolLM2-135M-Instruct")
    assert v.verdict == "not measurable here" and "unreachable offline" in v.why and BASE_HUB_ID in v.why
    assert v.bar == "more held-out instructions answered in one finished turn after SFT than before (paired, > 0)"


def test_quality_over_quantity_is_not_measurable_with_its_bar_and_the_records_counted():
    from course_utils.data import load_instructions
    from course_utils.lessons.l5_sft import QUALITY_BAR, quality_over_quantity_row

    n = len(load_instructions())
    v = quality_over_quantity_row(n)
    assert v.verdict == "not measurable here" and v.measured == "not run" and v.bar == QUALITY_BAR
    assert f"({n:,} records)" in v.why and "Chỉ cần hàng nghìn đến hàng trăm nghìn mẫu" in v.why
    assert "curated" in v.bar and "paired by seed" in v.bar
    assert "(12 records)" in quality_over_quantity_row(12, "a toy set").why
    with pytest.raises(ValueError):
        quality_over_quantity_row(-1)


def test_base_to_chat_is_decided_on_finished_turns_both_ways(smol, tiny_llama):
    from course_utils.lessons.l5_sft import base_to_chat_verdict, ends_turn

    never, most = [False] * 8, [True] * 7 + [False]
    up = base_to_chat_verdict(never, most, steps=4)
    assert up.verdict == "holds" and up.measured == "finished turns 0/8 -> 7/8" and "4 LoRA SFT steps" in up.why
    assert base_to_chat_verdict(most, never, steps=4).verdict == "does not hold"
    assert base_to_chat_verdict(never, [True] + [False] * 7, steps=4).verdict == "inconclusive"
    with pytest.raises(ValueError):
        base_to_chat_verdict(never, most[:4], steps=4)
    model = tiny_llama(vocab=len(smol), hidden=64, layers=1)  # random: no end-of-turn within 3 tokens
    assert ends_turn(model, smol, ["Name a colour.", "Say hi."], 3, system="Be brief.") == [False, False]


def test_base_to_chat_below_the_notes_scale_is_inconclusive_either_way():
    from course_utils.lessons.l5_sft import base_to_chat_verdict

    never, most = [False] * 8, [True] * 7 + [False]
    for a, b in ((never, most), (most, never)):
        v = base_to_chat_verdict(a, b, steps=4, budget_short="thousands of examples")
        assert v.verdict == "inconclusive" and v.why.count("thousands of examples") == 1


def test_budget_short_if_quotes_the_notes_scale_below_thousands_only():
    from course_utils.lessons.l5_sft import LECTURE_SCALE, budget_short_if, generalization_verdict

    assert budget_short_if(12, 400) == LECTURE_SCALE and budget_short_if(999, 5000) == LECTURE_SCALE  # few draws
    assert budget_short_if(1000, 1000) is None and budget_short_if(9600, 2400) is None  # full profile, instructions
    # distinct examples, not draws: the full profile's Alpaca runs draw 4,800 from at most 799 records
    assert budget_short_if(4800, 799) == LECTURE_SCALE and budget_short_if(4800, 999) == LECTURE_SCALE
    none, most = [False] * 8, [True] * 7 + [False]
    short, enough = budget_short_if(24, 240), budget_short_if(9600, 2400)
    assert generalization_verdict(0.1, 0.9, none, most, 8, budget_short=short).verdict == "inconclusive"
    assert generalization_verdict(0.1, 0.9, none, most, 8, budget_short=enough).verdict == "holds"
    assert generalization_verdict(0.1, 0.9, none, most, 8,
                                  budget_short=budget_short_if(9600, 500)).verdict == "inconclusive"
    with pytest.raises(ValueError):
        budget_short_if(-1, 10)
    with pytest.raises(ValueError):
        budget_short_if(10, -1)


def test_random_batches_draw_with_replacement_and_record_every_draw():
    from course_utils.lessons.l5_sft import random_batches

    examples = [{"i": i} for i in range(5)]
    drawn = []
    batches = random_batches(examples, 4, lambda ex: [e["i"] for e in ex], drawn=drawn)
    g = torch.Generator().manual_seed(0)
    got = [batches(g) for _ in range(6)]
    assert drawn == [i for b in got for i in b]  # every index drawn, in order
    assert len(drawn) == 24 and len(set(drawn)) <= 5  # 24 draws from 5 examples: repeats, by construction
    # recording draws nothing more from the generator: the same batches as without it
    plain = random_batches(examples, 4, lambda ex: [e["i"] for e in ex])
    g = torch.Generator().manual_seed(0)
    assert [plain(g) for _ in range(6)] == got


def test_training_precision_names_the_autocast_of_this_device():
    from course_utils.lessons.l5_sft import training_precision

    assert training_precision("off", "cpu") == "fp32"
    assert training_precision("auto", "cpu") == "fp32"  # no autocast on a CPU under "auto"
    assert training_precision("bf16", "cpu") == "bf16 autocast over fp32 weights"
