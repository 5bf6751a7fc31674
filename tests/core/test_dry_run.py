"""COURSE_DRY_RUN=1: the full profile's code paths (flags, dtypes, modes) at the small profile's numbers, capped."""
import pytest

from course_utils.env import dry_run_values, profile_settings

SMALL = {"steps": 80, "train_steps": 12, "seeds": 3, "eval_batches": 4, "rounds": 15, "lr": 3e-3, "n_embd": 128,
         "amp": "off", "compile": False, "attn_seq_lens": (128, 256), "attn_dtype": "float32", "few_clean": 8,
         "n_heldout": 16, "gen_tokens": 16}
FULL = {"steps": 800, "train_steps": 60, "seeds": 3, "eval_batches": 8, "rounds": 20, "lr": 6e-4, "n_embd": 768,
        "amp": "auto", "compile": True, "attn_seq_lens": (512, 4096), "attn_dtype": "bfloat16", "few_clean": 100,
        "n_heldout": 128, "gen_tokens": 64}


def test_dry_values_keep_full_flags_and_take_small_numbers_capped():
    d = dry_run_values(SMALL, FULL)
    assert d["amp"] == "auto" and d["compile"] is True and d["attn_dtype"] == "bfloat16"  # full's code paths
    assert d["n_embd"] == 128 and d["lr"] == 3e-3 and d["attn_seq_lens"] == (128, 256) and d["few_clean"] == 8
    assert d["steps"] == 4 and d["train_steps"] == 4 and d["seeds"] == 2 and d["eval_batches"] == 2
    assert d["rounds"] == 5  # the fewest rounds speed_verdict accepts
    assert d["n_heldout"] == 4 and d["gen_tokens"] == 8
    d = dry_run_values({**SMALL, "seeds": (0, 1, 2)}, {**FULL, "seeds": (0, 1, 2)})
    assert d["seeds"] == (0, 1)  # the seeds named one by one: the first two


def test_profile_settings_dry_run_only_for_the_full_profile(monkeypatch):
    monkeypatch.setenv("COURSE_DRY_RUN", "1")
    s = profile_settings(SMALL, FULL, profile="full")
    assert s.profile == "full" and s.dry and s.compile is True and s.steps == 4
    assert "dry run" in repr(s) and "dry run" in s._repr_html_()
    small = profile_settings(SMALL, FULL, profile="small")  # the small profile is never changed
    assert not small.dry and small.steps == 80 and "dry run" not in repr(small)
    monkeypatch.setenv("COURSE_DRY_RUN", "0")
    assert profile_settings(SMALL, FULL, profile="full").steps == 800
    monkeypatch.setenv("COURSE_DRY_RUN", "yes")
    with pytest.raises(ValueError, match="COURSE_DRY_RUN='yes'"):
        profile_settings(SMALL, FULL, profile="full")


def test_step_cap_lowers_the_full_profiles_step_counts_and_says_so(monkeypatch):
    from course_utils.env import profile_settings

    small, full = {"steps": 10, "eval_steps": 2, "lr": 1e-3}, {"steps": 300, "eval_steps": 20, "lr": 1e-4}
    monkeypatch.setenv("COURSE_STEP_CAP", "40")
    s = profile_settings(small, full, profile="full")
    assert (s.steps, s.eval_steps, s.lr) == (40, 20, 1e-4) and s.capped == {"steps": 300}
    assert "steps 40 of 300" in s.title
    assert profile_settings(small, full, profile="small").steps == 10  # the small profile is never capped
    monkeypatch.setenv("COURSE_STEP_CAP", "zero")
    with pytest.raises(ValueError, match="COURSE_STEP_CAP"):
        profile_settings(small, full, profile="full")
