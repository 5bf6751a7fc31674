"""Tensor, pipeline and sharded data parallelism of Model 5 on torch.distributed, one process per device.

Start it with torchrun (2 processes; gloo on CPU, nccl with one GPU per process):

    python -m torch.distributed.run --standalone --nproc_per_node=2 scripts/parallel_train.py \
        --modes tp,pp,fsdp,ddp --out outputs/parallel.json --tokens alice

Modes: tp (ColwiseParallel / RowwiseParallel over a device mesh), pp (PipelineStage with ScheduleGPipe and
Schedule1F1B), fsdp (fully_shard, FSDP2), ddp (DistributedDataParallel); "tp:wrong-split" and
"tp:no-allreduce" inject a mistake. Every mode trains --steps steps on the same global batches as one process
would; rank 0 writes {"modes": {mode: result}} as JSON to --out. The per-process work lives in
``course_utils.lessons.l1_parallel``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import torch
import torch.distributed as dist

from course_utils.lessons.l1_ddp import exit_without_teardown
from course_utils.lessons.l1_parallel import ParallelSettings, combine, load_tokens, run_mode, validate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="tp,pp,fsdp,ddp", help="comma-separated: tp, pp, fsdp, ddp")
    parser.add_argument("--out", required=True, help="where rank 0 writes the run's JSON")
    parser.add_argument("--tokens", default="alice", help="a torch.save'd 1-D token tensor, or a course text name")
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ParallelSettings.add_arguments(parser)
    args = parser.parse_args(argv)
    settings = ParallelSettings.from_namespace(args)

    if "RANK" not in os.environ:
        parser.error("start this script with torchrun (python -m torch.distributed.run --nproc_per_node=2 ...)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    modes = validate(args.modes.split(","), settings, world)
    if args.backend == "nccl" and args.device != "cuda":
        parser.error("the nccl backend needs --device cuda (one GPU per process)")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda, but this machine has no CUDA GPU; use --device cpu --backend gloo")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    dist.init_process_group(backend=args.backend)
    data = load_tokens(args.tokens, settings.vocab_size)
    results = {}
    for mode in modes:
        t0 = time.perf_counter()
        record = run_mode(mode, settings, data, rank, world, device)
        record["mode_wall_s"] = time.perf_counter() - t0
        records = [None] * world
        dist.all_gather_object(records, record)
        results[mode] = combine(mode, records, settings)
    gc.collect()  # drop the engines' references while the process group still exists
    dist.destroy_process_group()
    if rank == 0:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"backend": args.backend, "device": device.type, "world_size": world,
                                   "modes": results}, indent=1))
        print(f"{', '.join(modes)} on {world} processes ({args.backend}, {device.type}) -> {out}")
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())  # see course_utils.lessons.l1_ddp.exit_without_teardown
