"""The dry run executes each notebook up to its last cell on the full profile's own path (``dry_run_cells``)."""
import nbformat
import pytest
import torch

import course_utils.env
import course_utils.train
from course_utils.nbtools import dry_run_cells, full_profile_flags, same_path_here

SETTINGS = '''common = {"seeds": 3}
S = profile_settings(
    small=dict(**common, steps=80, amp="off", compile=True, dtype="float32", rounds=CLAIM_ROUNDS),
    full=dict(**common, steps=800, amp="auto", compile=True, dtype="bfloat16", rounds=20),
)
print(S)'''


@pytest.fixture(autouse=True)
def _on_a_bf16_gpu(monkeypatch):
    """These tests read the notebook as a machine with a bf16 GPU would (amp="auto" is its own path there);
    ``test_amp_*`` below pass their device explicitly."""
    monkeypatch.setattr(course_utils.env, "get_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(course_utils.train, "has_fast_bf16", lambda device: device.type == "cuda")


def _nb(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("import torch"),
                nbformat.v4.new_code_cell(SETTINGS)] + [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_flags_are_the_non_numbers_that_differ():
    assert full_profile_flags(_nb()) == ({"amp", "dtype"}, {"S"})


def test_no_flag_read_stops_at_the_settings_cell():
    last, why = dry_run_cells(_nb("x = S.steps * 2", "print(f'{S.profile} profile, {x}')", "y = S.compile"))
    assert last == 2 and why == {}


def test_a_flag_and_what_it_made_are_on_the_path_until_rebound():
    last, why = dry_run_cells(_nb(
        "model = train(amp=S.amp)",  # 3: reads a flag
        "loss = model.loss",  # 4: reads what the path made
        "other = 1",  # 5: off the path
        "model = fresh()",  # 6: rebinds model off the path
        "print(model, other)",  # 7: off the path again
    ))
    assert why == {3: [".amp"], 4: ["model"]} and last == 4


def test_a_function_that_reads_a_flag_and_fills_a_dict():
    last, why = dry_run_cells(_nb(
        "runs = {}\ndef go(name):\n    runs[name] = train(dtype=S['dtype'])",  # 3
        "go('a')",  # 4: calls it
        "n = len(runs)",  # 5: reads what it filled (printing it alone would not count)
        "table = summary(runs)",  # 6
        "exercise = 1",  # 7
    ))
    assert 3 in why and 4 in why and why[5] == ["runs"] and why[6] == ["runs"] and last == 6


def test_profile_branches_and_settings_handed_over():
    last, why = dry_run_cells(_nb("if S.profile == 'full':\n    z = 1", "w = run(S)", "v = 2"))
    assert why == {3: ["reads the profile"], 4: ["hands the settings to a function"]} and last == 4


def test_local_names_do_not_read_the_path():
    last, why = dry_run_cells(_nb("model = train(amp=S.amp)", "xs = [model for model in range(3)]",
                                  "def f(model):\n    return model"))
    assert last == 3 and list(why) == [3]


def test_code_that_does_not_parse_counts_as_on_the_path():
    last, why = dry_run_cells(_nb("x = (", "y = 1"))
    assert why == {3: ["code that does not parse"]} and last == 3


def test_settings_that_are_not_literal_run_every_cell():
    nb = _nb("y = 1", "z = 2")
    nb.cells[2].source = "S = profile_settings(small=SMALL, full=FULL)"
    last, why = dry_run_cells(nb)
    assert last == 4 and "every cell runs" in why[4][0]


def test_amp_auto_is_the_small_profiles_path_on_a_cpu():
    """On a CPU amp="auto" resolves to no autocast, as "off" does: the dry run need not repeat nbval's cells."""
    assert full_profile_flags(_nb(), device="cpu") == ({"dtype"}, {"S"})
    last, why = dry_run_cells(_nb("model = train(amp=S.amp)", "loss = model.loss"), device="cpu")
    assert last == 2 and why == {}
    assert same_path_here("amp", "off", "auto", "cpu") and not same_path_here("amp", "off", "bf16", "cpu")


def test_amp_fp16_on_a_cpu_and_auto_on_a_gpu_without_bf16_are_paths_of_their_own(monkeypatch):
    assert not same_path_here("amp", "off", "fp16", "cpu")  # resolve_amp refuses it on a CPU: it must run and fail
    monkeypatch.setattr(course_utils.train, "has_fast_bf16", lambda device: False)  # a T4: fp16 + GradScaler
    assert not same_path_here("amp", "off", "auto", "cuda")
    assert full_profile_flags(_nb(), device="cuda") == ({"amp", "dtype"}, {"S"})
