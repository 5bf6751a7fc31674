"""benchmarks/train_step.py runs end to end on the CPU (a tiny row) and reports the course's speed procedure."""
import importlib.util
import json
from pathlib import Path

from course_utils.claims import VERDICTS

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("train_step_bench", ROOT / "benchmarks" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_step_benchmark_runs_and_pairs_rounds(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "bench.json"
    rc = bench.main(["--device", "cpu", "--configs", "tiny", "--contexts", "32", "--batch", "4", "--steps", "5",
                     "--warmup", "0", "--no-levers", "--out", str(out)])
    assert rc == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["max_abs_logit_diff_fp32"] < 1e-4 and row["fused_loss_diff_fp32"] < 1e-4
    paired = row["course_speedup_vs_paired"]["hf"]
    assert paired["rounds"] == 5 and paired["verdict"] in VERDICTS
    assert paired["low"] <= paired["median_round_speedup"] <= paired["high"]
    assert row["course_peak_bytes"] > 0 and row["hf_peak_bytes"] > 0
    assert "course/HF" in capsys.readouterr().out
