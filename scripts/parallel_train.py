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

import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import torch.distributed as dist

from course_utils.lessons.l1_ddp import exit_without_teardown, script_device, script_parser
from course_utils.lessons.l1_parallel import ParallelSettings, combine, load_tokens, run_mode, validate


def main(argv=None) -> int:
    parser = script_parser(__doc__, ParallelSettings)  # the flags ddp_train.py has, and the settings' own
    parser.add_argument("--modes", default="tp,pp,fsdp,ddp", help="comma-separated: tp, pp, fsdp, ddp")
    args = parser.parse_args(argv)
    settings = ParallelSettings.from_namespace(args)

    if "RANK" not in os.environ:
        parser.error("start this script with torchrun (python -m torch.distributed.run --nproc_per_node=2 ...)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    modes = validate(args.modes.split(","), settings, world)
    device = script_device(parser, args, world, int(os.environ.get("LOCAL_RANK", 0)))

    dist.init_process_group(backend=args.backend)
    data = load_tokens(args.tokens, settings.vocab_size)
    results = {}
    for mode in modes:
        t0 = time.perf_counter()
        record = run_mode(mode, settings, data, rank, world, device)
        record.mode_wall_s = time.perf_counter() - t0  # a typed record (l1_parallel.TPRecord, PPRecord, DPRecord)
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
