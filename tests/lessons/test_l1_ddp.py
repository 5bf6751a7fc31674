"""Data parallelism for real: 2 gloo processes under torchrun reach the same losses as one process
with the same global batch.

Tolerance: 1e-4 nats per step. The two runs do the same arithmetic except that the gradient of the
batch mean is summed in a different order (two halves, then averaged by the all-reduce), so they
differ only by float32 rounding (about 1e-7 here); a broken all-reduce, a wrong shard or a missing
gradient average shows up as differences of 1e-2 or more.
"""
import json

import pytest
import torch

from course_utils.lessons import l1_ddp as ddp

TOL = 1e-4


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "tokens.pt"
    torch.save(torch.arange(4000) % 37, path)
    return path


SETTINGS = ddp.DDPSettings(
    steps=5, global_batch=8, block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32, lr=3e-3
)


def test_two_gloo_processes_match_one_process(tokens, tmp_path):
    plan = ddp.LaunchPlan(2, "gloo", "cpu", "test")
    run = ddp.launch(SETTINGS, plan, tmp_path / "run.json", tokens, timeout=240)
    ref = ddp.reference_run(SETTINGS, ddp.load_token_stream(tokens))
    assert run["world_size"] == 2 and run["backend"] == "gloo"
    assert len(run["loss"]) == SETTINGS.steps
    assert ddp.max_loss_difference(run, ref) < TOL
    assert run["loss"][-1] < run["loss"][0]  # it learns
    # the ranks saw different data (their own slices) yet hold identical weights
    assert run["rank_loss"][0] != run["rank_loss"][1]
    fp = run["param_fingerprints"]
    assert abs(fp[0] - fp[1]) <= 1e-9 * fp[0]
    assert abs(fp[0] - ref["param_fingerprints"][0]) < 1e-3
    assert len(run["tokens_per_s_per_process"]) == 2 and run["tokens_per_s_total"] > 0
    assert json.loads((tmp_path / "run.json").read_text())["loss"] == run["loss"]


def test_shards_cover_the_global_batch_exactly(tokens):
    data = ddp.load_token_stream(tokens)
    whole = ddp.shard_batches(data, SETTINGS, 0, 1)(torch.Generator().manual_seed(3))
    parts = [ddp.shard_batches(data, SETTINGS, r, 2)(torch.Generator().manual_seed(3)) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    with pytest.raises(ValueError, match="split evenly"):
        ddp.shard_batches(data, SETTINGS, 0, 3)


def test_a_missing_all_reduce_is_caught(tokens):
    # The real mistake: each rank trains on its own slice and nobody averages the gradients (no DDP wrapper).
    # Step 1's loss still agrees (same weights, the two slices' mean is the batch mean); every later step must not.
    data = ddp.load_token_stream(tokens)
    ref = ddp.reference_run(SETTINGS, data)
    per_rank = [ddp.rank_record(*ddp.train_shard(SETTINGS, data, rank, 2, torch.device("cpu"))) for rank in range(2)]
    broken = ddp.summarize(SETTINGS, per_rank, "none (no all-reduce)", "cpu", 0.0)
    assert abs(broken["loss"][0] - ref["loss"][0]) < TOL
    assert ddp.max_loss_difference(broken, ref) > 10 * TOL
    fp = broken["param_fingerprints"]
    assert abs(fp[0] - fp[1]) > 1e-6 * fp[0]  # the copies drifted apart
    with pytest.raises(ValueError, match="different lengths"):
        ddp.max_loss_difference(ref, {"loss": [3.0]})


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="torch.save"):
        ddp.load_token_stream(tmp_path / "missing.pt")
    torch.save(torch.zeros(3, 3), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="1-D integer"):
        ddp.load_token_stream(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="steps"):
        ddp.DDPSettings(steps=0)
    with pytest.raises(ValueError, match="DDPSettings.lr = nan"):
        ddp.DDPSettings(lr=float("nan"))
    with pytest.raises(ValueError, match="n_head"):
        ddp.DDPSettings(n_embd=64, n_head=3)
    with pytest.raises(ValueError, match="amp"):
        ddp.DDPSettings(amp="fp8")
    from course_utils.lessons.l1_parallel import ParallelSettings

    with pytest.raises(ValueError, match="ParallelSettings.batch = 0"):
        ParallelSettings(batch=0)  # the shared base validates, and each settings class its own fields
    with pytest.raises(ValueError, match="backend"):
        ddp.launch(SETTINGS, ddp.LaunchPlan(2, "mpi", "cpu", ""), tmp_path / "x.json", tmp_path / "bad.pt")


def test_a_failing_script_reports_its_output(tmp_path):
    with pytest.raises(RuntimeError, match="torchrun failed"):
        ddp.launch(
            SETTINGS, ddp.LaunchPlan(2, "gloo", "cpu", ""), tmp_path / "x.json", tmp_path / "nope.pt", timeout=120
        )


def test_settings_round_trip_through_the_command_line():
    import argparse

    parser = argparse.ArgumentParser()
    ddp.DDPSettings.add_arguments(parser)
    assert ddp.DDPSettings.from_namespace(parser.parse_args(SETTINGS.to_argv())) == SETTINGS
    # the scripts' shared head: the common flags, then the settings' own
    head = ddp.script_parser("doc", ddp.DDPSettings)
    args = head.parse_args(["--out", "o.json", *SETTINGS.to_argv()])
    assert (args.tokens, args.backend, args.device) == ("alice", "gloo", "cpu")
    assert ddp.script_device(head, args, 2, 0) == torch.device("cpu")
    cmd = ddp.torchrun_command(SETTINGS, ddp.LaunchPlan(2, "gloo", "cpu", ""), "o.json", "t.pt")
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
