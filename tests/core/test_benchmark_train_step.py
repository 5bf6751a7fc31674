"""benchmarks/train_step.py runs end to end on the CPU (a tiny row) and reports the course's speed procedure."""
import importlib.util
import json
from pathlib import Path

import pytest

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


def test_profile_groups_name_gpu_kernels_and_cpu_operators():
    bench = load_benchmark()
    names = {
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matmul",
        "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN": "matmul",
        "triton_tem_fused_mm_0": "matmul",
        "aten::addmm": "matmul",
        "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>": "attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
        "aten::_fused_adamw_": "optimizer",
        "triton_red_fused__log_softmax_native_layer_norm_0": "other",
        "aten::exp_": "other",
    }
    assert {n: bench.profile_group(n) for n in names} == names


def test_summarize_profile_splits_the_step_and_the_gpu_idle_time():
    bench = load_benchmark()
    events = [("gemm_a", 0.6), ("gemm_a", 0.2), ("flash_fwd", 0.4), ("triton_poi_fused_add", 0.6),
              ("multi_tensor_apply_kernel<FusedAdam>", 0.2)]  # 2.0 s of kernels over 2 steps in 2.5 s
    p = bench.summarize_profile(events, wall_s=2.5, steps=2, busy_is_device=True, top=2)
    assert p["busy_ms_per_step"] == pytest.approx(1000) and p["wall_ms_per_step"] == pytest.approx(1250)
    assert p["device_idle_share"] == pytest.approx(0.2)
    assert p["shares"] == pytest.approx({"matmul": 0.4, "other": 0.3, "attention": 0.2, "optimizer": 0.1})
    assert list(p["shares"])[0] == "matmul" and [t["name"] for t in p["top"]] == ["gemm_a", "triton_poi_fused_add"]
    assert p["top"][0]["ms_per_step"] == pytest.approx(400)
    cpu = bench.summarize_profile(events, wall_s=2.5, steps=2, busy_is_device=False)
    assert "device_idle_share" not in cpu and cpu["clock"].startswith("CPU")
    with pytest.raises(ValueError, match="no time"):
        bench.summarize_profile([("x", 0.0)], wall_s=1.0, steps=1, busy_is_device=True)
    with pytest.raises(ValueError, match="steps >= 1"):
        bench.summarize_profile(events, wall_s=1.0, steps=0, busy_is_device=True)


def test_the_benchmark_profiles_model_5s_step(tmp_path):
    bench = load_benchmark()
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--configs", "tiny", "--contexts", "16", "--batch", "2", "--steps", "1",
                       "--warmup", "0", "--no-levers", "--profile", "1", "--out", str(out)]) == 0
    prof = json.loads(out.read_text())["results"][0]["course_profile"]
    assert prof["steps"] == 1 and prof["busy_ms_per_step"] > 0
    assert sum(prof["shares"].values()) == pytest.approx(1) and prof["shares"].get("matmul", 0) > 0
    assert any(t["group"] == "optimizer" for t in prof["top"]) or "optimizer" in prof["shares"]
