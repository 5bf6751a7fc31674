"""scripts/t4_check.py (the T4 check of issue 32) on this machine: its dry code path, the lecture's architectures
it builds, and how preflight reads its results."""
import importlib.util
import json

import pytest
import torch

from course_utils import preflight

spec = importlib.util.spec_from_file_location("t4_check", preflight.REPO_ROOT / "scripts" / "t4_check.py")
t4_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(t4_check)


def test_dry_run_takes_two_steps_per_lesson_in_the_lessons_precision(capsys):
    assert t4_check.main(["--dry", "--lessons", "02", "03"]) == 0
    out = capsys.readouterr().out
    assert "lesson 02: fits under 15 GiB in fp16 + GradScaler" in out and "lesson 03: fits under 15 GiB in fp32" in out


@pytest.mark.parametrize("arch", [preflight.GPT2_MEDIUM, preflight.GPT_NEO_125M, preflight.SMOLLM2_135M])
def test_it_builds_the_lectures_architectures(arch):
    model = t4_check.build(arch, 64, torch.device("meta"), dry=False)
    assert sum(p.numel() for p in model.parameters()) == arch.n_params


def test_without_a_gpu_it_says_to_use_dry(monkeypatch):
    monkeypatch.setattr(t4_check, "get_device", lambda: torch.device("cpu"))
    with pytest.raises(SystemExit, match="--dry"):
        t4_check.main([])


def test_preflight_reads_the_measured_t4_column(tmp_path):
    folder = tmp_path / "nvidia-h100-80gb-hbm3"
    folder.mkdir()
    recs = [{"lesson": "01", "fits": False, "amp": "fp32", "error": "CUDA out of memory"},
            {"lesson": "02", "fits": True, "amp": "fp16 + GradScaler", "peak_bytes": 9 * 2**30}]
    (folder / "t4_check.json").write_text(json.dumps({"date": "2026-12-06", "lessons": recs}))
    one, two = preflight.fit("01", tmp_path), preflight.fit("02", tmp_path)
    assert preflight.on_t4(one, tmp_path).startswith("does not fit: out of memory under a 15 GiB cap, fp32")
    assert "batch" in preflight.on_t4(one, tmp_path) or "4-bit" in preflight.on_t4(one, tmp_path)
    assert preflight.on_t4(two, tmp_path) == ("fits: measured 9.0 GiB under a 15 GiB cap, fp16 + GradScaler "
                                              "(nvidia-h100-80gb-hbm3 2026-12-06)")
    assert preflight.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
