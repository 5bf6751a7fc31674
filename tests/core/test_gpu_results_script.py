"""scripts/gpu_results.sh, the GPU sitting's one script: what it does without a GPU or its staged parts.

The whole sitting is tested on a CPU by hand (the script's header: DRY=1 ... all, about 9 minutes here); these
tests cover its refusals and the save-as-you-go archive, which a cut-off call on the lent machine depends on."""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_results.sh"


def sh(*args, env=None, cwd=ROOT):
    import os

    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_without_a_command_it_prints_its_header_and_exits_2():
    r = sh()
    assert r.returncode == 2
    assert "STEP_CAP=N bash scripts/gpu_results.sh all" in r.stdout and "DRY=1" in r.stdout
    assert "set -euo" not in r.stdout  # the header only


def test_all_refuses_without_a_step_cap_and_run_without_lessons():
    r = sh("all", env={"STEP_CAP": ""})
    assert r.returncode == 1 and "set STEP_CAP" in r.stderr
    r = sh("run")
    assert r.returncode == 1 and "name the lessons" in r.stderr


def test_a_part_that_has_not_arrived_is_named(tmp_path):
    r = sh("install", env={"STAGE": str(tmp_path / "stage"), "SITE": str(tmp_path / "site")})
    assert r.returncode == 1 and "part 1 has not arrived" in r.stderr and "receive 1" in r.stderr


def test_results_are_archived_after_each_stage(tmp_path):
    """save_results (called after the benchmark, the T4 check and every lesson) rewrites $OUT/results.tgz whole
    with everything finished so far, so a call cut off by its time limit still brings those back."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    body = SCRIPT.read_text().split('case "${1:-}" in')[0]  # the functions, without the command dispatch
    (repo / "scripts" / "save.sh").write_text(body + "\nsave_results\n")  # cds to its checkout, as the script does
    out = tmp_path / "out"
    out.mkdir()
    dry = repo / "runs" / "gpu-results-dry"
    dry.mkdir(parents=True)
    for n, name in enumerate(["train_step.json", "01_x.md"], 1):
        (dry / name).write_text("x")
        subprocess.run(["bash", str(repo / "scripts" / "save.sh")], cwd=tmp_path, check=True, timeout=60,
                       env={"DRY": "1", "OUT": str(out), "PATH": "/usr/bin:/bin"})
        with tarfile.open(out / "results.tgz") as t:
            names = sorted(Path(m).name for m in t.getnames() if m.endswith((".json", ".md")))
        assert names == sorted(["train_step.json", "01_x.md"][:n])
    assert not (out / "results.tgz.tmp").exists()
