"""Data-parallel training of Model 5 with torch.distributed, one process per device.

Start it with torchrun, which runs N copies of this file and tells each one its RANK, LOCAL_RANK
and WORLD_SIZE through environment variables:

    torchrun --standalone --nproc_per_node=2 scripts/ddp_train.py --out outputs/ddp.json --tokens alice
    # or, with the same Python as your notebook:
    python -m torch.distributed.run --standalone --nproc_per_node=2 scripts/ddp_train.py --out ...

Backends: gloo (CPU, or processes sharing a GPU) and nccl (one GPU per process). Without torchrun the
script runs as a single process, the reference the data-parallel run must match.
Rank 0 writes the run as JSON to --out: the global loss per step, every rank's losses, step times,
tokens/s per process, and a fingerprint of every rank's weights (equal copies, equal numbers).
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

from course_utils.lessons.l1_ddp import (
    DDPSettings,
    exit_without_teardown,
    load_token_stream,
    rank_record,
    script_device,
    script_parser,
    summarize,
    train_shard,
)


def main(argv=None) -> int:
    parser = script_parser(__doc__, DDPSettings)  # --out, --tokens, --backend, --device + the settings' flags
    args = parser.parse_args(argv)
    settings = DDPSettings.from_namespace(args)

    # 1. Who am I? torchrun sets these; without it this is a world of one.
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = script_device(parser, args, world_size, local_rank)

    # 2. Join the process group (torchrun's rendezvous tells every process where rank 0 listens).
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group(backend=args.backend)

    # 3. Train: the same model everywhere, each rank on its slice of every global batch; DDP
    #    all-reduces (averages) the gradients inside backward(), so every rank takes the same step.
    data = load_token_stream(args.tokens)
    t0 = time.perf_counter()
    model, history = train_shard(settings, data, rank, world_size, device)
    wall = time.perf_counter() - t0
    record = rank_record(model, history)

    # 4. Collect every rank's record on rank 0 and write the run.
    if distributed:
        records = [None] * world_size
        dist.all_gather_object(records, record)
        gc.collect()  # drop DDP's reducer while the process group still exists
        dist.destroy_process_group()
    else:
        records = [record]
    if rank == 0:
        result = summarize(settings, records, args.backend if distributed else "none", str(device), wall)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"world size {world_size} ({args.backend} on {device.type}): final loss {result['loss'][-1]:.4f}, "
              f"{result['tokens_per_s_total']:,.0f} tokens/s in all -> {out}")
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())  # see course_utils.lessons.l1_ddp.exit_without_teardown
